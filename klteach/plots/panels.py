"""The panels of klteach's figures: each kind of plot is a small class that adds its traces to
one cell of a figure (``make_subplots``) and later replaces their data **whole** with
``update(...)``, inside one ``batch_update`` when the figure is a ``FigureWidget`` (the cheap
way to animate one: appending to trace tuples is slow, and one message per redraw keeps the
browser from flooding). See :mod:`klteach.plots` for the list.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..live import setting_parts
from ..metrics import UNIFORM_THRESHOLD, one_cluster_threshold
from .look import PALETTE, Look, cluster_colours, cluster_symbols, current

Layers = dict[str, tuple[list[dict], list[dict]]]
"""Shapes and annotations of each panel of one figure, by panel name (``""``: the figure's own)."""


def _as_array(values: Any) -> np.ndarray:
    """A tensor, list or array as a float numpy array (on the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def thin(values: Sequence[float] | np.ndarray, limit: int = 1000) -> np.ndarray:
    """Every n-th value so that at most ``limit`` remain (keeps the last one): long curves stay cheap."""
    array = np.asarray(values)
    if len(array) <= limit:
        return array
    stride = math.ceil(len(array) / limit)
    return array[np.arange(len(array) - 1, -1, -stride)[::-1]]


# ---------------------------------------------------------------- panels

def new_layers(fig: go.Figure) -> Layers:
    """Empty panel layers for ``fig``, keeping the annotations it has (its subplot titles)."""
    return {"": ([], [a.to_plotly_json() for a in fig.layout.annotations])}


class Panel:
    """Traces in one cell ``(row, col)`` of a ``make_subplots`` figure, with their own legend,
    shapes and annotations (tagged with the panel's name, so panels never erase each other's)."""

    name = "panel"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, layers: Layers | None = None,
                 look: Look | None = None) -> None:
        """``layers`` is shared by the panels of one figure (:func:`new_layers`); ``look`` defaults
        to :func:`klteach.plots.look.current`."""
        self.fig, self.row, self.col = fig, row, col
        self.look = look or current()
        self.traces: list[int] = []
        self.legend = f"legend{'' if (row, col) == (1, 1) else f'{row}{col}'}"
        self.layers = layers if layers is not None else new_layers(fig)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Replace this panel's data (each panel says what it takes)."""
        raise NotImplementedError

    @property
    def data(self) -> list[Any]:
        """This panel's traces."""
        return [self.fig.data[i] for i in self.traces]

    def _add(self, trace: Any, secondary_y: bool = False) -> None:
        trace.legend = self.legend
        self.fig.add_trace(trace, row=self.row, col=self.col,
                           secondary_y=secondary_y if secondary_y else None)
        self.traces.append(len(self.fig.data) - 1)

    def _axis(self, letter: str, secondary: bool = False) -> str:
        """Layout name of this cell's axis, e.g. ``xaxis3`` or ``yaxis4`` (secondary)."""
        subplot = self.fig.get_subplot(self.row, self.col, secondary_y=secondary)
        return getattr(subplot, f"{letter}axis").plotly_name

    def _ref(self, letter: str, secondary: bool = False) -> str:
        return self._axis(letter, secondary).replace("axis", "")

    def _place_legend(self) -> None:
        """This panel's legend in the top-right corner of its cell."""
        subplot = self.fig.get_subplot(self.row, self.col)
        if isinstance(subplot, go.layout.Scene):
            x, y = subplot.domain.x or (0, 1), subplot.domain.y or (0, 1)
        else:
            x = self.fig.layout[self._axis("x")].domain or (0, 1)
            y = self.fig.layout[self._axis("y")].domain or (0, 1)
        self.fig.layout[self.legend] = dict(x=x[1], y=y[1], xanchor="right", yanchor="top",
                                            bgcolor=self.look.legend_background,
                                            font=dict(size=self.look.small))

    def _own(self, shapes: list[dict], annotations: list[dict]) -> None:
        """Replace this panel's shapes and annotations, keeping everyone else's (kept in
        ``self.layers``: inside a ``batch_update`` the figure still shows the old ones)."""
        for item in shapes + annotations:
            item["name"] = self.name
        if self.layers.get(self.name) == (shapes, annotations):
            return                                        # unchanged: send nothing
        self.layers[self.name] = (shapes, annotations)
        self.fig.layout.shapes = [s for own, _ in self.layers.values() for s in own]
        self.fig.layout.annotations = [a for _, own in self.layers.values() for a in own]

    def _batch(self) -> AbstractContextManager:
        return self.fig.batch_update() if isinstance(self.fig, go.FigureWidget) else nullcontext()


class EmbeddingPanel(Panel):
    """Points ``z`` coloured by their cluster (e.g. ``argmax p`` of eq. 6) and the weight vectors
    ``w_k`` as large diamonds of the same colours: on the unit sphere when ``D = 3`` (the cell must
    be a ``scene``), else in the first two principal components of ``z`` (scikit-learn PCA;
    ``w`` projected on the same axes). True labels appear on hover."""

    name = "embedding"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, three_d: bool = True, **options: Any) -> None:
        super().__init__(fig, row, col, **options)
        self.three_d = three_d
        if three_d:
            self._add(_sphere_wireframe())
            self._add(go.Scatter3d(name="z (samples)", mode="markers"))
            self._add(go.Scatter3d(name="w_k (weight vectors)", mode="markers"))
            axis = dict(range=[-1.1, 1.1], showticklabels=False, title="")
            scene = fig.get_subplot(row, col).plotly_name
            fig.layout[scene].update(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube")
        else:
            self._add(go.Scatter(name="z (samples)", mode="markers"))
            self._add(go.Scatter(name="w_k (weight vectors)", mode="markers"))
            fig.layout[self._axis("x")].title = "PC 1"
            fig.layout[self._axis("y")].title = "PC 2"
        self._place_legend()

    def update(self, z: Any, w: Any, assignments: Any = None, labels: Any = None) -> None:
        """Replace the points and the weight vectors."""
        points, protos = project_embeddings(z, w)
        k = protos.shape[0]
        assignments = (np.zeros(len(points), dtype=int) if assignments is None
                       else _as_array(assignments).astype(int))
        shown_labels = assignments if labels is None else _as_array(labels).astype(int)
        hover = [f"cluster {a}" + ("" if labels is None else f", label {y}")
                 for a, y in zip(assignments, shown_labels)]
        size = (3, 7) if self.three_d else (5, 13)
        edge = "white" if self.look.dark else "black"
        styles = (dict(size=size[0], color=cluster_colours(assignments), opacity=0.8,
                       symbol=cluster_symbols(assignments)),
                  dict(size=size[1], color=cluster_colours(range(k)), symbol=cluster_symbols(range(k)),
                       line=dict(color=edge, width=2)))
        with self._batch():
            for trace, coords, style, text in zip(self.data[-2:], (points, protos), styles,
                                                  (hover, [f"w_{j}" for j in range(k)])):
                trace.x, trace.y = coords[:, 0], coords[:, 1]
                if self.three_d:
                    trace.z = coords[:, 2]
                trace.marker, trace.text, trace.hoverinfo = style, text, "text"


class ClusterSizePanel(Panel):
    """Bars of the student's mean assignment ``π_k = mean_x p_k(x)`` (eq. 8/15) and, when given,
    the teacher's ``mean_x q_k(x)``; a dashed line at the balanced size ``1/K``. ``sort`` ranks
    clusters by the student's size, which makes a flattening easy to see."""

    name = "cluster_sizes"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, sort: bool = False, **options: Any) -> None:
        super().__init__(fig, row, col, **options)
        self.sort = sort
        self._add(go.Bar(name="student p", marker_color=PALETTE[0]))
        self._add(go.Bar(name="teacher q", marker_color=PALETTE[1], marker_pattern_shape="/"))   # not colour alone
        fig.layout.barmode = "group"
        fig.layout[self._axis("x")].title = "cluster (ranked by size)" if sort else "cluster k"
        fig.layout[self._axis("y")].title = "prior π_k"
        self._place_legend()

    def update(self, student_prior: Any, teacher_prior: Any = None) -> None:
        """Replace the bars."""
        student = _as_array(student_prior)
        k = len(student)
        order = np.argsort(-student, kind="stable") if self.sort else np.arange(k)
        x = np.arange(k)
        bars = self.data
        x_ref, y_ref = self._ref("x"), self._ref("y")
        with self._batch():
            bars[0].x, bars[0].y = x, student[order]
            bars[0].hovertext = [f"cluster {j}" for j in order]
            bars[1].visible = teacher_prior is not None
            if teacher_prior is not None:
                bars[1].x, bars[1].y = x, _as_array(teacher_prior)[order]
                bars[1].hovertext = [f"cluster {j}" for j in order]
            self._own([dict(type="line", xref=f"{x_ref} domain", x0=0, x1=1, yref=y_ref, y0=1 / k,
                            y1=1 / k, line=dict(color=self.look.ink, dash="dash", width=1))],
                      [dict(text="balanced 1/K", xref=f"{x_ref} domain", x=0, yref=y_ref, y=1 / k,
                            xanchor="left", yanchor="bottom", showarrow=False,
                            font=dict(size=self.look.small))])


