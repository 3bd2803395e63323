"""Live widgets: a training dashboard and three explorers of the paper's equations.

:class:`TrainingDashboard` trains a real student/teacher model while a lecturer or a student
switches normalisers, temperatures, λ and the EMA momentum, and watches the cluster sizes, the
collapse monitor, loss and KL, kNN/NMI and the embeddings move. It says in words when the model
collapses (to one cluster, or to the uniform output), since when, and how long after which
setting change.

How training runs while the page stays live
-------------------------------------------
The kernel reads messages from the browser (a slider moved, a button pressed) only while its
main thread is free. Three ways keep it free during training (see ``DESIGN.md``):

1. **a background thread** runs ``trainer.step()`` in a loop — *chosen*;
2. an asyncio task that yields to the event loop between steps;
3. ``jupyter-ui-poll``, which pumps the kernel's message queue from inside a blocking loop.

We use the thread because (a) the main thread stays free *during* a step as well as between
steps, so the controls answer at once even when one step or an evaluation takes a second
(CIFAR on a CPU), where an asyncio task would freeze the page for that long; (b) torch releases
the interpreter lock inside its kernels, so the thread costs the page almost nothing; (c) it
needs no private kernel API (option 3 reaches into ipykernel internals and blocks "Run All"
until training ends) and no running event loop (option 2 fails outside a kernel).
The one hazard is concurrent access, and it is small: the only thing the two threads share is
:meth:`klteach.train.Trainer.set`, which queues changes under a lock and applies them at the
start of the next step, and the figures, which are redrawn under one lock. Figure updates sent
from a thread need ipykernel ≥ 7.1 (7.0.0 dropped them), which ``pyproject.toml`` requires.
An exception in the loop stops it and is shown in the dashboard's status line (and kept in
``dash.error``), never lost in a thread.

Driven from code (as nbval does), :meth:`TrainingDashboard.run` takes steps synchronously in the
calling thread, deterministically, and redraws the figures; ``dash.set(normaliser="none")``
changes settings exactly as the controls do.

The live plots are cheap by design: the collapse diagnostics, KL and cluster sizes come from a
fixed small evaluation batch every ``monitor_every`` steps; the full
:meth:`~klteach.train.Trainer.evaluate` (kNN accuracy and NMI) runs every ``evaluate_every``
steps; the figures are redrawn at most ``refresh_per_second`` times a second, each in one
``batch_update`` replacing whole arrays.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from typing import Any, Callable, Iterator

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from . import metrics, plots, theory
from .data import make_toy_sphere
from .normalisers import NORMALISERS
from .train import Trainer

DATASET_CHOICES = (("toy sphere (3-D)", "toy"), ("digits (8×8)", "digits"),
                   ("CIFAR-10 sample", "cifar10-sample"))
"""The dashboard's dataset menu: (label, ``load_dataset`` name)."""

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(clusters=8, dim=3, batch_size=128, eval_size=1000),
    "digits": dict(clusters=20, dim=64, batch_size=128, eval_size=1437),
    "cifar10-sample": dict(clusters=10, dim=64, batch_size=64, arch="cnn", eval_size=1000),
}
"""Settings tuned for lecture speed on a 2-core laptop, per dataset (``dim=3`` puts the toy
embeddings on a sphere we can draw). Anything passed to the dashboard overrides them."""

MONITOR_DEFAULTS: dict[str, dict[str, int]] = {
    "toy": dict(eval_batch=256, monitor_every=5, evaluate_every=200),
    "digits": dict(eval_batch=256, monitor_every=5, evaluate_every=200),
    "cifar10-sample": dict(eval_batch=128, monitor_every=2, evaluate_every=100),
}
"""How often the live plots measure (steps) and how big their fixed evaluation batch is."""

EMBEDDING_POINTS = 300
"""Most points drawn in the embedding view."""
EMBEDDING_EVERY = 3
"""While training, the embedding view (the costliest to draw) follows every third redraw."""

CONTROLLED = ("dataset", "normaliser", "clusters", "tau_student", "tau_teacher", "lam", "momentum")
"""Settings with a control in the dashboard."""


# ---------------------------------------------------------------- the dashboard's records

@dataclass
class LiveCurves:
    """What the live plots show, since the last (re)start of the run."""

    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    effective: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    collapse: list[str] = field(default_factory=list)
    quality_steps: list[int] = field(default_factory=list)
    knn: list[float] = field(default_factory=list)
    nmi: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Snapshot:
    """The model seen on the fixed evaluation batch at one step."""

    step: int
    z: Tensor             # student embeddings (B, D)
    w: Tensor             # student weight vectors (K, D)
    p: Tensor             # student posterior, eq. (6)
    q: Tensor             # teacher signal after the normaliser, eq. (7), (14)-(16), (23)
    labels: Tensor | None


@contextmanager
def keep_modes(*modules: torch.nn.Module) -> Iterator[None]:
    """Restore each module's train/eval mode afterwards, so measuring never changes training."""
    modes = [[m.training for m in module.modules()] for module in modules]
    try:
        yield
    finally:
        for module, saved in zip(modules, modes):
            for m, mode in zip(module.modules(), saved):
                m.training = mode


