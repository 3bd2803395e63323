"""Whole figures made of panels: one panel alone for a chapter, or all five for the dashboard."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .look import FIGURE_HEIGHT, MARGIN, Look, current
from .panels import (
    ClusterSizePanel,
    CollapsePanel,
    EmbeddingPanel,
    LossPanel,
    Panel,
    QualityPanel,
    _as_array,
    new_layers,
)


def _single(title: str, spec: dict | None = None, height: int = FIGURE_HEIGHT) -> go.Figure:
    look = current()
    fig = make_subplots(rows=1, cols=1, specs=[[spec or {}]])
    fig.update_layout(title=title, height=look.scaled(height), margin=MARGIN, template=look.template)
    return fig


def _finish(fig: go.Figure, widget: bool) -> go.Figure:
    return go.FigureWidget(fig) if widget else fig


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


DASHBOARD_TITLES = ("Collapse monitor", "Cluster sizes π_k: student p, teacher q (eq. 8)",
                    "Loss (eq. 3) and KL(teacher‖student) (eq. 2)", "kNN accuracy and NMI vs the labels")


def dashboard_figure(three_d: bool, has_labels: bool = True, width: int = 980, height: int = 1060,
                     look: Look | None = None, embedding_title: str | None = None
                     ) -> tuple[go.Figure, dict[str, Panel]]:
    """All five panels in one figure (a live dashboard then costs the browser one plotly.js
    widget, not five): collapse monitor and cluster sizes, loss/KL and kNN/NMI, embeddings."""
    look = look or current()
    quality = DASHBOARD_TITLES[3] if has_labels else "kNN accuracy and NMI: this dataset has no labels"
    embedding = embedding_title or (
        "Student embeddings z on the sphere, weight vectors w_k (large markers)" if three_d
        else "Student embeddings z (PCA), weight vectors w_k (large markers)")
    fig = make_subplots(rows=3, cols=2, row_heights=[0.28, 0.28, 0.44], vertical_spacing=0.08,
                        horizontal_spacing=0.16,
                        specs=[[{"secondary_y": True}, {}], [{}, {}],
                               [{"type": "scene" if three_d else "xy", "colspan": 2}, None]],
                        subplot_titles=(*DASHBOARD_TITLES[:3], quality, embedding))
    fig.update_layout(width=look.scaled(width), height=look.scaled(height), template=look.template,
                      margin=dict(l=60, r=60, t=50, b=40), uirevision="keep")
    fig.update_annotations(font_size=look.font + 2)                   # the subplot titles
    layers = new_layers(fig)
    options: dict[str, Any] = dict(layers=layers, look=look)
    panels: dict[str, Panel] = {
        "collapse": CollapsePanel(fig, 1, 1, **options), "cluster_sizes": ClusterSizePanel(fig, 1, 2, **options),
        "loss": LossPanel(fig, 2, 1, **options), "quality": QualityPanel(fig, 2, 2, **options),
        "embedding": EmbeddingPanel(fig, 3, 1, three_d=three_d, **options)}
    return fig, panels


def bind(panels: dict[str, Panel], fig: go.Figure) -> dict[str, Panel]:
    """Point ``panels`` at ``fig`` (e.g. the ``FigureWidget`` made from the figure they built)."""
    for panel in panels.values():
        panel.fig = fig
    return panels


__all__ = ["embedding_figure", "cluster_size_figure", "collapse_figure", "loss_figure", "quality_figure",
           "dashboard_figure", "bind", "DASHBOARD_TITLES"]
