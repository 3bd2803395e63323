"""Exercise checks for chapter 4: from inverse priors to centering, eq. (17)-(23).

Each ``check_*`` compares the student's answer with :mod:`klteach.theory`, prints what is
right or, in words, what is wrong, and returns ``True`` only for a right answer.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import theory
from .ch3 import as_answer, close, verdict

__all__ = ["check_normaliser_jensen_bound", "check_centering_teacher", "check_prior_centering_gap"]


def _matrix(x: Any, name: str) -> Tensor:
    """``x`` as a float64 2-D tensor, or ``ValueError`` naming it."""
    x = torch.as_tensor(x).double()
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got shape {tuple(x.shape)}")
    return x


def _inputs(z: Any, w: Any, tau: float) -> tuple[Tensor, Tensor, float]:
    z, w = _matrix(z, "z (N, D)"), _matrix(w, "w (K, D)")
    if z.shape[1] != w.shape[1]:
        raise ValueError(f"z and w must have the same dimension D; got z {tuple(z.shape)}, w {tuple(w.shape)}")
    return z, w, theory.check_temperature(tau)


# ---------------------------------------------------------------- eq. (18)

def check_normaliser_jensen_bound(log_lhs: Any, log_rhs: Any, z: Tensor, w: Tensor, tau: float) -> bool:
    """Eq. (18) in logs, per sample: ``log Σ_j exp(w_j·z/τ)`` and ``log K + w̄·z/τ``, shapes ``(N,)``."""
    z, w, tau = _inputs(z, w, tau)
    lhs, rhs = theory.normaliser_jensen_bound(z, w, tau)
    k = w.shape[0]
    got_lhs, got_rhs = as_answer(log_lhs, lhs), as_answer(log_rhs, rhs)
    for got, name in ((got_lhs, "log_lhs"), (got_rhs, "log_rhs")):
        if isinstance(got, str):
            return verdict(False, f"{name}: {got}")
    if close(got_lhs, rhs) and close(got_rhs, lhs):
        return verdict(False, "you swapped the two sides: the sum of exponentials (left) is the larger "
                              "one, Jensen's lower bound K·exp(w̄·z/τ) is on the right.")
    if close(got_lhs, lhs.exp()) or close(got_rhs, rhs.exp()):
        return verdict(False, "return the logarithms of both sides (exp of large logits overflows).")
    if not close(got_lhs, lhs):
        if close(got_lhs, torch.logsumexp(z @ w.T, dim=-1)):
            return verdict(False, "log_lhs: divide the logits w_j·z by τ before the exponential.")
        return verdict(False, f"log_lhs should be log Σ_j exp(w_j·z/τ) (torch.logsumexp); sample 0: "
                              f"expected {float(lhs[0]):.4f}, got {float(got_lhs[0]):.4f}.")
    if close(got_rhs, rhs):
        gap = float((lhs - rhs).mean())
        return verdict(True, f"the bound holds for every sample; the mean gap log lhs - log rhs "
                             f"is {gap:.4f} at τ = {tau}.")
    if close(got_rhs, rhs - math.log(k)):
        return verdict(False, f"log_rhs is missing log K = {math.log(k):.4f}: Jensen gives "
                              "Σ_j e^{a_j} = K·mean_j e^{a_j} ≥ K·e^{mean_j a_j}.")
    if close(got_rhs, math.log(k) + z @ w.sum(0) / tau):
        return verdict(False, "w̄ is the MEAN of the weight vectors (eq. 19), not their sum.")
    return verdict(False, f"log_rhs should be log K + w̄·z/τ (eq. 18/19); sample 0: expected "
                          f"{float(rhs[0]):.4f}, got {float(got_rhs[0]):.4f}.")


# ---------------------------------------------------------------- eq. (23)

def check_centering_teacher(answer: Any, logits: Tensor, tau: float) -> bool:
    """Eq. (23): ``q_k(x) = softmax_k((l_k(x) - c_k)/τ)``, ``c_k`` the mean of logit k over the
    samples (the rows), shape ``(N, K)``."""
    logits = _matrix(logits, "logits (N, K)")
    tau = theory.check_temperature(tau)
    expected = theory.centering_teacher(logits, tau)
    got = as_answer(answer, expected)
    if isinstance(got, str):
        return verdict(False, got)
    if close(got, expected):
        return verdict(True, "your teacher is the softmax of centred logits (eq. 23).")
    centre = logits.mean(0)
    if close(got, theory.softmax_with_temperature(logits, tau)):
        return verdict(False, "this is the plain softmax: nothing was centred. Subtracting a "
                              "per-sample (row) mean changes nothing, since a softmax ignores a constant "
                              "added to all k. Subtract the per-cluster mean over the samples (dim 0).")
    if close(got, theory.softmax_with_temperature(logits + centre, tau)):
        return verdict(False, "wrong sign: subtract the centre c_k = mean_x l_k(x), do not add it.")
    if close(got, (logits - centre).softmax(-1)):
        return verdict(False, "divide the centred logits by the temperature τ before the softmax.")
    if close(got, ((logits - centre) * tau).softmax(-1)):
        return verdict(False, "divide by τ, do not multiply.")
    if close(got, ((logits - centre) / tau).softmax(0)):
        return verdict(False, "the softmax runs over the clusters (dim 1): each sample's q(x) sums to one.")
    row, col = divmod(int((got - expected).abs().argmax()), got.shape[1])
    return verdict(False, f"sample {row}, cluster {col}: expected q = {float(expected[row, col]):.4f}, "
                          f"got {float(got[row, col]):.4f}.")


# ---------------------------------------------------------------- the gap between (16) and (23)

def check_prior_centering_gap(answer: Any, z: Tensor, w: Tensor, tau: float) -> bool:
    """The mean ``KL(q_(16) ‖ q_(23))`` over samples between the inverse-prior teacher (prior from
    the same rows) and centering, both at temperature ``τ``: a scalar."""
    z, w, tau = _inputs(z, w, tau)
    expected = theory.prior_centering_gap(z, w, tau)
    got = as_answer(torch.as_tensor(answer).reshape(()) if _is_single_number(answer) else answer, expected)
    if isinstance(got, str):
        return verdict(False, got)
    if close(got, expected):
        return verdict(True, f"the gap at τ = {tau} is {float(got):.5f} nats per sample.")
    scores = z @ w.T
    exact = theory.prior_teacher_from_logits(scores, tau)
    centred = theory.centering_teacher(scores, tau)
    if close(got, theory.kl_divergence(centred, exact)):
        return verdict(False, "you computed KL(centering ‖ inverse prior); the gap is measured as "
                              "KL(inverse prior ‖ centering), the exact teacher first.")
    if close(got, theory.kl_divergence(exact, centred) * z.shape[0]):
        return verdict(False, "you summed over the samples; take the mean (eq. 2 has 1/N).")
    if bool(got < 0):
        return verdict(False, "a K-L divergence is never negative; check the order of the log ratio.")
    return verdict(False, f"expected {float(expected):.5f}, got {float(got):.5f}.")


def _is_single_number(answer: Any) -> bool:
    try:
        return torch.as_tensor(answer).numel() == 1
    except (TypeError, ValueError, RuntimeError):
        return False