def describe_changes(changes: dict[str, Any]) -> str:
    """A setting change in words: ``normaliser to none and τ_t to 0.05``."""
    return " and ".join(f"{name} to {value}" for name, value in plots.setting_parts(changes))


# ---------------------------------------------------------------- figures that redraw themselves

RENDER_CHECKS_S = (6.0, 15.0, 30.0)
"""Seconds after display at which :class:`FigureSlots` looks for figures left blank."""
ACK_TIMEOUT_S = 3.0
"""Longest wait for the browser to confirm a figure update before the next one is sent anyway."""


class FigureSlots:
    """Boxes that each hold one ``FigureWidget``; a figure whose browser view stayed blank is
    replaced by a fresh copy.

    Why: plotly's ``FigureWidget`` is an anywidget whose JavaScript (plotly.js, ~5 MB) is
    compiled for each figure, and anywidget gives a model 2 s to load it; the message carrying
    the figure's data waits for that and is dropped when the deadline passes. On a slow or busy
    machine the first figures of a page can miss it and stay blank for good, while a later copy
    loads from the browser's warm compile cache and draws. A view that drew its traces reports
    them back (plotly's ``_js2py_traceDeltas``). A figure that never reported, in a page that is
    alive (the ``sentinel`` widget displayed next to it has a view: ipywidgets' ``_view_count``),
    is replaced, one figure per check, at most twice. Headless runs (no views) are left alone.

    The same reports pace the updates (:meth:`ready`, :meth:`sent`): a figure is sent its next
    update only once the browser has drawn the previous one (or ``ACK_TIMEOUT_S`` passed), so a
    slow browser never builds a backlog and the plots never lag behind the training.
    """

    def __init__(self, figures: dict[str, go.FigureWidget], lock: threading.Lock,
                 sentinel: widgets.Widget, on_put: Callable[[str, go.FigureWidget], Any] | None = None
                 ) -> None:
        self.sentinel = sentinel
        sentinel._view_count = 0                     # ask the browser to count its views
        self.figures: dict[str, go.FigureWidget] = {}
        self.boxes: dict[str, widgets.Box] = {}
        self._lock = lock
        self._on_put = on_put
        self._rendered: set[int] = set()
        self._sent_at: dict[int, float] = {}
        self._drawn_at: dict[int, float] = {}
        self._repairs: dict[str, int] = {}
        self._watching = False
        for name, fig in figures.items():
            self.put(name, fig)

    def box(self, name: str) -> widgets.Box:
        """The box showing figure ``name`` (created empty when it has no figure yet)."""
        return self.boxes.setdefault(name, widgets.Box())

    def put(self, name: str, fig: go.FigureWidget) -> None:
        """Show ``fig`` as figure ``name`` (replacing the one shown before)."""
        fig.observe(lambda change, key=id(fig): self._drawn(key, change), names="_js2py_traceDeltas")
        self.figures[name] = fig
        if self._on_put is not None:
            self._on_put(name, fig)
        self.box(name).children = (fig,)

    def _drawn(self, key: int, change: dict) -> None:
        if change["new"] and change["new"].get("trace_deltas"):
            self._rendered.add(key)
            self._drawn_at[key] = time.monotonic()

    def ready(self, name: str) -> bool:
        """May figure ``name`` be sent an update now? Yes unless its browser view has not yet
        drawn the last one (headless, or before the first drawing: always yes)."""
        key = id(self.figures[name])
        sent = self._sent_at.get(key)
        return (key not in self._rendered or sent is None or self._drawn_at.get(key, 0.0) >= sent
                or time.monotonic() - sent > ACK_TIMEOUT_S)

    def sent(self, name: str) -> None:
        """Note that figure ``name`` was just sent an update."""
        self._sent_at[id(self.figures[name])] = time.monotonic()

    def blank(self) -> list[str]:
        """Names of figures shown in a live page that have not drawn their traces."""
        alive = (self.sentinel._view_count or 0) > 0 or bool(self._rendered)
        return [name for name, fig in self.figures.items()
                if alive and fig.data and id(fig) not in self._rendered]

    def watch(self) -> None:
        """Start (once) the background check for blank figures."""
        if self._watching:
            return
        self._watching = True
        threading.Thread(target=self._watch, name="klteach-figure-watch", daemon=True).start()

    def _watch(self) -> None:
        start = time.monotonic()
        for check in RENDER_CHECKS_S:
            time.sleep(max(0.0, start + check - time.monotonic()))
            with self._lock:
                for name in self.blank()[:1]:
                    if self._repairs.get(name, 0) < 2:
                        self._repairs[name] = self._repairs.get(name, 0) + 1
                        self.put(name, go.FigureWidget(self.figures[name]))


# ---------------------------------------------------------------- the dashboard

