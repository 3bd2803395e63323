"""Exercise checks for chapter 3: regularised K-L and inverse cluster priors, eq. (8)-(16).

Each ``check_*`` takes the student's answer and the inputs it was computed from, compares it
with :mod:`klteach.theory`, prints what is right or, in words, what is wrong, and returns
``True`` only for a right answer (so a notebook can ``assert`` it).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import theory

__all__ = ["check_cluster_prior", "check_inverse_prior_teacher", "check_objective_gradient"]

RTOL, ATOL = 1e-4, 1e-6
"""Tolerances for comparing an answer with the library's value."""


def verdict(ok: bool, message: str) -> bool:
    """Print ``message`` as a pass or a hint and return ``ok``."""
    print(("Correct! " if ok else "Not yet: ") + message)
    return ok


def as_answer(answer: Any, reference: Tensor) -> Tensor | str:
    """The answer as a tensor shaped and typed like ``reference``, or a message saying why not."""
    if answer is None:
        return "there is no answer yet (got None): replace the placeholder with your code."
    try:
        tensor = torch.as_tensor(answer, dtype=reference.dtype).to(reference.device)
    except (TypeError, ValueError, RuntimeError) as error:
        return f"the answer could not be read as a tensor of numbers ({error})."
    if tuple(tensor.shape) != tuple(reference.shape):
        return f"the answer has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}."
    if not bool(torch.isfinite(tensor).all()):
        return "the answer contains NaN or infinite values (a log of 0, or a division by 0?)."
    return tensor


