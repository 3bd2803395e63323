"""Peak memory (and throughput) of the training step for each batch size.

On a GPU each batch size runs in this process: the dataset is loaded once, each trainer is
freed before the next, and ``torch.cuda.max_memory_allocated`` is reset before the timed steps
(so the figure includes the uint8 dataset resident on the GPU, the model, the optimiser state
and the step's activations). A batch that does not fit is recorded as out of memory.

On a CPU each batch size runs in a fresh process of this script, so memory the
allocator kept from a previous batch size cannot hide or inflate a figure; the figure is the
peak resident set size during the timed steps (dataset, Python and torch included), and the
resident set before them is recorded beside it.

    python benchmarks/memory_vs_batch.py                                   # CPU: cifar10-sample SmallCNN
    python benchmarks/memory_vs_batch.py --dataset /data/cifar10-jpg --arch resnet18 \\
        --batch-sizes 128 256 512 1024 2048 --device cuda

Writes ``benchmarks/results/memory_vs_batch_<device>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from klteach.bench import busy_note, environment, measure_throughput
from klteach.data import load_dataset
from klteach.train import TrainConfig, Trainer, resolve_device, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
KEPT = ("images_per_s", "seconds_per_step", "seconds_per_cifar10_epoch", "peak_memory_bytes",
        "memory_before_timed_steps_bytes", "peak_memory_method")


def measure_on_gpu(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every batch size in this process, the dataset loaded once."""
    dataset = load_dataset(args.dataset, device=device, data_dir=args.data_dir)
    rows = []
    for batch in args.batch_sizes:
        row: dict = {"batch_size": batch}
        trainer = None
        try:
            config = TrainConfig(dataset=args.dataset, arch=args.arch, batch_size=batch, device=str(device),
                                 normaliser=args.normaliser, eval_every=0, compile=args.compile,
                                 steps=args.warmup + args.steps)
            trainer = Trainer(config, data=dataset)
            result = measure_throughput(trainer, args.steps, args.warmup)
            row.update({k: result[k] for k in KEPT})
        except torch.cuda.OutOfMemoryError as error:
            row["error"] = f"out of memory: {str(error).splitlines()[0]}"
        del trainer
        gc.collect()
        torch.cuda.empty_cache()
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def measure_one_batch_size(args: argparse.Namespace) -> None:
    """``--one-batch B``: time batch size B in this (fresh) process and write the figures to ``--out``."""
    config = TrainConfig(dataset=args.dataset, arch=args.arch, batch_size=args.one_batch, device="cpu",
                         normaliser=args.normaliser, eval_every=0, compile=args.compile,
                         steps=args.warmup + args.steps, data_dir=args.data_dir)
    write_json_atomic(args.out, measure_throughput(Trainer(config), args.steps, args.warmup))


def measure_on_cpu(args: argparse.Namespace) -> list[dict]:
    """Every batch size in a fresh process (this script with ``--one-batch``)."""
    rows = []
    for batch in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            command = [sys.executable, __file__, "--one-batch", str(batch), "--dataset", args.dataset,
                       "--arch", args.arch, "--normaliser", args.normaliser,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out)]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            if args.compile:
                command.append("--compile")
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            row: dict = {"batch_size": batch}
            if done.returncode == 0:
                result = json.loads(out.read_text())
                row.update({k: result[k] for k in KEPT})
            else:
                row["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _format(row: dict) -> str:
    if "error" in row:
        return f"batch {row['batch_size']:>5}: {row['error']}"
    return (f"batch {row['batch_size']:>5}: peak {row['peak_memory_bytes'] / 2**20:9.1f} MiB, "
            f"{row['images_per_s']:9.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10-sample")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--arch", default=None, help="default: cnn on a CPU, resnet18 on a GPU")
    parser.add_argument("--normaliser", default="inverse-prior")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 32 64 128 256 on a CPU, 128 256 512 1024 2048 on a GPU")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one-batch", type=int, default=None, help=argparse.SUPPRESS)  # a CPU child process
    args = parser.parse_args()
    if args.one_batch is not None:
        measure_one_batch_size(args)
        return
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.arch = args.arch or ("resnet18" if on_gpu else "cnn")
    args.batch_sizes = args.batch_sizes or ([128, 256, 512, 1024, 2048] if on_gpu else [32, 64, 128, 256])
    env = environment(device)
    rows = measure_on_gpu(args, device) if on_gpu else measure_on_cpu(args)
    record = {"benchmark": "memory_vs_batch", **env, "dataset": args.dataset, "arch": args.arch,
              "normaliser": args.normaliser, "compile": args.compile, "timed_steps": args.steps,
              "warmup_steps": args.warmup, "rows": rows}
    note = busy_note(env.get("load_average_1min"), env["nproc"]) if not on_gpu else None
    if note:
        record["note"] = note
    out = args.out or RESULTS / f"memory_vs_batch_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