def event_label(changes: dict[str, Any]) -> str:
    """Short text for a setting change, e.g. ``normaliser=none, τ_t=0.05``."""
    return ", ".join(f"{name}={value}" for name, value in setting_parts(changes))


class CollapsePanel(Panel):
    """Effective clusters ``exp H(π)`` (eq. 8; left axis, 0…K) and the mean per-sample entropy
    (right axis, 0…log K) against the step. Red band: one-cluster collapse (effective clusters
    ≤ :func:`klteach.metrics.one_cluster_threshold`); orange band: uniform collapse (entropy ≥
    ``UNIFORM_THRESHOLD`` · log K); dotted lines: setting changes. The cell needs
    ``{"secondary_y": True}``."""

    name = "collapse"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, **options: Any) -> None:
        super().__init__(fig, row, col, **options)
        self._add(go.Scatter(name="effective clusters exp H(π)", mode="lines",
                             line=dict(color=PALETTE[0], width=2)))
        self._add(go.Scatter(name="mean entropy H(p(x)) [nats]", mode="lines",
                             line=dict(color=PALETTE[1], dash="dash", width=2)), secondary_y=True)
        fig.layout[self._axis("x")].title = "step"
        self._place_legend()

    def update(self, clusters: int, steps: Sequence[float], effective: Sequence[float],
               entropy: Sequence[float], events: Sequence[dict[str, Any]] = ()) -> None:
        """Replace the curves, the bands (they depend on K) and the event markers."""
        x, y, y2 = self._ref("x"), self._ref("y"), self._ref("y", secondary=True)
        log_k, one = math.log(clusters), one_cluster_threshold(clusters)
        shapes = [dict(type="rect", xref=f"{x} domain", x0=0, x1=1, yref=y, y0=0,
                       y1=one, fillcolor=self.look.one_cluster_band, line_width=0, layer="below"),
                  dict(type="rect", xref=f"{x} domain", x0=0, x1=1, yref=y2, y0=UNIFORM_THRESHOLD * log_k,
                       y1=log_k * 1.05, fillcolor=self.look.uniform_band, line_width=0, layer="below")]
        font = dict(size=self.look.small)
        notes = [dict(text="one-cluster collapse", xref=f"{x} domain", x=0.01, yref=y,
                      y=one, xanchor="left", yanchor="top", showarrow=False, font=font),
                 dict(text="uniform collapse", xref=f"{x} domain", x=0.01, yref=y2, y=log_k * 1.05,
                      xanchor="left", yanchor="top", showarrow=False, font=font)]
        for event in events:
            shapes.append(dict(type="line", xref=x, x0=event["step"], x1=event["step"],
                               yref=f"{y} domain", y0=0, y1=1,
                               line=dict(color=self.look.ink, dash="dot", width=1.5)))
            notes.append(dict(text=event_label(event["changes"]), xref=x, x=event["step"],
                              yref=f"{y} domain", y=1, textangle=-90, xanchor="right", yanchor="top",
                              showarrow=False, font=dict(size=self.look.small, color=self.look.ink)))
        curves = self.data
        with self._batch():
            curves[0].x, curves[0].y = np.asarray(steps), np.asarray(effective)
            curves[1].x, curves[1].y = np.asarray(steps), np.asarray(entropy)
            if getattr(self, "_axes_for", None) != clusters:         # only when K changes
                self._axes_for = clusters
                self.fig.layout[self._axis("y")].update(range=[0, clusters * 1.05],
                                                       title=f"effective clusters (K={clusters})")
                self.fig.layout[self._axis("y", True)].update(range=[0, log_k * 1.05],
                                                             title="entropy [nats]")
            self._own(shapes, notes)


