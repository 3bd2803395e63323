"""Batched augmentation vs the same transforms applied one image at a time, on the CPU.

Both paths use identical random parameters (drawn once) and the same code
(``ImageAugment.apply``); the loop only calls it per image. Images: 512 real CIFAR-10
images from the shipped sample. Writes ``benchmarks/results/augment_cpu.json``.

    python benchmarks/augment_cpu.py [--threads 2] [--batch 512] [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from klteach.augment import CIFAR_AUGMENT, augment_per_image_reference
from klteach.bench import cpu_model
from klteach.data import load_dataset

RESULT = Path(__file__).resolve().parent / "results" / "augment_cpu.json"


def interleaved_seconds(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each run, called in turn ``repeats`` times after one warm-up call each.

    Interleaving makes both runs see the same background load (this sandbox is shared).
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    images = load_dataset("cifar10-sample").train[: args.batch]
    augment = CIFAR_AUGMENT
    params = augment.sample_params(augment.output_shape(images), images.device,
                                   torch.Generator().manual_seed(0))
    max_difference = float((augment.apply(images, params)
                            - augment_per_image_reference(augment, images, params)).abs().max())
    n = len(images)
    load_before = os.getloadavg()[0]
    by_threads = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = interleaved_seconds({
            "batched": lambda: augment.apply(images, params),
            "per_image_loop": lambda: augment_per_image_reference(augment, images, params),
        }, args.repeats)
        batched, looped = statistics.median(times["batched"]), statistics.median(times["per_image_loop"])
        by_threads[str(threads)] = {
            "batched_images_per_s": round(n / batched, 1),
            "per_image_loop_images_per_s": round(n / looped, 1),
            "speedup_batched_over_loop": round(looped / batched, 2),
            "batched_best_images_per_s": round(n / min(times["batched"]), 1),
            "per_image_loop_best_images_per_s": round(n / min(times["per_image_loop"]), 1),
        }
    result = {
        "benchmark": "augment_cpu",
        "what": "CIFAR preset (crop+flip+jitter+grayscale) on 512 real 32x32 CIFAR-10 images, "
                "identical parameters for both paths; median of interleaved repeats after a warm-up",
        "batch": n,
        "image_shape": list(images.shape[1:]),
        "by_torch_threads": by_threads,
        "max_abs_difference_batched_vs_loop": max_difference,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": ("the machine was busy with other jobs (1-min load above its core count): timings "
                 "are pessimistic, multi-threaded ones most (each parallel op waits for a "
                 "descheduled thread)") if load_before > (os.cpu_count() or 1) else "machine idle",
        "torch": torch.__version__,
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".part")
    with os.fdopen(fd, "w") as file:
        json.dump(result, file, indent=2)
        file.write("\n")
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
