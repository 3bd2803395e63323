"""The figures of the three equation explorers (:mod:`klteach.explorers` adds their sliders).

Each explorer has a builder, which lays out empty traces, and a ``draw_*`` function, which
replaces their data whole from numbers the explorer computed with :mod:`klteach.theory`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .look import MARGIN, PALETTE, cluster_colours, cluster_symbols, current


def _two_panels(titles: tuple[str, str], widths: list[float] | None, height: int) -> go.Figure:
    look = current()
    fig = make_subplots(rows=1, cols=2, column_widths=widths, subplot_titles=titles)
    fig.update_layout(height=look.scaled(height), margin=MARGIN, template=look.template)
    return fig


# ---------------------------------------------------------------- posterior (eq. 1, 6)

def posterior_figure(z: np.ndarray, w: np.ndarray) -> go.Figure:
    """Left: points ``z`` on the unit circle and the cluster means ``w_k``; right: one curve per
    cluster, the posterior ``p_k(z)`` against the angle of ``z`` (filled by :func:`draw_posterior`)."""
    k = w.shape[0]
    edge = "white" if current().dark else "black"
    fig = _two_panels(("points z on the circle, means w_k", "posterior p_k(z) vs angle (eq. 1)"),
                      [0.38, 0.62], 360)
    fig.add_scatter(x=z[:, 0], y=z[:, 1], mode="markers", name="z", marker=dict(size=5),
                    showlegend=False, row=1, col=1)
    fig.add_scatter(x=w[:, 0], y=w[:, 1], mode="markers+text", name="w_k", text=[f"w_{j}" for j in range(k)],
                    textposition="top center", showlegend=False, row=1, col=1,
                    marker=dict(size=14, color=cluster_colours(range(k)), symbol=cluster_symbols(range(k)),
                                line=dict(color=edge, width=1)))
    for j in range(k):
        fig.add_scatter(mode="lines+markers", name=f"p_{j}", row=1, col=2, marker_maxdisplayed=24,
                        line=dict(color=PALETTE[j % len(PALETTE)]),
                        marker=dict(symbol=cluster_symbols([j])[0], size=7))
    fig.update_xaxes(range=[-1.3, 1.3], row=1, col=1, scaleanchor="y", constrain="domain")
    fig.update_yaxes(range=[-1.3, 1.3], row=1, col=1)
    fig.update_xaxes(title="angle of z [degrees]", row=1, col=2)
    fig.update_yaxes(title="p_k", range=[-0.02, 1.02], row=1, col=2)
    return fig


def draw_posterior(fig: go.Figure, degrees: np.ndarray, p: np.ndarray) -> None:
    """Colour (and mark) each point by its most likely cluster; one posterior curve per cluster."""
    winners = p.argmax(-1)
    fig.data[0].marker.color = cluster_colours(winners)
    fig.data[0].marker.symbol = cluster_symbols(winners)
    for j in range(p.shape[1]):
        fig.data[2 + j].x, fig.data[2 + j].y = degrees, p[:, j]


# ---------------------------------------------------------------- inverse priors (eq. 14-16)

def prior_lambda_figure(clusters: int) -> go.Figure:
    """Left: the student's and the teacher's cluster sizes, ranked; right: effective clusters of
    the teacher against λ, the student's as a reference, and the current λ."""
    fig = _two_panels(("cluster sizes, ranked (eq. 8)", "effective clusters vs λ"), [0.55, 0.45], 360)
    fig.add_bar(name="student π (p)", row=1, col=1, marker_color=PALETTE[0])
    fig.add_bar(name="teacher mean q (eq. 14)", row=1, col=1, marker_color=PALETTE[1], marker_pattern_shape="/")
    fig.add_scatter(name="teacher q", mode="lines", row=1, col=2, line=dict(color=PALETTE[1]))
    fig.add_scatter(name="student p", mode="lines", row=1, col=2, line=dict(color=PALETTE[0], dash="dash"))
    fig.add_scatter(name="current λ", mode="markers", row=1, col=2,
                    marker=dict(size=12, color=PALETTE[1], symbol="circle-open", line=dict(width=3)))
    fig.update_layout(barmode="group", shapes=[dict(
        type="line", xref="x domain", x0=0, x1=1, yref="y", y0=1 / clusters, y1=1 / clusters,
        line=dict(dash="dash", color=current().ink, width=1))])
    fig.update_xaxes(title="cluster (ranked by student size)", row=1, col=1)
    fig.update_yaxes(title="π_k", row=1, col=1)
    fig.update_xaxes(title="λ", row=1, col=2)
    fig.update_yaxes(title="exp H(π)", range=[0, clusters + 0.5], row=1, col=2)
    return fig