class LossPanel(Panel):
    """The training cross-entropy (3) per step and KL(q‖p) (2) on a fixed evaluation batch."""

    name = "loss"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, **options: Any) -> None:
        super().__init__(fig, row, col, **options)
        self._add(go.Scatter(name="cross-entropy loss (3)", mode="lines", line=dict(width=1, color=PALETTE[4])))
        self._add(go.Scatter(name="KL(q‖p) (2)", mode="lines+markers", line=dict(dash="dash", color=PALETTE[3]),
                             marker=dict(size=5, symbol="square")))
        fig.layout[self._axis("x")].title = "step"
        fig.layout[self._axis("y")].title = "nats"
        self._place_legend()

    def update(self, steps: Sequence[float], loss: Sequence[float], kl_steps: Sequence[float],
               kl: Sequence[float]) -> None:
        """Replace both curves."""
        curves = self.data
        with self._batch():
            curves[0].x, curves[0].y = np.asarray(steps), np.asarray(loss)
            curves[1].x, curves[1].y = np.asarray(kl_steps), np.asarray(kl)


class QualityPanel(Panel):
    """kNN accuracy (20 neighbours, DINO's weighted vote) and NMI of ``argmax p`` vs the labels."""

    name = "quality"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, **options: Any) -> None:
        super().__init__(fig, row, col, **options)
        self._add(go.Scatter(name="kNN accuracy", mode="lines+markers", line=dict(color=PALETTE[0]),
                             marker=dict(symbol="circle", size=7)))
        self._add(go.Scatter(name="NMI", mode="lines+markers", line=dict(dash="dash", color=PALETTE[2]),
                             marker=dict(symbol="square", size=7)))
        fig.layout[self._axis("x")].title = "step"
        fig.layout[self._axis("y")].range = [0, 1.02]
        self._place_legend()

    def update(self, steps: Sequence[float], knn: Sequence[float], nmi: Sequence[float]) -> None:
        """Replace both curves."""
        curves = self.data
        with self._batch():
            curves[0].x, curves[0].y = np.asarray(steps), np.asarray(knn)
            curves[1].x, curves[1].y = np.asarray(steps), np.asarray(nmi)


