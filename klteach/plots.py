"""Plotly figures shared by the live widgets and the chapters.

Each kind of plot is a **panel**: a small class that adds its traces to one cell of a figure
(``make_subplots``) and later replaces their data **whole** with ``update(...)``, inside one
``batch_update`` when the figure is a ``FigureWidget`` (the cheap way to animate one:
appending to trace tuples is slow, and one message per redraw keeps the browser from
flooding). The ``*_figure`` functions build a one-panel figure for a notebook;
:func:`dashboard_figure` puts all five panels in *one* figure for the live dashboard.

=========================  ======================================================  =========
panel                      shows                                                   equations
=========================  ======================================================  =========
:class:`EmbeddingPanel`    embeddings ``z`` and weight vectors ``w_k``: a 3-D        (6)
                           sphere when ``D = 3``, else a 2-D PCA
:class:`ClusterSizePanel`  cluster priors ``π_k`` of student and teacher            (8), (15)
:class:`CollapsePanel`     effective clusters and mean per-sample entropy, both     (8)
                           collapse regions shaded, setting changes marked
:class:`LossPanel`         cross-entropy loss and KL(teacher‖student)               (2), (3)
:class:`QualityPanel`      kNN accuracy and NMI against the true labels
=========================  ======================================================  =========
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .metrics import UNIFORM_THRESHOLD, one_cluster_threshold

PALETTE = qualitative.Dark24
"""Colours of clusters (cycled when K > 24)."""
ONE_CLUSTER_COLOUR = "rgba(214, 39, 40, 0.15)"
UNIFORM_COLOUR = "rgba(255, 127, 14, 0.18)"
FIGURE_HEIGHT = 320
MARGIN = dict(l=50, r=20, t=50, b=40)


def _as_array(values: Any) -> np.ndarray:
    """A tensor, list or array as a float numpy array (on the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def cluster_colours(indices: Sequence[int] | np.ndarray) -> list[str]:
    """One palette colour per cluster index."""
    return [PALETTE[int(k) % len(PALETTE)] for k in np.asarray(indices).ravel()]


def thin(values: Sequence[float], limit: int = 1000) -> np.ndarray:
    """Every n-th value so that at most ``limit`` remain (keeps the last one): long curves stay cheap."""
    values = np.asarray(values)
    if len(values) <= limit:
        return values
    stride = math.ceil(len(values) / limit)
    return values[np.arange(len(values) - 1, -1, -stride)[::-1]]


# ---------------------------------------------------------------- panels

class Panel:
    """Traces in one cell ``(row, col)`` of a ``make_subplots`` figure, with their own legend,
    shapes and annotations (tagged with the panel's name, so panels never erase each other's)."""

    name = "panel"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1) -> None:
        self.fig, self.row, self.col = fig, row, col
        self.traces: list[int] = []
        self.legend = f"legend{'' if (row, col) == (1, 1) else f'{row}{col}'}"
        if not hasattr(fig, "_panel_layers"):          # shared by the panels of one figure
            fig._panel_layers = {"": ([], [a.to_plotly_json() for a in fig.layout.annotations])}
        self.layers: dict[str, tuple[list[dict], list[dict]]] = fig._panel_layers

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
                                            bgcolor="rgba(255,255,255,0.7)", font=dict(size=10))

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

    def _batch(self):
        return self.fig.batch_update() if isinstance(self.fig, go.FigureWidget) else nullcontext()


class EmbeddingPanel(Panel):
    """Points ``z`` coloured by their cluster (e.g. ``argmax p`` of eq. 6) and the weight vectors
    ``w_k`` as large diamonds of the same colours: on the unit sphere when ``D = 3`` (the cell must
    be a ``scene``), else in the first two principal components of ``z`` (scikit-learn PCA;
    ``w`` projected on the same axes). True labels appear on hover."""

    name = "embedding"

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, three_d: bool = True) -> None:
        super().__init__(fig, row, col)
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
        styles = (dict(size=size[0], color=cluster_colours(assignments), opacity=0.8),
                  dict(size=size[1], color=cluster_colours(range(k)), symbol="diamond",
                       line=dict(color="black", width=1)))
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

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1, sort: bool = False) -> None:
        super().__init__(fig, row, col)
        self.sort = sort
        self._add(go.Bar(name="student p"))
        self._add(go.Bar(name="teacher q"))
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
                            y1=1 / k, line=dict(color="black", dash="dash", width=1))],
                      [dict(text="balanced 1/K", xref=f"{x_ref} domain", x=0, yref=y_ref, y=1 / k,
                            xanchor="left", yanchor="bottom", showarrow=False, font=dict(size=10))])


