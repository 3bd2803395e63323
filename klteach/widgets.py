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
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from . import plots
from .controls import CONTROLLED, DATASET_CHOICES, LOOKS, control_for, speed_control, widen
from .display import FigureSlots, StaticCopy
from .explorers import Explorer, jensen_gap_explorer, posterior_explorer, prior_lambda_explorer
from .live import DATASET_DEFAULTS, MONITOR_DEFAULTS, LiveCurves, LiveRun, Runner, describe_changes
from .replay import Replay

EMBEDDING_POINTS = 300
"""Most points drawn in the embedding view."""
EMBEDDING_EVERY = 3
"""While training, the embedding view (the costliest to draw) follows every third redraw."""

LOOK_CSS = """<style>
.klteach-dashboard.klteach-lecture .widget-label, .klteach-dashboard.klteach-lecture .widget-readout,
.klteach-dashboard.klteach-lecture select, .klteach-dashboard.klteach-lecture button,
.klteach-dashboard.klteach-lecture .widget-html-content { font-size: 18px; }
.klteach-dashboard.klteach-dark { background: #111111; }
.klteach-dashboard.klteach-dark .widget-label, .klteach-dashboard.klteach-dark .widget-readout,
.klteach-dashboard.klteach-dark .widget-html-content { color: #e6e6e6; }
</style>"""
"""Styles of the lecture looks (text of at least 18 px, a dark background), applied by the CSS
classes :meth:`TrainingDashboard.set_look` puts on the dashboard."""

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

    ``TrainingDashboard.replay(run)`` shows a recorded run instead, with no training (:meth:`replay`).
    """

    def __init__(self, dataset: str = "toy", normaliser: str = "inverse-prior",
                 clusters: int | None = None, *, eval_batch: int | None = None,
                 monitor_every: int | None = None, evaluate_every: int | None = None,
                 refresh_per_second: float = 4.0, **config: Any) -> None:
        run = LiveRun(dataset, normaliser, clusters, eval_batch=eval_batch, monitor_every=monitor_every,
                      evaluate_every=evaluate_every, refresh_per_second=refresh_per_second, **config)
        self._show(run)

    @classmethod
    def replay(cls, run: str | Path, steps_per_second: float = 50.0,
               refresh_per_second: float = 4.0) -> TrainingDashboard:
        """A dashboard that plays a recorded run (:class:`klteach.replay.Replay`) at lecture pace:
        ``run`` is a run folder (``train --out DIR``) or a shipped recording
        (:func:`klteach.replay.recordings`, e.g. ``"digits-collapse-rescue"``). Play / Pause /
        Rewind and a speed slider drive it; ``dash.run(steps)`` jumps ahead from code. The
        figures, the switches and the collapse alarm are those of the recording; embeddings are
        not recorded."""
        dash = cls.__new__(cls)
        dash._show(Replay(run, steps_per_second, refresh_per_second))
        return dash

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
        """The :class:`~klteach.train.Trainer` being trained (None in a replay)."""
        return getattr(self.live, "trainer", None)

    @property
    def replaying(self) -> bool:
        """True when this dashboard plays a recording (:meth:`replay`)."""
        return isinstance(self.live, Replay)

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
        """Stop, and start a fresh run (step 0, new model) with the controls' settings; a replay
        goes back to its start."""
        if isinstance(self.live, Replay):
            self.live.rewind()
            return
        pending = {name: control.value for name, control in self.controls.items()}
        self._live_run().reset(**pending)

    def run(self, steps: int) -> None:
        """Take ``steps`` steps now, in this thread (deterministic; for code and nbval), then
        redraw. Stops a background run first. Errors are shown in the status line and raised."""
        try:
            self.live.run(steps)
        finally:
            self.static.update()

    def _live_run(self) -> LiveRun:
        if not isinstance(self.live, LiveRun):
            raise TypeError("this dashboard replays a recording: its settings are the recorded ones")
        return self.live

    # ---------------------------------------------------------------- display
    @property
    def widget(self) -> widgets.Widget:
        """The dashboard as one ipywidgets box."""
        self.slots.watch()
        return self._root

    def _ipython_display_(self) -> None:
        """Shown as the live widget, with static copies for front ends without widgets
        (:class:`klteach.display.StaticCopy`)."""
        self.static.show()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return self.static.bundle()

    def __repr__(self) -> str:
        return self._describe()

    def _describe(self) -> str:
        """The dashboard in one line of text (what a front end without widgets or images shows)."""
        run, latest = self.live, self.latest
        verdict = f", {self.collapse_state}" if latest else ""
        what = f"replay of {run.name}" if isinstance(run, Replay) else "TrainingDashboard"
        return (f"{what}: step {run.step_count}, {self._settings_text()}{verdict} "
                "(a live widget: run the notebook in JupyterLab to use it)")

    def _build_widgets(self) -> None:
        self.controls = self._make_controls()
        for name, control in self.controls.items():
            control.observe(self._control_changed(name), names="value")
        names = ("Play", "Pause", "Rewind") if self.replaying else ("Start", "Pause", "Reset")
        self.buttons = {key: widgets.Button(description=name, icon=icon, layout=widgets.Layout(width="100px"))
                        for key, name, icon in zip(("start", "pause", "reset"), names,
                                                   ("play", "pause", "backward" if self.replaying else "refresh"))}
        self.buttons["start"].button_style = "success"
        self.buttons["start"].on_click(lambda _: self._safely(self.start))
        self.buttons["pause"].on_click(lambda _: self._safely(self.pause))
        self.buttons["reset"].on_click(lambda _: self._safely(self.reset))
        self.look = widgets.ToggleButtons(options=LOOKS, value="normal", description="look",
                                          style={"button_width": "140px"})
        self.look.observe(lambda change: self._safely(lambda: self.set_look(change["new"])), names="value")
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.alarm = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.status.add_class("klteach-status")
        self.alarm.add_class("klteach-alarm")
        self.panels: dict[str, plots.Panel] = {}
        self.slots = FigureSlots({}, self._draw_lock, sentinel=self.status,
                                 on_put=lambda _name, fig: plots.bind(self.panels, fig))
        self._root = widgets.VBox([widgets.HTML(LOOK_CSS), *self._control_rows(), self.status, self.alarm,
                                   self.slots.box("dashboard")])
        self._root.add_class("klteach-dashboard")
        self._new_figure()
        self.static = StaticCopy(self._root, lambda: self.figure, self._describe, self.slots)

    def _make_controls(self) -> dict[str, widgets.ValueWidget]:
        if isinstance(self.live, Replay):
            return {"speed": speed_control(self.live.speed)}
        values = self.trainer.config
        return {name: control_for(name, getattr(values, name)) for name in CONTROLLED}

    def _control_rows(self) -> list[widgets.Widget]:
        c = self.controls
        if self.replaying:
            return [widgets.HBox([c["speed"], *self.buttons.values()]), self.look]
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
            self._restyle()
        self.refresh()

    def _figure_look(self) -> plots.Look:
        return plots.Look(lecture=self.look.value != "normal", dark=self.look.value == "dark")

    def _plain_figure(self) -> go.Figure:
        """The dashboard's figure in the current look, with its panels in :attr:`panels`."""
        self._three_d = self._embedding_dim() == 3
        fig, self.panels = plots.dashboard_figure(self._three_d, self.live.has_labels, look=self._figure_look(),
                                                  embeddings=not self.replaying)   # replays record none
        return fig

    def _new_figure(self) -> None:
        """One FigureWidget with the five panels (rebuilt when the embedding view changes)."""
        self.slots.put("dashboard", go.FigureWidget(self._plain_figure()))

    def _restyle(self) -> None:
        """Give the shown figure the current look in place, in one message: the same widget takes
        the layout and trace styles of a figure drawn in that look (a new widget would have to
        reach the browser again, see :class:`klteach.display.FigureSlots`)."""
        fig = self._plain_figure()
        self._draw(embedding=True)                       # the current curves, into the plain figure
        widget = self.figure
        with widget.batch_update():
            widget.update_layout(fig.layout.to_plotly_json(), overwrite=True)
            for shown, styled in zip(widget.data, fig.data):
                shown.update({k: v for k, v in styled.to_plotly_json().items() if k != "uid"}, overwrite=True)
        plots.bind(self.panels, widget)

    def _embedding_dim(self) -> int:
        return int(self.live.settings.get("dim") or 0)

    @property
    def figure(self) -> go.FigureWidget:
        """The dashboard's figure; ``dash.panels[name].data`` are the traces of one panel
        (``collapse``, ``cluster_sizes``, ``loss``, ``quality``, ``embedding``)."""
        return self.slots.figures["dashboard"]

    def _control_changed(self, name: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if self._syncing:
                return
            if isinstance(self.live, Replay):
                self._safely(lambda: setattr(self.live, "speed", change["new"]))
            else:
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
                widen(control, value)
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
        if isinstance(run, Replay):
            state = "Playing" if run.running else ("Ended" if run.finished else "Paused")
            where = (f"<b>{state}</b> · replay of {escape(run.name)} · step {run.step_count} of {run.total_steps}"
                     f" · {run.speed:.0f} steps/s")
        else:
            state = "Running" if run.running else "Paused"
            rate = f" · {run.steps_per_second:.1f} steps/s" if run.running else ""
            where = f"<b>{state}</b> · step {run.step_count}{rate}"
        self.status.value = f"<div>{where} · {self._settings_html()}</div>"

    def _setting(self, name: str, digits: str = ".3g") -> str:
        """A setting as shown: ``?`` where a replay does not know it yet."""
        value = self.live.settings.get(name)
        return "?" if value is None else format(value, digits) if isinstance(value, float) else str(value)

    def _settings_html(self) -> str:
        s = self._setting
        return (f"{escape(s('dataset'))} · <span class='klteach-normaliser'>normaliser={escape(s('normaliser'))}"
                f"</span> · τ<sub>s</sub>={s('tau_student')} · τ<sub>t</sub>={s('tau_teacher')} · "
                f"λ={s('lam')} · momentum={s('momentum')} · K={s('clusters')}")

    def _settings_text(self) -> str:
        s = self._setting
        return f"{s('dataset')}, normaliser={s('normaliser')}, K={s('clusters')}"

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
