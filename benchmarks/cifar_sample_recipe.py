"""The CPU recipe on the shipped CIFAR-10 sample: every normaliser, several seeds, recorded.

Chapter 5's CPU path and the dashboard's CIFAR replays read what this writes. Each run (one
normaliser, one seed) trains :data:`RECIPE` in its own process with one torch thread, evaluates
every ``eval_every`` steps with :meth:`klteach.train.Trainer.evaluate` (collapse diagnostics,
kNN accuracy on a fixed random bank of training images, NMI) and keeps its folder
``config.json`` + ``metrics.jsonl`` (the checkpoint is deleted: a recording, not a resumable
run). The summary ``results/cifar_sample_recipe.json`` is rewritten after every run with the
hardware, the machine's load average before and after, and each run's CPU and wall time, so a
stopped recording keeps what it finished; it also holds every run's evaluations (without the
per-cluster sizes), which chapter 5 plots. The seed-0 run of each normaliser is copied to
``results/replays/cifar10-sample-<normaliser>/`` for ``TrainingDashboard.replay``, its numbers
rounded as ``record_replays.py`` rounds them.

One command re-records everything (``--jobs 2`` runs two processes side by side, one core
each; a run takes about five CPU minutes):

    python benchmarks/cifar_sample_recipe.py

``--steps``, ``--eval-size``, ``--seeds``, ``--normalisers`` and ``--runs-dir`` shrink or redirect it (the test
of the shortened recipe uses them).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from klteach.bench import cpu_model, git_commit, usable_cores
from klteach.checkpoint import read_metrics, write_json_atomic
from klteach.config import TrainConfig
from klteach.normalisers import NORMALISERS
from klteach.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_replays import rounded, shrink  # noqa: E402  (a sibling script: one rounding for all replays)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULT = HERE / "results" / "cifar_sample_recipe.json"
RUNS = REPO / "runs" / "cifar_sample_recipe"
REPLAYS = HERE / "results" / "replays"
RECIPE = TrainConfig(dataset="cifar10-sample", arch="cnn", width=16, clusters=10, batch_size=64, lr=1e-3,
                     momentum=0.99, steps=500, eval_every=100, eval_size=2000, device="cpu")
"""The recipe (see benchmarks/README.md, "A CPU recipe that learns", for why each setting)."""
SEEDS = (0, 1, 2)


def train_one(normaliser: str, seed: int, steps: int, eval_every: int, folder: Path,
              eval_size: int = RECIPE.eval_size) -> dict[str, Any]:
    """Train one run in this process; write its folder; return its times (the child's work)."""
    torch.set_num_threads(1)
    config = dataclasses.replace(RECIPE, normaliser=normaliser, seed=seed, steps=steps, eval_every=eval_every,
                                 eval_size=eval_size, out=str(folder))
    wall, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(config)
    trainer.history.append(trainer.evaluate())   # step 0: the untrained network, the yardstick of kNN
    trainer.run()
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return {"cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
            "final": {k: v for k, v in trainer.history[-1].items() if not isinstance(v, list)}}


def run_in_child(normaliser: str, seed: int, steps: int, eval_every: int, runs_dir: Path,
                 eval_size: int = RECIPE.eval_size) -> dict[str, Any]:
    """One run in a fresh process with one thread, so runs side by side do not share a thread pool."""
    folder = runs_dir / f"{normaliser}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    load_before = round(os.getloadavg()[0], 2)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    done = subprocess.run([sys.executable, __file__, "--child", normaliser, str(seed), str(steps), str(eval_every),
                           str(folder), "--eval-size", str(eval_size)],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise RuntimeError(f"{normaliser} seed {seed} failed:\n{done.stderr[-2000:]}")
    times = json.loads(done.stdout.strip().splitlines()[-1])
    evaluations, _ = read_metrics(folder)
    return {"normaliser": normaliser, "seed": seed, "folder": str(folder.relative_to(REPO))
            if folder.is_relative_to(REPO) else str(folder), "started": started,
            "load_average_1min_before": load_before, "load_average_1min_after": round(os.getloadavg()[0], 2),
            **times, "evaluations": [rounded({k: v for k, v in row.items() if not isinstance(v, list)})
                                     for row in evaluations]}


def hardware() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": usable_cores(), "torch_threads_per_run": 1, "torch": torch.__version__,
            "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normalisers", nargs="+", default=list(NORMALISERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--eval-every", type=int, default=RECIPE.eval_every)
    parser.add_argument("--eval-size", type=int, default=RECIPE.eval_size,
                        help="evaluation images (and kNN bank size)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--runs-dir", type=Path, default=RUNS)
    parser.add_argument("--replays", type=Path, default=REPLAYS,
                        help="where the seed-0 runs are copied for the replays ('' to skip)")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --out (those asked for again are replaced)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        normaliser, seed, steps, eval_every, folder = args.child
        print(json.dumps(train_one(normaliser, int(seed), int(steps), int(eval_every), Path(folder), args.eval_size)))
        return
    unknown = sorted(set(args.normalisers) - set(NORMALISERS))
    if unknown:
        parser.error(f"unknown normaliser(s) {', '.join(unknown)}; allowed: {', '.join(NORMALISERS)}")
    for name in ("steps", "jobs", "eval_every", "eval_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    record: dict[str, Any] = {
        "benchmark": "cifar_sample_recipe", "complete": False,
        "recipe": {k: v for k, v in dataclasses.asdict(RECIPE).items() if k not in ("normaliser", "seed", "out")}
        | {"steps": args.steps, "eval_every": args.eval_every, "eval_size": args.eval_size},
        "hardware": hardware(), "jobs": args.jobs, "git_commit": git_commit(),
        "note": ("the machine may be shared with other jobs: compare CPU seconds, and read wall seconds with "
                 "the load averages beside them"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "runs": []}
    jobs = [(n, s) for s in args.seeds for n in args.normalisers]
    if args.append and args.out.exists():
        record["runs"] = [run for run in json.loads(args.out.read_text())["runs"]
                          if (run["normaliser"], run["seed"]) not in jobs]
    print(f"{len(jobs)} runs of {args.steps} steps, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_in_child, n, s, args.steps, args.eval_every, args.runs_dir, args.eval_size)
                   for n, s in jobs]
        for future in futures:
            run = future.result()
            record["runs"].append(run)
            write_json_atomic(args.out, record)
            final = run["final"]
            print(f"{run['normaliser']:<14} seed {run['seed']}  kNN {final.get('knn_accuracy', float('nan')):.3f}  "
                  f"eff. clusters {final['effective_clusters']:5.2f}  {run['cpu_seconds']:.0f} s CPU, "
                  f"{run['wall_seconds']:.0f} s wall (load {run['load_average_1min_before']})", flush=True)
    record["complete"] = True
    write_json_atomic(args.out, record)
    if str(args.replays) and 0 in args.seeds:
        for normaliser in args.normalisers:
            source = args.runs_dir / f"{normaliser}-seed0"
            target = args.replays / f"cifar10-sample-{normaliser}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            config = json.loads((source / "config.json").read_text())
            write_json_atomic(target / "config.json", {**config, "out": None})   # no path of this machine
            shutil.copy2(source / "metrics.jsonl", target / "metrics.jsonl")
            shrink(target)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
