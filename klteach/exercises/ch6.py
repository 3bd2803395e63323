"""Exercise checks for chapter 6, beyond the paper: its future directions made runnable.

- 6.1 **centred weight vectors** (eq. 19-20), as :class:`klteach.models.Prototypes` with
  ``centred=True`` uses them;
- 6.2 **Sinkhorn-Knopp** equipartition (SwAV), as :func:`klteach.normalisers.sinkhorn_knopp`;
- 6.3 **dimension vs temperature**: the temperature that gives random directions in ``D``
  dimensions a chosen logit spread.

Same conventions as chapter 1: each ``check_*`` calls the student's function on inputs of its
own, compares with the library, prints what is wrong and returns ``True`` only for a right answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import normalize

from .. import theory
from ..models import Prototypes
from ..normalisers import sinkhorn_knopp
from .checking import Mistake, call_student, check_probability_rows, diagnose, first_difference, report

__all__ = ["check_centred_weights", "check_sinkhorn", "check_temperature_for_dimension"]


# ---------------------------------------------------------------- exercise 6.1: eq. (19)-(20)

def library_centred_weights(w: Tensor) -> Tensor:
    """The unit-norm, centred weight vectors :class:`~klteach.models.Prototypes` uses for ``w``."""
    with torch.random.fork_rng():      # Prototypes draws a random start; leave the caller's seed alone
        prototypes = Prototypes(w.shape[1], w.shape[0], learnable=False, centred=True)
    prototypes.weight = w.detach().clone().float()
    return prototypes.unit_weights.double()


def _centred_mistakes() -> list[Mistake]:
    unit = lambda w: normalize(w, dim=-1)  # noqa: E731
    return [
        (lambda w: theory.centre_weights(unit(w)),
         "the rows are no longer unit vectors: after subtracting w̄, normalise each vector again, so "
         "that the scores stay cosines and (6) stays exact"),
        (lambda w: unit(unit(w) - unit(w).mean(1, keepdim=True)),
         "you subtracted each vector's own mean coordinate (dim 1); eq. (19) averages the K vectors: "
         "w̄ = (1/K) Σ_k w_k, a vector of dimension D (dim 0)"),
        (lambda w: unit(theory.centre_weights(w)),
         "normalise the raw vectors to unit length FIRST (they are the unit weight vectors of eq. 6), "
         "then subtract their mean, then normalise again; centring the raw vectors lets the longest "
         "ones dominate w̄"),
        (lambda w: unit(w),
         "these are only normalised: subtract the mean weight vector w̄ of eq. (19) before normalising again"),
        (lambda w: unit(unit(w) - unit(w).sum(0)),
         "w̄ is the MEAN of the weight vectors, (1/K) Σ_k w_k, not their sum"),
    ]


def check_centred_weights(student_centre: Callable[..., Any]) -> bool:
    """Exercise 6.1: ``student_centre(w)`` takes raw weight vectors ``(K, D)`` of any length and
    returns unit-norm vectors whose mean (eq. 19) is (nearly) zero, as eq. (20) assumes:
    normalise, subtract the mean vector, normalise again."""
    generator = torch.Generator().manual_seed(61)
    direction = normalize(torch.randn(1, 5, generator=generator, dtype=torch.float64), dim=-1)
    raw = torch.randn(7, 5, generator=generator, dtype=torch.float64) + 1.2 * direction
    raw = raw * torch.linspace(0.5, 3.0, 7, dtype=torch.float64)[:, None]     # unequal lengths
    answer, problem = call_student(student_centre, raw, unavailable=[theory.centre_weights, library_centred_weights])
    if answer is None:
        return report(False, problem)
    expected = library_centred_weights(raw)
    if tuple(answer.shape) != tuple(expected.shape):
        transposed = tuple(answer.shape) == tuple(expected.shape[::-1])
        return report(False, f"the shape is {tuple(answer.shape)}, expected (K, D) = {tuple(expected.shape)}"
                      + (": one row per weight vector, not one per dimension" if transposed else ""))
    if not torch.allclose(answer, expected, atol=1e-5):
        hint = diagnose(answer, expected, _centred_mistakes(), (raw,), atol=1e-5)
        return report(False, hint or "your vectors differ from klteach.models.Prototypes(centred=True): "
                      + first_difference(answer, expected))
    before = float(theory.mean_weight_vector(normalize(raw, dim=-1)).norm())
    after = float(theory.mean_weight_vector(answer).norm())
    return report(True, f"unit vectors with ‖w̄‖ = {after:.3f}, down from {before:.3f} before centring "
                  "(not exactly 0: the last normalisation stretches the short vectors a little)")


# ---------------------------------------------------------------- exercise 6.2: Sinkhorn-Knopp

def _sinkhorn_mistakes() -> list[Mistake]:
    def rows_then_columns(logits: Tensor, tau: float, iterations: int) -> Tensor:
        mass = (logits / tau - (logits / tau).max()).exp()
        batch, clusters = mass.shape
        for _ in range(iterations):
            mass = mass / mass.sum(1, keepdim=True)
            mass = mass / mass.sum(0, keepdim=True) / clusters
        return mass * batch
    return [
        (lambda logits, tau, iterations: theory.softmax_with_temperature(logits, tau),
         "this is the plain softmax (6) of each row: Sinkhorn also rescales the COLUMNS so that every "
         "cluster receives the same share B/K of the batch, alternating with the rows"),
        (lambda logits, tau, iterations: sinkhorn_knopp(logits, 1.0, iterations),
         "divide the logits by the temperature τ before exponentiating"),
        (lambda logits, tau, iterations: sinkhorn_knopp(logits, tau, iterations) / logits.shape[0],
         "your rows sum to 1/B: after the last row normalisation multiply by the batch size B so each "
         "sample's q is a distribution (rows sum to 1)"),
        (lambda logits, tau, iterations: sinkhorn_knopp(logits, tau, 1),
         "you ran a single round; run `iterations` rounds of (columns, then rows)"),
        (rows_then_columns,
         "you normalised the rows first and the columns last, so the rows no longer sum to 1: within "
         "each round normalise the columns (clusters) first and the rows (samples) last"),
        (lambda logits, tau, iterations: sinkhorn_knopp(logits.T, tau, iterations).T,
         "you swapped the roles of samples and clusters: each ROW (a sample) must sum to 1 and each "
         "COLUMN (a cluster) to B/K"),
    ]


def check_sinkhorn(student_sinkhorn: Callable[..., Any]) -> bool:
    """Exercise 6.2: ``student_sinkhorn(logits, tau, iterations)`` returns SwAV's equipartitioned
    ``q`` ``(B, K)``: start from ``exp(logits/τ)``, then ``iterations`` rounds of: scale every column
    to total ``1/K``, scale every row to total ``1/B``; finally multiply by ``B`` (rows sum to 1)."""
    generator = torch.Generator().manual_seed(62)
    logits = normalize(torch.randn(12, 6, generator=generator, dtype=torch.float64), dim=-1)
    logits = logits + torch.linspace(0.6, 0.0, 4, dtype=torch.float64).repeat(2)[:6]   # unequal clusters
    for tau, iterations in [(0.1, 3), (0.5, 5)]:
        answer, problem = call_student(student_sinkhorn, logits, tau, iterations, unavailable=[sinkhorn_knopp])
        if answer is None:
            return report(False, problem)
        expected = sinkhorn_knopp(logits, tau, iterations)
        if tuple(answer.shape) != tuple(expected.shape):
            return report(False, check_probability_rows(answer, tuple(expected.shape)) or "")
        if torch.allclose(answer, expected, atol=1e-5):
            continue
        hint = diagnose(answer, expected, _sinkhorn_mistakes(), (logits, tau, iterations), atol=1e-5)
        where = f" (τ = {tau}, {iterations} iterations)"
        if hint:
            return report(False, hint + where)
        rows_problem = check_probability_rows(answer, tuple(expected.shape))
        if rows_problem:
            return report(False, rows_problem + where)
        return report(False, "the values differ from klteach.normalisers.sinkhorn_knopp" + where + ": "
                      + first_difference(answer, expected))
    sizes = sinkhorn_knopp(logits, 0.1, 3).sum(0)
    softmax_sizes = theory.softmax_with_temperature(logits, 0.1).sum(0)
    return report(True, f"cluster sizes {float(sizes.min()):.2f}..{float(sizes.max()):.2f} of B/K = "
                  f"{logits.shape[0] / logits.shape[1]:.1f}, where the plain softmax gives "
                  f"{float(softmax_sizes.min()):.2f}..{float(softmax_sizes.max()):.2f}")


# ---------------------------------------------------------------- exercise 6.3: dimension vs temperature

def random_logit_std(dim: int, tau: float, samples: int = 40_000, seed: int = 63) -> float:
    """The standard deviation of ``w·z/τ`` for uniformly random unit vectors ``z`` in ``dim``
    dimensions and a unit ``w`` (by symmetry any fixed ``w`` will do), measured by sampling
    (the check does not rely on the formula)."""
    generator = torch.Generator().manual_seed(seed)
    z = normalize(torch.randn(samples, dim, generator=generator, dtype=torch.float64), dim=-1)
    w = normalize(torch.randn(dim, generator=generator, dtype=torch.float64), dim=-1)
    return float((z @ w / tau).std())


def check_temperature_for_dimension(student_temperature: Callable[..., Any]) -> bool:
    """Exercise 6.3: ``student_temperature(dim, logit_std)`` returns the ``τ`` at which the logits
    ``w·z/τ`` of independent random unit vectors in ``dim`` dimensions have standard deviation
    ``logit_std``. Checked by sampling random unit vectors, to within 2 %."""
    wrong = {"1/(s*D)": "the VARIANCE of w·z is 1/D, so its standard deviation is 1/√D, not 1/D",
             "sqrt(D)/s": "upside down: more dimensions make random unit vectors MORE orthogonal "
                          "(smaller w·z), so the same spread of logits needs a SMALLER τ",
             "s/sqrt(D)": "τ divides the logits: a larger wanted spread needs a smaller τ",
             "1/s": "that ignores the dimension: w·z itself has standard deviation about 1/√D"}
    for dim, logit_std in [(3, 1.0), (64, 2.0), (256, 0.5)]:
        answer, problem = call_student(student_temperature, dim, logit_std, unavailable=[random_logit_std])
        if answer is None:
            return report(False, problem)
        if answer.numel() != 1 or not float(answer) > 0:
            return report(False, f"return one positive number (a temperature); for D = {dim}, "
                          f"std {logit_std} you returned {answer}")
        tau = float(answer)
        reached = random_logit_std(dim, tau)
        if abs(reached / logit_std - 1) > 0.02:
            candidates = {"1/(s*D)": 1 / (logit_std * dim), "sqrt(D)/s": math.sqrt(dim) / logit_std,
                          "s/sqrt(D)": logit_std / math.sqrt(dim), "1/s": 1 / logit_std}
            for key, value in candidates.items():
                if math.isclose(tau, value, rel_tol=1e-6):
                    return report(False, f"for D = {dim} you gave τ = {tau:.4g}: " + wrong[key])
            return report(False, f"for D = {dim} at your τ = {tau:.4g} the logits of random unit vectors "
                          f"have standard deviation {reached:.3f}, not {logit_std}: w·z has mean 0 and "
                          "variance 1/D (each of the D coordinates contributes 1/D²·D)")
    return report(True, "τ = 1/(s·√D): at the same τ, a 64-d model starts with logits about "
                  f"{math.sqrt(64 / 3):.1f}× flatter than a 3-d one")
