"""Live widgets: a training dashboard, and (re-exported) the three explorers of the equations.

:class:`TrainingDashboard` shows a :class:`klteach.live.LiveRun` (a real student/teacher model
training in a background thread) with controls and one figure: the cluster sizes, the collapse
monitor, loss and KL, kNN/NMI and the embeddings move while a lecturer or a student switches
normalisers, temperatures, λ and the EMA momentum. Its alarm says in words (and with an icon,
not by colour alone) when the model collapses, since when, and after which setting change.

Driven from code (as nbval does), :meth:`TrainingDashboard.run` takes steps synchronously,
deterministically, and redraws; ``dash.set(normaliser="none")`` changes settings exactly as the
controls do. The figure is redrawn at most ``refresh_per_second`` times a second, each time in
one ``batch_update`` replacing whole arrays, and only once the browser drew the previous one.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from . import plots
from .display import FigureSlots
from .explorers import Explorer, jensen_gap_explorer, posterior_explorer, prior_lambda_explorer
from .live import DATASET_DEFAULTS, MONITOR_DEFAULTS, LiveCurves, LiveRun, Runner, describe_changes
from .normalisers import NORMALISERS

DATASET_CHOICES = (("toy sphere (3-D)", "toy"), ("digits (8×8)", "digits"),
                   ("CIFAR-10 sample", "cifar10-sample"))
"""The dashboard's dataset menu: (label, ``load_dataset`` name)."""

EMBEDDING_POINTS = 300
"""Most points drawn in the embedding view."""
EMBEDDING_EVERY = 3
"""While training, the embedding view (the costliest to draw) follows every third redraw."""

CONTROLLED = ("dataset", "normaliser", "clusters", "tau_student", "tau_teacher", "lam", "momentum")
"""Settings with a control in the dashboard."""

LOOKS = (("normal", "normal"), ("lecture", "lecture"), ("dark lecture", "dark"))
"""The dashboard's look toggle: (label, value); see :mod:`klteach.plots.look`."""

ALARM_ICONS = {"healthy": "✓", "partial": "◐", "one-cluster": "⚠", "uniform": "⚠"}
"""Each verdict has its own icon and words, so the alarm never relies on colour alone."""
ALARM_COLOURS = {"healthy": "#009E73", "partial": "#E69F00", "one-cluster": "#D55E00", "uniform": "#D55E00"}