# ---------------------------------------------------------------- helpers of the panels

def project_embeddings(z: Any, w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates to draw: ``z`` and ``w`` unchanged when ``D <= 3``, else the 2-D PCA of ``z``
    (scikit-learn; ``w`` is projected with the same axes)."""
    z, w = _as_array(z), _as_array(w)
    if z.shape[1] <= 3:
        return z, w
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full").fit(z)
    return pca.transform(z), pca.transform(w)


def _sphere_wireframe(lines: int = 12, points: int = 40) -> go.Scatter3d:
    """A faint wireframe of the unit sphere: meridians and parallels, one trace (gaps are None)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    zs: list[float | None] = []
    t = np.linspace(0, 2 * math.pi, points)
    for phi in np.linspace(0, math.pi, lines, endpoint=False):          # meridians
        xs += list(np.cos(phi) * np.sin(t)) + [None]
        ys += list(np.sin(phi) * np.sin(t)) + [None]
        zs += list(np.cos(t)) + [None]
    for height in np.linspace(-0.9, 0.9, lines // 2):                      # parallels
        radius = math.sqrt(1 - height ** 2)
        xs += list(radius * np.cos(t)) + [None]
        ys += list(radius * np.sin(t)) + [None]
        zs += [float(height)] * points + [None]
    return go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", hoverinfo="skip", showlegend=False,
                        line=dict(color="rgba(120,120,120,0.25)", width=1), name="unit sphere")


__all__ = ["Panel", "EmbeddingPanel", "ClusterSizePanel", "CollapsePanel", "LossPanel", "QualityPanel",
           "new_layers", "project_embeddings", "event_label", "thin", "Layers"]
