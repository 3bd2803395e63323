"""Exercise checks for chapter 3, regularised K-L and inverse cluster priors (eq. 8-16).

Same conventions as chapter 1: each ``check_*`` calls the student's function on inputs of its
own, compares the result with :mod:`klteach.theory` (the gradient of eq. 12 with autograd of
eq. 10), prints what is wrong and returns ``True`` only for a right answer.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import theory
from .checking import Mistake, call_student, check_probability_rows, diagnose, first_difference, report

__all__ = ["check_cluster_prior", "check_inverse_prior_teacher", "check_objective_gradient"]


def student_posteriors(rows: int, clusters: int, seed: int) -> Tensor:
    """A ``(rows, clusters)`` float64 student posterior with clearly unequal cluster sizes."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, clusters, generator=generator, dtype=torch.float64) * 1.5
    return (scores + torch.linspace(1.5, 0.0, clusters, dtype=torch.float64)).softmax(-1)


# ---------------------------------------------------------------- exercise 3.1: eq. (15)

def _prior_mistakes() -> list[Mistake]:
    return [
        (lambda p: p.sum(0),
         "your priors sum to N, not 1: you summed over the samples; (15) divides by N (the mean)"),
        (lambda p: torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).to(p.dtype).mean(0),
         "you counted hard (argmax) assignments; (15) averages the soft posteriors p_k(x), "
         "so a sample shares its mass between clusters"),
        (lambda p: p.max(0).values,
         "you took the largest posterior of each cluster; (15) takes the mean over the samples"),
    ]


def check_cluster_prior(student_prior: Callable[..., Any]) -> bool:
    """Exercise 3.1: ``student_prior(p)`` returns eq. (15), ``π_k = (1/N) Σ_x p_k(x)``, shape ``(K,)``."""
    p = student_posteriors(12, 5, seed=31)
    answer, problem = call_student(student_prior, p, unavailable=[theory.cluster_prior])
    if answer is None:
        return report(False, problem)
    expected = theory.cluster_prior(p)
    if tuple(answer.shape) == (p.shape[0],):
        return report(False, f"you returned one value per sample (shape {tuple(answer.shape)}): average "
                      "over the samples x (dim 0), not over the clusters; π has one value per cluster")
    if tuple(answer.shape) != tuple(expected.shape):
        return report(False, f"the shape is {tuple(answer.shape)}; π has one value per cluster, "
                      f"shape (K,) = {tuple(expected.shape)}")
    if not torch.allclose(answer, expected, atol=1e-9):
        hint = diagnose(answer, expected, _prior_mistakes(), (p,), atol=1e-9)
        return report(False, hint or "your prior differs from eq. (15): " + first_difference(answer, expected))
    return report(True, f"π = mean_x p(x) (eq. 15): here it ranges from {float(expected.min()):.3f} to "
                  f"{float(expected.max()):.3f}, where equal priors (eq. 8) would be 1/K = {1 / p.shape[1]:.3f}")


# ---------------------------------------------------------------- exercise 3.2: eq. (14)/(16)

def _teacher_mistakes() -> list[Mistake]:
    return [
        (lambda p, prior, lam: theory.inverse_prior_teacher(p, 1 / prior, lam),
         "you multiplied by the prior; (16) DIVIDES by π_k, which boosts the nearly empty clusters "
         "and tempers the crowded ones"),
        (lambda p, prior, lam: p.clone(),
         "this is the student's p unchanged (eq. 7): scale each p_k(x) by 1/π_k^λ, then renormalise"),
        (lambda p, prior, lam: theory.inverse_prior_teacher(p, prior, 1.0),
         "you used λ = 1; (14) raises the prior to the power λ: p_k / π_k^λ"),
        (lambda p, prior, lam: theory.inverse_prior_teacher(p, prior, 1.0 / lam),
         "you divided by π_k^(1/λ); (14) is p_k / π_k^λ"),
        (lambda p, prior, lam: theory.inverse_prior_teacher(p, theory.cluster_prior(p), lam),
         "you re-estimated the prior from p; use the prior you are given (it may come from the "
         "whole training set, eq. 15, or a running average)"),
    ]


