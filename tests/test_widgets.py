"""The live widgets, driven from Python as a student's clicks would drive them."""
from __future__ import annotations

import time

import ipywidgets
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from live_helpers import SMALL, wait_for  # tests/live_helpers.py

from klteach import display, plots
from klteach.config import setting_info
from klteach.metrics import one_cluster_threshold
from klteach.train import TrainingError
from klteach.widgets import (
    LiveCurves,
    TrainingDashboard,
    describe_changes,
    jensen_gap_explorer,
    posterior_explorer,
    prior_lambda_explorer,
)


def small_dashboard(**kw) -> TrainingDashboard:
    return TrainingDashboard(**{"dataset": "toy", **SMALL, **kw})


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


def test_controls_follow_the_config_metadata():
    dash = small_dashboard()
    for name, control in dash.controls.items():
        info = setting_info(name)
        assert control.tooltip == info.help
        assert control.description.endswith("(restarts)") == (info.kind == "restart"), name
        if info.choices is not None:
            assert tuple(control.options) == info.choices
        if isinstance(control, ipywidgets.FloatLogSlider):
            assert info.log_scale, name
            low, high = 10 ** control.min, 10 ** control.max
        elif hasattr(control, "min"):
            assert not info.log_scale, name
            low, high = control.min, control.max
        else:
            continue
        assert info.low is None or (low > info.low if info.low_open else low >= info.low), name
        assert info.high is None or (high < info.high if info.high_open else high <= info.high), name
    assert dash.controls["clusters"].description == "K (restarts)"
    dash.set(tau_teacher=2.0, lam=3.0)                    # allowed, beyond the sliders' spans
    assert dash.controls["tau_teacher"].value == pytest.approx(2.0)
    assert dash.controls["lam"].value == 3.0


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
    dash.pause()
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


def test_replay_dashboard_plays_a_recording_with_its_switches_and_alarm():
    dash = TrainingDashboard.replay("digits-collapse-rescue", steps_per_second=100)
    assert dash.replaying and dash.trainer is None
    assert [b.description for b in dash.buttons.values()] == ["Play", "Pause", "Rewind"]
    assert "replay of digits-collapse-rescue · step 0 of 600" in dash.status.value
    dash.controls["speed"].value = 400                    # the speed slider, as a drag does
    assert dash.live.speed == 400
    dash.run(100)
    assert len(dash.panels["collapse"].data[0].x) == 10
    assert "⚠ One-cluster collapse since step" in dash.alarm.value
    assert "normaliser=none" in dash.status.value
    dash.run(500)
    markers = [a.text for a in dash.figure.layout.annotations if a.name == "collapse"]
    assert "normaliser=inverse-prior" in markers          # the recorded switch, marked at step 150
    assert "✓ No collapse" in dash.alarm.value and "Ended" in dash.status.value
    assert len(dash.panels["cluster_sizes"].data[0].y) == 20 and len(dash.panels["quality"].data[0].x) == 60
    assert "embedding" not in dash.panels                 # embeddings are not recorded
    with pytest.raises(TypeError, match="recorded"):
        dash.set(normaliser="none")
    dash.buttons["reset"].click()                         # Rewind
    assert dash.live.step_count == 0 and len(dash.panels["collapse"].data[0].x) == 0
    assert repr(dash).startswith("replay of digits-collapse-rescue: step 0")


# ---------------------------------------------------------------- the collapse alarm

def test_alarm_shows_each_verdict_by_icon_and_words_not_colour_alone():
    dash = small_dashboard()
    dash.run(5)
    assert "✓ No collapse" in dash.alarm.value
    dash.curves = LiveCurves(steps=[0, 5], times=[0.0, 1.0], effective=[7.0, 1.1], used=[8, 1],
                             entropy=[0.9, 0.1], kl=[0.1, 0.1], collapse=["healthy", "one-cluster"])
    dash.refresh()
    assert "⚠ One-cluster collapse" in dash.alarm.value
    dash.curves.collapse[-1] = "partial"
    dash.refresh()
    assert "◐ Partial collapse since step 5" in dash.alarm.value
    assert dash.collapse_message.startswith("Partial collapse")
    assert describe_changes({"tau_teacher": 0.05, "lam": 0.5}) == "τ_t to 0.05 and λ to 0.5"


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


def browser_draws(fig: go.FigureWidget) -> None:
    """What plotly's view in the browser sends back once it has drawn every edit it was sent
    (the widget protocol's two reply messages, with the ids of the latest edits and its traces)."""
    fig._js2py_layoutDelta = {"layout_delta": {}, "layout_edit_id": fig._last_layout_edit_id}
    fig._js2py_traceDeltas = {"trace_deltas": [{"uid": trace.uid} for trace in fig.data],
                              "trace_edit_id": fig._last_trace_edit_id}