class TrainingDashboard:
    """A live training run with controls, plots and a collapse alarm.

    ``TrainingDashboard(dataset="toy", normaliser="inverse-prior", clusters=8, **config)`` builds a
    :class:`~klteach.train.Trainer` (``config`` takes any :class:`~klteach.train.TrainConfig`
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
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"unknown dataset {dataset!r} for the dashboard; choose one of "
                             f"{', '.join(DATASET_DEFAULTS)}")
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second!r}")
        monitor = dict(MONITOR_DEFAULTS[dataset])
        for name, value in (("eval_batch", eval_batch), ("monitor_every", monitor_every),
                            ("evaluate_every", evaluate_every)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "evaluate_every" else 1):
                    raise ValueError(f"{name} must be a positive integer, got {value!r}")
                monitor[name] = value
        self.eval_batch, self.monitor_every, self.evaluate_every = (
            monitor["eval_batch"], monitor["monitor_every"], monitor["evaluate_every"])
        self.refresh_interval = 1.0 / refresh_per_second
        self._overrides = {k: v for k, v in config.items()}
        settings = {**DATASET_DEFAULTS[dataset], **config, "dataset": dataset, "normaliser": normaliser}
        if clusters is not None:
            settings["clusters"] = clusters
        self.trainer = Trainer(**settings)
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._draw_lock = threading.Lock()
        self._syncing = False
        self._last_refresh = 0.0
        self._draws = 0
        self._rate = (time.perf_counter(), 0)
        self._steps_per_second = 0.0
        self._build_widgets()
        self._restart_records()
        self._measure()
        self.refresh()

    # ---------------------------------------------------------------- public API
    @property
    def running(self) -> bool:
        """True while the background training thread is stepping."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def widget(self) -> widgets.Widget:
        """The dashboard as one ipywidgets box."""
        self.slots.watch()
        return self._root

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        self.slots.watch()
        return self._root._repr_mimebundle_(**kwargs)

    def set(self, **changes: Any) -> None:
        """Change settings, as the controls do; they take effect at the next step. Changing the
        dataset also takes that dataset's defaults (:data:`DATASET_DEFAULTS`) unless given."""
        if "dataset" in changes:
            changes = self._dataset_changes(changes["dataset"], changes)
        self.trainer.set(**changes)      # validates: a bad value raises ValueError, changes nothing
        self._sync_controls(changes)
        self._show_status()

    def start(self) -> None:
        """Train in a background thread until :meth:`pause` (the page stays live)."""
        if self.running:
            return
        self.error = None
        self._stop.clear()
        self._rate = (time.perf_counter(), self.trainer.step_count)
        self._thread = threading.Thread(target=self._loop, name="klteach-dashboard", daemon=True)
        self._thread.start()
        self._show_status()

    def pause(self, timeout: float = 60.0) -> None:
        """Stop the background thread after its current step (waits for it)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._show_status()

    def reset(self) -> None:
        """Stop, and start a fresh run (step 0, new model) with the current settings."""
        self.pause()
        settings = self.trainer.config
        pending = self._control_values()
        if pending["dataset"] != settings.dataset:
            pending = self._dataset_changes(pending["dataset"], pending)
        self.trainer = Trainer(dataclasses.replace(settings, **pending))
        self.error = None
        self._restart_records()
        self._measure()
        self.refresh()

    def run(self, steps: int) -> None:
        """Take ``steps`` steps now, in this thread (deterministic; for code and nbval), then
        redraw. Stops a background run first. Errors are shown in the status line and raised."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.pause()
        self._rate = (time.perf_counter(), self.trainer.step_count)
        try:
            for _ in range(steps):
                self._advance()
                self._maybe_refresh()
        except Exception as error:
            self._fail(error)
            raise
        finally:
            self.refresh()

    @property
    def collapse_state(self) -> str:
        """``"healthy"``, ``"one-cluster"`` or ``"uniform"`` at the last measurement."""
        return self.curves.collapse[-1] if self.curves.collapse else "healthy"

    @property
    def collapse_message(self) -> str:
        """In words, which collapse is happening and since when; ``""`` when there is none."""
        state = self.collapse_state
        if state == "healthy":
            return ""
        curves = self.curves
        onset = len(curves.collapse) - 1
        while onset > 0 and curves.collapse[onset - 1] == state:
            onset -= 1
        step, when = curves.steps[onset], curves.times[onset]
        clusters = self.trainer.config.clusters
        if state == "one-cluster":
            head = f"Collapsed to ONE cluster (or a handful) since step {step}"
            detail = (f"{curves.effective[-1]:.2f} effective clusters of K={clusters} (the alarm is at "
                      f"≤ {metrics.one_cluster_threshold(clusters):.1f}): almost every sample goes to "
                      "the same few clusters")
        else:
            head = f"Collapsed to the UNIFORM output since step {step}"
            detail = (f"mean per-sample entropy {curves.entropy[-1]:.2f} nats, near log K = "
                      f"{math.log(clusters):.2f}: every sample's assignment is nearly flat")
        cause = [e for e in curves.events if e["step"] < step]
        if cause:
            event = cause[-1]
            head += (f" ({when - event['time']:.1f} s after you switched "
                     f"{describe_changes(event['changes'])} at step {event['step']})")
        return f"{head}; {detail}."

    @property
    def latest(self) -> dict[str, Any]:
        """The last live measurement: step, effective clusters, mean entropy, KL, collapse state."""
        c = self.curves
        if not c.steps:
            return {}
        return {"step": c.steps[-1], "effective_clusters": c.effective[-1],
                "mean_entropy": c.entropy[-1], "kl_teacher_student": c.kl[-1],
                "collapse": c.collapse[-1]}

    # ---------------------------------------------------------------- widgets
    def _build_widgets(self) -> None:
        cfg = self.trainer.config
        wide = dict(style={"description_width": "initial"}, layout=widgets.Layout(width="300px"))
        self.controls: dict[str, widgets.ValueWidget] = {
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
        for name, control in self.controls.items():
            control.observe(self._control_changed(name), names="value")
        self.buttons = {name: widgets.Button(description=name.capitalize(), icon=icon,
                                             layout=widgets.Layout(width="100px"))
                        for name, icon in (("start", "play"), ("pause", "pause"), ("reset", "refresh"))}
        self.buttons["start"].button_style = "success"
        self.buttons["start"].on_click(lambda _: self._safely(self.start))
        self.buttons["pause"].on_click(lambda _: self._safely(self.pause))
        self.buttons["reset"].on_click(lambda _: self._safely(self.reset))
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.alarm = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.status.add_class("klteach-status")
        self.alarm.add_class("klteach-alarm")
        c = self.controls
        self.panels: dict[str, plots.Panel] = {}
        self.slots = FigureSlots({}, self._draw_lock, sentinel=self.status,
                                 on_put=lambda _name, fig: plots.bind(self.panels, fig))
        self._root = widgets.VBox([
            widgets.HBox([c["dataset"], c["normaliser"], c["clusters"]]),
            widgets.HBox([c["tau_student"], c["tau_teacher"], c["lam"]]),
            widgets.HBox([c["momentum"], *self.buttons.values()]),
            self.status, self.alarm, self.slots.box("dashboard"),
        ])
        self._root.add_class("klteach-dashboard")
        self._new_figure()

    def _new_figure(self) -> None:
        """One FigureWidget with the five panels (rebuilt when the embedding dimension changes)."""
        self._three_d = self.trainer.config.dim == 3
        fig, panels = plots.dashboard_figure(self._three_d, self.trainer.dataset.test_labels is not None)
        self.panels = panels
        self.slots.put("dashboard", go.FigureWidget(fig))

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

    def _control_values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

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

    def _dataset_changes(self, dataset: str, changes: dict[str, Any]) -> dict[str, Any]:
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"unknown dataset {dataset!r} for the dashboard; choose one of "
                             f"{', '.join(DATASET_DEFAULTS)}")
        defaults = {k: v for k, v in DATASET_DEFAULTS[dataset].items() if k not in self._overrides}
        return {**defaults, **changes}

    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a control's action; show any error in the status line instead of losing it."""
        try:
            action()
        except Exception as error:
            self._fail(error, stopped=False)

    # ---------------------------------------------------------------- training
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._advance()
                self._maybe_refresh()
        except Exception as error:
            self._fail(error)
        finally:
            self._stop.set()
            try:
                self.refresh()
            except Exception:      # the page is gone; nothing left to show it on
                pass

    def _advance(self) -> None:
        """One training step, then the cheap measurements when due."""
        trainer = self.trainer
        seen = len(trainer.events)
        started = time.perf_counter()
        trainer.step()
        new_events = trainer.events[seen:]
        if any(event["restart"] for event in new_events):
            last = max(i for i, event in enumerate(new_events) if event["restart"])
            self._restart_records()
            new_events = [{**new_events[last], "step": 0}] + new_events[last + 1:]
        for event in new_events:
            self.curves.events.append({**event, "time": started})
        step = trainer.step_count
        self.curves.loss_steps.append(step)
        self.curves.loss.append(trainer.last_loss)
        if step % self.monitor_every == 0 or self._snapshot is None:   # also right after a restart
            self._measure()
        if self.evaluate_every and step % self.evaluate_every == 0:
            self._evaluate()

    def _restart_records(self) -> None:
        """Start new curves and a new fixed evaluation batch (the dataset may have changed)."""
        dataset = self.trainer.dataset
        self.curves = LiveCurves()
        self._eval_images = dataset.test[: self.eval_batch]
        self._eval_labels = None if dataset.test_labels is None else dataset.test_labels[: self.eval_batch]
        self._snapshot: Snapshot | None = None

    @torch.no_grad()
    def _measure(self) -> None:
        """The collapse diagnostics, KL(q‖p) and cluster sizes on the fixed evaluation batch."""
        trainer, cfg = self.trainer, self.trainer.config
        with keep_modes(trainer.student, trainer.teacher, trainer.normaliser):
            _, z_student = trainer.embed_all(trainer.student, self._eval_images)
            _, z_teacher = trainer.embed_all(trainer.teacher, self._eval_images)
            w = trainer.student.prototypes.unit_weights.float()
            p = theory.sphere_posterior(z_student, w, cfg.tau_student)
            trainer.normaliser.eval()
            q = trainer.normaliser(z_teacher, trainer.teacher.prototypes.unit_weights.float(),
                                   cfg.tau_teacher)
        diagnostics = metrics.assignment_metrics(p)
        c = self.curves
        c.steps.append(trainer.step_count)
        c.times.append(time.perf_counter())
        c.effective.append(diagnostics["effective_clusters"])
        c.entropy.append(diagnostics["mean_entropy"])
        c.collapse.append(diagnostics["collapse"])
        c.kl.append(float(theory.kl_divergence(q, p)))
        self._snapshot = Snapshot(trainer.step_count, z_student, w, p, q, self._eval_labels)

    def _evaluate(self) -> None:
        """kNN accuracy and NMI from the full :meth:`Trainer.evaluate` (kept in its history)."""
        trainer = self.trainer
        with keep_modes(trainer.student, trainer.teacher, trainer.normaliser):
            result = trainer.evaluate()
        trainer.history.append(result)
        if "knn_accuracy" in result:
            self.curves.quality_steps.append(result["step"])
            self.curves.knn.append(result["knn_accuracy"])
            self.curves.nmi.append(result["nmi"])

    def _fail(self, error: BaseException, stopped: bool = True) -> None:
        self.error = error
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        where = f"Stopped by an error at step {self.trainer.step_count}" if stopped else "Refused"
        self.status.value = (f"<div style='color:#b00020'><b>{where}:</b> {escape(text)}</div>")

    # ---------------------------------------------------------------- drawing
    def _maybe_refresh(self) -> None:
        if time.perf_counter() - self._last_refresh >= self.refresh_interval:
            self.refresh(force=False)

    def refresh(self, force: bool = True) -> None:
        """Redraw the figure, the status line and the alarm from the latest measurements. Unless
        ``force``, the figure is skipped while the browser is still drawing the previous update
        (:meth:`FigureSlots.ready`) and the 3-D/PCA embedding is redrawn every third time only."""
        with self._draw_lock:
            self._last_refresh = time.perf_counter()
            if self._three_d != (self.trainer.config.dim == 3):     # the dataset changed the view
                self._new_figure()
                force = True
            if force or self.slots.ready("dashboard"):
                self._draw(embedding=force or self._draws % EMBEDDING_EVERY == 0)
                self.slots.sent("dashboard")
            self._show_status()
            self.alarm.value = self._alarm_html()

    def _draw(self, embedding: bool) -> None:
        c, k, p, snap = self.curves, self.trainer.config.clusters, self.panels, self._snapshot
        self._draws += 1
        with self.figure.batch_update():                         # one message per redraw
            p["collapse"].update(k, c.steps, c.effective, c.entropy, c.events)
            p["loss"].update(plots.thin(c.loss_steps), plots.thin(c.loss), c.steps, c.kl)
            p["quality"].update(c.quality_steps, c.knn, c.nmi)
            if snap is not None:
                p["cluster_sizes"].update(theory.cluster_prior(snap.p), theory.cluster_prior(snap.q))
                if embedding:
                    shown = slice(0, EMBEDDING_POINTS)
                    p["embedding"].update(snap.z[shown], snap.w, snap.p[shown].argmax(-1),
                                          None if snap.labels is None else snap.labels[shown])

    def _show_status(self) -> None:
        if self.error is not None and not self.running:
            return                       # keep the error on screen until the next start
        cfg, trainer = self.trainer.config, self.trainer
        now = time.perf_counter()
        since, steps_then = self._rate
        if now - since >= 1.0:
            self._steps_per_second = (trainer.step_count - steps_then) / (now - since)
            self._rate = (now, trainer.step_count)
        state = "Running" if self.running else "Paused"
        rate = f" · {self._steps_per_second:.1f} steps/s" if self.running else ""
        self.status.value = (
            f"<div><b>{state}</b> · step {trainer.step_count}{rate} · {escape(cfg.dataset)} · "
            f"<span class='klteach-normaliser'>normaliser={escape(cfg.normaliser)}</span> · "
            f"τ<sub>s</sub>={cfg.tau_student:.3g} · τ<sub>t</sub>={cfg.tau_teacher:.3g} · "
            f"λ={cfg.lam:.3g} · momentum={cfg.momentum:.3g} · K={cfg.clusters}</div>")

    def _alarm_html(self) -> str:
        message = self.collapse_message
        if message:
            colour = "#b00020" if self.collapse_state == "one-cluster" else "#b35900"
            return (f"<div style='padding:4px 8px;border-left:6px solid {colour};color:{colour};"
                    f"font-weight:bold'>⚠ {escape(message)}</div>")
        latest = self.latest
        if not latest:
            return ""
        return (f"<div style='padding:4px 8px;border-left:6px solid #2e7d32;color:#2e7d32'>"
                f"No collapse: {latest['effective_clusters']:.1f} effective clusters of "
                f"K={self.trainer.config.clusters}, mean entropy {latest['mean_entropy']:.2f} nats "
                f"(uniform would be {math.log(self.trainer.config.clusters):.2f})</div>")