def check_inverse_prior_teacher(student_teacher: Callable[..., Any]) -> bool:
    """Exercise 3.2: ``student_teacher(p, prior, lam)`` returns eq. (14)/(16),
    ``q_k(x) = (p_k(x)/π_k^λ) / Σ_j p_j(x)/π_j^λ``, shape ``(N, K)``.

    Checked at ``λ = 1`` (eq. 16), at ``λ = 0.5``, and with an empty cluster (``π_k = 0`` and
    ``p_k(x) = 0``): the division must be regularised, as the paper notes after (16).
    """
    p = student_posteriors(10, 5, seed=32)
    prior = student_posteriors(50, 5, seed=33).mean(0)
    empty = p.clone()
    empty[:, 4] = 0.0
    empty = empty / empty.sum(1, keepdim=True)
    cases = [(p, prior, 1.0), (p, prior, 0.5), (empty, theory.cluster_prior(empty), 1.0)]
    for case, (pc, prior_c, lam) in enumerate(cases):
        answer, problem = call_student(student_teacher, pc, prior_c, lam,
                                       unavailable=[theory.inverse_prior_teacher])
        if answer is None:
            return report(False, problem)
        if case == 2 and not torch.isfinite(answer).all():
            return report(False, "right for occupied clusters, but NaN or inf when a cluster is empty "
                          "(π_k = 0 and p_k(x) = 0 gives 0/0): floor the prior before dividing, e.g. "
                          "prior.clamp_min(1e-6), as the paper says after (16)")
        rows_problem = check_probability_rows(answer, tuple(pc.shape))
        if rows_problem:
            unnormalised = pc / prior_c.clamp_min(theory.PRIOR_FLOOR).pow(lam)
            if tuple(answer.shape) == tuple(pc.shape) and torch.allclose(answer, unnormalised, atol=1e-9):
                rows_problem = ("you scaled p by 1/π^λ but did not renormalise: divide each row by its "
                                "sum over the clusters so q(x) is a distribution")
            return report(False, rows_problem + f" (λ = {lam})")
        expected = theory.inverse_prior_teacher(pc, prior_c, lam)
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _teacher_mistakes(), (pc, prior_c, lam), atol=1e-9)
            return report(False, f"λ = {lam}: " + (hint or first_difference(answer, expected)))
    before = theory.cluster_prior(p)
    after = theory.cluster_prior(theory.inverse_prior_teacher(p, before))
    return report(True, f"q ∝ p/π^λ (eq. 14/16). With π = mean_x p the cluster sizes went from "
                  f"[{float(before.min()):.3f}, {float(before.max()):.3f}] (student) to "
                  f"[{float(after.min()):.3f}, {float(after.max()):.3f}] (teacher): flatter")


# ---------------------------------------------------------------- exercise 3.3: eq. (12)

def objective_gradient(q: Tensor, p: Tensor, lam: float) -> Tensor:
    """``∂J/∂q_k(x)`` of the regularised objective (9)/(10) without the multiplier term: autograd
    of :func:`klteach.theory.regularised_objective`, the reference for eq. (12)."""
    q = q.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(theory.regularised_objective(q, p, lam), q)
    return gradient


def _gradient_mistakes() -> list[Mistake]:
    n_of = lambda q: q.shape[0]  # noqa: E731
    kl_part = lambda q, p: ((q / p).log() + 1) / n_of(q)  # noqa: E731
    prior_log = lambda q: theory.cluster_prior(q).log()  # noqa: E731
    return [
        (lambda q, p, lam: objective_gradient(q, p, lam) * n_of(q),
         "N times too large: both terms of (10) are averages over the N samples, and "
         "∂π_k/∂q_k(x) = 1/N"),
        (lambda q, p, lam: kl_part(q, p) + lam * (prior_log(q) + 1),
         "the prior term is N times too large: π_k = (1/N) Σ_x q_k(x), so the chain rule gives "
         "∂π_k/∂q_k(x) = 1/N"),
        (lambda q, p, lam: kl_part(q, p) - lam * (prior_log(q) + 1) / n_of(q),
         "the prior term has the wrong sign: J = D - λH(π) and -H(π) = +Σ_k π_k log π_k, whose "
         "derivative is +(log π_k + 1)·∂π_k/∂q_k(x)"),
        (lambda q, p, lam: kl_part(q, p),
         "the entropy term of (9) is missing: add (λ/N)(log π_k + 1) with π = mean_x q (eq. 8)"),
        (lambda q, p, lam: kl_part(q, p) + lam * (theory.cluster_prior(p).log() + 1) / n_of(q),
         "π in (10) is the mean of the TEACHER q (eq. 8), not of the student p"),
        (lambda q, p, lam: objective_gradient(q, p, lam) - (1 + lam) / n_of(q),
         "you are off by (1 + λ)/N everywhere: d(u log u)/du = log u + 1, so both terms keep a '+1' "
         "(they disappear into the multiplier μ_x in (13), but (12) has them)"),
    ]


def check_objective_gradient(student_gradient: Callable[..., Any]) -> bool:
    """Exercise 3.3: ``student_gradient(q, p, lam)`` returns eq. (12) without the ``μ_x`` term,
    ``(1/N)[log(q_k/p_k) + 1] + (λ/N)[log π_k + 1]`` with ``π = mean_x q`` (eq. 8), shape ``(N, K)``.
    Compared with autograd of the objective (9)/(10)."""
    p = student_posteriors(6, 4, seed=34)
    q = student_posteriors(6, 4, seed=35)
    for lam in (1.0, 0.3):
        answer, problem = call_student(student_gradient, q, p, lam,
                                       unavailable=[theory.regularised_objective, objective_gradient])
        if answer is None:
            return report(False, problem)
        expected = objective_gradient(q, p, lam)
        if tuple(answer.shape) != tuple(expected.shape):
            return report(False, f"the shape is {tuple(answer.shape)}; the gradient has one entry per "
                          f"q_k(x), (N, K) = {tuple(expected.shape)}")
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _gradient_mistakes(), (q, p, lam), atol=1e-9)
            return report(False, f"λ = {lam}: " + (hint or "your gradient differs from autograd: "
                                                   + first_difference(answer, expected)))
    return report(True, "your (12) equals autograd's gradient of (10). Setting it to -μ_x gives (13): "
                  "log q_k - log p_k + λ log π_k is the same for every k")
