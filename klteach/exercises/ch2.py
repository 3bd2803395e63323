"""Exercise checks for chapter 2, distillation as K-L divergence (eq. 2-5 and 7).

Same conventions as chapter 1: each ``check_*`` calls the student's function, compares it with
:mod:`klteach.theory` (the gradients also with autograd), prints what is wrong and returns
``True`` only for a right answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import theory
from ..normalisers import ema_
from .checking import Mistake, call_student, check_probability_rows, diagnose, first_difference, report

__all__ = ["check_kl_divergence", "check_gradient_z", "check_unregularised_teacher", "check_ema_teacher"]


def _random_distributions(rows: int, clusters: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two ``(rows, clusters)`` float64 matrices of random distributions (rows sum to one)."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, clusters, generator=generator, dtype=torch.float64).mul(1.5).softmax(-1)
    p = torch.randn(rows, clusters, generator=generator, dtype=torch.float64).mul(1.5).softmax(-1)
    return q, p


# ---------------------------------------------------------------- exercise 2.1: eq. (2)

def _kl_mistakes() -> list[Mistake]:
    return [
        (lambda q, p: theory.kl_divergence(p, q),
         "you computed D(p‖q): the arguments are swapped. (2) weights by the teacher, "
         "Σ_k q_k log(q_k / p_k)"),
        (lambda q, p: theory.kl_divergence(q, p) * q.shape[0],
         "you summed over the samples; (2) has a factor 1/N: take the mean over samples"),
        (lambda q, p: -theory.kl_divergence(q, p),
         "the sign is flipped: a K-L divergence is never negative, Σ q log(q/p), not Σ q log(p/q)"),
        (lambda q, p: theory.kl_divergence(q, p) / math.log(2),
         "you used log base 2 (bits); the course measures in nats: use the natural log"),
        (lambda q, p: theory.cross_entropy(q, p.log()),
         "that is the cross-entropy (3), -Σ q log p: the K-L divergence also adds Σ q log q, "
         "minus the teacher's entropy"),
    ]


def check_kl_divergence(student_kl: Callable[..., Any]) -> bool:
    """Exercise 2.1: ``student_kl(q, p)`` should be eq. (2), ``(1/N) Σ_x Σ_k q_k log(q_k/p_k)``,
    a single number, with ``0 log 0 = 0`` where the teacher gives a cluster zero probability."""
    q, p = _random_distributions(6, 4, seed=4)
    one_hot = torch.eye(4, dtype=torch.float64)[[0, 2, 1, 3, 0, 2]]
    for case, (qc, pc) in enumerate([(q, p), (one_hot, p)]):
        answer, problem = call_student(student_kl, qc, pc, unavailable=[theory.kl_divergence])
        if answer is None:
            return report(False, problem)
        expected = theory.kl_divergence(qc, pc)
        if answer.numel() == qc.shape[0]:
            return report(False, f"you returned one value per sample (shape {tuple(answer.shape)}); "
                          "(2) averages them: return the mean over the N samples, one number")
        if answer.numel() != 1:
            return report(False, f"return one number, not a tensor of shape {tuple(answer.shape)}")
        answer = answer.reshape(())
        if case == 1 and not torch.isfinite(answer):
            return report(False, "right for soft teachers, but NaN when the teacher gives a cluster "
                          "probability 0 (a one-hot q): 0·log 0 must count as 0. Use "
                          "torch.special.xlogy(q, q) or mask out the zeros")
        if not torch.allclose(answer, expected, atol=1e-9):
            hint = diagnose(answer, expected, _kl_mistakes(), (qc, pc), atol=1e-9)
            return report(False, hint or f"you gave {float(answer):.6g}, eq. (2) gives {float(expected):.6g}")
    return report(True, "your K-L divergence equals eq. (2), one-hot teachers included")


# ---------------------------------------------------------------- exercise 2.2: eq. (5), ∂L/∂z

def autograd_gradient_z(z: Tensor, w: Tensor, q: Tensor, tau: float) -> Tensor:
    """``∂L_CE/∂z`` by autograd through (3) and (4): the reference the derivation must match."""
    z = z.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(theory.cross_entropy(q, theory.log_posterior(z, w, tau)), z)
    return gradient


def _gradient_mistakes() -> list[Mistake]:
    grad = lambda z, w, q, tau: theory.cross_entropy_gradients(z, w, q, tau)[0]  # noqa: E731
    return [
        (lambda z, w, q, tau: -grad(z, w, q, tau),
         "the sign is flipped: ∂L/∂z = -(1/τ) Σ_k (q_k - p_k) w_k, so a descent step moves z towards "
         "the means the teacher prefers over the student (a factor (z - w_k), the one of ∂L/∂w_k, "
         "gives this same flipped sign because Σ_k (q_k - p_k) = 0)"),
        (lambda z, w, q, tau: grad(z, w, q, tau) * z.shape[0],
         "N times too large: L is the mean over the N samples, so each sample's gradient has a factor 1/N"),
        (lambda z, w, q, tau: grad(z, w, q, tau) * tau,
         "the factor 1/τ is missing"),
        (lambda z, w, q, tau: grad(z, w, q, tau) * tau * z.shape[0],
         "the factors 1/τ and 1/N are both missing"),
        (lambda z, w, q, tau: (z - q @ w) / (tau * z.shape[0]),
         "you dropped the last term of (4), the log of the normaliser Σ_j exp(-‖z - w_j‖²/(2τ)): its "
         "derivative -(1/τ)(z - Σ_j p_j w_j) cancels z and leaves -(1/τ) Σ_k (q_k - p_k) w_k"),
    ]


def check_gradient_z(student_gradient: Callable[..., Any]) -> bool:
    """Exercise 2.2: ``student_gradient(z, w, q, tau)`` returns ``∂L/∂z`` ``(N, D)`` of the mean
    cross-entropy (3) under the mixture (1) with equal priors, as derived in eq. (5).

    Compared with autograd and with :func:`klteach.theory.cross_entropy_gradients`.
    """
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 1.5
    w = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    q, _ = _random_distributions(5, 4, seed=6)
    tau = 0.4
    answer, problem = call_student(student_gradient, z, w, q, tau,
                                   unavailable=[theory.cross_entropy_gradients, autograd_gradient_z])
    if answer is None:
        return report(False, problem)
    expected = autograd_gradient_z(z, w, q, tau)
    if tuple(answer.shape) != tuple(expected.shape):
        return report(False, f"the shape is {tuple(answer.shape)}; ∂L/∂z has the shape of z, "
                      f"(N, D) = {tuple(expected.shape)}")
    if not torch.allclose(answer, expected, atol=1e-9):
        hint = diagnose(answer, expected, _gradient_mistakes(), (z, w, q, tau), atol=1e-9)
        return report(False, hint or "your gradient differs from autograd: " + first_difference(answer, expected))
    return report(True, "your ∂L/∂z equals autograd's: -(1/(τN)) Σ_k (q_k - p_k) w_k, eq. (5)")


# ---------------------------------------------------------------- exercise 2.3: eq. (7)

def check_unregularised_teacher(student_teacher: Callable[..., Any]) -> bool:
    """Exercise 2.3: ``student_teacher(p)`` returns the teacher ``q`` ``(N, K)`` that minimises
    the K-L divergence (2) for the student's posterior ``p``, with no regularisation (eq. 7)."""
    _, p = _random_distributions(8, 5, seed=7)
    answer, problem = call_student(student_teacher, p,
                                   unavailable=[theory.unregularised_teacher, theory.inverse_prior_teacher])
    if answer is None:
        return report(False, problem)
    rows_problem = check_probability_rows(answer, tuple(p.shape))
    if rows_problem:
        return report(False, rows_problem)
    expected = theory.unregularised_teacher(p)
    if torch.allclose(answer, expected, atol=1e-9):
        return report(True, "q = p: D(q‖p) = 0, its minimum. The teacher just copies the student "
                      "(eq. 7), and nothing stops both from collapsing together")
    gap = float(theory.kl_divergence(answer, p))
    one_hot = torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).to(p.dtype)
    if torch.allclose(answer, one_hot):
        return report(False, f"a one-hot teacher is the supervised-learning target; here D(q‖p) = {gap:.3f} "
                      "> 0. Which q makes every log(q_k/p_k) zero?")
    if torch.allclose(answer, torch.full_like(p, 1 / p.shape[1])):
        return report(False, f"the uniform teacher gives D(q‖p) = {gap:.3f} > 0: it ignores the student")
    if torch.allclose(answer, theory.inverse_prior_teacher(p), atol=1e-9):
        return report(False, "that is the regularised teacher of chapter 3 (eq. 16); without the "
                      "entropy term, which q minimises (2)?")
    if torch.equal(answer.argmax(-1), p.argmax(-1)) and \
            (theory.entropy(answer) < theory.entropy(p) - 1e-9).all():
        return report(False, f"your teacher is a sharpened p (D(q‖p) = {gap:.3f} > 0): sharpening is "
                      "DINO's teacher temperature, not the minimiser of (2)")
    return report(False, f"D(q‖p) = {gap:.4f} for your teacher, but its minimum is 0; "
                  + first_difference(answer, expected))


