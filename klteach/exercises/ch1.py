"""Exercise checks for chapter 1, the mixture model (eq. 1 and 6).

Each ``check_*`` calls the student's function on inputs of its own, compares the result with
:mod:`klteach.theory`, prints what is right or *what* is wrong (shape, row sums, a missing
prior, ``τ`` instead of ``2τ``, ...) and returns ``True`` only for a right answer, so a
notebook can ``assert check_posterior(my_posterior)``.

:func:`report`, :func:`call_student` and the other helpers every chapter's checkers share live
in :mod:`klteach.exercises.checking`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import metrics, theory
from .checking import Mistake, call_student, check_probability_rows, diagnose, first_difference, report

__all__ = ["check_posterior", "check_temperature_for_entropy", "check_radius_temperature"]

# ---------------------------------------------------------------- exercise 1.1: eq. (1)

def _posterior_mistakes(z: Tensor, w: Tensor) -> list[Mistake]:
    dist = theory.squared_distances(z, w)

    def softmax_of(scores: Tensor, prior: Tensor) -> Tensor:
        return (scores + prior.log()).softmax(-1)

    return [
        (lambda z, w, tau, prior: theory.posterior(z, w, tau),
         "you left out the prior π_k: (1) multiplies each Gaussian by its prior"),
        (lambda z, w, tau, prior: theory.posterior(z, w, tau / 2, prior),
         "the exponent is divided by τ, but (1) divides the squared distance by 2τ"),
        (lambda z, w, tau, prior: theory.posterior(z, w, 2 * tau, prior),
         "the exponent is divided by 4τ (or 2τ twice); (1) divides the squared distance by 2τ"),
        (lambda z, w, tau, prior: softmax_of(dist / (2 * tau), prior),
         "the sign of the exponent is flipped: the nearest mean must get the largest probability, "
         "exp(-‖z - w_k‖²/(2τ))"),
        (lambda z, w, tau, prior: softmax_of(-dist.sqrt() / (2 * tau), prior),
         "you used the distance ‖z - w_k‖; (1) uses the squared distance ‖z - w_k‖²"),
        (lambda z, w, tau, prior: softmax_of(z @ w.T / tau, prior),
         "you used the dot product w_k·z/τ (eq. 6): that equals (1) only for unit vectors, and these "
         "test vectors are not unit length; use the squared distance"),
    ]


def check_posterior(student_posterior: Callable[..., Any]) -> bool:
    """Exercise 1.1: ``student_posterior(z, w, tau, prior)`` should be eq. (1),
    ``p_k = π_k exp(-‖z - w_k‖²/(2τ)) / Σ_j π_j exp(-‖z - w_j‖²/(2τ))``, shape ``(N, K)``.

    Checked against :func:`klteach.theory.posterior` on vectors that are not unit length,
    with unequal priors, and at a low temperature where a naive ``exp`` underflows.
    """
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(7, 3, generator=generator, dtype=torch.float64) * 1.5
    w = torch.randn(4, 3, generator=generator, dtype=torch.float64) * 2.0
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    cases = [(z, w, 0.7, prior), (z * 10, w * 10, 0.01, prior)]
    for case_number, (zc, wc, tau, pc) in enumerate(cases):
        answer, problem = call_student(student_posterior, zc, wc, tau, pc,
                                       unavailable=[theory.posterior, theory.log_posterior])
        if answer is None:
            return report(False, problem)
        expected = theory.posterior(zc, wc, tau, pc)
        if case_number == 1 and not torch.isfinite(answer).all():
            return report(False, "right at τ = 0.7, but NaN or inf at τ = 0.01 with far-apart points: "
                          "exp(-‖z - w‖²/(2τ)) underflows to 0 for every cluster and 0/0 = NaN. "
                          "Subtract the largest exponent of each row before exp (log-sum-exp)")
        rows_problem = check_probability_rows(answer, tuple(expected.shape))
        if rows_problem:
            return report(False, rows_problem + f" (z {tuple(zc.shape)}, w {tuple(wc.shape)}, τ = {tau})")
        if not torch.allclose(answer, expected, atol=1e-6):
            hint = diagnose(answer, expected, _posterior_mistakes(zc, wc), (zc, wc, tau, pc))
            return report(False, hint or f"the values differ from eq. (1) at τ = {tau}: "
                          + first_difference(answer, expected))
    return report(True, "your posterior equals eq. (1) (klteach.theory.posterior), "
                  "including unequal priors and τ = 0.01")


# ---------------------------------------------------------------- exercise 1.3: temperature for an entropy

def entropy_problems() -> list[tuple[Tensor, Tensor, float]]:
    """The ``(z, w, target mean entropy)`` problems of exercise 1.3: unit points and means."""
    generator = torch.Generator().manual_seed(2)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    z = unit(torch.randn(50, 3, generator=generator, dtype=torch.float64))
    w = unit(torch.randn(5, 3, generator=generator, dtype=torch.float64))
    log_k = math.log(5)
    return [(z, w, 0.2 * log_k), (z, w, 0.5 * log_k), (z, w, 0.9 * log_k)]


def check_temperature_for_entropy(find_temperature: Callable[..., Any], tolerance: float = 1e-3) -> bool:
    """Exercise 1.3: ``find_temperature(z, w, target)`` returns the ``τ`` at which the mean
    per-sample entropy (nats) of the sphere posterior (6) ``softmax(w·z/τ)`` equals ``target``.

    Checked on three targets (20 %, 50 % and 90 % of ``log K``) to within ``tolerance`` nats.
    """
    for z, w, target in entropy_problems():
        answer, problem = call_student(find_temperature, z, w, target)
        if answer is None:
            return report(False, problem)
        if answer.numel() != 1:
            return report(False, f"return one number (the temperature), not a tensor of shape "
                          f"{tuple(answer.shape)}")
        tau = float(answer)
        if not (tau > 0 and math.isfinite(tau)):
            return report(False, f"for target {target:.3f} nats you returned τ = {tau}: a temperature "
                          "is a variance, a positive finite number")
        reached = metrics.mean_entropy(theory.sphere_posterior(z, w, tau))
        if abs(reached - target) > tolerance:
            direction = ("too high: the posterior is too flat; lower τ to sharpen it"
                         if reached > target else
                         "too low: the posterior is too sharp; raise τ to flatten it")
            return report(False, f"for target {target:.4f} nats, at your τ = {tau:.5g} the mean entropy "
                          f"is {reached:.4f} nats, so τ is {direction} (entropy grows with τ)")
    return report(True, "your temperatures reach all three target entropies "
                  "(20 %, 50 % and 90 % of log K)")


# ---------------------------------------------------------------- exercise 1.2: a sphere of radius r

def check_radius_temperature(softmax_temperature: Callable[..., Any]) -> bool:
    """Exercise 1.2: points and means on a sphere of radius ``r``, mixture variance ``τ``.
    ``softmax_temperature(tau, r)`` returns the ``T`` with eq. (1) equal to
    ``softmax_k(cos(z, w_k) / T)`` (the cosine is the dot product of the unit vectors).
    """
    generator = torch.Generator().manual_seed(3)
    unit_z = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator, dtype=torch.float64), dim=-1)
    unit_w = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=-1)
    cosines = unit_z @ unit_w.T
    wrong = {"tau": "that is right only for r = 1: on a sphere of radius r the squared distance "
                    "‖z - w‖² = 2r² - 2r² cos grows with r²",
             "tau/r": "the squared distance scales with r², not r",
             "tau*r^2": "upside down: a bigger sphere spreads the means further apart relative to τ, "
                        "so the posterior gets sharper (a lower softmax temperature)"}
    for tau, r in [(0.5, 2.0), (0.1, 3.0), (0.3, 0.5)]:
        answer, problem = call_student(softmax_temperature, tau, r)
        if answer is None:
            return report(False, problem)
        if answer.numel() != 1 or not float(answer) > 0:
            return report(False, f"return one positive number; for τ = {tau}, r = {r} you returned {answer}")
        T = float(answer)
        expected = theory.posterior(r * unit_z, r * unit_w, tau)
        if not torch.allclose(theory.softmax_with_temperature(cosines, T), expected, atol=1e-9):
            for key, value in (("tau", tau), ("tau/r", tau / r), ("tau*r^2", tau * r * r)):
                if math.isclose(T, value, rel_tol=1e-9):
                    return report(False, f"for τ = {tau}, r = {r} you gave T = {T:.6g}: " + wrong[key])
            return report(False, f"for τ = {tau}, r = {r}, softmax(cos/T) with your T = {T:.6g} does not "
                          "equal eq. (1); expand ‖z - w_k‖² for ‖z‖ = ‖w_k‖ = r")
    return report(True, "T = τ/r²: the same variance on a bigger sphere is a sharper softmax")
