"""The live widgets, driven from Python as a student's clicks would drive them."""
from __future__ import annotations

import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from klteach import plots, widgets
from klteach.metrics import one_cluster_threshold
from klteach.train import Trainer, TrainingError
from klteach.widgets import (LiveCurves, TrainingDashboard, describe_changes, jensen_gap_explorer,
                             posterior_explorer, prior_lambda_explorer)

SMALL = dict(eval_batch=64, evaluate_every=0, batch_size=64)


def small_dashboard(**kw) -> TrainingDashboard:
    return TrainingDashboard(**{"dataset": "toy", **SMALL, **kw})


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ---------------------------------------------------------------- the dashboard from code

def test_dropdown_changes_the_trainer_at_the_next_step_and_the_figures_follow():
    dash = small_dashboard()
    dash.run(10)
    before_x = tuple(dash.panels["collapse"].data[0].x)
    dash.controls["normaliser"].value = "none"            # what the browser does
    assert dash.trainer.config.normaliser == "inverse-prior"   # queued, not applied yet
    dash.run(5)
    assert dash.trainer.config.normaliser == "none"
    assert dash.trainer.normaliser.name == "none"
    assert tuple(dash.panels["collapse"].data[0].x) != before_x
    assert dash.curves.events[-1]["step"] == 10
    assert dash.curves.events[-1]["changes"] == {"normaliser": "none"}
    labels = [a.text for a in dash.figure.layout.annotations if a.name == "collapse"]
    assert "normaliser=none" in labels                    # the vertical marker's label
    markers = [s for s in dash.figure.layout.shapes if s.name == "collapse" and s.type == "line"]
    assert [s.x0 for s in markers] == [10]
    assert "normaliser=none" in dash.status.value


def test_sliders_set_the_temperatures_lambda_and_momentum():
    dash = small_dashboard()
    dash.controls["tau_teacher"].value = 0.2
    dash.controls["tau_student"].value = 0.3
    dash.controls["lam"].value = 0.5
    dash.controls["momentum"].value = 0.9
    dash.run(1)
    cfg = dash.trainer.config
    assert (cfg.tau_teacher, cfg.tau_student, cfg.lam, cfg.momentum) == (0.2, 0.3, 0.5, 0.9)
    assert dash.trainer.normaliser.lam == 0.5
    assert dash.trainer.step_count == 1                   # no restart


def test_set_from_code_moves_the_controls_and_refuses_bad_values():
    dash = small_dashboard()
    dash.set(normaliser="centering", tau_teacher=0.04)
    assert dash.controls["normaliser"].value == "centering"
    assert dash.controls["tau_teacher"].value == pytest.approx(0.04)
    with pytest.raises(ValueError, match="tau_student"):
        dash.set(tau_student=-1.0)
    with pytest.raises(ValueError, match="normaliser"):
        dash.set(normaliser="softmax")
    with pytest.raises(ValueError, match="dataset"):
        dash.set(dataset="mnist")
    dash.run(1)
    assert dash.trainer.config.normaliser == "centering"
    assert dash.trainer.config.tau_student == 0.1


def test_changing_k_restarts_the_run_and_redraws_with_k_bars():
    dash = small_dashboard()
    dash.run(10)
    dash.controls["clusters"].value = 5
    dash.run(5)
    assert dash.trainer.config.clusters == 5
    assert dash.trainer.step_count == 5                   # restarted at 0
    assert dash.trainer.student.prototypes.unit_weights.shape[0] == 5
    assert len(dash.panels["cluster_sizes"].data[0].y) == 5
    assert max(dash.curves.steps) == 5
    assert dash.curves.events[0]["step"] == 0 and dash.curves.events[0]["restart"]
    assert dash.figure.layout.yaxis.range[1] == pytest.approx(5 * 1.05)   # the collapse panel


def test_dataset_switch_takes_its_defaults_and_a_2d_embedding_view():
    dash = small_dashboard()
    assert isinstance(dash.panels["embedding"].data[-1], go.Scatter3d)     # toy, dim 3: a sphere
    first_figure = dash.figure
    dash.controls["dataset"].value = "digits"
    dash.run(2)
    cfg = dash.trainer.config
    assert dash.trainer.dataset.name == "digits"
    assert (cfg.clusters, cfg.dim) == (20, 64)
    assert cfg.batch_size == 64                           # the user's override is kept
    assert dash.controls["clusters"].value == 20
    assert isinstance(dash.panels["embedding"].data[-1], go.Scatter)       # 64-d: PCA
    assert dash.figure is not first_figure                # rebuilt for the new view
    assert len(dash.panels["embedding"].data[0].x) == 64  # the fixed evaluation batch
    assert dash.panels["embedding"].data[0].xaxis == "x5"


