"""Every normaliser on the shipped CIFAR-10 sample with the SmallCNN, on the CPU: recorded curves.

Chapter 5 shows these when no full-scale GPU run has been recorded. For each normaliser the
script trains the same model (same seed, same data order) for ``--steps`` steps and evaluates
every ``--eval-every`` steps (and at step 0) with :meth:`klteach.train.Trainer.evaluate`:
effective clusters, clusters used, mean entropy, KL(teacher‖student), kNN accuracy, NMI, ARI.
Training time is measured apart from evaluation time. The JSON is rewritten (atomically) after
each normaliser, with ``"complete": false`` until the last one is done.

    python benchmarks/cifar_sample_cpu.py [--steps 300] [--eval-every 50] [--threads 1]

The same script records full-scale curves on a GPU (chapter 5 plots any recording whose
``hardware.gpu`` is set in place of the CPU ones)::

    python benchmarks/cifar_sample_cpu.py --dataset cifar10 --arch resnet18 --device cuda \
        --batch-size 512 --steps 20000 --eval-every 1000 --eval-size 10000 \
        --out benchmarks/results/cifar10_gpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from klteach.bench import cpu_model, git_commit
from klteach.data import Dataset, load_dataset
from klteach.normalisers import NORMALISERS
from klteach.train import TrainConfig, Trainer

RESULT = Path(__file__).resolve().parent / "results" / "cifar_sample_cpu.json"


def hardware(device: str, threads: int) -> dict:
    """Where the numbers came from."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {"device": device, "gpu": gpu, "cpu": cpu_model(), "nproc": os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def shuffled(dataset: Dataset, seed: int) -> Dataset:
    """The dataset with its training set in a random order. The sample is stored class by class,
    and :meth:`Trainer.evaluate` takes the first ``eval_size`` training images as the kNN bank:
    unshuffled, that bank would hold only the first classes."""
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed)).to(dataset.train.device)
    return dataclasses.replace(dataset, train=dataset.train[order],
                               train_labels=dataset.train_labels[order])


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "w") as file:
        json.dump(obj, file, indent=1)
        file.write("\n")
    os.replace(tmp, path)


def finite_or_none(evaluation: dict) -> dict:
    """The evaluation with NaN/inf (e.g. the loss before the first step) as ``None``: strict JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in evaluation.items()}


def train_one(config: TrainConfig, dataset, eval_every: int) -> dict:
    """Train one configuration; return its evaluations and its measured training speed."""
    trainer = Trainer(config, data=dataset)
    evaluations = [finite_or_none(trainer.evaluate())]
    train_seconds = eval_seconds = 0.0
    while trainer.step_count < config.steps:
        start = time.perf_counter()
        for _ in range(min(eval_every, config.steps - trainer.step_count)):
            trainer.step()
        train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        evaluations.append(finite_or_none(trainer.evaluate()))
        eval_seconds += time.perf_counter() - start
        last = evaluations[-1]
        print(f"  {config.normaliser:<14} step {last['step']:>4}  eff {last['effective_clusters']:5.2f}  "
              f"kNN {last['knn_accuracy']:.3f}  NMI {last['nmi']:.3f}  ({train_seconds:.0f} s training)",
              flush=True)
    images = config.steps * config.batch_size
    return {"normaliser": config.normaliser, "evaluations": evaluations,
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
            "train_images_per_s": round(images / train_seconds, 1) if train_seconds else None,
            "steps_per_s": round(config.steps / train_seconds, 3) if train_seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10-sample", help="cifar10-sample, cifar10 or an image folder")
    parser.add_argument("--arch", default="cnn", help="cnn (SmallCNN) or resnet18")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--normalisers", nargs="+", default=list(NORMALISERS))
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-size", type=int, default=2000, help="training images in the kNN bank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared, busy machine)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.eval_every < 1:
        raise SystemExit(f"--eval-every must be >= 1, got {args.eval_every}")

    torch.set_num_threads(args.threads)
    dataset = shuffled(load_dataset(args.dataset, device=args.device), args.seed)
    base = TrainConfig(dataset=args.dataset, arch=args.arch, clusters=args.clusters, steps=args.steps,
                       batch_size=args.batch_size, eval_every=0, eval_size=args.eval_size,
                       seed=args.seed, device=args.device)
    result = {
        "benchmark": "cifar_sample_cpu",
        "what": (f"{args.arch} student/EMA teacher on {args.dataset} "
                 f"({len(dataset.train)} train, {len(dataset.test)} test images), K={args.clusters}, "
                 f"{args.steps} steps of batch {args.batch_size}, every normaliser from the same "
                 f"seed; evaluated on the whole test sample every {args.eval_every} steps, kNN bank "
                 f"{args.eval_size} training images of all classes"),
        "complete": False,
        "config": {k: v for k, v in dataclasses.asdict(base).items() if k != "normaliser"},
        "hardware": hardware(args.device, args.threads),
        "git_commit": git_commit(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": [],
    }
    for name in args.normalisers:
        print(f"{name}: {args.steps} steps", flush=True)
        result["runs"].append(train_one(dataclasses.replace(base, normaliser=name), dataset,
                                        args.eval_every))
        write_json_atomic(args.out, result)
    result["complete"] = True
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if result["load_average_1min_at_start"] > (os.cpu_count() or 1):
        result["note"] = ("the machine was shared with other jobs (1-min load above its core count): "
                          "speeds are pessimistic for an idle machine of this kind")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
