"""The CPU recipe of chapter 5 (``benchmarks/cifar_sample_recipe.py``), shortened to well under a minute.

At this length only the mechanics can be asserted honestly: a run writes the folder the replays
read (settings, an untrained evaluation at step 0, evaluations every ``eval_every`` steps, no
checkpoint), the recording script collects the runs with their times and copies the seed-0 runs
for the replays, and the normaliser acts: without one the posteriors concentrate on fewer
clusters within a dozen steps, while the inverse prior holds them where the untrained network
had them. That the recipe *learns* (kNN above the untrained network by more than the
spread over seeds) takes the full recipe's minutes; chapter 5 asserts it on the recorded runs.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY, EVAL_SIZE = 12, 6, 500


def load_recipe():
    spec = importlib.util.spec_from_file_location("cifar_sample_recipe", REPO / "benchmarks" / "cifar_sample_recipe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def record_of(recorded, normaliser: str) -> dict:
    return next(run for run in recorded[1]["runs"] if run["normaliser"] == normaliser)


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The recording script on two normalisers, one seed, STEPS steps, two processes."""
    recipe = load_recipe()
    root = tmp_path_factory.mktemp("recipe")
    out, runs, replays = root / "recipe.json", root / "runs", root / "replays"
    argv = ["cifar_sample_recipe.py", "--normalisers", "none", "inverse-prior", "--seeds", "0",
            "--steps", str(STEPS), "--jobs", "2", "--out", str(out), "--runs-dir", str(runs),
            "--replays", str(replays), "--eval-every", str(EVERY), "--eval-size", str(EVAL_SIZE)]
    old = sys.argv
    sys.argv = argv
    try:
        recipe.main()
    finally:
        sys.argv = old
    return recipe, json.loads(out.read_text()), runs, replays


def test_each_run_keeps_settings_and_evaluations_but_no_checkpoint(recorded):
    recipe, record, runs, _ = recorded
    folder = runs / "inverse-prior-seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.jsonl"]
    config = json.loads((folder / "config.json").read_text())
    assert config["normaliser"] == "inverse-prior" and config["steps"] == STEPS
    assert config["arch"] == recipe.RECIPE.arch and config["clusters"] == recipe.RECIPE.clusters
    rows = read_rows(folder)
    assert config["eval_size"] == EVAL_SIZE and config["momentum"] == recipe.RECIPE.momentum
    assert [row["step"] for row in rows] == [0, 6, 12]            # the untrained network first
    assert rows[0]["loss"] is None                                  # no step taken: no loss, strict JSON
    assert [row["step"] for row in record_of(recorded, "inverse-prior")["evaluations"]] == [0, 6, 12]
    for row in rows:
        assert 0 <= row["knn_accuracy"] <= 1 and 1 <= row["effective_clusters"] <= config["clusters"]


def test_the_summary_records_hardware_load_and_times(recorded):
    _, record, _, _ = recorded
    assert record["complete"] and record["hardware"]["cores"] >= 1
    assert (record["recipe"]["steps"], record["recipe"]["eval_size"]) == (STEPS, EVAL_SIZE)
    assert sorted(run["normaliser"] for run in record["runs"]) == ["inverse-prior", "none"]
    for run in record["runs"]:
        assert run["cpu_seconds"] > 0 and run["wall_seconds"] > 0
        assert run["load_average_1min_before"] >= 0 and "knn_accuracy" in run["final"]


def test_seed_zero_runs_become_replays_without_a_machine_path(recorded):
    _, _, runs, replays = recorded
    for normaliser in ("none", "inverse-prior"):
        folder = replays / f"cifar10-sample-{normaliser}"
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.jsonl"]
        assert json.loads((folder / "config.json").read_text())["out"] is None
        recorded_rows, replay_rows = read_rows(runs / f"{normaliser}-seed0"), read_rows(folder)
        assert [row["step"] for row in replay_rows] == [row["step"] for row in recorded_rows]
        assert replay_rows[-1]["knn_accuracy"] == pytest.approx(recorded_rows[-1]["knn_accuracy"], rel=1e-3)


def test_the_normaliser_acts(recorded):
    """Without a normaliser the posteriors concentrate; the inverse prior keeps the untrained spread."""
    _, _, runs, _ = recorded
    none, inverse = read_rows(runs / "none-seed0"), read_rows(runs / "inverse-prior-seed0")
    assert none[0]["effective_clusters"] == pytest.approx(inverse[0]["effective_clusters"])   # same start
    assert none[-1]["effective_clusters"] < none[0]["effective_clusters"] - 0.5
    assert none[-1]["effective_clusters"] < inverse[-1]["effective_clusters"] - 0.5
    assert inverse[-1]["effective_clusters"] > inverse[0]["effective_clusters"] - 0.5