# ---------------------------------------------------------------- explorers

class Explorer(widgets.VBox):
    """Controls, a figure and a one-line summary, redrawn whenever a control changes.

    ``explorer.controls`` (name → widget), ``explorer.figure`` (a ``FigureWidget``) and
    ``explorer.summary`` (an HTML line) let code and tests drive it like a student would.
    """

    def __init__(self, controls: dict[str, widgets.ValueWidget], figure: go.FigureWidget,
                 draw: Callable[["Explorer"], str], note: str) -> None:
        self.controls = controls
        self.summary = widgets.HTML()
        self._draw = draw
        self._lock = threading.Lock()
        self.slots = FigureSlots({"figure": figure}, self._lock, sentinel=self.summary)
        super().__init__([widgets.HTML(note), widgets.HBox(list(controls.values())), self.summary,
                          self.slots.box("figure")])
        for control in controls.values():
            control.observe(lambda _change: self.redraw(), names="value")
        self.redraw()

    @property
    def figure(self) -> go.FigureWidget:
        """The explorer's figure (a new object if a blank one was redrawn)."""
        return self.slots.figures["figure"]

    def value(self, name: str) -> Any:
        return self.controls[name].value

    def redraw(self) -> None:
        with self._lock, self.figure.batch_update():
            self.summary.value = self._draw(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        self.slots.watch()
        return super()._repr_mimebundle_(**kwargs)


def _slider_style() -> dict[str, Any]:
    return dict(style={"description_width": "initial"}, layout=widgets.Layout(width="320px"))


def _circle_means(angles_deg: tuple[float, ...]) -> Tensor:
    angles = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def posterior_explorer(angles_deg: tuple[float, ...] = (0.0, 100.0, 220.0)) -> Explorer:
    """Eq. (1) and (6): the posterior of each cluster for points all around the unit circle.

    Cluster means ``w_k`` sit on the circle at ``angles_deg``. The temperature slider is the
    variance τ of eq. (1): low τ gives hard, winner-take-all posteriors, high τ flat ones.
    The prior slider gives cluster 0 the prior ``π_0`` (the others share the rest): the
    decision boundaries move towards the less likely clusters. With equal priors, eq. (1)
    equals the softmax of eq. (6), and the summary shows the largest difference.
    """
    w = _circle_means(angles_deg)
    k = w.shape[0]
    theta = torch.linspace(0, 2 * math.pi, 361, dtype=torch.float64)
    z = torch.stack([theta.cos(), theta.sin()], dim=1)
    degrees = (theta * 180 / math.pi).numpy()
    controls = {
        "tau": widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=1, step=0.05,
                                      description="temperature τ", readout_format=".3f",
                                      **_slider_style()),
        "prior": widgets.FloatSlider(value=round(1 / k, 3), min=0.02, max=0.96, step=0.01,
                                     description="prior π₀ of cluster 0", **_slider_style()),
    }
    fig = go.FigureWidget(make_subplots(rows=1, cols=2, column_widths=[0.38, 0.62],
                                        subplot_titles=("points z on the circle, means w_k",
                                                        "posterior p_k(z) vs angle (eq. 1)")))
    fig.add_scatter(x=z[:, 0].numpy(), y=z[:, 1].numpy(), mode="markers", name="z",
                    marker=dict(size=5), showlegend=False, row=1, col=1)
    fig.add_scatter(x=w[:, 0].numpy(), y=w[:, 1].numpy(), mode="markers+text", name="w_k",
                    text=[f"w_{j}" for j in range(k)], textposition="top center", showlegend=False,
                    marker=dict(size=14, symbol="diamond", color=plots.cluster_colours(range(k)),
                                line=dict(color="black", width=1)), row=1, col=1)
    for j in range(k):
        fig.add_scatter(x=degrees, mode="lines", name=f"p_{j}", row=1, col=2,
                        line=dict(color=plots.PALETTE[j % len(plots.PALETTE)]))
    fig.update_xaxes(range=[-1.3, 1.3], row=1, col=1, scaleanchor="y", constrain="domain")
    fig.update_yaxes(range=[-1.3, 1.3], row=1, col=1)
    fig.update_xaxes(title="angle of z [degrees]", row=1, col=2)
    fig.update_yaxes(title="p_k", range=[-0.02, 1.02], row=1, col=2)
    fig.update_layout(height=360, margin=plots.MARGIN)

    def draw(explorer: Explorer) -> str:
        tau, prior0 = explorer.value("tau"), explorer.value("prior")
        prior = torch.full((k,), (1 - prior0) / (k - 1), dtype=torch.float64)
        prior[0] = prior0
        p = theory.posterior(z, w, tau, prior)                           # eq. (1)
        explorer.figure.data[0].marker.color = plots.cluster_colours(p.argmax(-1).numpy())
        for j in range(k):
            explorer.figure.data[2 + j].y = p[:, j].numpy()
        text = (f"τ = {tau:.3g}, π₀ = {prior0:.2f}: mean entropy of p(z) "
                f"{float(theory.entropy(p).mean()):.2f} nats (flat would be {math.log(k):.2f}).")
        if abs(prior0 - 1 / k) < 5e-3:
            sphere = theory.sphere_posterior(z, w, tau)                  # eq. (6)
            equal = theory.posterior(z, w, tau)
            text += (f" Equal priors: max |eq. (1) − eq. (6)| = "
                     f"{float((equal - sphere).abs().max()):.1e}.")
        return text

    note = ("<b>Mixture posterior (eq. 1) on the unit circle (eq. 6).</b> Move τ: low τ gives hard "
            "assignments, high τ flat ones. Move π₀: the boundaries shift away from cluster 0.")
    return Explorer(controls, fig, draw, note)


