"""Throughput and memory of the training step: ``python -m klteach bench``.

One *image* per batch entry: each image becomes two augmented views, the teacher embeds both
and the student embeds both and back-propagates (so a step of batch ``B`` runs the networks on
``2B`` views). The benchmark builds the :class:`~klteach.train.Trainer` from the same flags as
``train``, takes ``--warmup`` steps (CUDA kernels chosen, ``torch.compile`` done), then times
``--bench-steps`` steps between two device synchronisations and reports

* images/s (and views/s = 2 x images/s),
* seconds per epoch of this dataset and of the 50,000-image CIFAR-10 training set,
* peak memory during the timed steps: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
  peak resident set size (``VmHWM``, reset before timing where Linux allows, else the process
  lifetime peak from ``resource.getrusage``),

and writes them as JSON (``--json PATH``) with the device name, torch version, date and config.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import write_json_atomic
from .config import TrainConfig, with_changes
from .models import count_parameters
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
    """Wall-clock seconds for ``steps`` training steps, synchronised at both ends."""
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    synchronize(trainer.device)
    return time.perf_counter() - start


def measure_throughput(trainer: Trainer, steps: int, warmup: int) -> dict[str, Any]:
    """Take ``warmup`` untimed steps, then time ``steps`` steps: images/s, s/epoch, peak memory."""
    _check_count(steps, "bench_steps", 1)
    _check_count(warmup, "warmup", 0)
    for _ in range(warmup):
        trainer.step()
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


def forward_flops_per_image(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int = 4) -> int:
    """FLOPs of one embedding (backbone + head) of one input, counted by torch.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
    convolutions; a multiply-add counts as 2 FLOPs) on a float32 CPU copy of ``model``.
    """
    import copy

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
        trainer.step()
    return counter.get_total_flops() // trainer.config.batch_size


def _check_count(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------- the command

def describe_model(trainer: Trainer) -> dict[str, Any]:
    """The backbone actually built (``arch="auto"`` resolved) and its size."""
    return {"backbone": type(trainer.student.backbone).__name__,
            "parameters": count_parameters(trainer.student),
            "channels_last": trainer.device.type == "cuda" and trainer.dataset.kind == "images",
            "bf16_autocast": trainer.device.type == "cuda",
            "compiled": bool(trainer.config.compile)}


def benchmark(trainer: Trainer, steps: int, warmup: int) -> dict[str, Any]:
    """The full record for one trainer: environment, config, model, throughput (+ prior pass)."""
    env = environment(trainer.device)
    record: dict[str, Any] = {"benchmark": "train_step", **env,
                              "dataset": trainer.dataset.name, "config": trainer.config.to_dict(),
                              "model": describe_model(trainer),
                              **measure_throughput(trainer, steps, warmup)}
    cfg = trainer.config
    if cfg.normaliser == "inverse-prior" and cfg.prior == "full":
        record["full_prior_pass"] = measure_full_prior(trainer)
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
        f"device: {record['device_name']} [{record['device']}], torch {record['torch']}",
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
    if "note" in record:
        lines.append(f"  note: {record['note']}")
    return "\n".join(lines)


def default_config(device: str = "auto") -> TrainConfig:
    """The configuration ``python -m klteach bench`` times unless flags change it."""
    return with_changes(TrainConfig(), dict(dataset="cifar10", arch="resnet18", batch_size=512, device=device,
                                            eval_every=0))


def run_benchmark(config: TrainConfig, *, bench_steps: int | None = None, warmup: int | None = None,
                  json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``python -m klteach bench``: time ``config``'s training step, print, write JSON."""
    bench_steps = 50 if bench_steps is None else bench_steps
    warmup = 10 if warmup is None else warmup
    _check_count(bench_steps, "--bench-steps", 1)
    _check_count(warmup, "--warmup", 0)
    config = dataclasses.replace(config, steps=warmup + bench_steps, eval_every=0)  # the LR schedule spans the run
    trainer = Trainer(config)
    record = benchmark(trainer, bench_steps, warmup)
    print(format_report(record))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        print(f"wrote {path}")
    return record


__all__ = ["run_benchmark", "default_config", "benchmark", "measure_throughput", "measure_full_prior",
           "forward_flops_per_image", "step_flops_per_image", "timed_steps", "synchronize", "reset_peak_memory",
           "peak_memory_bytes", "current_memory_bytes", "device_name", "environment",
           "format_report", "busy_note", "CIFAR10_TRAIN_IMAGES", "VIEWS_PER_IMAGE"]