def draw_prior_lambda(fig: go.Figure, student: np.ndarray, teacher: np.ndarray, grid: Sequence[float] | np.ndarray,
                      teacher_effective: Sequence[float], lambdas: np.ndarray, student_effective: float,
                      lam: float, effective_now: float) -> None:
    """Bars ranked by the student's size; the teacher's effective clusters over ``grid``."""
    order = np.argsort(-student, kind="stable")
    ranks = np.arange(len(student))
    fig.data[0].x, fig.data[0].y = ranks, student[order]
    fig.data[1].x, fig.data[1].y = ranks, teacher[order]
    fig.data[2].x, fig.data[2].y = grid, teacher_effective
    fig.data[3].x, fig.data[3].y = lambdas, np.full_like(lambdas, student_effective)
    fig.data[4].x, fig.data[4].y = [lam], [effective_now]


# ---------------------------------------------------------------- from priors to centering (eq. 16-23)

def jensen_gap_figure() -> go.Figure:
    """Left: the gap between teachers (16) and (23) against τ; right: both sides of the Jensen
    bounds (18) per sample and (21) per cluster, with the line of equality."""
    fig = _two_panels(("gap: mean KL(q₁₆ ‖ q₂₃) vs τ", "Jensen bounds at this τ (log scale)"), None, 380)
    fig.add_scatter(name="gap (16) vs (23)", mode="lines", row=1, col=1, line=dict(color=PALETTE[0]))
    fig.add_scatter(name="this τ", mode="markers", row=1, col=1,
                    marker=dict(size=12, symbol="circle-open", color=PALETTE[0], line=dict(width=3)))
    fig.add_scatter(name="(18) per sample", mode="markers", row=1, col=2,
                    marker=dict(size=5, opacity=0.5, color=PALETTE[1], symbol="circle"))
    fig.add_scatter(name="(21) per cluster", mode="markers", row=1, col=2,
                    marker=dict(size=10, symbol="diamond", color=PALETTE[2]))
    fig.add_scatter(name="equality", mode="lines", row=1, col=2,
                    line=dict(color=current().ink, dash="dash", width=1))
    fig.update_xaxes(type="log", title="τ", row=1, col=1)
    fig.update_yaxes(type="log", title="nats", row=1, col=1)
    fig.update_xaxes(title="log of the lower bound (right side)", row=1, col=2)
    fig.update_yaxes(title="log of the left side", row=1, col=2)
    return fig


def draw_jensen_gap(fig: go.Figure, taus: np.ndarray, gaps: Sequence[float], tau: float, gap: float,
                    bound18: tuple[Any, Any], bound21: tuple[Any, Any]) -> None:
    """The gap curve (floored at 1e-12 for the log axis), the current τ, and both bounds as
    ``(left side, lower bound)`` pairs drawn against each other."""
    fig.data[0].x, fig.data[0].y = taus, np.maximum(gaps, 1e-12)
    fig.data[1].x, fig.data[1].y = [tau], [max(gap, 1e-12)]
    (lhs18, rhs18), (lhs21, rhs21) = bound18, bound21
    fig.data[2].x, fig.data[2].y = rhs18, lhs18
    fig.data[3].x, fig.data[3].y = rhs21, lhs21
    low = float(min(np.min(rhs18), np.min(rhs21)))
    high = float(max(np.max(lhs18), np.max(lhs21)))
    fig.data[4].x, fig.data[4].y = [low, high], [low, high]


__all__ = ["posterior_figure", "draw_posterior", "prior_lambda_figure", "draw_prior_lambda",
           "jensen_gap_figure", "draw_jensen_gap"]
