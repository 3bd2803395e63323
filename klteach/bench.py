"""Throughput and memory of the training step: ``python -m klteach bench``.

One *image* per batch entry: each image becomes two augmented views, the teacher embeds both
and the student embeds both and back-propagates (so a step of batch ``B`` runs the networks on
``2B`` views). :func:`run_benchmark` builds a :class:`~klteach.train.Trainer` for a
:class:`~klteach.train.TrainConfig` (by default :func:`default_config`: ResNet-18 at batch 512 on
a GPU; on a CPU the small CNN on the shipped CIFAR-10 sample, about a minute in all), takes
``warmup`` steps (CUDA kernels chosen, ``torch.compile`` done), then times ``bench_steps`` steps
between two device synchronisations and reports

* images/s (and views/s = 2 x images/s),
* seconds per epoch of this dataset and of the 50,000-image CIFAR-10 training set,
* peak memory during the timed steps: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
  peak resident set size (``VmHWM``, reset before timing where Linux allows, else the process
  lifetime peak from ``resource.getrusage``),
* the library's images/s against :class:`PlainLoop`, the same step written as a minimal PyTorch
  loop, with 1 and 2 CPU threads (what the trainer's bookkeeping costs),

and writes them as JSON with the device name, torch version, date, load average and config.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import data as data_lib
from .checkpoint import write_json_atomic
from .config import Device, TrainConfig, resolve_device
from .models import ClusteringModel, count_parameters
from .normalisers import make_normaliser
from .train import Trainer

CIFAR10_TRAIN_IMAGES = 50_000
"""Images in one CIFAR-10 training epoch, the unit the issue's targets use."""
VIEWS_PER_IMAGE = 2
"""Augmented views per image in one step (see :func:`klteach.train.cross_view_loss`)."""


# ---------------------------------------------------------------- the device

