"""A training run watched while it goes on: the headless half of the live dashboard.

:class:`LiveRun` trains a :class:`~klteach.train.Trainer` in a background thread (or
synchronously with :meth:`LiveRun.run`), takes the cheap measurements the live plots show and
says in words when the model collapses, since when, and after which setting change. It knows
nothing about widgets or figures: :class:`klteach.widgets.TrainingDashboard` draws it, a test or
a script can drive it alone.

Why a thread
------------
The kernel reads messages from the browser (a slider moved, a button pressed) only while its
main thread is free. Three ways keep it free during training:

1. **a background thread** runs ``trainer.step()`` in a loop — *chosen*;
2. an asyncio task that yields to the event loop between steps;
3. ``jupyter-ui-poll``, which pumps the kernel's message queue from inside a blocking loop.

The thread keeps the main thread free *during* a step as well as between steps, so the controls
answer at once even when one step or an evaluation takes a second (CIFAR on a CPU), where an
asyncio task would freeze the page that long; torch releases the interpreter lock inside its
kernels, so the thread costs the page almost nothing; and it needs no private kernel API (option
3 reaches into ipykernel internals and blocks "Run All" until training ends) and no running event
loop (option 2 fails outside a kernel). The two threads share only :meth:`Trainer.set`, which
queues changes under a lock and applies them at the start of the next step, and the drawing,
which the view does under its own lock. An exception in the loop stops it and is kept in
``run.error``, never lost in a thread.

The measurements are cheap by design: the collapse diagnostics, KL and cluster sizes come from a
fixed small evaluation batch every ``monitor_every`` steps; the full
:meth:`~klteach.train.Trainer.evaluate` (kNN accuracy and NMI) runs every ``evaluate_every``
steps; the view is asked to redraw at most ``refresh_per_second`` times a second.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import metrics, theory
from .train import Trainer

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(clusters=8, dim=3, batch_size=128, eval_size=1000),
    "digits": dict(clusters=20, dim=64, batch_size=128, eval_size=1437),
    "cifar10-sample": dict(clusters=10, dim=64, batch_size=64, arch="cnn", eval_size=1000),
}
"""Settings tuned for lecture speed on a 2-core laptop, per dataset (``dim=3`` puts the toy
embeddings on a sphere we can draw). Anything passed to :class:`LiveRun` overrides them."""

MONITOR_DEFAULTS: dict[str, dict[str, int]] = {
    "toy": dict(eval_batch=256, monitor_every=5, evaluate_every=200),
    "digits": dict(eval_batch=256, monitor_every=5, evaluate_every=200),
    "cifar10-sample": dict(eval_batch=128, monitor_every=2, evaluate_every=100),
}
"""How often the live plots measure (steps) and how big their fixed evaluation batch is."""


# ---------------------------------------------------------------- what the live plots show

@dataclass
class LiveCurves:
    """What the live plots show, since the last (re)start of the run: the training loss per step,
    the measurements (eq. 8 diagnostics, KL (2), cluster sizes) and the evaluations (kNN, NMI),
    and the setting changes (``{"step", "changes", "restart", "time"}``)."""

    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    effective: list[float] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    collapse: list[str] = field(default_factory=list)
    sizes: tuple[list[float], list[float] | None] | None = None
    quality_steps: list[int] = field(default_factory=list)
    knn: list[float] = field(default_factory=list)
    nmi: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add_measurement(self, step: int, diagnostics: dict[str, Any], kl: float, time: float,
                        sizes: tuple[Any, Any] | None = None) -> None:
        """Append one measurement: ``diagnostics`` as :func:`klteach.metrics.assignment_metrics`
        gives them; ``sizes`` the student's and the teacher's cluster sizes (eq. 8)."""
        self.steps.append(step)
        self.times.append(time)
        self.effective.append(float(diagnostics["effective_clusters"]))
        self.used.append(int(diagnostics["clusters_used"]))
        self.entropy.append(float(diagnostics["mean_entropy"]))
        self.collapse.append(str(diagnostics["collapse"]))
        self.kl.append(kl)
        if sizes is not None:
            student, teacher = sizes
            self.sizes = ([float(v) for v in student], None if teacher is None else [float(v) for v in teacher])

    def add_quality(self, step: int, knn: float, nmi: float) -> None:
        """Append one full evaluation: kNN accuracy and NMI against the labels."""
        self.quality_steps.append(step)
        self.knn.append(knn)
        self.nmi.append(nmi)


def describe_changes(changes: dict[str, Any]) -> str:
    """A setting change in words: ``normaliser to none and τ_t to 0.05``."""
    return " and ".join(f"{name} to {value}" for name, value in setting_parts(changes))


def setting_parts(changes: dict[str, Any]) -> list[tuple[str, str]]:
    """``(short name, value as text)`` for each changed setting, e.g. ``("τ_t", "0.05")``."""
    names = {"tau_student": "τ_s", "tau_teacher": "τ_t", "lam": "λ", "clusters": "K", "momentum": "m"}
    return [(names.get(key, key), f"{value:.3g}" if isinstance(value, float) else str(value))
            for key, value in changes.items()]


def collapse_message(curves: LiveCurves, clusters: int) -> str:
    """In words, which collapse the last measurement shows, since which step, and how long after
    which setting change (seconds in a live run, steps in a replay); ``""`` when healthy."""
    state = curves.collapse[-1] if curves.collapse else "healthy"
    if state == "healthy":
        return ""
    onset = len(curves.collapse) - 1
    while onset > 0 and curves.collapse[onset - 1] == state:
        onset -= 1
    step = curves.steps[onset]
    if state == "one-cluster":
        head = f"Collapsed to ONE cluster (or a handful) since step {step}"
        detail = (f"{curves.effective[-1]:.2f} effective clusters of K={clusters} (the alarm is at "
                  f"≤ {metrics.one_cluster_threshold(clusters):.1f}): almost every sample goes to "
                  "the same few clusters")
    elif state == "uniform":
        head = f"Collapsed to the UNIFORM output since step {step}"
        detail = (f"mean per-sample entropy {curves.entropy[-1]:.2f} nats, near log K = "
                  f"{math.log(clusters):.2f}: every sample's assignment is nearly flat")
    else:
        head = f"PARTIAL collapse since step {step}"
        detail = (f"the samples use only {curves.used[-1]} of K={clusters} clusters "
                  f"({curves.effective[-1]:.2f} effective): the others stay empty")
    cause = [e for e in curves.events if e["step"] < step]
    if cause:
        event = cause[-1]
        if event.get("time") is not None:                  # live: the lecturer just did it
            after = f"{curves.times[onset] - event['time']:.1f} s after you switched"
        else:                                              # a replay: the recorded run did it
            after = f"{step - event['step']} steps after the run switched"
        head += f" ({after} {describe_changes(event['changes'])} at step {event['step']})"
    return f"{head}; {detail}."


# ---------------------------------------------------------------- a run that moves on its own

class Runner:
    """What a live run and a replay share: a background thread that advances until
    :meth:`pause`, synchronous :meth:`run`, the pacing of redraws, and the collapse alarm read
    from :attr:`curves`. Subclasses give ``step_count``, ``clusters`` and ``_advance``."""

    curves: LiveCurves

    def __init__(self, refresh_per_second: float, on_refresh: Callable[[bool], Any] | None) -> None:
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second!r}")
        self.refresh_interval = 1.0 / refresh_per_second
        self.on_refresh = on_refresh
        self.error: BaseException | None = None
        self.error_step = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_refresh = 0.0
        self._rate = (time.perf_counter(), 0)
        self._steps_per_second = 0.0

    @property
    def step_count(self) -> int:
        raise NotImplementedError

    @property
    def clusters(self) -> int:
        raise NotImplementedError

    def _advance(self, paced: bool) -> bool:
        """Move on by one step (a replay: one recorded row); False when there is nothing left."""
        raise NotImplementedError

    # ---------------------------------------------------------------- moving on
    @property
    def running(self) -> bool:
        """True while the background thread is advancing."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Advance in a background thread until :meth:`pause` (the page stays live)."""
        if self.running:
            return
        self.error = None
        self._stop.clear()
        self._rate = (time.perf_counter(), self.step_count)
        self._thread = threading.Thread(target=self._loop, name="klteach-live-run", daemon=True)
        self._thread.start()
        self.refresh()

    def pause(self, timeout: float = 60.0) -> None:
        """Stop the background thread after its current step (waits for it)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run(self, steps: int) -> None:
        """Advance ``steps`` times now, in this thread (deterministic; for code and nbval), then
        redraw. Stops a background run first. An error is kept in :attr:`error` and raised."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.pause()
        self._rate = (time.perf_counter(), self.step_count)
        try:
            for _ in range(steps):
                if not self._advance(paced=False):
                    break
                self._maybe_refresh()
        except Exception as error:
            self._fail(error)
            raise
        finally:
            self.refresh()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set() and self._advance(paced=True):
                self._maybe_refresh()
        except Exception as error:
            self._fail(error)
        finally:
            self._stop.set()
            try:
                self.refresh()
            except Exception:      # the page is gone; nothing left to show it on
                pass

    def _fail(self, error: BaseException) -> None:
        self.error, self.error_step = error, self.step_count

    @property
    def error_text(self) -> str:
        """The last error as one line (``""`` when there is none)."""
        if self.error is None:
            return ""
        return "".join(traceback.format_exception_only(type(self.error), self.error)).strip()

    # ---------------------------------------------------------------- pacing the view
    def _maybe_refresh(self) -> None:
        if time.perf_counter() - self._last_refresh >= self.refresh_interval:
            self.refresh(force=False)

    def refresh(self, force: bool = True) -> None:
        """Ask the view to redraw (``force``: even if the browser is still drawing)."""
        self._last_refresh = time.perf_counter()
        if self.on_refresh is not None:
            self.on_refresh(force)

    @property
    def steps_per_second(self) -> float:
        """Steps per second over the last second or more (0 when paused)."""
        if not self.running:
            return 0.0
        now = time.perf_counter()
        since, steps_then = self._rate
        if now - since >= 1.0:
            self._steps_per_second = (self.step_count - steps_then) / (now - since)
            self._rate = (now, self.step_count)
        return self._steps_per_second

    # ---------------------------------------------------------------- the collapse alarm
    @property
    def collapse_state(self) -> str:
        """The verdict of :func:`klteach.metrics.collapse_state` at the last measurement."""
        return self.curves.collapse[-1] if self.curves.collapse else "healthy"

    @property
    def collapse_message(self) -> str:
        """In words, which collapse is happening and since when; ``""`` when there is none."""
        return collapse_message(self.curves, self.clusters)

    @property
    def latest(self) -> dict[str, Any]:
        """The last measurement: step, effective and used clusters, mean entropy, KL, collapse state."""
        c = self.curves
        if not c.steps:
            return {}
        return {"step": c.steps[-1], "effective_clusters": c.effective[-1], "clusters_used": c.used[-1],
                "mean_entropy": c.entropy[-1], "kl_teacher_student": c.kl[-1], "collapse": c.collapse[-1]}


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
                m.train(mode)          # parents come first in modules(): each child ends in its own mode


