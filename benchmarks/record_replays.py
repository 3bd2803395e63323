"""Record the digits runs the dashboard replays in a lecture (``TrainingDashboard.replay(name)``).

Each is a real run of the dashboard's digits settings (K = 20, D = 64, batch 128) evaluated every
10 steps, so a replay has a frame every 10 steps:

* ``digits-<normaliser>``: one run per normaliser, 600 steps;
* ``digits-collapse-rescue``: ``none`` from the start (DINO's one-cluster collapse within a few
  dozen steps), switched to ``inverse-prior`` at step 150, then 450 steps more (the rescue).

Written to ``benchmarks/results/replays/<name>/`` as the run wrote them (``config.json`` and
``metrics.jsonl``, whose switch rows mark the change), keeping only 4 significant digits of each
number so the six recordings stay small; the checkpoint is dropped.

    python benchmarks/record_replays.py [--only NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from klteach.live import DATASET_DEFAULTS  # noqa: E402
from klteach.normalisers import NORMALISERS  # noqa: E402
from klteach.train import Trainer  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "replays"
SETTINGS = dict(DATASET_DEFAULTS["digits"], dataset="digits", eval_every=10, seed=0)
STEPS = 600
RESCUE_AT = 150


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with every float kept to ``digits`` significant digits (lists and dicts walked)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value


def shrink(folder: Path) -> None:
    """Round the numbers of ``metrics.jsonl`` in place and drop the checkpoint."""
    metrics = folder / "metrics.jsonl"
    rows = [rounded(json.loads(line)) for line in metrics.read_text().splitlines() if line.strip()]
    metrics.write_text("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
    (folder / "checkpoint.pt").unlink(missing_ok=True)


def record(name: str, normaliser: str, switch: dict[str, Any] | None) -> dict[str, Any]:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(**SETTINGS, normaliser=normaliser, steps=STEPS, out=str(folder))
    if switch is None:
        trainer.run()
    else:
        trainer.run(steps=RESCUE_AT)
        trainer.set(**switch)
        trainer.run(steps=STEPS - RESCUE_AT)
    shrink(folder)
    last = trainer.history[-1]
    summary = {"name": name, "steps": trainer.step_count, "wall_s": round(time.perf_counter() - started, 1),
               "cpu_s": round(time.process_time() - cpu, 1), "final_effective_clusters": round(last["effective_clusters"], 2),
               "final_collapse": last["collapse"], "bytes": sum(f.stat().st_size for f in folder.iterdir())}
    print(summary, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="record only these names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan: list[tuple[str, str, dict[str, Any] | None]] = [(f"digits-{n}", n, None) for n in NORMALISERS]
    plan.append(("digits-collapse-rescue", "none", {"normaliser": "inverse-prior"}))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for name, normaliser, switch in plan:
        if not args.only or name in args.only:
            record(name, normaliser, switch)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