def test_figure_slots_replace_a_blank_figure_only_in_a_live_page(monkeypatch):
    monkeypatch.setattr(display, "RENDER_CHECKS_S", (0.05, 0.1))
    dash = small_dashboard()
    first = dash.figure
    dash.slots.watch()                                     # headless: no views anywhere
    time.sleep(0.5)
    assert dash.figure is first
    figure = go.FigureWidget(first)
    slots = display.FigureSlots({"f": figure}, dash._draw_lock, sentinel=ipywidgets.HTML())
    slots.sentinel._view_count = 1                         # the page shows the widgets ...
    assert slots.blank() == []                             # ... the figure's view is still loading
    figure._view_count = 1                                 # its view exists, but ...
    figure._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": figure._last_trace_edit_id}
    assert slots.blank() == ["f"]                          # ... drew no trace
    slots.watch()
    assert wait_for(lambda: slots.figures["f"] is not figure
                    and slots.boxes["f"].children == (slots.figures["f"],), 5)
    copy = slots.figures["f"]
    assert len(copy.data) == len(figure.data) and copy.layout.to_plotly_json() == figure.layout.to_plotly_json()
    copy._view_count = 1
    assert slots.blank() == ["f"]
    copy._view_count = 0                                   # no view yet: still loading, unless ...
    assert slots.blank() == []
    monkeypatch.setattr(display, "PATIENCE_S", 0.0)        # ... the page went on without it too long
    assert slots.blank() == ["f"]
    copy._view_count = 1
    browser_draws(copy)                                    # the copy's view draws its traces
    assert slots.blank() == []


def test_updates_wait_for_the_browser_to_draw_the_previous_one():
    dash = small_dashboard()
    dash.run(5)
    dash.panels["loss"].update([1, 2], [3.0, 2.0], [2], [0.5])   # an edit no browser has drawn
    dash.slots.sent("dashboard")
    assert dash.slots.ready("dashboard")                   # headless: never held back
    dash.slots.sentinel._view_count = 1                    # a page shows the dashboard
    assert not dash.slots.ready("dashboard")
    draws = dash.draws
    dash.refresh(force=False)
    assert dash.draws == draws                             # skipped: the browser is still drawing
    browser_draws(dash.figure)
    assert dash.slots.ready("dashboard")
    dash.refresh(force=False)
    assert dash.draws == draws + 1


def test_lecture_look_has_large_text_and_a_dark_variant():
    dash = small_dashboard()
    dash.run(5)
    normal = dash.figure
    dash.look.value = "lecture"                            # the toggle, as a click does
    assert dash.figure is normal                           # restyled in place, not a new widget
    assert "klteach-lecture" in dash.widget._dom_classes
    legend_fonts = [dash.figure.layout[f"legend{n}"].font.size for n in ("", "12", "21", "22", "31")]
    assert min(legend_fonts) >= plots.look.LECTURE_FONT_PX
    assert min(a.font.size for a in dash.figure.layout.annotations) >= plots.look.LECTURE_FONT_PX
    assert dash.figure.layout.template.layout.font.size >= plots.look.LECTURE_FONT_PX
    assert len(dash.panels["collapse"].data[0].x) == len(dash.curves.steps)    # redrawn at once
    dash.set_look("dark")
    assert dash.figure.layout.template.layout.paper_bgcolor == "rgb(17,17,17)"
    assert "klteach-dark" in dash.widget._dom_classes
    with pytest.raises(ValueError, match="look"):
        dash.set_look("neon")
    dash.set_look("normal")
    assert "klteach-lecture" not in dash.widget._dom_classes


def test_lecture_mode_applies_to_every_figure_drawn_afterwards():
    from klteach.course import lecture_mode

    try:
        lecture_mode()
        fig = plots.collapse_figure(10, [0, 5], [9.0, 8.0], [0.5, 0.6])
        assert fig.layout.template.layout.font.size >= plots.look.LECTURE_FONT_PX
        assert go.Figure().layout.template.layout.font.size >= plots.look.LECTURE_FONT_PX   # plotly's own too
        lecture_mode(dark=True)
        assert go.Figure().layout.template.layout.paper_bgcolor == "rgb(17,17,17)"
    finally:
        plots.use_look()
    assert list(go.Figure().layout.template.layout.colorway) == list(plots.PALETTE)   # the default look


def test_cluster_colours_come_with_symbols():
    colours, symbols = plots.cluster_colours(range(40)), plots.cluster_symbols(range(40))
    assert len(set(zip(colours, symbols))) == 40           # 40 clusters, each its own marker
    assert set(colours) == set(plots.PALETTE) and plots.PALETTE[0] == "#0072B2"   # Okabe–Ito