def close(a: Tensor, b: Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Whether two tensors agree to the checkers' tolerance."""
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def check_probabilities(p: Tensor, name: str = "p") -> Tensor:
    """Return ``p`` as a float64 ``(N, K)`` tensor, or raise ``ValueError`` if its rows are not
    probability distributions."""
    p = torch.as_tensor(p).double()
    if p.dim() != 2:
        raise ValueError(f"{name} must be an (N, K) matrix of probabilities, got shape {tuple(p.shape)}")
    if bool((p < 0).any()) or not close(p.sum(-1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-6):
        raise ValueError(f"the rows of {name} must be non-negative and sum to one")
    return p


# ---------------------------------------------------------------- eq. (8)/(15)

def check_cluster_prior(answer: Any, p: Tensor) -> bool:
    """Eq. (15): ``π_k = (1/N) Σ_x p_k(x)``, the mean posterior of each cluster, shape ``(K,)``."""
    p = check_probabilities(p)
    expected = theory.cluster_prior(p)
    n, k = p.shape
    if answer is not None and tuple(torch.as_tensor(answer).shape) == (n,) and n != k:
        return verdict(False, f"your prior has one value per sample (shape ({n},)). Average over the "
                              "samples x (dim 0), not over the clusters: π has one value per cluster.")
    got = as_answer(answer, expected)
    if isinstance(got, str):
        return verdict(False, got)
    if close(got, expected):
        return verdict(True, f"π sums to {float(got.sum()):.3f} and its largest entry is "
                             f"{float(got.max()):.3f} (equal priors would be 1/K = {1 / k:.3f}).")
    if close(got, p.sum(0)):
        return verdict(False, f"your values sum to N = {n}: you summed over the samples. "
                              "Divide by N to get the mean (eq. 15).")
    if close(got, p.argmax(-1).bincount(minlength=k).double() / n):
        return verdict(False, "you counted hard (argmax) assignments. Eq. (15) averages the soft "
                              "posteriors p_k(x) themselves, so a sample shares its mass.")
    if not close(got.sum(), torch.tensor(1.0, dtype=got.dtype), atol=1e-4):
        return verdict(False, f"a prior must sum to one over the clusters; yours sums to "
                              f"{float(got.sum()):.4f}.")
    worst = int((got - expected).abs().argmax())
    return verdict(False, f"cluster {worst}: expected π = {float(expected[worst]):.4f}, got "
                          f"{float(got[worst]):.4f}.")


# ---------------------------------------------------------------- eq. (14)/(16)

def check_inverse_prior_teacher(answer: Any, p: Tensor, prior: Tensor, lam: float = 1.0) -> bool:
    """Eq. (14)/(16): ``q_k(x) = (p_k(x)/π_k^λ) / Σ_j p_j(x)/π_j^λ``, shape ``(N, K)``."""
    p = check_probabilities(p)
    prior = torch.as_tensor(prior).double()
    if tuple(prior.shape) != (p.shape[1],):
        raise ValueError(f"prior must have one value per cluster, shape ({p.shape[1]},); "
                         f"got {tuple(prior.shape)}")
    lam = theory.check_lambda(lam)
    expected = theory.inverse_prior_teacher(p, prior, lam)
    got = as_answer(answer, expected)
    if isinstance(got, str):
        return verdict(False, got)
    if close(got, expected):
        return verdict(True, f"each row sums to one and the clusters' mean mass went from "
                             f"{_range(theory.cluster_prior(p))} (student) to "
                             f"{_range(theory.cluster_prior(got))} (teacher).")
    if bool((got < 0).any()):
        return verdict(False, "the answer has negative entries; q must be a probability.")
    unnormalised = p / prior.pow(lam)
    if close(got, unnormalised):
        return verdict(False, "the rows do not sum to one: you scaled p by 1/π^λ but did not "
                              "renormalise. Divide each row by its sum over the clusters k.")
    if close(got, unnormalised / unnormalised.sum(0, keepdim=True)):
        return verdict(False, "your columns sum to one, not your rows: normalise over the clusters "
                              "(dim 1) so that each sample's q(x) is a distribution.")
    if close(got, theory.inverse_prior_teacher(p, 1.0 / prior, lam)):
        return verdict(False, "you multiplied by the prior. Eq. (16) divides by π_k, which boosts "
                              "the small (nearly empty) clusters.")
    if close(got, p):
        return verdict(False, "this is the student's p unchanged (eq. 7): scale by the inverse prior.")
    if lam != 1.0 and close(got, theory.inverse_prior_teacher(p, prior, 1.0)):
        return verdict(False, f"you used λ = 1; raise the prior to the power λ = {lam} (eq. 14).")
    if not close(got.sum(-1), torch.ones(got.shape[0], dtype=got.dtype), atol=1e-4):
        return verdict(False, "the rows of q must sum to one over the clusters.")
    row, col = divmod(int((got - expected).abs().argmax()), got.shape[1])
    return verdict(False, f"sample {row}, cluster {col}: expected q = {float(expected[row, col]):.4f}, "
                          f"got {float(got[row, col]):.4f}.")


def _range(values: Tensor) -> str:
    return f"[{float(values.min()):.3f}, {float(values.max()):.3f}]"


# ---------------------------------------------------------------- eq. (12)

def objective_gradient(q: Tensor, p: Tensor, lam: float) -> Tensor:
    """``∂J/∂q_k(x)`` of the regularised objective (9)/(10) without the multiplier term, by autograd
    of :func:`klteach.theory.regularised_objective` (the reference for eq. 12)."""
    q = q.detach().clone().requires_grad_(True)
    theory.regularised_objective(q, p, lam).backward()
    return q.grad


def check_objective_gradient(answer: Any, q: Tensor, p: Tensor, lam: float = 1.0) -> bool:
    """Eq. (12) without the ``μ_x`` term: ``(1/N)[log(q_k/p_k) + 1] + (λ/N)[log π_k + 1]``, with
    ``π = mean_x q`` (eq. 8), shape ``(N, K)``. Checked against autograd of eq. (10)."""
    q, p = check_probabilities(q, "q"), check_probabilities(p, "p")
    lam = theory.check_lambda(lam)
    n = q.shape[0]
    expected = objective_gradient(q, p, lam)
    got = as_answer(answer, expected)
    if isinstance(got, str):
        return verdict(False, got)
    if close(got, expected):
        return verdict(True, "your eq. (12) matches autograd on eq. (10).")
    if close(got, expected * n):
        return verdict(False, "your gradient is N times too large: both terms of eq. (10) are means "
                              "over the N samples, and ∂π_k/∂q_k(x) = 1/N.")
    log_ratio, log_prior = (q / p).log(), theory.cluster_prior(q).log()
    if close(got, (log_ratio + 1) / n + lam * (log_prior + 1)):
        return verdict(False, "the prior term is N times too large: π_k = (1/N) Σ_x q_k(x), so "
                              "∂π_k/∂q_k(x) = 1/N (chain rule).")
    if close(got, (log_ratio + 1) / n - lam * (log_prior + 1) / n):
        return verdict(False, "the prior term has the wrong sign: J = D - λH(π) and -H(π) = "
                              "+Σ π log π, whose derivative is +(log π_k + 1).")
    shift = got - expected
    if close(shift, shift.flatten()[0].expand_as(shift)):
        return verdict(False, f"you are off by the same constant {float(shift.flatten()[0]):.4g} "
                              "everywhere: check the '+1' terms (d(u log u)/du = log u + 1) and "
                              "their 1/N and λ/N factors.")
    row, col = divmod(int((got - expected).abs().argmax()), got.shape[1])
    return verdict(False, f"sample {row}, cluster {col}: expected {float(expected[row, col]):.5f}, "
                          f"got {float(got[row, col]):.5f}.")
