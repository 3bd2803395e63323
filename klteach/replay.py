"""A recorded run played back at lecture pace, with no training: the headless half of
:meth:`klteach.widgets.TrainingDashboard.replay`.

Any run written with ``out=`` (``python -m klteach train --out DIR``) can be replayed: its
``metrics.jsonl`` holds one evaluation every ``eval_every`` steps (the collapse diagnostics,
KL, loss, cluster sizes, kNN and NMI) and every setting switch, read with
:func:`klteach.checkpoint.read_metrics`. :class:`Replay` shows the evaluations one by one, as
many recorded steps per second as ``steps_per_second`` says, marks each switch where it
happened, and raises and clears the collapse alarm as the run did. A long CPU run or a GPU run
then fits a lecture, and the room sees the collapse and the rescue again, the same every time.

A few recordings ship with the package (:func:`recordings`); ``benchmarks/record_replays.py``
makes them.
"""
from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import read_metrics
from .course import recordings_dir
from .watch import LiveCurves, Runner

REPLAYS = "replays"
"""The folder of :func:`klteach.course.recordings_dir` that holds the shipped recordings."""


def recordings() -> tuple[str, ...]:
    """Names of the recordings that ship with klteach (``TrainingDashboard.replay(name)``)."""
    folder = recordings_dir() / REPLAYS
    return tuple(sorted(p.name for p in folder.iterdir() if (p / "metrics.jsonl").is_file())) if folder.is_dir() else ()


def find_recording(run: str | Path) -> Path:
    """The folder of recording ``run``: a run folder holding ``metrics.jsonl``, or the name of a
    shipped recording. ``ValueError`` naming what is there otherwise."""
    path = Path(run)
    if (path / "metrics.jsonl").is_file():
        return path
    shipped = recordings_dir() / REPLAYS / str(run)
    if (shipped / "metrics.jsonl").is_file():
        return shipped
    raise ValueError(f"no recorded run at {str(run)!r}: give a run folder holding metrics.jsonl "
                     f"(train --out DIR) or one of the shipped recordings: {', '.join(recordings()) or 'none'}")


def _number(value: Any) -> float:
    """A recorded number, with ``null`` (a non-finite value) as NaN."""
    return math.nan if value is None else float(value)


class Replay(Runner):
    """A recorded run (see the module's docstring) that moves on by itself like a live one.

    ``Replay(run, steps_per_second=50)``: ``run`` is a run folder or a shipped recording's name.
    :meth:`start` plays it in a background thread until :meth:`pause` or its end; :meth:`run`
    jumps ahead by a number of recorded steps at once; :meth:`rewind` goes back to its start.
    """

    def __init__(self, run: str | Path, steps_per_second: float = 50.0, refresh_per_second: float = 4.0,
                 on_refresh: Callable[[bool], Any] | None = None) -> None:
        super().__init__(refresh_per_second, on_refresh)
        self.folder = find_recording(run)
        self.name = self.folder.name
        self.rows, self.switches = read_metrics(self.folder)
        if not self.rows:
            raise ValueError(f"{self.folder / 'metrics.jsonl'} holds no evaluation to replay")
        config_file = self.folder / "config.json"
        self.config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if "clusters" not in self.config:
            self.config["clusters"] = len(self.rows[0].get("cluster_sizes_student") or []) or None
        if not self.config["clusters"]:
            raise ValueError(f"{self.folder}: no config.json and no cluster sizes, so K is unknown")
        self.speed = steps_per_second
        self._lock = threading.Lock()
        self.rewind()

    @property
    def speed(self) -> float:
        """Recorded steps shown per second while playing."""
        return self._speed

    @speed.setter
    def speed(self, steps_per_second: float) -> None:
        if not (isinstance(steps_per_second, (int, float)) and math.isfinite(steps_per_second)
                and steps_per_second > 0):
            raise ValueError(f"steps_per_second must be a positive number, got {steps_per_second!r}")
        self._speed = float(steps_per_second)

    # ---------------------------------------------------------------- what the view reads
    @property
    def step_count(self) -> int:
        """The recorded step shown last (0 before the first evaluation)."""
        return int(self.rows[self.position - 1]["step"]) if self.position else 0

    @property
    def total_steps(self) -> int:
        return int(self.rows[-1]["step"])

    @property
    def finished(self) -> bool:
        return self.position >= len(self.rows)

    @property
    def clusters(self) -> int:
        return int(self.config["clusters"])

    @property
    def has_labels(self) -> bool:
        return any("knn_accuracy" in row for row in self.rows)

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings at the step shown: ``config.json`` with the recorded switches so
        far; a setting a later switch changes is ``None`` (unknown) until its first switch."""
        return dict(self._settings)

    # ---------------------------------------------------------------- moving on
    def start(self) -> None:
        """Play from where it stands (from the start again once it has ended)."""
        if self.finished:
            self.rewind()
        super().start()

    def rewind(self) -> None:
        """Back to the start of the recording (stops playing first)."""
        self.pause()
        with self._lock:
            self.position = 0
            self._switched = 0
            self.curves = LiveCurves()
            switched = {name for switch in self.switches for name in switch["changes"]}
            self._settings = {k: (None if k in switched else v) for k, v in self.config.items()}
            if "normaliser" in self.rows[0]:                 # every evaluation says which was used
                self._settings["normaliser"] = self.rows[0]["normaliser"]
        self.error = None
        self.refresh()

    def run(self, steps: int) -> None:
        """Show, at once, every recorded evaluation up to ``steps`` steps past the one shown."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.pause()
        target = self.step_count + steps
        try:
            while not self.finished and int(self.rows[self.position]["step"]) <= target:
                self._advance(paced=False)
        finally:
            self.refresh()

    def _advance(self, paced: bool) -> bool:
        """Show the next recorded evaluation (and the switches before it); when ``paced``, then
        wait as long as the recording took to the next one at :attr:`speed`."""
        with self._lock:
            if self.finished:
                return False
            row = self.rows[self.position]
            self._switch_until(int(row["step"]))
            self._show(row)
            self.position += 1
        if paced and not self.finished:
            self._maybe_refresh()
            self._stop.wait((int(self.rows[self.position]["step"]) - int(row["step"])) / self.speed)
        return not self.finished

    def _switch_until(self, step: int) -> None:
        """Apply the recorded switches made before ``step`` (a switch at step N acted after N)."""
        while self._switched < len(self.switches) and int(self.switches[self._switched]["step"]) < step:
            switch = self.switches[self._switched]
            self._settings.update(switch["changes"])
            self.curves.events.append({"step": int(switch["step"]), "changes": switch["changes"],
                                       "restart": bool(switch.get("restart")), "time": None})
            self._switched += 1

    def _show(self, row: dict[str, Any]) -> None:
        c, step = self.curves, int(row["step"])
        if "normaliser" in row:
            self._settings["normaliser"] = row["normaliser"]
        c.loss_steps.append(step)
        c.loss.append(_number(row.get("loss")))
        sizes = None
        if row.get("cluster_sizes_student") is not None:
            sizes = (row["cluster_sizes_student"], row.get("cluster_sizes_teacher"))
        c.add_measurement(step, row, kl=_number(row.get("kl_teacher_student")), time=0.0, sizes=sizes)
        if row.get("knn_accuracy") is not None:
            c.add_quality(step, float(row["knn_accuracy"]), _number(row.get("nmi")))


__all__ = ["Replay", "recordings", "find_recording", "REPLAYS"]