def test_reset_starts_a_fresh_run_with_the_controls_settings():
    dash = small_dashboard()
    dash.run(5)
    dash.controls["normaliser"].value = "sinkhorn"
    dash.reset()
    assert dash.trainer.step_count == 0
    assert dash.trainer.config.normaliser == "sinkhorn"
    assert dash.curves.steps == [0] and dash.curves.loss == []


def test_run_is_deterministic_and_watching_does_not_change_training():
    first = small_dashboard(evaluate_every=4, monitor_every=2)
    first.run(12)
    second = small_dashboard()
    second.run(12)
    assert first.curves.loss == second.curves.loss
    plain = Trainer(**{**widgets.DATASET_DEFAULTS["toy"], "dataset": "toy", "batch_size": 64})
    assert [plain.step() for _ in range(12)] == first.curves.loss
    assert len(first.trainer.history) == 3                # evaluate() every 4 steps, kept in history
    assert first.curves.quality_steps == [4, 8, 12]


def test_background_thread_applies_a_change_mid_run():
    dash = small_dashboard()
    dash.start()
    try:
        assert dash.running
        assert wait_for(lambda: dash.trainer.step_count >= 3)
        dash.set(normaliser="none")
        assert wait_for(lambda: dash.trainer.config.normaliser == "none")
        step_changed = dash.trainer.events[-1]["step"]
        assert step_changed >= 3
        assert wait_for(lambda: dash.trainer.step_count > step_changed + 2)
    finally:
        dash.pause()
    assert not dash.running
    stopped_at = dash.trainer.step_count
    time.sleep(0.2)
    assert dash.trainer.step_count == stopped_at          # really paused
    assert dash.error is None


def test_an_error_in_the_training_thread_shows_in_the_status_line(monkeypatch):
    dash = small_dashboard()
    real_step = dash.trainer.step

    def failing_step():
        if dash.trainer.step_count >= 3:
            raise TrainingError("loss became nan at step 3; likely cause: test")
        return real_step()

    monkeypatch.setattr(dash.trainer, "step", failing_step)
    dash.start()
    assert wait_for(lambda: not dash.running)
    dash._thread.join(10)
    assert isinstance(dash.error, TrainingError)
    assert "Stopped by an error at step 3" in dash.status.value
    assert "loss became nan" in dash.status.value
    with pytest.raises(TrainingError):
        dash.run(1)                                       # synchronous runs raise as well


def test_bad_dashboard_arguments_are_refused():
    with pytest.raises(ValueError, match="dataset"):
        TrainingDashboard(dataset="imagenet")
    with pytest.raises(ValueError, match="eval_batch"):
        TrainingDashboard(eval_batch=0)
    with pytest.raises(ValueError, match="steps"):
        small_dashboard().run(-1)


# ---------------------------------------------------------------- the collapse alarm

def test_alarm_wording_names_the_collapse_its_start_and_the_change_before_it():
    dash = small_dashboard()
    curves = LiveCurves(steps=[0, 5, 10, 15, 20], times=[0.0, 1.0, 2.0, 3.1, 4.0],
                        effective=[7.5, 7.0, 3.0, 1.2, 1.1], entropy=[0.9, 0.8, 0.5, 0.2, 0.1],
                        kl=[0.1] * 5, collapse=["healthy", "healthy", "healthy", "one-cluster", "one-cluster"],
                        events=[{"step": 6, "changes": {"normaliser": "none"}, "restart": False,
                                 "time": 1.0}])
    dash.curves = curves
    message = dash.collapse_message
    assert message.startswith("Collapsed to ONE cluster (or a handful) since step 15 (2.1 s after "
                              "you switched normaliser to none at step 6)")
    assert "1.10 effective clusters of K=8 (the alarm is at ≤ 1.8)" in message
    curves.collapse[-2:] = ["uniform", "uniform"]
    assert dash.collapse_message.startswith("Collapsed to the UNIFORM output since step 15")
    curves.collapse[-1] = "healthy"
    assert dash.collapse_message == ""                     # clears on recovery
    assert describe_changes({"tau_teacher": 0.05, "lam": 0.5}) == "τ_t to 0.05 and λ to 0.5"