class TrainingDashboard:
    """A live training run with controls, plots and a collapse alarm.

    ``TrainingDashboard(dataset="toy", normaliser="inverse-prior", clusters=8, **config)`` builds a
    :class:`~klteach.live.LiveRun` (``config`` takes any :class:`~klteach.train.TrainConfig`
    field) and the widget; put it last in a cell to display it. Start / Pause / Reset run it in
    a background thread; ``dash.run(steps)`` runs it synchronously from code.

    Changes (controls or :meth:`set`) go through :meth:`Trainer.set`: live settings
    (:data:`~klteach.train.LIVE_SETTINGS`) act at the next step without a restart; K and the
    dataset (:data:`~klteach.train.RESTART_SETTINGS`) restart the run.
    """

    def __init__(self, dataset: str = "toy", normaliser: str = "inverse-prior",
                 clusters: int | None = None, *, eval_batch: int | None = None,
                 monitor_every: int | None = None, evaluate_every: int | None = None,
                 refresh_per_second: float = 4.0, **config: Any) -> None:
        run = LiveRun(dataset, normaliser, clusters, eval_batch=eval_batch, monitor_every=monitor_every,
                      evaluate_every=evaluate_every, refresh_per_second=refresh_per_second, **config)
        self._show(run)

    def _show(self, run: Runner) -> None:
        """Build the widgets around ``run`` and draw it."""
        self.live = run
        run.on_refresh = self.refresh
        self._draw_lock = threading.Lock()
        self._syncing = False
        self._draws = 0
        self._refused = ""
        self._build_widgets()
        self.refresh()

    # ---------------------------------------------------------------- the run, as the chapters use it
    @property
    def trainer(self) -> Any:
        """The :class:`~klteach.train.Trainer` being trained."""
        return getattr(self.live, "trainer", None)

    @property
    def curves(self) -> LiveCurves:
        return self.live.curves

    @curves.setter
    def curves(self, curves: LiveCurves) -> None:
        self.live.curves = curves

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the last run, if any."""
        return self.live.error

    @property
    def running(self) -> bool:
        """True while the background thread is stepping."""
        return self.live.running

    @property
    def collapse_state(self) -> str:
        """``"healthy"``, ``"partial"``, ``"one-cluster"`` or ``"uniform"`` at the last measurement."""
        return self.live.collapse_state

    @property
    def collapse_message(self) -> str:
        """In words, which collapse is happening and since when; ``""`` when there is none."""
        return self.live.collapse_message

    @property
    def latest(self) -> dict[str, Any]:
        """The last live measurement: step, effective clusters, mean entropy, KL, collapse state."""
        return self.live.latest

    @property
    def draws(self) -> int:
        """How many times the figure has been redrawn."""
        return self._draws

    def set(self, **changes: Any) -> None:
        """Change settings, as the controls do; they take effect at the next step. Changing the
        dataset also takes that dataset's defaults (:data:`DATASET_DEFAULTS`) unless given."""
        changes = self._live_run().set(**changes)   # validates: a bad value raises, changes nothing
        self._refused = ""
        self._sync_controls(changes)
        self._show_status()

    def start(self) -> None:
        """Train in a background thread until :meth:`pause` (the page stays live)."""
        self._refused = ""
        self.live.start()

    def pause(self, timeout: float = 60.0) -> None:
        """Stop the background thread after its current step (waits for it)."""
        self.live.pause(timeout)
        self._show_status()

    def reset(self) -> None:
        """Stop, and start a fresh run (step 0, new model) with the controls' settings."""
        run = self._live_run()
        pending = {name: control.value for name, control in self.controls.items()}
        run.reset(**pending)

    def run(self, steps: int) -> None:
        """Take ``steps`` steps now, in this thread (deterministic; for code and nbval), then
        redraw. Stops a background run first. Errors are shown in the status line and raised."""
        self.live.run(steps)

    def _live_run(self) -> LiveRun:
        if not isinstance(self.live, LiveRun):
            raise TypeError("this dashboard replays a recording: it has no settings to change")
        return self.live

    # ---------------------------------------------------------------- widgets
    @property
    def widget(self) -> widgets.Widget:
        """The dashboard as one ipywidgets box."""
        self.slots.watch()
        return self._root

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        self.slots.watch()
        return self._root._repr_mimebundle_(**kwargs)

    def _build_widgets(self) -> None:
        self.controls = self._make_controls()
        for name, control in self.controls.items():
            control.observe(self._control_changed(name), names="value")
        self.buttons = {name: widgets.Button(description=name.capitalize(), icon=icon,
                                             layout=widgets.Layout(width="100px"))
                        for name, icon in (("start", "play"), ("pause", "pause"), ("reset", "refresh"))}
        self.buttons["start"].button_style = "success"
        self.buttons["start"].on_click(lambda _: self._safely(self.start))
        self.buttons["pause"].on_click(lambda _: self._safely(self.pause))
        self.buttons["reset"].on_click(lambda _: self._safely(self.reset))
        self.look = widgets.ToggleButtons(options=LOOKS, value="normal", description="look",
                                          style={"button_width": "110px"})
        self.look.observe(lambda change: self._safely(lambda: self.set_look(change["new"])), names="value")
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.alarm = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.status.add_class("klteach-status")
        self.alarm.add_class("klteach-alarm")
        self.panels: dict[str, plots.Panel] = {}
        self.slots = FigureSlots({}, self._draw_lock, sentinel=self.status,
                                 on_put=lambda _name, fig: plots.bind(self.panels, fig))
        self._root = widgets.VBox([*self._control_rows(), self.status, self.alarm,
                                   self.slots.box("dashboard")])
        self._root.add_class("klteach-dashboard")
        self._new_figure()

    def _make_controls(self) -> dict[str, widgets.ValueWidget]:
        cfg = self.trainer.config
        wide = dict(style={"description_width": "initial"}, layout=widgets.Layout(width="300px"))
        return {
            "dataset": widgets.Dropdown(options=DATASET_CHOICES, value=cfg.dataset,
                                        description="dataset", **wide),
            "normaliser": widgets.Dropdown(options=NORMALISERS, value=cfg.normaliser,
                                           description="normaliser", **wide),
            "clusters": widgets.IntSlider(value=cfg.clusters, min=2, max=max(64, cfg.clusters),
                                          description="K (restarts)", continuous_update=False, **wide),
            "tau_student": widgets.FloatLogSlider(value=cfg.tau_student, base=10, min=-2, max=0,
                                                  step=0.05, description="τ student",
                                                  readout_format=".3f", continuous_update=False, **wide),
            "tau_teacher": widgets.FloatLogSlider(value=cfg.tau_teacher, base=10, min=-2, max=0,
                                                  step=0.05, description="τ teacher",
                                                  readout_format=".3f", continuous_update=False, **wide),
            "lam": widgets.FloatSlider(value=cfg.lam, min=0, max=2, step=0.05, description="λ (eq. 14)",
                                       continuous_update=False, **wide),
            "momentum": widgets.FloatSlider(value=cfg.momentum, min=0, max=0.999, step=0.001,
                                            readout_format=".3f", description="EMA momentum",
                                            continuous_update=False, **wide),
        }

    def _control_rows(self) -> list[widgets.Widget]:
        c = self.controls
        return [widgets.HBox([c["dataset"], c["normaliser"], c["clusters"]]),
                widgets.HBox([c["tau_student"], c["tau_teacher"], c["lam"]]),
                widgets.HBox([c["momentum"], *self.buttons.values()]),
                self.look]

    def set_look(self, look: str) -> None:
        """Draw the dashboard ``"normal"``, in ``"lecture"`` mode (text ≥ 18 px) or lecture mode
        on a ``"dark"`` background (the toggle does this)."""
        if look not in dict((value, label) for label, value in LOOKS):
            raise ValueError(f"unknown look {look!r}; choose one of {', '.join(v for _, v in LOOKS)}")
        if self.look.value != look:
            self.look.value = look                      # its observer calls back here
            return
        for css_class, on in (("klteach-lecture", look != "normal"), ("klteach-dark", look == "dark")):
            (self._root.add_class if on else self._root.remove_class)(css_class)
        with self._draw_lock:
            self._new_figure()
        self.refresh()

    def _figure_look(self) -> plots.Look:
        return plots.Look(lecture=self.look.value != "normal", dark=self.look.value == "dark")

    def _new_figure(self) -> None:
        """One FigureWidget with the five panels (rebuilt when the view or the look changes)."""
        self._three_d = self._embedding_dim() == 3
        fig, panels = plots.dashboard_figure(self._three_d, self._has_labels(), look=self._figure_look())
        self.panels = panels
        self.slots.put("dashboard", go.FigureWidget(fig))

    def _embedding_dim(self) -> int:
        return int(self.trainer.config.dim)

    def _has_labels(self) -> bool:
        return self.trainer.dataset.test_labels is not None

    @property
    def figure(self) -> go.FigureWidget:
        """The dashboard's figure; ``dash.panels[name].data`` are the traces of one panel
        (``collapse``, ``cluster_sizes``, ``loss``, ``quality``, ``embedding``)."""
        return self.slots.figures["dashboard"]

    def _control_changed(self, name: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if self._syncing:
                return
            self._safely(lambda: self.set(**{name: change["new"]}))
        return handler

    def _sync_controls(self, changes: dict[str, Any]) -> None:
        """Show ``changes`` on the controls without sending them back to the trainer."""
        self._syncing = True
        try:
            for name, value in changes.items():
                control = self.controls.get(name)
                if control is None:
                    continue
                if name == "clusters" and value > control.max:
                    control.max = value
                control.value = value
        finally:
            self._syncing = False

    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a control's action; show any error in the status line instead of losing it."""
        try:
            action()
        except Exception as error:
            self._refused = f"{type(error).__name__}: {error}"
            self._show_status()

    # ---------------------------------------------------------------- drawing
    def refresh(self, force: bool = True) -> None:
        """Redraw the figure, the status line and the alarm from the latest measurements. Unless
        ``force``, the figure is skipped while the browser is still drawing the previous update
        (:meth:`FigureSlots.ready`) and the 3-D/PCA embedding is redrawn every third time only."""
        with self._draw_lock:
            if self._three_d != (self._embedding_dim() == 3):     # the dataset changed the view
                self._new_figure()
                force = True
            if force or self.slots.ready("dashboard"):
                self._draw(embedding=force or self._draws % EMBEDDING_EVERY == 0)
                self.slots.sent("dashboard")
            self._show_status()
            self.alarm.value = self._alarm_html()

    def _draw(self, embedding: bool) -> None:
        c, k, p = self.curves, self.live.clusters, self.panels
        snap = getattr(self.live, "snapshot", None)
        self._draws += 1
        with self.figure.batch_update():                         # one message per redraw
            p["collapse"].update(k, c.steps, c.effective, c.entropy, c.events)
            p["loss"].update(plots.thin(c.loss_steps), plots.thin(c.loss), c.steps, c.kl)
            p["quality"].update(c.quality_steps, c.knn, c.nmi)
            if c.sizes is not None:
                p["cluster_sizes"].update(*c.sizes)
            if snap is not None and embedding:
                shown = slice(0, EMBEDDING_POINTS)
                p["embedding"].update(snap.z[shown], snap.w, snap.p[shown].argmax(-1),
                                      None if snap.labels is None else snap.labels[shown])

    def _show_status(self) -> None:
        run = self.live
        if run.error is not None and not run.running:
            text = (f"<b>Stopped by an error at step {run.error_step}:</b> {escape(run.error_text)}")
            self.status.value = f"<div style='color:#b00020'>⛔ {text}</div>"
            return
        if self._refused:
            self.status.value = f"<div style='color:#b00020'>⛔ <b>Refused:</b> {escape(self._refused)}</div>"
            return
        cfg = self.trainer.config
        state = "Running" if run.running else "Paused"
        rate = f" · {run.steps_per_second:.1f} steps/s" if run.running else ""
        self.status.value = (
            f"<div><b>{state}</b> · step {run.step_count}{rate} · {escape(cfg.dataset)} · "
            f"<span class='klteach-normaliser'>normaliser={escape(cfg.normaliser)}</span> · "
            f"τ<sub>s</sub>={cfg.tau_student:.3g} · τ<sub>t</sub>={cfg.tau_teacher:.3g} · "
            f"λ={cfg.lam:.3g} · momentum={cfg.momentum:.3g} · K={cfg.clusters}</div>")

    def _alarm_html(self) -> str:
        state, latest, k = self.collapse_state, self.latest, self.live.clusters
        if not latest:
            return ""
        message = self.collapse_message or (
            f"No collapse: {latest['effective_clusters']:.1f} effective clusters of K={k}, mean entropy "
            f"{latest['mean_entropy']:.2f} nats (uniform would be {math.log(k):.2f})")
        colour = ALARM_COLOURS.get(state, "#D55E00")
        weight = "normal" if state == "healthy" else "bold"
        return (f"<div class='klteach-alarm-{state}' style='padding:4px 8px;border-left:6px solid {colour};"
                f"font-weight:{weight}'>{ALARM_ICONS.get(state, '⚠')} {escape(message)}</div>")


__all__ = ["TrainingDashboard", "Explorer", "posterior_explorer", "prior_lambda_explorer",
           "jensen_gap_explorer", "DATASET_DEFAULTS", "MONITOR_DEFAULTS", "DATASET_CHOICES",
           "LiveCurves", "describe_changes"]
