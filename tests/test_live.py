"""The headless live run (klteach.live): training in a thread, measurements, the collapse alarm.

No widget and no figure here: the same object the dashboard draws, driven from code.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from live_helpers import SMALL, wait_for  # tests/live_helpers.py

from klteach.live import DATASET_DEFAULTS, LiveCurves, LiveRun, collapse_message, describe_changes
from klteach.metrics import one_cluster_threshold
from klteach.normalisers import NORMALISERS
from klteach.replay import Replay, recordings
from klteach.train import Trainer, TrainingError


def small_run(**kw) -> LiveRun:
    return LiveRun(**{"dataset": "toy", **SMALL, **kw})


def test_live_run_imports_and_trains_without_ipywidgets_or_plotly():
    code = ("import sys\n"
            "for name in ('ipywidgets', 'plotly', 'anywidget'):\n"
            "    sys.modules[name] = None      # importing them now raises ImportError\n"
            "from klteach.live import LiveRun\n"
            "run = LiveRun('toy', eval_batch=32, evaluate_every=0, batch_size=32)\n"
            "run.run(6)\n"
            "assert run.step_count == 6 and run.latest['step'] == 5, run.latest\n"
            "print('ok', run.collapse_state)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_run_measures_on_schedule_and_is_deterministic():
    first = small_run(evaluate_every=4, monitor_every=2)
    redraws = []
    first.on_refresh = redraws.append
    first.run(12)
    assert first.curves.steps == [0, 2, 4, 6, 8, 10, 12]
    assert first.curves.quality_steps == [4, 8, 12] and len(first.trainer.history) == 3
    assert redraws[-1] is True                            # a forced redraw at the end
    assert first.curves.sizes is not None and len(first.curves.sizes[0]) == 8
    plain = Trainer(**{**DATASET_DEFAULTS["toy"], "dataset": "toy", "batch_size": 64})
    assert [plain.step() for _ in range(12)] == first.curves.loss     # watching never changes training


def test_set_queues_the_change_and_a_restart_setting_starts_new_curves():
    run = small_run()
    run.run(10)
    run.set(normaliser="none")
    assert run.trainer.config.normaliser == "inverse-prior"     # queued, not applied yet
    run.run(5)
    assert run.trainer.config.normaliser == "none"
    assert run.curves.events[-1]["step"] == 10 and run.curves.events[-1]["changes"] == {"normaliser": "none"}
    run.set(clusters=5)
    run.run(5)
    assert run.step_count == 5 and run.clusters == 5
    assert run.curves.events[0]["step"] == 0 and run.curves.events[0]["restart"]
    assert run.curves.steps == [1, 5]                     # measured right after the restart
    with pytest.raises(ValueError, match="dataset"):
        run.set(dataset="mnist")
    with pytest.raises(ValueError, match="eval_batch"):
        LiveRun("toy", eval_batch=0)
    with pytest.raises(ValueError, match="refresh_per_second"):
        LiveRun("toy", refresh_per_second=0)


def test_reset_starts_at_step_zero_with_the_given_settings():
    run = small_run()
    run.run(5)
    run.reset(normaliser="sinkhorn")
    assert run.step_count == 0 and run.trainer.config.normaliser == "sinkhorn"
    assert run.curves.steps == [0] and run.curves.loss == []


def test_background_thread_takes_a_change_mid_run_and_pauses():
    run = small_run()
    run.start()
    try:
        assert wait_for(lambda: run.step_count >= 3)
        assert run.running
        run.set(normaliser="none")
        assert wait_for(lambda: run.trainer.config.normaliser == "none")
        switched = run.trainer.events[-1]["step"]
        assert switched >= 3
        assert wait_for(lambda: run.step_count > switched + 2)
    finally:
        run.pause()
    assert not run.running
    stopped_at = run.step_count
    time.sleep(0.2)
    assert run.step_count == stopped_at and run.error is None


def test_an_error_in_the_thread_is_kept_not_lost(monkeypatch):
    run = small_run()
    real_step = run.trainer.step

    def failing_step():
        if run.trainer.step_count >= 3:
            raise TrainingError("loss became nan at step 3; likely cause: test")
        return real_step()

    monkeypatch.setattr(run.trainer, "step", failing_step)
    run.start()
    assert wait_for(lambda: not run.running)
    run.pause()
    assert isinstance(run.error, TrainingError) and run.error_step == 3
    assert "loss became nan" in run.error_text
    with pytest.raises(TrainingError):
        run.run(1)


def test_alarm_wording_names_the_collapse_its_start_and_the_change_before_it():
    curves = LiveCurves(steps=[0, 5, 10, 15, 20], times=[0.0, 1.0, 2.0, 3.1, 4.0],
                        effective=[7.5, 7.0, 3.0, 1.2, 1.1], used=[8, 8, 5, 2, 2], entropy=[0.9, 0.8, 0.5, 0.2, 0.1],
                        kl=[0.1] * 5, collapse=["healthy", "healthy", "healthy", "one-cluster", "one-cluster"],
                        events=[{"step": 6, "changes": {"normaliser": "none"}, "restart": False, "time": 1.0}])
    message = collapse_message(curves, 8)
    assert message.startswith("One-cluster collapse since step 15 (2.1 s after "
                              "you switched normaliser to none at step 6)")
    assert "1.10 effective clusters of K=8 (the alarm is at ≤ 1.8)" in message
    curves.collapse[-2:] = ["partial", "partial"]
    assert collapse_message(curves, 8).startswith("Partial collapse since step 15")
    assert "use only 2 of K=8 clusters" in collapse_message(curves, 8)
    curves.collapse[-2:] = ["uniform", "uniform"]
    assert collapse_message(curves, 8).startswith("Uniform collapse since step 15")
    curves.events[0]["time"] = None                        # a replay: steps, not seconds
    assert "(9 steps after the run switched normaliser to none at step 6)" in collapse_message(curves, 8)
    curves.collapse[-1] = "healthy"
    assert collapse_message(curves, 8) == ""               # clears on recovery
    assert describe_changes({"tau_teacher": 0.05, "lam": 0.5}) == "τ_t to 0.05 and λ to 0.5"


@pytest.mark.slow
def test_alarm_fires_on_a_real_one_cluster_collapse_and_clears_when_inverse_priors_return():
    # Switched to `none` before a partition has formed, sharpening alone collapses the run (DINO's
    # one-cluster collapse); switching back, the inverse priors (16) pull it out again.
    run = LiveRun("digits", eval_batch=256, evaluate_every=0)
    run.run(2)
    run.set(normaliser="none")
    for _ in range(30):
        run.run(10)
        if run.collapse_state == "one-cluster":
            break
    assert run.collapse_state == "one-cluster", run.latest
    assert run.latest["effective_clusters"] <= one_cluster_threshold(20)
    assert "One-cluster collapse since step" in run.collapse_message
    assert "after you switched normaliser to none at step 2" in run.collapse_message
    collapsed_at = run.step_count
    run.set(normaliser="inverse-prior")
    for _ in range(60):
        run.run(10)
        if run.collapse_state == "healthy" and run.latest["effective_clusters"] >= 10:
            break
    assert run.latest["effective_clusters"] >= 10, (run.step_count - collapsed_at, run.latest)
    assert run.collapse_message == ""


def test_a_learned_partition_survives_switching_to_none():
    # Once the clusters are learned, each sample's sharpened teacher (7) points at its own cluster,
    # a fixed point, so `none` does not collapse the run quickly. Collapse is the danger of the
    # start of training (chapter 2).
    run = LiveRun("digits", eval_batch=256, evaluate_every=0)
    run.run(200)
    trained = run.latest["effective_clusters"]
    assert trained >= 12, run.latest
    run.set(normaliser="none")
    run.run(200)
    assert run.collapse_state == "healthy", run.latest
    assert run.latest["effective_clusters"] >= 0.7 * trained, (trained, run.latest)


# ---------------------------------------------------------------- replays of recorded runs

def test_replay_shows_the_recorded_collapse_and_rescue_without_training():
    replay = Replay("digits-collapse-rescue")
    assert replay.step_count == 0 and replay.curves.steps == [] and replay.clusters == 20
    assert replay.settings["normaliser"] == "none"          # from the first evaluation row
    assert replay.settings["lam"] == 1.0
    replay.run(100)
    assert replay.step_count == 100 and replay.settings["normaliser"] == "none"
    assert replay.collapse_state == "one-cluster"
    assert replay.collapse_message.startswith("One-cluster collapse since step")
    replay.run(500)
    assert replay.finished and replay.step_count == replay.total_steps == 600
    assert replay.settings["normaliser"] == "inverse-prior"
    assert [(e["step"], e["changes"]) for e in replay.curves.events] == [(150, {"normaliser": "inverse-prior"})]
    assert replay.collapse_state == "healthy" and replay.collapse_message == ""
    assert replay.latest["effective_clusters"] > 10
    assert len(replay.curves.sizes[0]) == len(replay.curves.sizes[1]) == 20
    assert len(replay.curves.knn) == len(replay.curves.steps) == 60
    replay.rewind()
    assert replay.step_count == 0 and replay.curves.events == []


def test_replay_plays_at_the_chosen_speed_and_pauses():
    replay = Replay("digits-none", steps_per_second=400)
    redraws = []
    replay.on_refresh = redraws.append
    started = time.monotonic()
    replay.start()
    assert wait_for(lambda: replay.step_count >= 200, 30)
    replay.pause()
    paused_at = replay.step_count
    assert time.monotonic() - started >= 190 / 400            # paced: no faster than asked
    time.sleep(0.2)
    assert replay.step_count == paused_at < 600 and not replay.running
    replay.speed = 5000
    replay.start()
    assert wait_for(lambda: replay.finished and not replay.running, 30)
    assert redraws and redraws[-1] is True
    replay.start()                                          # at the end, Play starts again
    assert replay.running or replay.step_count < 600
    replay.pause()


def test_every_shipped_recording_replays_to_its_end():
    names = recordings()
    assert {f"digits-{n}" for n in NORMALISERS} | {"digits-collapse-rescue"} <= set(names)
    for name in names:
        replay = Replay(name)
        replay.run(replay.total_steps)
        assert replay.finished and all(len(sizes) == replay.clusters for sizes in replay.curves.sizes), name


def test_bad_replays_are_refused_with_what_exists(tmp_path):
    with pytest.raises(ValueError, match="digits-collapse-rescue"):
        Replay("no-such-run")
    with pytest.raises(ValueError, match="steps_per_second"):
        Replay("digits-none", steps_per_second=0)
    rows = ('{"step": 5, "event": "set", "changes": {"lam": 0.5}, "restart": false}\n'
            '{"step": 10, "effective_clusters": 3.0, "clusters_used": 3, "mean_entropy": 0.5, '
            '"collapse": "healthy", "kl_teacher_student": 0.1}\n')
    (tmp_path / "metrics.jsonl").write_text(rows.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="no evaluation"):
        Replay(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(rows)
    with pytest.raises(ValueError, match="K is unknown"):
        Replay(tmp_path)                                  # no config.json, no cluster sizes
    (tmp_path / "config.json").write_text('{"clusters": 4, "lam": 1.0}')
    replay = Replay(tmp_path)
    assert replay.settings["lam"] is None                 # switched at step 5: unknown before
    replay.run(10)
    assert replay.settings["lam"] == 0.5 and replay.curves.steps == [10]