def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall clock read afterwards covers it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU model named in ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def git_commit() -> str | None:
    """The commit of the klteach checkout (``+dirty`` when tracked files were modified), or None
    outside a git checkout: which code produced a recorded figure."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a GPU; CPU model and core count for a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({usable_cores()} cores)"


def environment(device: torch.device) -> dict[str, Any]:
    """Where and when a figure was measured: device, versions, date, machine load."""
    info: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": usable_cores(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, gpu_memory_bytes=props.total_memory,
                    gpu_multiprocessors=props.multi_processor_count)
    return info


def busy_note(load_average: float | None, cores: int) -> str | None:
    """A warning for the record when other jobs kept the CPU busy (1-min load above its cores)."""
    if load_average is None or load_average <= cores:
        return None
    return (f"shared machine: 1-min load average {load_average:.1f} on {cores} cores, so CPU "
            "timings are pessimistic")


# ---------------------------------------------------------------- memory

def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``, ``VmRSS``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns how :func:`peak_memory_bytes` will measure it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated since the timed steps began"
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if _proc_status_kib("VmHWM") is not None:
            return "peak resident set size (VmHWM) since the timed steps began"
    except OSError:
        pass
    return "peak resident set size over the whole process (resource.getrusage)"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since :func:`reset_peak_memory` (GPU allocations, or CPU resident set)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    high_water = _proc_status_kib("VmHWM")
    if high_water is not None:
        return high_water * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def current_memory_bytes(device: torch.device) -> int | None:
    """Memory held now: GPU allocations, or the CPU resident set (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    rss = _proc_status_kib("VmRSS")
    return None if rss is None else rss * 1024


# ---------------------------------------------------------------- measurements

def timed_steps(trainer: Trainer, steps: int) -> float:
    """Wall-clock seconds for ``steps`` training steps, synchronised at both ends (``train_step``:
    the loss stays on the device, as in ``Trainer.run``)."""
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    synchronize(trainer.device)
    return time.perf_counter() - start


def measure_throughput(trainer: Trainer, steps: int, warmup: int) -> dict[str, Any]:
    """Take ``warmup`` untimed steps, then time ``steps`` steps: images/s, s/epoch, peak memory."""
    _check_count(steps, "bench_steps", 1)
    _check_count(warmup, "warmup", 0)
    for _ in range(warmup):
        trainer.train_step()
    synchronize(trainer.device)
    memory_before = current_memory_bytes(trainer.device)
    memory_method = reset_peak_memory(trainer.device)
    seconds = timed_steps(trainer, steps)
    images = trainer.config.batch_size * steps
    images_per_s = images / seconds
    train_images = int(trainer.dataset.train.shape[0])
    return {
        "warmup_steps": warmup, "timed_steps": steps, "timed_seconds": seconds,
        "seconds_per_step": seconds / steps, "images_per_s": images_per_s,
        "views_per_s": VIEWS_PER_IMAGE * images_per_s,
        "train_images": train_images, "seconds_per_epoch": train_images / images_per_s,
        "seconds_per_cifar10_epoch": CIFAR10_TRAIN_IMAGES / images_per_s,
        "peak_memory_bytes": peak_memory_bytes(trainer.device),
        "memory_before_timed_steps_bytes": memory_before, "peak_memory_method": memory_method,
    }


def measure_full_prior(trainer: Trainer, repeats: int = 1) -> dict[str, Any]:
    """Seconds for :meth:`Trainer.estimate_full_prior` (eq. 15 over the whole training set).

    On a GPU one untimed pass comes first (cuDNN picks its kernels); the median of ``repeats``
    timed passes is reported.
    """
    _check_count(repeats, "repeats", 1)
    if trainer.device.type == "cuda":
        trainer.estimate_full_prior()
    times = []
    for _ in range(repeats):
        synchronize(trainer.device)
        start = time.perf_counter()
        trainer.estimate_full_prior()
        synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    images = int(trainer.dataset.train.shape[0])
    return {"images": images, "seconds_per_pass": seconds, "images_per_s": images / seconds,
            "repeats": repeats, "all_seconds": times}


def forward_flops_per_image(model: ClusteringModel, input_shape: tuple[int, ...], batch: int = 4) -> int:
    """FLOPs of one embedding (backbone + head) of one input, counted by torch.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
    convolutions; a multiply-add counts as 2 FLOPs) on a float32 CPU copy of ``model``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).float().cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.embed(torch.rand(batch, *input_shape))
    return counter.get_total_flops() // batch


def step_flops_per_image(trainer: Trainer) -> int:
    """FLOPs of one training step per batch image (teacher and student on both views, backward
    included), counted by torch while ``trainer`` takes one real step (on a CPU trainer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return counter.get_total_flops() // trainer.config.batch_size


DATASHEET_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
"""Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets, by name fragment."""


def datasheet_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 peak for a GPU called ``name``, if it is in the table."""
    return next((peak for fragment, peak in DATASHEET_BF16_TFLOPS if fragment in name), None)


def measure_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of a large bf16 matrix product on a GPU: what its tensor cores reach in practice."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def model_flops_utilisation(trainer: Trainer, images_per_s: float) -> dict[str, Any]:
    """FLOPs per image of a step (counted on one more real step), the FLOP/s the measured speed
    means, and on a GPU its share of a large matrix product's and of the datasheet's peak (MFU)."""
    flops = step_flops_per_image(trainer)
    achieved = images_per_s * flops / 1e12
    result: dict[str, Any] = {"flops_per_image": flops, "achieved_tflops": achieved}
    if trainer.device.type == "cuda":
        matmul = measure_matmul_tflops(trainer.device)
        peak = datasheet_tflops(device_name(trainer.device))
        result.update(matmul_bf16_tflops=matmul, mfu_vs_matmul=achieved / matmul,
                      datasheet_bf16_tflops=peak, mfu=None if peak is None else achieved / peak)
    return result


def _check_count(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------- the same step, written plainly

class PlainLoop:
    """The training step of :class:`~klteach.train.Trainer` as a minimal PyTorch loop.

    Same model (a copy of the trainer's student), batch, two augmented views, teacher
    normaliser, cross-view cross-entropy (eq. 3 between views), AdamW and EMA teacher (eq. 7);
    none of the trainer's bookkeeping (live settings, undo point, interrupt guard, NaN check).
    Timing both says what that bookkeeping costs.
    """

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.config
        self.config, self.device = cfg, trainer.device
        self.images = trainer.dataset.train
        self.augment = trainer.augment
        self.student = copy.deepcopy(trainer.student).train()
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.normaliser = make_normaliser(cfg.normaliser, cfg.clusters, cfg.lam, cfg.prior, cfg.prior_momentum,
                                          cfg.centre_momentum).to(self.device)
        self.optimiser = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.channels_last = self.device.type == "cuda" and self.images.dim() == 4

    def loss(self, views: torch.Tensor) -> torch.Tensor:
        """Cross-view cross-entropy of the two halves of ``views`` (eq. 3; teacher q, student log p)."""
        cfg = self.config
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            with torch.no_grad():
                z_teacher = self.teacher.embed(views)
            z_student = self.student.embed(views)
        # logits, normaliser and loss in float32, as the trainer computes them
        with torch.no_grad():
            q = self.normaliser(z_teacher.float(), self.teacher.prototypes.unit_weights, cfg.tau_teacher)
        log_p = (z_student.float() @ self.student.prototypes.unit_weights.T / cfg.tau_student).log_softmax(-1)
        q_a, q_b = q.chunk(2)
        log_p_a, log_p_b = log_p.chunk(2)
        return -((q_a * log_p_b).sum(-1).mean() + (q_b * log_p_a).sum(-1).mean()) / 2

    def step(self) -> None:
        """Draw a batch, make two views, take an AdamW step, move the teacher (eq. 7, EMA)."""
        index = torch.randint(len(self.images), (self.config.batch_size,), generator=self.generator,
                              device=self.device)
        x = self.images[index]
        views = torch.cat([self.augment(x, self.generator), self.augment(x, self.generator)])
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        loss = self.loss(views)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.lerp_(s, 1.0 - self.config.momentum)
            for teacher_buffer, student_buffer in zip(self.teacher.buffers(), self.student.buffers()):
                teacher_buffer.copy_(student_buffer)


def time_steps(step: Callable[[], Any], steps: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``steps`` calls of ``step``, synchronised at both ends."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compare_with_plain_loop(trainer: Trainer, steps: int, warmup: int,
                            threads: Sequence[int]) -> list[dict[str, Any]]:
    """images/s of ``trainer.train_step()`` against :class:`PlainLoop` with each number of CPU threads.

    After ``warmup`` untimed steps of each, the two alternate step by step on a CPU (so a change
    in the machine's load hits both alike) and in blocks of ``steps`` on a GPU (a sync per step
    would slow both). ``ratio`` = library images/s / plain images/s (1 = no overhead), by wall
    time; ``cpu_ratio`` by process CPU time, steadier on a shared machine."""
    _check_count(steps, "bench_steps", 1)
    _check_count(warmup, "warmup", 0)
    plain = PlainLoop(trainer)
    block = 1 if trainer.device.type == "cpu" else steps
    rows = []
    for count in threads:
        _check_count(count, "threads", 1)
        with torch_threads(count):
            load_before = _load_average()
            time_steps(trainer.train_step, warmup, trainer.device)
            time_steps(plain.step, warmup, trainer.device)
            library, plain_time = [0.0, 0.0], [0.0, 0.0]
            for _ in range(steps // block):
                for total, step in ((library, trainer.train_step), (plain_time, plain.step)):
                    wall, cpu = time_steps(step, block, trainer.device)
                    total[0] += wall
                    total[1] += cpu
        images = trainer.config.batch_size * steps
        rows.append({"threads": count, "timed_steps": steps, "warmup_steps": warmup,
                     "library_images_per_s": images / library[0], "plain_images_per_s": images / plain_time[0],
                     "ratio": plain_time[0] / library[0], "cpu_ratio": plain_time[1] / library[1],
                     "library_seconds": library[0], "plain_seconds": plain_time[0],
                     "library_cpu_seconds": library[1], "plain_cpu_seconds": plain_time[1],
                     "load_average_1min_before": load_before, "load_average_1min_after": _load_average()})
    return rows


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------- defaults and estimates

STEPS_DEFAULT = {"cpu": (3, 1), "cuda": (50, 10)}
"""(timed steps, warm-up steps) per device type when the caller gives none."""
FORWARDS_PER_IMAGE = 8
"""A step costs about 8 forward passes per batch image: 2 views x (teacher forward + student
forward + backward of about 2 forwards); ``tests/test_bench.py`` checks it with FLOP counts."""


def default_config(device: Device = "auto") -> TrainConfig:
    """The configuration ``python -m klteach bench`` times on ``device`` (``auto``, ``cpu`` or
    ``cuda``). On a GPU: ResNet-18 at batch 512 on the full CIFAR-10, chapter 5's setting. On a
    CPU: the small CNN on the shipped sample, about a minute in all on two idle cores (one
    ResNet-18 step at batch 512 takes minutes there). Evaluation is off: only steps are timed."""
    if resolve_device(device).type == "cuda":
        return TrainConfig(dataset="cifar10", arch="resnet18", batch_size=512, device=device, eval_every=0)
    return TrainConfig(dataset="cifar10-sample", arch="cnn", batch_size=128, device=device, eval_every=0)


def default_threads(device: torch.device) -> tuple[int, ...]:
    """Thread counts for the plain-loop comparison: 1, 2 and the current one (up to the cores)."""
    if device.type != "cpu":
        return (torch.get_num_threads(),)
    return tuple(sorted(n for n in {1, 2, torch.get_num_threads()} if n <= usable_cores()))


def estimate_step_seconds(trainer: Trainer, images: int = 8) -> float:
    """A quick guess of one step's seconds from one forward pass of ``images`` images (CPU)."""
    x = data_lib.to_float(trainer.dataset.train[:images]) if trainer.dataset.kind == "images" \
        else trainer.dataset.train[:images].float()
    model = trainer.student
    with torch.no_grad():
        model.eval()
        start = time.perf_counter()
        model.embed(x)
        seconds = time.perf_counter() - start
        model.train()
    return seconds / len(x) * FORWARDS_PER_IMAGE * trainer.config.batch_size


# ---------------------------------------------------------------- the command

def describe_model(trainer: Trainer) -> dict[str, Any]:
    """The backbone actually built (``arch="auto"`` resolved) and its size."""
    return {"backbone": type(trainer.student.backbone).__name__,
            "parameters": count_parameters(trainer.student),
            "channels_last": trainer.device.type == "cuda" and trainer.dataset.kind == "images",
            "bf16_autocast": trainer.device.type == "cuda",
            "compiled": bool(trainer.config.compile)}


def benchmark(trainer: Trainer, steps: int, warmup: int,
              plain_threads: Sequence[int] | None = ()) -> dict[str, Any]:
    """The full record for one trainer: environment, config, model, throughput and peak memory
    of the library's step (+ the whole-set prior pass; + the plain-loop comparison for each
    number of threads in ``plain_threads``; ``None``: :func:`default_threads`)."""
    env = environment(trainer.device)
    cpu_start = time.process_time()
    record: dict[str, Any] = {"benchmark": "train_step", **env,
                              "dataset": trainer.dataset.name, "config": trainer.config.to_dict(),
                              "model": describe_model(trainer),
                              **measure_throughput(trainer, steps, warmup)}
    record["cpu_seconds"] = time.process_time() - cpu_start
    record.update(model_flops_utilisation(trainer, record["images_per_s"]))
    cfg = trainer.config
    if cfg.normaliser == "inverse-prior" and cfg.prior == "full":
        record["full_prior_pass"] = measure_full_prior(trainer)
    threads = default_threads(trainer.device) if plain_threads is None else tuple(plain_threads)
    if threads:
        record["plain_loop"] = compare_with_plain_loop(trainer, steps, warmup, threads)
    record["load_average_1min_at_end"] = _load_average()
    note = busy_note(env.get("load_average_1min"), env["nproc"]) if trainer.device.type == "cpu" else None
    if note:
        record["note"] = note
    return record


def format_report(record: dict[str, Any]) -> str:
    """The human-readable summary ``python -m klteach bench`` prints."""
    mib = 2**20
    model, cfg = record["model"], record["config"]
    lines = [
        f"bench: {record['dataset']}, {model['backbone']} ({model['parameters'] / 1e6:.2f} M parameters), "
        f"batch {cfg['batch_size']} images x {VIEWS_PER_IMAGE} views, normaliser {cfg['normaliser']}, "
        f"compile {'on' if model['compiled'] else 'off'}",
        f"device: {record['device_name']} [{record['device']}], torch {record['torch']}, "
        f"{record['torch_threads']} thread(s), load average {record.get('load_average_1min')}",
        f"  images/s       {record['images_per_s']:10.1f}   ({record['views_per_s']:.1f} views/s; "
        f"{record['timed_steps']} timed steps after {record['warmup_steps']} warm-up)",
        f"  s/step         {record['seconds_per_step']:10.4f}",
        f"  s/epoch        {record['seconds_per_epoch']:10.2f}   ({record['train_images']} training images)",
        f"  s/CIFAR epoch  {record['seconds_per_cifar10_epoch']:10.2f}   ({CIFAR10_TRAIN_IMAGES} images)",
        f"  peak memory    {record['peak_memory_bytes'] / mib:10.1f} MiB ({record['peak_memory_method']})",
    ]
    if "full_prior_pass" in record:
        prior = record["full_prior_pass"]
        lines.append(f"  prior pass     {prior['seconds_per_pass']:10.2f} s   (eq. 15 over "
                     f"{prior['images']} images, {prior['images_per_s']:.0f} images/s)")
    line = (f"  FLOP/s         {record['achieved_tflops']:10.3f} T "
            f"({record['flops_per_image'] / 1e9:.3f} GFLOP per image")
    if record.get("mfu") is not None:
        line += f"; MFU {record['mfu']:.1%} of the datasheet's {record['datasheet_bf16_tflops']:.0f} T"
    if "matmul_bf16_tflops" in record:
        line += f"; {record['mfu_vs_matmul']:.1%} of a bf16 matmul's {record['matmul_bf16_tflops']:.0f} T"
    lines.append(line + ")")
    for row in record.get("plain_loop", []):
        lines.append(f"  vs plain loop  {row['ratio']:10.3f}   (library {row['library_images_per_s']:.1f} / plain "
                     f"{row['plain_images_per_s']:.1f} images/s with {row['threads']} thread(s); by CPU time "
                     f"{row['cpu_ratio']:.3f})")
    if "note" in record:
        lines.append(f"  note: {record['note']}")
    return "\n".join(lines)


def run_benchmark(config: TrainConfig, *, bench_steps: int | None = None, warmup: int | None = None,
                  json_path: str | os.PathLike | None = None,
                  plain_threads: Sequence[int] | None = None) -> dict[str, Any]:
    """``python -m klteach bench``: time ``config``'s training step, print, write JSON.

    ``bench_steps``/``warmup`` default per device (:data:`STEPS_DEFAULT`). Before the
    first step it prints an estimate of the whole run (on a CPU), after the warm-up a
    measured one. ``plain_threads``: thread counts for the comparison with
    :class:`PlainLoop` (``None``: :func:`default_threads`; ``()``: skip it)."""
    kind = resolve_device(config.device).type
    default_steps, default_warmup = STEPS_DEFAULT["cuda" if kind == "cuda" else "cpu"]
    steps = default_steps if bench_steps is None else bench_steps
    warmup = default_warmup if warmup is None else warmup
    _check_count(steps, "--bench-steps", 1)
    _check_count(warmup, "--warmup", 0)
    threads = default_threads(torch.device(kind)) if plain_threads is None else tuple(plain_threads)
    library_steps = warmup + steps + 1 + len(threads) * (warmup + steps)     # + 1 counts FLOPs
    config = dataclasses.replace(config, steps=library_steps, eval_every=0)   # the LR schedule spans the run
    print(f"bench: loading {config.dataset} and building the model on {kind} ...", flush=True)
    trainer = Trainer(config)
    total_steps = library_steps + len(threads) * (warmup + steps)            # + the plain loop's
    if kind == "cpu":
        guess = estimate_step_seconds(trainer)
        print(f"bench: estimate {guess:.2f} s/step, about {guess * total_steps:.0f} s for {total_steps} steps "
              f"({warmup} warm-up + {steps} timed, then the plain loop with {list(threads) or 'no'} thread(s))",
              flush=True)
    record = benchmark(trainer, steps, warmup, threads)
    print(format_report(record))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        print(f"wrote {path}")
    return record


__all__ = ["run_benchmark", "default_config", "benchmark", "measure_throughput", "measure_full_prior",
           "compare_with_plain_loop", "PlainLoop", "model_flops_utilisation", "measure_matmul_tflops",
           "datasheet_tflops", "estimate_step_seconds", "default_threads", "forward_flops_per_image",
           "step_flops_per_image", "git_commit", "timed_steps", "synchronize", "reset_peak_memory", "peak_memory_bytes",
           "current_memory_bytes", "device_name", "environment", "format_report", "busy_note",
           "CIFAR10_TRAIN_IMAGES", "VIEWS_PER_IMAGE"]