@pytest.mark.slow
def test_alarm_fires_on_a_real_one_cluster_collapse_and_clears_when_inverse_priors_return():
    # Switched to `none` before a partition has formed, sharpening alone collapses the run (DINO's
    # one-cluster collapse); switching back, the inverse priors (16) pull it out again.
    dash = TrainingDashboard("digits", eval_batch=256, evaluate_every=0)
    dash.run(2)
    dash.set(normaliser="none")
    for _ in range(30):
        dash.run(10)
        if dash.collapse_state == "one-cluster":
            break
    assert dash.collapse_state == "one-cluster", dash.latest
    assert dash.latest["effective_clusters"] <= one_cluster_threshold(20)
    assert "Collapsed to ONE cluster (or a handful) since step" in dash.collapse_message
    assert "after you switched normaliser to none at step 2" in dash.collapse_message
    assert "ONE cluster" in dash.alarm.value
    collapsed_at = dash.trainer.step_count
    dash.set(normaliser="inverse-prior")
    for _ in range(60):
        dash.run(10)
        if dash.collapse_state == "healthy" and dash.latest["effective_clusters"] >= 10:
            break
    assert dash.latest["effective_clusters"] >= 10, (dash.trainer.step_count - collapsed_at, dash.latest)
    assert dash.collapse_message == ""
    assert "No collapse" in dash.alarm.value


def test_a_learned_partition_survives_switching_to_none():
    # The other half of the story, measured: once the clusters are learned, each sample's sharpened
    # teacher (7) points at its own cluster, a fixed point, so `none` does not collapse the run
    # quickly. Collapse is the danger of the start of training (chapter 2).
    dash = TrainingDashboard("digits", eval_batch=256, evaluate_every=0)
    dash.run(200)
    trained = dash.latest["effective_clusters"]
    assert trained >= 12, dash.latest
    dash.set(normaliser="none")
    dash.run(200)
    assert dash.collapse_state == "healthy", dash.latest
    assert dash.latest["effective_clusters"] >= 0.7 * trained, (trained, dash.latest)


# ---------------------------------------------------------------- explorers

def test_posterior_explorer_sharpens_with_low_temperature_and_follows_the_prior():
    explorer = posterior_explorer()
    curves = lambda: np.array([trace.y for trace in explorer.figure.data[2:]])  # noqa: E731
    explorer.controls["tau"].value = 1.0
    flat = curves()
    explorer.controls["tau"].value = 0.02
    sharp = curves()
    assert sharp.max(0).mean() > flat.max(0).mean() + 0.3
    np.testing.assert_allclose(sharp.sum(0), 1.0, atol=1e-9)
    assert "eq. (1) − eq. (6)" in explorer.summary.value  # equal priors: (1) equals (6)
    share = lambda: (curves().argmax(0) == 0).mean()      # noqa: E731
    before = share()
    explorer.controls["prior"].value = 0.8
    assert share() > before
    assert "eq. (6)" not in explorer.summary.value


def test_prior_lambda_explorer_flattens_the_teacher_as_lambda_grows():
    explorer = prior_lambda_explorer()
    explorer.controls["lam"].value = 0.0
    student, teacher = (np.array(explorer.figure.data[i].y) for i in (0, 1))
    np.testing.assert_allclose(student, teacher, atol=1e-9)   # λ = 0: q = p (eq. 7)
    explorer.controls["lam"].value = 1.0
    teacher_1 = np.array(explorer.figure.data[1].y)
    assert teacher_1.std() < 0.5 * student.std()          # the histogram flattens
    assert float(explorer.figure.data[4].x[0]) == 1.0
    eff_student, eff_teacher = explorer.figure.data[3].y[0], explorer.figure.data[4].y[0]
    assert eff_teacher > eff_student + 1.0
    eff = np.array(explorer.figure.data[2].y)
    assert eff[10] > eff[0]                                # effective clusters grow with λ up to 1
    explorer.controls["self_consistent"].value = True
    assert not np.allclose(np.array(explorer.figure.data[1].y), teacher_1)
    assert "student" in explorer.summary.value and "teacher" in explorer.summary.value


def test_jensen_gap_explorer_gap_grows_at_low_temperature_and_with_norm_spread():
    explorer = jensen_gap_explorer()
    gap = lambda: float(explorer.figure.data[1].y[0])      # noqa: E731
    explorer.controls["tau"].value = 1.0
    warm = gap()
    explorer.controls["tau"].value = 0.05
    cold = gap()
    assert cold > warm
    explorer.controls["spread"].value = 0.8
    assert gap() > cold
    lhs, rhs = np.array(explorer.figure.data[2].y), np.array(explorer.figure.data[2].x)
    assert (lhs >= rhs - 1e-9).all()                       # eq. (18) holds for every sample
    lhs, rhs = np.array(explorer.figure.data[3].y), np.array(explorer.figure.data[3].x)
    assert (lhs >= rhs - 1e-9).all()                       # eq. (21) holds for every cluster
    explorer.controls["centred"].value = True
    assert "centred weights" in explorer.summary.value


