"""Three explorers of the paper's equations: sliders, a figure and a one-line summary.

* :func:`posterior_explorer` — the mixture posterior (1) and the softmax (6) on the circle;
* :func:`prior_lambda_explorer` — the inverse-prior teacher (14)-(16) for an unbalanced student;
* :func:`jensen_gap_explorer` — from inverse priors (16) to centering (23) through the Jensen
  bounds (18), (21).

The numbers come from :mod:`klteach.theory`; the figures from :mod:`klteach.plots.explorers`.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from . import metrics, theory
from .data import make_toy_sphere
from .display import FigureSlots
from .plots import explorers as figures


class Explorer(widgets.VBox):
    """Controls, a figure and a one-line summary, redrawn whenever a control changes.

    ``explorer.controls`` (name → widget), ``explorer.figure`` (a ``FigureWidget``) and
    ``explorer.summary`` (an HTML line) let code and tests drive it like a student would.
    """

    def __init__(self, controls: dict[str, widgets.ValueWidget], figure: go.FigureWidget,
                 draw: Callable[[Explorer], str], note: str) -> None:
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


def _tau_slider(value: float, low: float, high: float) -> widgets.FloatLogSlider:
    """A temperature slider on a log scale from 10**low to 10**high."""
    return widgets.FloatLogSlider(value=value, base=10, min=low, max=high, step=0.05,
                                  description="temperature τ", readout_format=".3f", **_slider_style())


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
        "tau": _tau_slider(0.1, -2, 1),
        "prior": widgets.FloatSlider(value=round(1 / k, 3), min=0.02, max=0.96, step=0.01,
                                     description="prior π₀ of cluster 0", **_slider_style()),
    }

    def draw(explorer: Explorer) -> str:
        tau, prior0 = explorer.value("tau"), explorer.value("prior")
        prior = torch.full((k,), (1 - prior0) / (k - 1), dtype=torch.float64)
        prior[0] = prior0
        p = theory.posterior(z, w, tau, prior)                           # eq. (1)
        figures.draw_posterior(explorer.figure, degrees, p.numpy())
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
    fig = go.FigureWidget(figures.posterior_figure(z.numpy(), w.numpy()))
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
        "lam": widgets.FloatSlider(value=1.0, min=0, max=2, step=0.05, description="λ", **_slider_style()),
        "tau": _tau_slider(0.2, -1.7, 0),
        "self_consistent": widgets.Checkbox(value=False, description="self-consistent prior (13)"),
    }

    def teacher(p: Tensor, lam: float, self_consistent: bool) -> Tensor:
        if self_consistent:
            return theory.self_consistent_teacher(p, lam, iterations=100)
        return theory.inverse_prior_teacher(p, lam=lam)

    cache: dict[tuple, list[float]] = {}

    def draw(explorer: Explorer) -> str:
        lam, tau, consistent = explorer.value("lam"), explorer.value("tau"), explorer.value("self_consistent")
        p = theory.sphere_posterior(z, w, tau)                            # eq. (6)
        q = teacher(p, lam, consistent)                                   # eq. (14)-(16)
        key = (round(tau, 6), consistent)
        grid = lambdas[::2] if consistent else lambdas     # the iteration (13) costs more
        if key not in cache:
            cache[key] = [metrics.effective_clusters(teacher(p, float(x), consistent)) for x in grid]
        eff_p, eff_q = metrics.effective_clusters(p), metrics.effective_clusters(q)
        figures.draw_prior_lambda(explorer.figure, theory.cluster_prior(p).numpy(),
                                  theory.cluster_prior(q).numpy(), grid, cache[key], lambdas, eff_p, lam, eff_q)
        return (f"λ = {lam:.2f}, τ = {tau:.3g}: effective clusters exp H(π) of the student "
                f"{eff_p:.2f} → teacher {eff_q:.2f} of K = {clusters}.")

    note = ("<b>Inverse cluster priors (eq. 14–16).</b> The student's clusters are unbalanced; "
            "the teacher divides by π<sup>λ</sup>. Raise λ and watch the teacher's bars flatten.")
    return Explorer(controls, go.FigureWidget(figures.prior_lambda_figure(clusters)), draw, note)


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
        "tau": _tau_slider(0.1, -2, 1),
        "spread": widgets.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="norm spread s",
                                      **_slider_style()),
        "centred": widgets.Checkbox(value=False, description="centre the weights (eq. 20)"),
    }
    cache: dict[tuple, list[float]] = {}

    def draw(explorer: Explorer) -> str:
        tau, spread, centred = explorer.value("tau"), explorer.value("spread"), explorer.value("centred")
        z = points * (spread * noise).exp()
        w = theory.centre_weights(means) if centred else means           # eq. (20)
        key = (round(spread, 6), centred)
        if key not in cache:
            cache[key] = [float(theory.prior_centering_gap(z, w, float(t))) for t in taus]
        gap = float(theory.prior_centering_gap(z, w, tau))
        lhs18, rhs18 = theory.normaliser_jensen_bound(z, w, tau)         # eq. (18)
        lhs21, rhs21 = theory.data_jensen_bound(z, w, tau)               # eq. (21)
        figures.draw_jensen_gap(explorer.figure, taus, cache[key], tau, gap,
                                (lhs18.numpy(), rhs18.numpy()), (lhs21.numpy(), rhs21.numpy()))
        slack18, slack21 = float((lhs18 - rhs18).mean()), float((lhs21 - rhs21).mean())
        norms = z.norm(dim=1)
        return (f"τ = {tau:.3g}, norms {float(norms.min()):.2f}–{float(norms.max()):.2f}"
                f"{', centred weights' if centred else ''}: gap KL(q₁₆‖q₂₃) = {gap:.3g} nats; "
                f"mean slack of (18) {slack18:.3g}, of (21) {slack21:.3g} (log units).")

    note = ("<b>From inverse priors to centering (eq. 16–23).</b> Centering (23) replaces the exact "
            "teacher (16) using two Jensen bounds, (18) and (21). They are tight at high τ and "
            "small norm spread; lower τ or spread the norms and watch the gap grow.")
    return Explorer(controls, go.FigureWidget(figures.jensen_gap_figure()), draw, note)


__all__ = ["Explorer", "posterior_explorer", "prior_lambda_explorer", "jensen_gap_explorer"]