def _unbalanced_student(clusters: int, samples: int, ratio: float, spread: float,
                        seed: int) -> tuple[Tensor, Tensor]:
    """Embeddings of a toy mixture whose cluster sizes fall geometrically by ``ratio`` per rank,
    and the mixture's unit mean vectors (drawn with :func:`klteach.data.make_toy_sphere`)."""
    sizes = np.maximum(1, np.round(samples * ratio ** np.arange(clusters)
                                   / (ratio ** np.arange(clusters)).sum())).astype(int)
    pool, labels, means = make_toy_sphere(int(sizes.max()) * clusters * 2, dim=3,
                                          components=clusters, spread=spread, seed=seed)
    keep = torch.cat([torch.nonzero(labels == j).flatten()[:n] for j, n in enumerate(sizes)])
    return pool[keep].double(), means.double()


def prior_lambda_explorer(clusters: int = 8, samples: int = 1000, ratio: float = 0.5,
                          seed: int = 0) -> Explorer:
    """Eq. (14)-(16): the teacher ``q_k ∝ p_k / π_k^λ`` for an unbalanced student.

    The student ``p`` (eq. 6) is the posterior of a toy mixture whose clusters hold very
    different numbers of samples (each ``ratio`` times the previous). Its cluster sizes
    ``π_k`` (eq. 8/15) are unequal; dividing by ``π^λ`` flattens the teacher's. λ = 0 is the
    plain teacher (7), λ = 1 the paper's (16); "self-consistent" iterates (16) until the prior
    of ``q`` itself is used (the exact stationary point (13)).
    """
    z, w = _unbalanced_student(clusters, samples, ratio, 0.35, seed)
    lambdas = np.linspace(0, 2, 21)
    controls = {
        "lam": widgets.FloatSlider(value=1.0, min=0, max=2, step=0.05, description="λ",
                                   **_slider_style()),
        "tau": widgets.FloatLogSlider(value=0.2, base=10, min=-1.7, max=0, step=0.05,
                                      description="temperature τ", readout_format=".3f",
                                      **_slider_style()),
        "self_consistent": widgets.Checkbox(value=False, description="self-consistent prior (13)"),
    }
    fig = go.FigureWidget(make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                                        subplot_titles=("cluster sizes, ranked (eq. 8)",
                                                        "effective clusters vs λ")))
    fig.add_bar(name="student π (p)", row=1, col=1)
    fig.add_bar(name="teacher mean q (eq. 14)", row=1, col=1)
    fig.add_scatter(name="teacher q", mode="lines", row=1, col=2, line=dict(color="#ff7f0e"))
    fig.add_scatter(name="student p", mode="lines", row=1, col=2,
                    line=dict(color="#1f77b4", dash="dash"))
    fig.add_scatter(name="current λ", mode="markers", row=1, col=2,
                    marker=dict(size=12, color="#ff7f0e", symbol="circle-open", line=dict(width=3)))
    fig.update_layout(barmode="group", height=360, margin=plots.MARGIN,
                      shapes=[dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=1 / clusters,
                                   y1=1 / clusters, line=dict(dash="dash", color="black", width=1))])
    fig.update_xaxes(title="cluster (ranked by student size)", row=1, col=1)
    fig.update_yaxes(title="π_k", row=1, col=1)
    fig.update_xaxes(title="λ", row=1, col=2)
    fig.update_yaxes(title="exp H(π)", range=[0, clusters + 0.5], row=1, col=2)

    def teacher(p: Tensor, lam: float, self_consistent: bool) -> Tensor:
        if self_consistent:
            return theory.self_consistent_teacher(p, lam, iterations=100)
        return theory.inverse_prior_teacher(p, lam=lam)

    cache: dict[tuple, list[float]] = {}

    def draw(explorer: Explorer) -> str:
        lam, tau, consistent = explorer.value("lam"), explorer.value("tau"), explorer.value("self_consistent")
        p = theory.sphere_posterior(z, w, tau)                            # eq. (6)
        q = teacher(p, lam, consistent)                                   # eq. (14)-(16)
        student, mean_q = theory.cluster_prior(p), theory.cluster_prior(q)
        order = torch.argsort(student, descending=True)
        f = explorer.figure
        ranks = np.arange(clusters)
        f.data[0].x, f.data[0].y = ranks, student[order].numpy()
        f.data[1].x, f.data[1].y = ranks, mean_q[order].numpy()
        key = (round(tau, 6), consistent)
        grid = lambdas[::2] if consistent else lambdas     # the iteration (13) costs more
        if key not in cache:
            cache[key] = [metrics.effective_clusters(teacher(p, float(l), consistent)) for l in grid]
        f.data[2].x, f.data[2].y = grid, cache[key]
        eff_p, eff_q = metrics.effective_clusters(p), metrics.effective_clusters(q)
        f.data[3].x, f.data[3].y = lambdas, np.full_like(lambdas, eff_p)
        f.data[4].x, f.data[4].y = [lam], [eff_q]
        return (f"λ = {lam:.2f}, τ = {tau:.3g}: effective clusters exp H(π) of the student "
                f"{eff_p:.2f} → teacher {eff_q:.2f} of K = {clusters}.")

    note = ("<b>Inverse cluster priors (eq. 14–16).</b> The student's clusters are unbalanced; "
            "the teacher divides by π<sup>λ</sup>. Raise λ and watch the teacher's bars flatten.")
    return Explorer(controls, fig, draw, note)


