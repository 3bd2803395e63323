"""Exercise checks for chapter 4, from inverse priors to centering (eq. 17-23).

Same conventions as chapter 1: each ``check_*`` calls the student's function on inputs of its
own, compares the result with :mod:`klteach.theory`, prints what is wrong and returns ``True``
only for a right answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import theory
from .checking import Mistake, call_student, check_probability_rows, diagnose, first_difference, report

__all__ = ["check_normaliser_lower_bound", "check_centering_teacher", "check_prior_centering_gap"]


def embeddings_and_weights(samples: int, clusters: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """Unit-norm float64 embeddings ``z`` ``(samples, dim)`` that lean towards one direction (so
    their mean is not 0) and unit weight vectors ``w`` ``(clusters, dim)`` (mean not 0 either)."""
    generator = torch.Generator().manual_seed(seed)
    lean = torch.zeros(dim, dtype=torch.float64)
    lean[0] = 0.8
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    z = unit(torch.randn(samples, dim, generator=generator, dtype=torch.float64) * 0.6 + lean)
    w = unit(torch.randn(clusters, dim, generator=generator, dtype=torch.float64) + lean)
    return z, w


# ---------------------------------------------------------------- exercise 4.1: eq. (18)

def _bound_mistakes() -> list[Mistake]:
    log_k = lambda w: math.log(w.shape[0])  # noqa: E731
    return [
        (lambda z, w, tau: z @ theory.mean_weight_vector(w) / tau,
         "log K is missing: Jensen gives Σ_j e^{a_j} = K·mean_j e^{a_j} ≥ K·e^{mean_j a_j}"),
        (lambda z, w, tau: log_k(w) + z @ w.sum(0) / tau,
         "w̄ is the MEAN of the weight vectors (eq. 19), not their sum"),
        (lambda z, w, tau: log_k(w) + z @ theory.mean_weight_vector(w),
         "divide w̄·z by the temperature τ"),
        (lambda z, w, tau: theory.normaliser_jensen_bound(z, w, tau)[0],
         "that is the left side, log Σ_j exp(w_j·z/τ) itself; return Jensen's lower bound, "
         "log of K·exp(w̄·z/τ)"),
        (lambda z, w, tau: theory.normaliser_jensen_bound(z, w, tau)[1].exp(),
         "return the logarithm of the bound, log K + w̄·z/τ (exp of large logits overflows)"),
    ]


def check_normaliser_lower_bound(student_bound: Callable[..., Any]) -> bool:
    """Exercise 4.1: ``student_bound(z, w, tau)`` returns the log of Jensen's lower bound (18) on
    the softmax normaliser, ``log K + w̄·z/τ`` per sample, shape ``(N,)``."""
    z, w = embeddings_and_weights(9, 5, 6, seed=41)
    for tau in (0.5, 0.05):
        answer, problem = call_student(student_bound, z, w, tau, unavailable=[theory.normaliser_jensen_bound])
        if answer is None:
            return report(False, problem)
        log_lhs, expected = theory.normaliser_jensen_bound(z, w, tau)
        if tuple(answer.shape) != tuple(expected.shape):
            return report(False, f"the shape is {tuple(answer.shape)}; the bound has one value per "
                          f"sample, (N,) = {tuple(expected.shape)}")
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _bound_mistakes(), (z, w, tau), atol=1e-9)
            return report(False, f"τ = {tau}: " + (hint or first_difference(answer, expected)))
    gaps = {tau: float((theory.normaliser_jensen_bound(z, w, tau)[0]
                        - theory.normaliser_jensen_bound(z, w, tau)[1]).mean()) for tau in (0.5, 0.05)}
    return report(True, "your bound is log K + w̄·z/τ (eq. 18); the mean gap log lhs - log rhs is "
                  f"{gaps[0.5]:.3f} at τ = 0.5 and {gaps[0.05]:.3f} at τ = 0.05: looser when τ is low")


# ---------------------------------------------------------------- exercise 4.2: eq. (23)

def _centering_mistakes() -> list[Mistake]:
    centre = lambda logits: logits.mean(0)  # noqa: E731
    return [
        (lambda logits, tau: theory.softmax_with_temperature(logits, tau),
         "this is the plain softmax: nothing was centred. (Subtracting a per-sample, row, mean changes "
         "nothing: a softmax ignores a constant added to every k.) Subtract each cluster's mean logit "
         "over the samples, c_k = mean_x l_k(x) (dim 0)"),
        (lambda logits, tau: theory.softmax_with_temperature(logits + centre(logits), tau),
         "wrong sign: subtract the centre c_k = mean_x l_k(x), do not add it"),
        (lambda logits, tau: (logits - centre(logits)).softmax(-1),
         "divide the centred logits by the temperature τ before the softmax"),
        (lambda logits, tau: ((logits - centre(logits)) * tau).softmax(-1),
         "divide by τ, do not multiply"),
        (lambda logits, tau: ((logits - centre(logits)) / tau).softmax(0),
         "the softmax runs over the clusters (dim 1): each sample's q(x) sums to one"),
    ]


def check_centering_teacher(student_centering: Callable[..., Any]) -> bool:
    """Exercise 4.2: ``student_centering(logits, tau)`` returns eq. (23),
    ``q_k(x) = softmax_k((l_k(x) - c_k)/τ)`` with ``c_k`` the mean of logit ``k`` over the samples
    (``c_k = w_k·z̄``, eq. 21), shape ``(N, K)``."""
    z, w = embeddings_and_weights(8, 5, 6, seed=42)
    logits = z @ w.T
    for tau in (0.5, 0.04):
        answer, problem = call_student(student_centering, logits, tau, unavailable=[theory.centering_teacher])
        if answer is None:
            return report(False, problem)
        expected = theory.centering_teacher(logits, tau)
        if tuple(answer.shape) != tuple(expected.shape):
            return report(False, check_probability_rows(answer, tuple(expected.shape)) or "")
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _centering_mistakes(), (logits, tau), atol=1e-9)
            rows_problem = check_probability_rows(answer, tuple(expected.shape))
            return report(False, f"τ = {tau}: " + (hint or rows_problem or first_difference(answer, expected)))
    return report(True, "q = softmax((l - mean_x l)/τ) (eq. 23): DINO's centering, with the mean "
                  "over the batch where DINO keeps a running average")


# ---------------------------------------------------------------- exercise 4.3: the gap (16) vs (23)

def _gap_mistakes() -> list[Mistake]:
    def teachers(z: Tensor, w: Tensor, tau: float) -> tuple[Tensor, Tensor]:
        scores = z @ w.T
        return theory.prior_teacher_from_logits(scores, tau), theory.centering_teacher(scores, tau)

    return [
        (lambda z, w, tau: theory.kl_divergence(*reversed(teachers(z, w, tau))),
         "you computed KL(centering ‖ inverse prior); the gap is KL(inverse prior ‖ centering), "
         "the exact teacher (16) first"),
        (lambda z, w, tau: theory.kl_divergence(*teachers(z, w, tau)) * z.shape[0],
         "you summed over the samples; take the mean (eq. 2 has a factor 1/N)"),
        (lambda z, w, tau: -theory.kl_divergence(*teachers(z, w, tau)),
         "the sign is flipped: a K-L divergence is never negative, Σ q log(q/p)"),
        (lambda z, w, tau: theory.kl_divergence(theory.inverse_prior_teacher(
            theory.sphere_posterior(z, w, tau)), theory.sphere_posterior(z, w, tau)),
         "you compared the inverse-prior teacher with the plain student softmax (6); compare it with "
         "the centering teacher (23)"),
    ]


def check_prior_centering_gap(student_gap: Callable[..., Any]) -> bool:
    """Exercise 4.3: ``student_gap(z, w, tau)`` returns the mean over samples of
    ``KL(q_(16) ‖ q_(23))``, the inverse-prior teacher (prior from the same rows, eq. 15/17) against
    centering (23), both at temperature ``τ``: one number."""
    z, w = embeddings_and_weights(40, 5, 6, seed=43)
    for tau in (0.3, 0.05):
        answer, problem = call_student(student_gap, z, w, tau, unavailable=[theory.prior_centering_gap])
        if answer is None:
            return report(False, problem)
        if answer.numel() == z.shape[0]:
            return report(False, f"you returned one value per sample (shape {tuple(answer.shape)}); "
                          "return their mean, one number")
        if answer.numel() != 1:
            return report(False, f"return one number, not a tensor of shape {tuple(answer.shape)}")
        answer = answer.reshape(())
        expected = theory.prior_centering_gap(z, w, tau)
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _gap_mistakes(), (z, w, tau), atol=1e-9)
            return report(False, f"τ = {tau}: " + (hint or f"you gave {float(answer):.6g}, the library "
                                                    f"gives {float(expected):.6g}"))
    high, low = (float(theory.prior_centering_gap(z, w, tau)) for tau in (0.3, 0.05))
    return report(True, f"the gap is {high:.4f} nats at τ = 0.3 and {low:.4f} at τ = 0.05: centering "
                  "approximates the inverse-prior teacher closely at high temperature, loosely at low")