def check_dataset(dataset: str) -> None:
    """Refuse a dataset the dashboard has no defaults for, naming the ones it has."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r} for the dashboard; choose one of "
                         f"{', '.join(DATASET_DEFAULTS)}")


class LiveRun(Runner):
    """A :class:`~klteach.train.Trainer` trained while it is watched.

    ``LiveRun(dataset="toy", normaliser="inverse-prior", clusters=8, **config)`` builds the
    trainer (``config`` takes any :class:`~klteach.train.TrainConfig` field, over
    :data:`DATASET_DEFAULTS`). :meth:`start` / :meth:`pause` train in a background thread,
    :meth:`run` synchronously; :meth:`set` changes settings as the dashboard's controls do.
    ``on_refresh(force)`` is called when the view should redraw (at most ``refresh_per_second``
    times a second while training, and with ``force=True`` when a run stops).
    """

    def __init__(self, dataset: str = "toy", normaliser: str = "inverse-prior",
                 clusters: int | None = None, *, eval_batch: int | None = None,
                 monitor_every: int | None = None, evaluate_every: int | None = None,
                 refresh_per_second: float = 4.0, on_refresh: Callable[[bool], Any] | None = None,
                 **config: Any) -> None:
        check_dataset(dataset)
        super().__init__(refresh_per_second, on_refresh)
        monitor = dict(MONITOR_DEFAULTS[dataset])
        for name, value in (("eval_batch", eval_batch), ("monitor_every", monitor_every),
                            ("evaluate_every", evaluate_every)):
            if value is not None:
                lowest = 0 if name == "evaluate_every" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                    raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
                monitor[name] = value
        self.eval_batch, self.monitor_every, self.evaluate_every = (
            monitor["eval_batch"], monitor["monitor_every"], monitor["evaluate_every"])
        self.overrides = dict(config)
        settings = {**DATASET_DEFAULTS[dataset], **config, "dataset": dataset, "normaliser": normaliser}
        if clusters is not None:
            settings["clusters"] = clusters
        self.trainer = Trainer(**settings)
        self._restart_records()
        self._measure()

    # ---------------------------------------------------------------- what the view reads
    @property
    def step_count(self) -> int:
        return self.trainer.step_count

    @property
    def clusters(self) -> int:
        return self.trainer.config.clusters

    @property
    def settings(self) -> dict[str, Any]:
        return self.trainer.config.to_dict()

    # ---------------------------------------------------------------- changes
    def set(self, **changes: Any) -> dict[str, Any]:
        """Queue setting changes for the next step (see :meth:`Trainer.set`); a new dataset also
        brings its :data:`DATASET_DEFAULTS` unless given. Returns the changes queued. A bad value
        raises ``ValueError`` and changes nothing."""
        if "dataset" in changes:
            changes = self.dataset_changes(changes["dataset"], changes)
        self.trainer.set(**changes)
        return changes

    def dataset_changes(self, dataset: str, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` with the defaults of ``dataset`` added (except those the user fixed)."""
        check_dataset(dataset)
        defaults = {k: v for k, v in DATASET_DEFAULTS[dataset].items() if k not in self.overrides}
        return {**defaults, **changes}

    def reset(self, **settings: Any) -> None:
        """Stop, and start a fresh run (step 0, new model) with the current settings changed by
        ``settings``."""
        self.pause()
        if settings.get("dataset", self.trainer.config.dataset) != self.trainer.config.dataset:
            settings = self.dataset_changes(settings["dataset"], settings)
        self.trainer = Trainer(dataclasses.replace(self.trainer.config, **settings))
        self.error = None
        self._restart_records()
        self._measure()
        self.refresh()

    # ---------------------------------------------------------------- one step
    def _advance(self, paced: bool) -> bool:
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
        if step % self.monitor_every == 0 or self.snapshot is None:    # also right after a restart
            self._measure()
        if self.evaluate_every and step % self.evaluate_every == 0:
            self._evaluate()
        return True

    def _restart_records(self) -> None:
        """Start new curves and a new fixed evaluation batch (the dataset may have changed)."""
        dataset = self.trainer.dataset
        self.curves = LiveCurves()
        self._eval_images = dataset.test[: self.eval_batch]
        self._eval_labels = None if dataset.test_labels is None else dataset.test_labels[: self.eval_batch]
        self.snapshot: Snapshot | None = None

    @torch.no_grad()
    def _measure(self) -> None:
        """The collapse diagnostics, KL(q‖p) and cluster sizes on the fixed evaluation batch."""
        trainer, cfg = self.trainer, self.trainer.config
        with keep_modes(trainer.student, trainer.teacher, trainer.normaliser):
            _, z_student = trainer.embed_all(trainer.student, self._eval_images)
            _, z_teacher = trainer.embed_all(trainer.teacher, self._eval_images)
            w = trainer.student.prototypes.unit_weights.float()
            p = theory.sphere_posterior(z_student, w, cfg.tau_student)            # eq. (6)
            trainer.normaliser.eval()
            q = trainer.normaliser(z_teacher, trainer.teacher.prototypes.unit_weights.float(),
                                   cfg.tau_teacher)
        self.snapshot = Snapshot(trainer.step_count, z_student, w, p, q, self._eval_labels)
        self.curves.add_measurement(trainer.step_count, metrics.assignment_metrics(p),
                                    kl=float(theory.kl_divergence(q, p)), time=time.perf_counter(),
                                    sizes=(theory.cluster_prior(p), theory.cluster_prior(q)))

    def _evaluate(self) -> None:
        """kNN accuracy and NMI from the full :meth:`Trainer.evaluate` (kept in its history)."""
        trainer = self.trainer
        with keep_modes(trainer.student, trainer.teacher, trainer.normaliser):
            result = trainer.evaluate()
        trainer.history.append(result)
        if "knn_accuracy" in result:
            self.curves.add_quality(result["step"], result["knn_accuracy"], result["nmi"])


__all__ = ["LiveRun", "Runner", "LiveCurves", "Snapshot", "collapse_message", "describe_changes",
           "setting_parts", "keep_modes", "DATASET_DEFAULTS", "MONITOR_DEFAULTS", "check_dataset"]
