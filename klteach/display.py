"""Figures in live widgets that redraw themselves: shared by the dashboard and the explorers.

:class:`FigureSlots` holds each plotly ``FigureWidget`` in a box, paces its updates on the
browser's acknowledgements and replaces a figure whose browser view stayed blank.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

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
    loads from the browser's warm compile cache and draws.

    A browser view that drew a figure confirms the edits it was sent; plotly's public
    ``FigureWidget.on_edits_completed`` calls us back then. A figure that never confirmed, in
    a page that is alive (the ``sentinel`` widget displayed beside it has a view), is replaced,
    one figure per check, at most twice. Headless runs (no views) are left alone.

    The same confirmations pace the updates (:meth:`ready`, :meth:`sent`): a figure is sent its
    next update only once the browser has drawn the previous one (or ``ACK_TIMEOUT_S`` passed),
    so a slow browser never builds a backlog and the plots never lag behind the training.
    """

    def __init__(self, figures: dict[str, go.FigureWidget], lock: threading.Lock,
                 sentinel: widgets.Widget, on_put: Callable[[str, go.FigureWidget], Any] | None = None
                 ) -> None:
        self.sentinel = sentinel
        # ipywidgets counts a widget's browser views only when asked (its `_view_count` trait,
        # documented as experimental, has no public equivalent): 0 starts the counting.
        sentinel._view_count = 0
        self.figures: dict[str, go.FigureWidget] = {}
        self.boxes: dict[str, widgets.Box] = {}
        self._lock = lock
        self._on_put = on_put
        self._rendered: set[int] = set()
        self._waiting: set[int] = set()
        self._sent_at: dict[int, float] = {}
        self._repairs: dict[str, int] = {}
        self._probes = 0
        self._watching = False
        for name, fig in figures.items():
            self.put(name, fig)

    def box(self, name: str) -> widgets.Box:
        """The box showing figure ``name`` (created empty when it has no figure yet)."""
        return self.boxes.setdefault(name, widgets.Box())

    def put(self, name: str, fig: go.FigureWidget) -> None:
        """Show ``fig`` as figure ``name`` (replacing the one shown before)."""
        # An edit for the browser to confirm once it has drawn the figure (a fresh copy has none
        # pending); `datarevision` is plotly's own "the data changed" marker and draws nothing.
        self._probes += 1
        fig.layout.datarevision = self._probes
        self._await_drawing(fig)
        self.figures[name] = fig
        if self._on_put is not None:
            self._on_put(name, fig)
        self.box(name).children = (fig,)

    def _await_drawing(self, fig: go.FigureWidget) -> None:
        """Note when the browser has drawn every edit sent to ``fig`` so far (one wait at a time)."""
        key = id(fig)
        if key in self._waiting:
            return
        self._waiting.add(key)
        registering = [True]

        def drawn() -> None:
            self._waiting.discard(key)
            if not registering[0]:          # called back by the browser, not at once for want of edits
                self._rendered.add(key)

        fig.on_edits_completed(drawn)
        registering[0] = False

    def ready(self, name: str) -> bool:
        """May figure ``name`` be sent an update now? Yes unless a page shows it and has not yet
        drawn the last update sent (for at most ``ACK_TIMEOUT_S``); headless, always yes."""
        key = id(self.figures[name])
        sent = self._sent_at.get(key)
        return (not self.alive() or sent is None or key not in self._waiting
                or time.monotonic() - sent > ACK_TIMEOUT_S)

    def sent(self, name: str) -> None:
        """Note that figure ``name`` was just sent an update."""
        fig = self.figures[name]
        self._sent_at[id(fig)] = time.monotonic()
        self._await_drawing(fig)

    def alive(self) -> bool:
        """Does a browser show these widgets (a view of the sentinel, or a figure drawn)?"""
        return (self.sentinel._view_count or 0) > 0 or bool(self._rendered)

    def blank(self) -> list[str]:
        """Names of figures shown in a live page that have not drawn their traces."""
        alive = self.alive()
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


__all__ = ["FigureSlots", "RENDER_CHECKS_S", "ACK_TIMEOUT_S"]