def setting_parts(changes: dict[str, Any]) -> list[tuple[str, str]]:
    """``(short name, value as text)`` for each changed setting, e.g. ``("τ_t", "0.05")``."""
    names = {"tau_student": "τ_s", "tau_teacher": "τ_t", "lam": "λ", "clusters": "K",
             "momentum": "m"}
    return [(names.get(key, key), f"{value:.3g}" if isinstance(value, float) else str(value))
            for key, value in changes.items()]


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

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1) -> None:
        super().__init__(fig, row, col)
        self._add(go.Scatter(name="effective clusters exp H(π)", mode="lines",
                             line=dict(color="#1f77b4")))
        self._add(go.Scatter(name="mean entropy H(p(x)) [nats]", mode="lines",
                             line=dict(color="#ff7f0e", dash="dash")), secondary_y=True)
        fig.layout[self._axis("x")].title = "step"
        self._place_legend()

    def update(self, clusters: int, steps: Sequence[float], effective: Sequence[float],
               entropy: Sequence[float], events: Sequence[dict[str, Any]] = ()) -> None:
        """Replace the curves, the bands (they depend on K) and the event markers."""
        x, y, y2 = self._ref("x"), self._ref("y"), self._ref("y", secondary=True)
        log_k, one = math.log(clusters), one_cluster_threshold(clusters)
        shapes = [dict(type="rect", xref=f"{x} domain", x0=0, x1=1, yref=y, y0=0,
                       y1=one, fillcolor=ONE_CLUSTER_COLOUR, line_width=0, layer="below"),
                  dict(type="rect", xref=f"{x} domain", x0=0, x1=1, yref=y2, y0=UNIFORM_THRESHOLD * log_k,
                       y1=log_k * 1.05, fillcolor=UNIFORM_COLOUR, line_width=0, layer="below")]
        font = dict(size=10)
        notes = [dict(text="one-cluster collapse", xref=f"{x} domain", x=0.01, yref=y,
                      y=one, xanchor="left", yanchor="top", showarrow=False, font=font),
                 dict(text="uniform collapse", xref=f"{x} domain", x=0.01, yref=y2, y=log_k * 1.05,
                      xanchor="left", yanchor="top", showarrow=False, font=font)]
        for event in events:
            shapes.append(dict(type="line", xref=x, x0=event["step"], x1=event["step"],
                               yref=f"{y} domain", y0=0, y1=1,
                               line=dict(color="rgba(60,60,60,0.7)", dash="dot", width=1.5)))
            notes.append(dict(text=event_label(event["changes"]), xref=x, x=event["step"],
                              yref=f"{y} domain", y=1, textangle=-90, xanchor="right", yanchor="top",
                              showarrow=False, font=dict(size=10, color="rgb(60,60,60)")))
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

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1) -> None:
        super().__init__(fig, row, col)
        self._add(go.Scatter(name="cross-entropy loss (3)", mode="lines", line=dict(width=1)))
        self._add(go.Scatter(name="KL(q‖p) (2)", mode="lines+markers", marker=dict(size=4)))
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

    def __init__(self, fig: go.Figure, row: int = 1, col: int = 1) -> None:
        super().__init__(fig, row, col)
        self._add(go.Scatter(name="kNN accuracy", mode="lines+markers"))
        self._add(go.Scatter(name="NMI", mode="lines+markers"))
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


def _single(title: str, spec: dict | None = None, height: int = FIGURE_HEIGHT) -> go.Figure:
    fig = make_subplots(rows=1, cols=1, specs=[[spec or {}]])
    fig.update_layout(title=title, height=height, margin=MARGIN)
    return fig


def _finish(fig: go.Figure, widget: bool) -> go.Figure:
    return go.FigureWidget(fig) if widget else fig


# ---------------------------------------------------------------- one-panel figures (notebooks)

def embedding_figure(z: Any, w: Any, assignments: Any = None, labels: Any = None,
                     title: str = "Embeddings z and weight vectors w_k", widget: bool = False) -> go.Figure:
    """:class:`EmbeddingPanel` alone: the 3-D sphere when ``D = 3``, else a 2-D PCA."""
    three_d = _as_array(z).shape[1] == 3
    fig = _single(title, {"type": "scene"} if three_d else None, FIGURE_HEIGHT + 80)
    EmbeddingPanel(fig, three_d=three_d).update(z, w, assignments, labels)
    return _finish(fig, widget)


