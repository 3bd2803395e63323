"""Do healthy runs stay healthy under ``klteach.metrics.collapse_state``? (contract 3, issue 15)

Digits, K = 20, 1000 steps, every normaliser, seeds 0-2: effective clusters, clusters used and
mean entropy on the test set every 100 steps, and the verdict of the current ``collapse_state``.
The thresholds' docstring quotes these numbers: the fewest clusters a run that stays healthy
used, and the runs that collapse.

    python benchmarks/collapse_thresholds.py      # about 5 minutes of CPU time on one core
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from klteach.metrics import collapse_state  # noqa: E402
from klteach.normalisers import NORMALISERS  # noqa: E402
from klteach.train import TrainConfig, Trainer  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "collapse_thresholds_digits.json"
KEYS = ("step", "effective_clusters", "clusters_used", "mean_entropy", "nmi", "knn_accuracy")


def main() -> None:
    torch.set_num_threads(1)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    record: dict = {"benchmark": "collapse_thresholds", "date": now,
                    "hardware": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                                 "torch_threads": 1, "torch": torch.__version__, "python": platform.python_version()},
                    "load_average_1min_at_start": os.getloadavg()[0], "runs": []}
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in (0, 1, 2):
        for name in NORMALISERS:
            trainer = Trainer(TrainConfig(dataset="digits", normaliser=name, clusters=20, steps=1000, seed=seed,
                                          device="cpu", eval_every=100))
            trainer.run()
            rows = [{key: h[key] for key in KEYS} for h in trainer.history]
            record["runs"].append({"normaliser": name, "seed": seed, "evaluations": rows})
            print(name, seed, rows[-1], flush=True)
    record.update(load_average_1min_at_end=os.getloadavg()[0], wall_s=time.perf_counter() - wall,
                  cpu_s=time.process_time() - cpu)
    summarise(record)
    RESULT.write_text(json.dumps(record, indent=1) + "\n")


def summarise(record: dict) -> None:
    """Per normaliser: the verdicts over all evaluations and the fewest clusters used."""
    record["summary"] = {}
    for name in NORMALISERS:
        rows = [row for run in record["runs"] if run["normaliser"] == name for row in run["evaluations"]]
        verdicts = [collapse_state(r["effective_clusters"], r["mean_entropy"], 20, r["clusters_used"], 360)
                    for r in rows]
        record["summary"][name] = {"verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
                                   "fewest_clusters_used": min(r["clusters_used"] for r in rows)}
        print(name, record["summary"][name])


if __name__ == "__main__":
    main()
