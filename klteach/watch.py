"""What a live run and a replay share: the curves the dashboard draws, the collapse alarm in
words, and a background thread that moves on until paused (:class:`Runner`).

:class:`klteach.live.LiveRun` trains; :class:`klteach.replay.Replay` plays a recording. Neither
knows about widgets or figures.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics

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

    def add_measurement(self, step: int, diagnostics: Mapping[str, Any], kl: float, time: float,
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
    """In words (:func:`klteach.metrics.describe_collapse`), which collapse the last measurement
    shows, since which step, and how long after which setting change (seconds in a live run,
    steps in a replay); ``""`` when healthy."""
    state = curves.collapse[-1] if curves.collapse else "healthy"
    if state == "healthy":
        return ""
    onset = len(curves.collapse) - 1
    while onset > 0 and curves.collapse[onset - 1] == state:
        onset -= 1
    step = curves.steps[onset]
    head = f"{metrics.describe_collapse(state).capitalize()} since step {step}"
    if state == "one-cluster":
        detail = (f"{curves.effective[-1]:.2f} effective clusters of K={clusters} (the alarm is at "
                  f"≤ {metrics.one_cluster_threshold(clusters):.1f}): almost every sample goes to "
                  "the same few clusters")
    elif state == "uniform":
        detail = (f"mean per-sample entropy {curves.entropy[-1]:.2f} nats, near log K = "
                  f"{math.log(clusters):.2f}: every sample's assignment is nearly flat")
    else:
        detail = (f"the samples use only {curves.used[-1]} of K={clusters} clusters "
                  f"({curves.effective[-1]:.2f} effective): the others win no sample")
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

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings (:class:`klteach.config.TrainConfig` fields) at the step shown."""
        raise NotImplementedError

    @property
    def has_labels(self) -> bool:
        """Are there labels to score kNN accuracy and NMI against?"""
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


__all__ = ["LiveCurves", "Runner", "collapse_message", "describe_changes", "setting_parts"]