def jensen_gap_explorer(clusters: int = 8, dim: int = 16, samples: int = 1000, seed: int = 0) -> Explorer:
    """The gap between the exact inverse-prior teacher (16)/(17) and centering (23), and the two
    Jensen bounds (18), (21) that connect them, as the temperature and the spread of norms vary.

    Embeddings come from a toy mixture on the sphere in ``dim`` dimensions; their norms are then
    spread by ``exp(s·ε)`` (``ε ~ N(0,1)``, slider ``s``), since real embeddings before
    normalisation do not all have norm one. Left: ``mean KL(q₁₆ ‖ q₂₃)``
    (:func:`klteach.theory.prior_centering_gap`) against τ. Right: both sides of (18) for each
    sample and of (21) for each cluster at the chosen τ; the bounds are tight on the diagonal.
    """
    generator = torch.Generator().manual_seed(seed)
    points, _, means = make_toy_sphere(samples, dim=dim, components=clusters, spread=0.6, seed=seed)
    points, means = points.double(), means.double()
    noise = torch.randn(samples, 1, generator=generator, dtype=torch.float64)
    taus = np.logspace(-2, 1, 31)
    controls = {
        "tau": widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=1, step=0.05,
                                      description="temperature τ", readout_format=".3f",
                                      **_slider_style()),
        "spread": widgets.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="norm spread s",
                                      **_slider_style()),
        "centred": widgets.Checkbox(value=False, description="centre the weights (eq. 20)"),
    }
    fig = go.FigureWidget(make_subplots(rows=1, cols=2, subplot_titles=(
        "gap: mean KL(q₁₆ ‖ q₂₃) vs τ", "Jensen bounds at this τ (log scale)")))
    fig.add_scatter(name="gap (16) vs (23)", mode="lines", row=1, col=1)
    fig.add_scatter(name="this τ", mode="markers", row=1, col=1,
                    marker=dict(size=12, symbol="circle-open", line=dict(width=3)))
    fig.add_scatter(name="(18) per sample", mode="markers", marker=dict(size=4, opacity=0.5), row=1, col=2)
    fig.add_scatter(name="(21) per cluster", mode="markers", marker=dict(size=10, symbol="diamond"),
                    row=1, col=2)
    fig.add_scatter(name="equality", mode="lines", line=dict(color="black", dash="dash", width=1),
                    row=1, col=2)
    fig.update_xaxes(type="log", title="τ", row=1, col=1)
    fig.update_yaxes(type="log", title="nats", row=1, col=1)
    fig.update_xaxes(title="log of the lower bound (right side)", row=1, col=2)
    fig.update_yaxes(title="log of the left side", row=1, col=2)
    fig.update_layout(height=380, margin=plots.MARGIN)
    cache: dict[tuple, list[float]] = {}

    def embeddings_and_weights(spread: float, centred: bool) -> tuple[Tensor, Tensor]:
        z = points * (spread * noise).exp()
        w = means if not centred else theory.centre_weights(means)          # eq. (20)
        return z, w

    def draw(explorer: Explorer) -> str:
        tau, spread, centred = explorer.value("tau"), explorer.value("spread"), explorer.value("centred")
        z, w = embeddings_and_weights(spread, centred)
        key = (round(spread, 6), centred)
        if key not in cache:
            cache[key] = [float(theory.prior_centering_gap(z, w, float(t))) for t in taus]
        gap = float(theory.prior_centering_gap(z, w, tau))
        f = explorer.figure
        f.data[0].x, f.data[0].y = taus, np.maximum(cache[key], 1e-12)
        f.data[1].x, f.data[1].y = [tau], [max(gap, 1e-12)]
        lhs18, rhs18 = theory.normaliser_jensen_bound(z, w, tau)         # eq. (18)
        lhs21, rhs21 = theory.data_jensen_bound(z, w, tau)               # eq. (21)
        f.data[2].x, f.data[2].y = rhs18.numpy(), lhs18.numpy()
        f.data[3].x, f.data[3].y = rhs21.numpy(), lhs21.numpy()
        low = float(min(rhs18.min(), rhs21.min()))
        high = float(max(lhs18.max(), lhs21.max()))
        f.data[4].x, f.data[4].y = [low, high], [low, high]
        slack18, slack21 = float((lhs18 - rhs18).mean()), float((lhs21 - rhs21).mean())
        norms = z.norm(dim=1)
        return (f"τ = {tau:.3g}, norms {float(norms.min()):.2f}–{float(norms.max()):.2f}"
                f"{', centred weights' if centred else ''}: gap KL(q₁₆‖q₂₃) = {gap:.3g} nats; "
                f"mean slack of (18) {slack18:.3g}, of (21) {slack21:.3g} (log units).")

    note = ("<b>From inverse priors to centering (eq. 16–23).</b> Centering (23) replaces the exact "
            "teacher (16) using two Jensen bounds, (18) and (21). They are tight at high τ and "
            "small norm spread; lower τ or spread the norms and watch the gap grow.")
    return Explorer(controls, fig, draw, note)


__all__ = ["TrainingDashboard", "Explorer", "posterior_explorer", "prior_lambda_explorer",
           "jensen_gap_explorer", "DATASET_DEFAULTS", "MONITOR_DEFAULTS", "DATASET_CHOICES",
           "LiveCurves", "keep_modes"]
