"""Figures in live widgets that redraw themselves, and their static copies: shared by the
dashboard and the explorers.

:class:`FigureSlots` holds each plotly ``FigureWidget`` in a box, paces its updates on the
browser's acknowledgements and replaces a figure whose browser view stayed blank.

:class:`StaticCopy` displays a widget together with static copies of its figure, for the places
where widgets cannot render. One output carries several representations and each front end
picks the one it can show (measured in ``tests/browser``; see the README's "Live widgets"):

==============================================  =============================================
front end                                       shows
==============================================  =============================================
JupyterLab, Notebook 7, with a running kernel   the live widget
JupyterLab, Notebook 7, a saved notebook        the plotly figure (widgets render only from
opened without running it (not trusted)         trusted outputs; the figure is safe to draw)
nbconvert HTML, nbviewer, GitHub                the PNG (drawn only when chapters are recorded,
                                                ``KLTEACH_RECORD=1``), else the one-line text
the course site (``python -m klteach site``)    the plotly figure, interactive
==============================================  =============================================

The output has a display id: after each synchronous run the copies are brought up to date,
unless a browser shows the live widget (updating the output would make it draw the widget anew).
"""
from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import DisplayHandle, display

from . import static

RENDER_CHECKS_S = (5.0, 12.0, 25.0, 45.0, 90.0, 180.0)
"""Seconds after display at which :class:`FigureSlots` looks for figures left blank."""
MAX_REPAIRS = 3
"""Most times one figure is replaced."""
PATIENCE_S = 60.0
"""How long a figure in a live page may go without a view before it is replaced anyway."""
ACK_TIMEOUT_S = 3.0
"""Longest wait for the browser to confirm a figure update before the next one is sent anyway."""


class FigureSlots:
    """Boxes that each hold one ``FigureWidget``; a figure whose browser view stayed blank is
    replaced by a fresh copy.

    Why: plotly's ``FigureWidget`` sends its data in a message right after the one that creates
    it in the browser; while the browser is still loading the figure's JavaScript (plotly.js,
    ~5 MB) that message can be lost, and the view then draws empty axes for good, while a copy,
    whose JavaScript is by then in the browser's cache, draws. A view reports the traces it drew
    back to the kernel. A figure that has a view (ipywidgets counts them: plotly asks it to) which
    reported no trace is replaced, one figure per check, at most ``MAX_REPAIRS`` times. A figure
    with no view yet may still be loading: on a busy machine (load average 15 on 2 cores) that
    took 45 s, and replacing it meanwhile only started the loading again; it is replaced only
    after ``PATIENCE_S`` in a page that is alive (its ``sentinel`` widget has a view).

    The browser also confirms each update it has drawn (plotly's public
    ``FigureWidget.on_edits_completed`` calls back then), which paces the updates
    (:meth:`ready`, :meth:`sent`): while a page shows the figure, it is sent its next update only
    once the browser has drawn the previous one (or ``ACK_TIMEOUT_S`` passed), so a slow browser
    never builds a backlog and the plots never lag behind the training.
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
        self._put_at: dict[int, float] = {}
        self._watching = False
        for name, fig in figures.items():
            self.put(name, fig)

    def box(self, name: str) -> widgets.Box:
        """The box showing figure ``name`` (created empty when it has no figure yet)."""
        return self.boxes.setdefault(name, widgets.Box())

    def put(self, name: str, fig: go.FigureWidget) -> None:
        """Show ``fig`` as figure ``name`` (replacing the one shown before)."""
        # What the view drew is reported only in this message of plotly's widget protocol (no public
        # API says it): an empty report means the view missed the figure's data and stayed blank.
        key = id(fig)
        fig.observe(lambda change: self._reported(key, change), names="_js2py_traceDeltas")
        self.figures[name] = fig
        self._put_at[key] = time.monotonic()
        if self._on_put is not None:
            self._on_put(name, fig)
        self.box(name).children = (fig,)
        if self._watching:
            self._watch_figure(name, fig)

    def _await_drawing(self, fig: go.FigureWidget) -> None:
        """Note when the browser has drawn every edit sent to ``fig`` so far (one wait at a time)."""
        key = id(fig)
        if key in self._waiting:
            return
        self._waiting.add(key)
        fig.on_edits_completed(lambda: self._waiting.discard(key))

    def _reported(self, key: int, change: dict) -> None:
        if change["new"] and change["new"].get("trace_deltas"):
            self._rendered.add(key)

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
        """Names of figures whose browser view drew no trace, or that a live page has shown no
        view of for ``PATIENCE_S``."""
        now, alive = time.monotonic(), self.alive()
        return [name for name, fig in self.figures.items() if fig.data and id(fig) not in self._rendered
                and ((fig._view_count or 0) > 0 or alive and now - self._put_at[id(fig)] >= PATIENCE_S)]

    def watch(self) -> None:
        """Start checking for blank figures (once the widgets are displayed; figures put later
        are checked from when they are put)."""
        if self._watching:
            return
        self._watching = True
        for name, fig in self.figures.items():
            self._watch_figure(name, fig)

    def _watch_figure(self, name: str, fig: go.FigureWidget) -> None:
        threading.Thread(target=self._watch, args=(name, fig), name="klteach-figure-watch", daemon=True).start()

    def _watch(self, name: str, fig: go.FigureWidget) -> None:
        start = time.monotonic()
        for check in RENDER_CHECKS_S:
            time.sleep(max(0.0, start + check - time.monotonic()))
            with self._lock:
                if self.figures.get(name) is not fig or id(fig) in self._rendered:
                    return                                     # replaced, or drawn
                if name in self.blank() and self._repairs.get(name, 0) < MAX_REPAIRS:
                    self._repairs[name] = self._repairs.get(name, 0) + 1
                    self.put(name, go.FigureWidget(fig))       # the copy is watched from now
                    return


class StaticCopy:
    """Displays ``widget`` with static copies of the figure ``figure()`` returns and the text
    ``describe()`` returns (instead of ``VBox(children=...)``), and keeps them up to date."""

    def __init__(self, widget: widgets.Widget, figure: Callable[[], go.Figure], describe: Callable[[], str],
                 slots: FigureSlots) -> None:
        self.widget, self.figure, self.describe, self.slots = widget, figure, describe, slots
        self.handle: DisplayHandle | None = None

    def bundle(self) -> dict[str, Any]:
        """The representations of one output: the widget, the figure's JSON, a PNG when chapters
        are recorded (:func:`klteach.static.recording`), and one line of text."""
        fig = go.Figure(self.figure())
        data: dict[str, Any] = {static.WIDGET_MIME: self.widget._repr_mimebundle_()[static.WIDGET_MIME],
                                static.PLOTLY_MIME: json.loads(pio.to_json(fig, validate=False)),
                                "text/plain": self.describe()}
        if static.recording():
            png = static.figure_png(fig)
            if png is not None:
                data["image/png"] = base64.b64encode(png).decode("ascii")
        return data

    def show(self) -> None:
        """Display it (as the output of the current cell), with a display id to update it by."""
        self.slots.watch()
        self.handle = display(self.bundle(), raw=True, display_id=True)

    def update(self) -> None:
        """Bring the static copies up to date, unless a browser shows the live widget."""
        if self.handle is not None and not self.slots.alive():
            self.handle.update(self.bundle(), raw=True)


__all__ = ["FigureSlots", "StaticCopy", "RENDER_CHECKS_S", "ACK_TIMEOUT_S", "MAX_REPAIRS"]