# ---------------------------------------------------------------- plots

def test_embedding_figure_is_a_sphere_in_3d_and_a_pca_otherwise():
    z3 = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    fig = plots.embedding_figure(z3, z3[:4], z3[:, :1].ge(0).long().flatten())
    assert isinstance(fig.data[-1], go.Scatter3d) and len(fig.data[-1].x) == 4
    z64 = torch.randn(50, 64)
    fig = plots.embedding_figure(z64, z64[:4])
    assert isinstance(fig.data[-1], go.Scatter) and len(fig.data[0].x) == 50
    points, _ = plots.project_embeddings(z64, z64[:4])
    assert points.shape == (50, 2)


def test_collapse_figure_shades_both_regions_and_marks_events():
    events = [{"step": 30, "changes": {"normaliser": "none"}}, {"step": 60, "changes": {"lam": 0.5}}]
    fig = plots.collapse_figure(10, [0, 30, 60], [9, 5, 1.2], [0.5, 1, 2], events, widget=True)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [r.yref for r in rects] == ["y", "y2"]
    assert rects[0].y1 == one_cluster_threshold(10) == 2.0
    assert rects[1].y0 == pytest.approx(0.9 * np.log(10))
    assert [s.x0 for s in fig.layout.shapes if s.type == "line"] == [30, 60]
    assert {"normaliser=none", "λ=0.5"} <= {a.text for a in fig.layout.annotations}


def test_dashboard_figure_panels_keep_their_own_shapes():
    fig, panels = plots.dashboard_figure(three_d=True)
    assert isinstance(panels["embedding"].data[-1], go.Scatter3d)
    panels["collapse"].update(8, [0, 5], [7.0, 6.0], [0.5, 0.6], [{"step": 5, "changes": {"lam": 0.5}}])
    panels["cluster_sizes"].update(np.full(8, 1 / 8))
    panels["collapse"].update(8, [0, 5, 10], [7.0, 6.0, 5.0], [0.5, 0.6, 0.7])   # the event is gone
    names = [s.name for s in fig.layout.shapes]
    assert names.count("collapse") == 2 and names.count("cluster_sizes") == 1
    assert "λ=0.5" not in [a.text for a in fig.layout.annotations]
    assert sum(a.name is None for a in fig.layout.annotations) == 5   # the subplot titles stay
    widget = go.FigureWidget(fig)
    plots.bind(panels, widget)
    panels["loss"].update([1, 2], [3.0, 2.0], [2], [0.5])
    assert list(widget.data[panels["loss"].traces[0]].y) == [3.0, 2.0]


def test_cluster_sizes_sorted_and_thin_keeps_the_last_point():
    fig = plots.cluster_size_figure([0.1, 0.6, 0.3], sort=True)
    assert list(fig.data[0].y) == [0.6, 0.3, 0.1] and fig.data[1].visible is False
    assert fig.layout.shapes[0].y0 == pytest.approx(1 / 3)
    thinned = plots.thin(np.arange(2500), limit=1000)
    assert len(thinned) <= 1000 and thinned[-1] == 2499


def test_figure_slots_redraw_a_blank_figure_only_in_a_live_page(monkeypatch):
    monkeypatch.setattr(widgets, "RENDER_CHECKS_S", (0.05,))
    dash = small_dashboard()
    first = dash.figure
    dash.slots.watch()                                     # headless: no views anywhere
    time.sleep(0.5)
    assert dash.figure is first
    slots = widgets.FigureSlots({"f": go.FigureWidget(first)}, dash._draw_lock, sentinel=widgets.widgets.HTML())
    slots.sentinel._view_count = 1                         # the page shows the widgets, but ...
    assert slots.blank() == ["f"]                          # ... the figure never reported drawing
    before = slots.figures["f"]
    slots.watch()
    assert wait_for(lambda: slots.figures["f"] is not before
                    and slots.boxes["f"].children == (slots.figures["f"],), 5)
    slots._drawn(id(slots.figures["f"]), {"new": {"trace_deltas": [{"uid": "a"}]}})
    assert slots.blank() == []
