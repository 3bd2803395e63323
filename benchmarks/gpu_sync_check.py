"""Find host-device synchronisations inside ``Trainer.train_step`` on a GPU.

A sync (``.item()``, ``float(tensor)``, a copy from pageable host memory, ``torch.linalg.inv``'s
error check, ...) makes the host wait for the GPU, so the GPU then idles while the host queues
the next kernels. This script takes a few warm-up steps, then runs ``--steps`` steps under
``torch.cuda.set_sync_debug_mode("warn")`` and lists where each synchronising call came from
(file:line of the innermost frame in klteach). It needs CUDA.

    python benchmarks/gpu_sync_check.py --dataset /tmp/cifar10-jpg --normalisers inverse-prior centering
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
import warnings
from pathlib import Path

import torch

from klteach.bench import environment
from klteach.data import load_dataset
from klteach.train import TrainConfig, Trainer


def klteach_frame(stack: list[traceback.FrameSummary]) -> str:
    """``file:line function`` of the innermost frame inside the klteach package."""
    for frame in reversed(stack):
        if Path(frame.filename).parent.name == "klteach":   # a module of the package itself
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "outside klteach"


def syncs_in_steps(trainer: Trainer, steps: int) -> collections.Counter:
    """Count synchronising calls per klteach source line over ``steps`` steps."""
    sites: collections.Counter = collections.Counter()
    original = warnings.showwarning

    def catch(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            sites[klteach_frame(traceback.extract_stack())] += 1
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = catch
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for _ in range(steps):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
    return sites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--normalisers", nargs="+", default=["inverse-prior", "centering"])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_sync_check needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    dataset = load_dataset(args.dataset, device=device, data_dir=args.data_dir)
    report = {"benchmark": "gpu_sync_check", **environment(device), "steps": args.steps, "results": {}}
    for normaliser in args.normalisers:
        trainer = Trainer(TrainConfig(dataset=args.dataset, normaliser=normaliser, arch="resnet18",
                                      batch_size=args.batch_size, device="cuda", eval_every=0,
                                      compile=args.compile, steps=100), data=dataset)
        for _ in range(3):
            trainer.train_step()
        torch.cuda.synchronize()
        sites = syncs_in_steps(trainer, args.steps)
        report["results"][normaliser] = dict(sites)
        total = sum(sites.values())
        print(f"{normaliser}: {total} synchronising calls in {args.steps} steps "
              f"({total / args.steps:.1f} per step)")
        for site, count in sites.most_common():
            print(f"  {count:4d}  {site}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
