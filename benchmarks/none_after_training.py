"""Does switching a *trained* digits run to ``none`` collapse it? (issue 4's alarm target)

For each setting: train the dashboard's digits run with inverse priors (eq. 16) for 200 steps,
switch to ``none`` (eq. 7) for 400 steps, then back to inverse priors for 500 steps, recording
the effective clusters exp H(π) every 20 steps on the dashboard's fixed evaluation batch.
A run that was already near collapse under inverse priors (≤ 3.2 effective clusters) is
reported as such: its alarm after the switch says nothing about ``none``.

    python benchmarks/none_after_training.py                       # the default settings below
    python benchmarks/none_after_training.py "dict(lr=1e-2)" ...   # your own (TrainConfig fields)
"""
from __future__ import annotations

import ast
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from klteach.train import write_json_atomic  # noqa: E402
from klteach.widgets import TrainingDashboard  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "none_after_training.json"
SETTINGS = ["dict()", "dict(lr=3e-3)", "dict(lr=1e-2)", "dict(momentum=0.5)", "dict(momentum=0.7)",
            "dict(momentum=0.99)", "dict(tau_teacher=0.02)", "dict(tau_student=0.2)", "dict(dim=8)",
            "dict(batch_size=32)", "dict(learnable_prototypes=False)", "dict(weight_decay=0.1, lr=1e-2)"]
PHASES = (("inverse-prior", 200), ("none", 400), ("inverse-prior", 500))


def parse_setting(text: str) -> dict[str, Any]:
    """``"dict(lr=1e-2)"`` -> ``{"lr": 0.01}`` (keyword literals only)."""
    call = ast.parse(text, mode="eval").body
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "dict" and not call.args):
        raise ValueError(f"a setting must look like dict(name=value, ...), got {text!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def run_phases(setting: dict[str, Any]) -> dict[str, Any]:
    dash = TrainingDashboard("digits", eval_batch=256, evaluate_every=0, **setting)
    record: dict[str, Any] = {"setting": setting}
    for phase, (normaliser, steps) in enumerate(PHASES):
        dash.set(normaliser=normaliser)
        curve, alarm = [], None
        for _ in range(steps // 20):
            dash.run(20)
            curve.append(round(dash.latest["effective_clusters"], 2))
            if alarm is None and dash.collapse_state != "healthy":
                alarm = {"after_steps": len(curve) * 20, "state": dash.collapse_state}
        record[f"{phase + 1}_{normaliser}"] = {"steps": steps, "effective_clusters": curve, "first_alarm": alarm}
    before = record["1_inverse-prior"]["effective_clusters"][-1]
    record["near_collapse_before_switch"] = before <= 3.2
    return record


def main() -> None:
    settings = sys.argv[1:] or SETTINGS
    torch.set_num_threads(1)
    started = time.time()
    runs = []
    for text in settings:
        record = run_phases(parse_setting(text))
        none = record["2_none"]
        print(f"{text:<40} before {record['1_inverse-prior']['effective_clusters'][-1]:5.1f}  "
              f"none: alarm {none['first_alarm']}, end {none['effective_clusters'][-1]:5.1f}  "
              f"back: end {record['3_inverse-prior']['effective_clusters'][-1]:5.1f}", flush=True)
        runs.append(record)
    out = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "hardware": {"cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1},
           "phases": PHASES, "alarm": "one-cluster at <= 3 effective clusters of K = 20", "runs": runs,
           "wall_seconds": round(time.time() - started, 1)}
    path = Path(os.environ.get("OUT_JSON", RESULT))
    write_json_atomic(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