# ---------------------------------------------------------------- exercise 2.4: the momentum teacher

def check_ema_teacher(student_ema: Callable[..., Any]) -> bool:
    """Exercise 2.4: the teacher follows a *fixed* student by the momentum update
    ``θ_t ← m θ_t + (1 - m) θ_s`` each step. ``student_ema(teacher, student, m, steps)`` returns
    the teacher's parameters after ``steps`` updates (in closed form or by looping)."""
    generator = torch.Generator().manual_seed(8)
    teacher = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    student = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    for m, steps in [(0.9, 5), (0.99, 50), (0.5, 1)]:
        answer, problem = call_student(student_ema, teacher, student, m, steps, unavailable=[ema_])
        if answer is None:
            return report(False, problem)
        if tuple(answer.shape) != tuple(teacher.shape):
            return report(False, f"the shape is {tuple(answer.shape)}, the parameters' is {tuple(teacher.shape)}")
        expected = student + m ** steps * (teacher - student)
        if not torch.allclose(answer, expected, atol=1e-9):
            swapped = teacher + m ** steps * (student - teacher)
            linear = student + max(0.0, 1 - steps * (1 - m)) * (teacher - student)
            once = student + m * (teacher - student)
            if torch.allclose(answer, swapped, atol=1e-9):
                hint = "m and 1 - m are swapped: the teacher keeps m of itself and takes 1 - m of the student"
            elif torch.allclose(answer, once, atol=1e-9) and steps > 1:
                hint = f"that is one update; after {steps} updates the old teacher's weight is m^{steps}"
            elif torch.allclose(answer, linear, atol=1e-9):
                hint = "the old teacher's weight decays geometrically, m^steps, not linearly"
            else:
                hint = "your parameters differ: " + first_difference(answer, expected)
            return report(False, f"m = {m}, {steps} steps: " + hint)
    return report(True, "θ_t = θ_s + m^n (θ_t⁰ - θ_s): the teacher forgets its start geometrically and "
                  "converges to the student, the copy of eq. (7) made smooth")