def cluster_size_figure(student_prior: Any, teacher_prior: Any = None, sort: bool = False,
                        title: str = "Cluster sizes π_k (eq. 8)", widget: bool = False) -> go.Figure:
    """:class:`ClusterSizePanel` alone."""
    fig = _single(title)
    ClusterSizePanel(fig, sort=sort).update(student_prior, teacher_prior)
    return _finish(fig, widget)


def collapse_figure(clusters: int, steps: Sequence[float] = (), effective: Sequence[float] = (),
                    entropy: Sequence[float] = (), events: Sequence[dict[str, Any]] = (),
                    title: str = "Collapse monitor", widget: bool = False) -> go.Figure:
    """:class:`CollapsePanel` alone: e.g. from a run's history,
    ``collapse_figure(K, [h["step"] for h in hist], [h["effective_clusters"] ...], ...)``."""
    fig = _single(title, {"secondary_y": True})
    CollapsePanel(fig).update(clusters, steps, effective, entropy, events)
    return _finish(fig, widget)


def loss_figure(steps: Sequence[float] = (), loss: Sequence[float] = (), kl_steps: Sequence[float] = (),
                kl: Sequence[float] = (), title: str = "Loss (eq. 3) and KL(teacher‖student) (eq. 2)",
                widget: bool = False) -> go.Figure:
    """:class:`LossPanel` alone."""
    fig = _single(title)
    LossPanel(fig).update(steps, loss, kl_steps, kl)
    return _finish(fig, widget)


def quality_figure(steps: Sequence[float] = (), knn: Sequence[float] = (), nmi: Sequence[float] = (),
                   title: str = "Cluster quality vs the true labels", widget: bool = False) -> go.Figure:
    """:class:`QualityPanel` alone."""
    fig = _single(title)
    QualityPanel(fig).update(steps, knn, nmi)
    return _finish(fig, widget)


# ---------------------------------------------------------------- the dashboard's figure

DASHBOARD_TITLES = ("Collapse monitor", "Cluster sizes π_k: student p, teacher q (eq. 8)",
                    "Loss (eq. 3) and KL(teacher‖student) (eq. 2)", "kNN accuracy and NMI vs the labels")


def dashboard_figure(three_d: bool, has_labels: bool = True, width: int = 980,
                     height: int = 1060) -> tuple[go.Figure, dict[str, Panel]]:
    """All five panels in one figure (a live dashboard then costs the browser one plotly.js
    widget, not five): collapse monitor and cluster sizes, loss/KL and kNN/NMI, embeddings."""
    quality = DASHBOARD_TITLES[3] if has_labels else "kNN accuracy and NMI: this dataset has no labels"
    embedding = ("Student embeddings z on the sphere, weight vectors w_k (diamonds)" if three_d
                 else "Student embeddings z (PCA), weight vectors w_k (diamonds)")
    fig = make_subplots(rows=3, cols=2, row_heights=[0.28, 0.28, 0.44], vertical_spacing=0.08,
                        horizontal_spacing=0.16,
                        specs=[[{"secondary_y": True}, {}], [{}, {}],
                               [{"type": "scene" if three_d else "xy", "colspan": 2}, None]],
                        subplot_titles=(*DASHBOARD_TITLES[:3], quality, embedding))
    fig.update_layout(width=width, height=height, margin=dict(l=50, r=50, t=40, b=30),
                      uirevision="keep")
    panels: dict[str, Panel] = {
        "collapse": CollapsePanel(fig, 1, 1), "cluster_sizes": ClusterSizePanel(fig, 1, 2),
        "loss": LossPanel(fig, 2, 1), "quality": QualityPanel(fig, 2, 2),
        "embedding": EmbeddingPanel(fig, 3, 1, three_d=three_d)}
    return fig, panels


def bind(panels: dict[str, Panel], fig: go.Figure) -> dict[str, Panel]:
    """Point ``panels`` at ``fig`` (e.g. the ``FigureWidget`` made from the figure they built)."""
    for panel in panels.values():
        panel.fig = fig
    return panels


__all__ = ["Panel", "EmbeddingPanel", "ClusterSizePanel", "CollapsePanel", "LossPanel", "QualityPanel",
           "embedding_figure", "cluster_size_figure", "collapse_figure", "loss_figure", "quality_figure",
           "dashboard_figure", "bind", "project_embeddings", "event_label", "setting_parts",
           "cluster_colours", "thin", "PALETTE"]
