"""Throughput and memory of the training step: ``python -m klteach bench``.

One *image* per batch entry: each image becomes two augmented views, the teacher embeds both
and the student embeds both and back-propagates (so a step of batch ``B`` runs the networks on
``2B`` views). :func:`run_benchmark` builds a :class:`~klteach.train.Trainer` for a
:class:`~klteach.config.TrainConfig` (by default :func:`default_config`: ResNet-18 at batch 512
on a GPU; on a CPU the small CNN on the shipped CIFAR-10 sample, about a minute in all), takes
``warmup`` steps (CUDA kernels chosen, ``torch.compile`` done), then times ``bench_steps`` steps
between two device synchronisations and reports

* images/s (and views/s = 2 x images/s), seconds per epoch of this dataset and of CIFAR-10,
* peak memory during the timed steps (:mod:`klteach.bench_env`),
* FLOPs per image and, on a GPU, the model FLOP utilisation (:mod:`klteach.bench_flops`),
* the library's images/s against the same step written as a minimal PyTorch loop, with 1 and 2
  CPU threads: what the trainer's bookkeeping costs (:mod:`klteach.bench_plain`),

and writes them as JSON with the device name, torch version, date, load average and config.
The timing itself is :mod:`klteach.bench_measure`; every name of those modules that the
benchmark scripts use stays importable from here.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import data as data_lib
from .bench_env import (
    busy_note,
    cpu_model,
    current_memory_bytes,
    device_name,
    environment,
    git_commit,
    load_average,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
    usable_cores,
)
from .bench_flops import (
    datasheet_tflops,
    forward_flops_per_image,
    measure_matmul_tflops,
    model_flops_utilisation,
    step_flops_per_image,
)
from .bench_measure import (
    CIFAR10_TRAIN_IMAGES,
    VIEWS_PER_IMAGE,
    check_count,
    measure_full_prior,
    measure_throughput,
    time_steps,
    timed_steps,
    torch_threads,
)
from .bench_plain import PlainLoop, compare_with_plain_loop
from .checkpoint import write_json_atomic
from .config import Device, TrainConfig, resolve_device
from .models import count_parameters
from .train import Trainer

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
    """A quick guess of one step's seconds from a forward pass of ``images`` images (CPU). The
    first pass is not timed: it pays once for memory and kernel set-up (it made the guess 1.5 to
    10 times too long)."""
    x = data_lib.to_float(trainer.dataset.train[:images]) if trainer.dataset.kind == "images" \
        else trainer.dataset.train[:images].float()
    model = trainer.student
    with torch.no_grad():
        model.eval()
        model.embed(x)
        start = time.perf_counter()
        model.embed(x)
        seconds = time.perf_counter() - start
        model.train()
    return seconds / len(x) * FORWARDS_PER_IMAGE * trainer.config.batch_size


# ---------------------------------------------------------------- the command

def describe_model(trainer: Trainer) -> dict[str, Any]:
    """The backbone actually built (``arch="auto"`` resolved), its size, precision and memory format."""
    return {"backbone": type(trainer.student.backbone).__name__,
            "parameters": count_parameters(trainer.student),
            "channels_last": trainer.channels_last,
            "bf16_autocast": trainer.autocast_dtype == torch.bfloat16,
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
    record["load_average_1min_at_end"] = load_average()
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
    check_count(steps, "--bench-steps", 1)
    check_count(warmup, "--warmup", 0)
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


__all__ = ["run_benchmark", "default_config", "benchmark", "format_report", "describe_model",
           "estimate_step_seconds", "default_threads", "STEPS_DEFAULT",
           # re-exported for benchmarks/*.py, which import them from klteach.bench
           "measure_throughput", "measure_full_prior", "timed_steps", "time_steps", "torch_threads", "check_count",
           "compare_with_plain_loop", "PlainLoop", "model_flops_utilisation", "measure_matmul_tflops",
           "datasheet_tflops", "forward_flops_per_image", "step_flops_per_image", "git_commit", "synchronize",
           "reset_peak_memory", "peak_memory_bytes", "current_memory_bytes", "device_name", "environment",
           "busy_note", "cpu_model", "usable_cores", "load_average", "CIFAR10_TRAIN_IMAGES", "VIEWS_PER_IMAGE"]
