"""Timing a training step: warm-up, then timed steps between two device synchronisations.

A step of batch ``B`` takes ``B`` *images*; each becomes two augmented views, so the networks
run on ``2B`` views (:data:`VIEWS_PER_IMAGE`). Timings report wall-clock seconds (what a user
waits) and, where the machine is shared, process CPU seconds beside them.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .bench_env import current_memory_bytes, peak_memory_bytes, reset_peak_memory, synchronize
from .train import Trainer

CIFAR10_TRAIN_IMAGES = 50_000
"""Images in one CIFAR-10 training epoch, the unit the issue's targets use."""
VIEWS_PER_IMAGE = 2
"""Augmented views per image in one step (see :func:`klteach.loss.cross_view_loss`)."""


def check_count(value: Any, name: str, minimum: int) -> None:
    """Refuse a step or repeat count that is not an integer ``>= minimum``, naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def time_steps(step: Callable[[], Any], steps: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``steps`` calls of ``step``, synchronised at both ends."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def timed_steps(trainer: Trainer, steps: int) -> float:
    """Wall-clock seconds for ``steps`` training steps (``train_step``: the loss stays on the
    device, as in ``Trainer.run``)."""
    return time_steps(trainer.train_step, steps, trainer.device)[0]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_throughput(trainer: Trainer, steps: int, warmup: int) -> dict[str, Any]:
    """Take ``warmup`` untimed steps, then time ``steps`` steps: images/s, s/epoch, peak memory."""
    check_count(steps, "bench_steps", 1)
    check_count(warmup, "warmup", 0)
    for _ in range(warmup):
        trainer.train_step()
    synchronize(trainer.device)
    memory_before = current_memory_bytes(trainer.device)
    memory_method = reset_peak_memory(trainer.device)
    seconds = timed_steps(trainer, steps)
    images_per_s = trainer.config.batch_size * steps / seconds
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
    check_count(repeats, "repeats", 1)
    if trainer.device.type == "cuda":
        trainer.estimate_full_prior()
    times = [time_steps(trainer.estimate_full_prior, 1, trainer.device)[0] for _ in range(repeats)]
    seconds = statistics.median(times)
    images = int(trainer.dataset.train.shape[0])
    return {"images": images, "seconds_per_pass": seconds, "images_per_s": images / seconds,
            "repeats": repeats, "all_seconds": times}


__all__ = ["check_count", "time_steps", "timed_steps", "torch_threads", "measure_throughput",
           "measure_full_prior", "CIFAR10_TRAIN_IMAGES", "VIEWS_PER_IMAGE"]
