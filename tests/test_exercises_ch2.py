"""Chapter 2 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet"."""
import math

import numpy as np
import pytest
import torch

from klteach import theory
from klteach.exercises import check_ema_teacher, check_gradient_z, check_kl_divergence, check_unregularised_teacher
from klteach.exercises.ch2 import autograd_gradient_z
from klteach.normalisers import ema_


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def numpy_kl(q, p):
    q, p = np.asarray(q), np.asarray(p)
    terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / p), 0.0)
    return terms.sum(1).mean()


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


def test_right_kl_passes(capsys):
    assert verdict(capsys, check_kl_divergence, numpy_kl)[0]
    assert verdict(capsys, check_kl_divergence, lambda q, p: torch.special.xlogy(q, q / p).sum(1).mean())[0]


@pytest.mark.parametrize("wrong, phrase", [
    (lambda q, p: numpy_kl(p, q), "swapped"),
    (lambda q, p: numpy_kl(q, p) * q.shape[0], "1/N"),
    (lambda q, p: -numpy_kl(q, p), "sign"),
    (lambda q, p: numpy_kl(q, p) / math.log(2), "base 2"),
    (lambda q, p: theory.cross_entropy(q, p.log()), "cross-entropy"),
    (lambda q, p: (q * (q / p).log()).sum(1), "one value per sample"),
    (lambda q, p: (q * (q / p).log()).sum(1).mean(), "0·log 0"),
    (lambda q, p: q, "one number"),
    (lambda q, p: numpy_kl(q, p) + 0.1, "eq. (2) gives"),
])
def test_typical_kl_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_kl_divergence, wrong)
    assert not ok and phrase in out


def gradient_z(z, w, q, tau):
    p = theory.posterior(z, w, tau)
    return -((q - p) @ w) / (tau * z.shape[0])


def test_right_gradient_passes(capsys):
    ok, out = verdict(capsys, check_gradient_z, gradient_z)
    assert ok and "autograd" in out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda z, w, q, tau: -gradient_z(z, w, q, tau), "sign"),
    (lambda z, w, q, tau: -((q - theory.posterior(z, w, tau)).unsqueeze(-1)
                            * (z.unsqueeze(1) - w.unsqueeze(0))).sum(1) / (tau * z.shape[0]), "sign"),
    (lambda z, w, q, tau: gradient_z(z, w, q, tau) * z.shape[0], "N times"),
    (lambda z, w, q, tau: gradient_z(z, w, q, tau) * tau, "1/τ is missing"),
    (lambda z, w, q, tau: gradient_z(z, w, q, tau) * tau * z.shape[0], "both missing"),
    (lambda z, w, q, tau: (z - q @ w) / (tau * z.shape[0]), "normaliser"),
    (lambda z, w, q, tau: gradient_z(z, w, q, tau).T, "shape"),
    (lambda z, w, q, tau: gradient_z(z, w, q, tau) + 1e-3, "differs from autograd"),
])
def test_typical_gradient_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_gradient_z, wrong)
    assert not ok and phrase in out


def test_unregularised_teacher(capsys):
    ok, out = verdict(capsys, check_unregularised_teacher, lambda p: p.clone())
    assert ok and "eq. 7" in out
    cases = [
        (lambda p: torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).double(), "one-hot"),
        (lambda p: torch.full_like(p, 1 / p.shape[1]), "uniform"),
        (lambda p: (lambda q: q / q.sum(1, keepdim=True))(p / p.mean(0)), "chapter 3"),
        (lambda p: theory.softmax_with_temperature(p.log(), 0.5), "sharpened"),
        (lambda p: theory.softmax_with_temperature(p.log(), 2.0), "minimum is 0"),
        (lambda p: p / 2, "sum to 1"),
    ]
    for wrong, phrase in cases:
        ok, out = verdict(capsys, check_unregularised_teacher, wrong)
        assert not ok and phrase in out, (phrase, out)


def ema_loop(teacher, student, m, steps):
    for _ in range(steps):
        teacher = m * teacher + (1 - m) * student
    return teacher


def test_ema_teacher(capsys):
    assert verdict(capsys, check_ema_teacher, ema_loop)[0]
    assert verdict(capsys, check_ema_teacher, lambda t, s, m, n: s + m ** n * (t - s))[0]
    cases = [
        (lambda t, s, m, n: ema_loop(s, t, m, n), "swapped"),
        (lambda t, s, m, n: m * t + (1 - m) * s, "one update"),
        (lambda t, s, m, n: s + max(0.0, 1 - n * (1 - m)) * (t - s), "geometrically"),
        (lambda t, s, m, n: s, "differ"),
        (lambda t, s, m, n: t[0], "shape"),
    ]
    for wrong, phrase in cases:
        ok, out = verdict(capsys, check_ema_teacher, wrong)
        assert not ok and phrase in out, (phrase, out)


def ema_with_library(teacher, student, m, steps):
    teacher = teacher.clone()
    for _ in range(steps):
        ema_(teacher, student, m)
    return teacher


@pytest.mark.parametrize("check, answer, verdict_start, phrase", [
    # 2.1: eq. (2)
    (check_kl_divergence, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_kl_divergence, lambda q, p: numpy_kl(p, q), "✘ Not yet", "swapped"),
    (check_kl_divergence, theory.kl_divergence, "✘ Not yet", "that is klteach.theory.kl_divergence, the library's own"),
    (check_kl_divergence, lambda q, p: theory.kl_divergence(q, p), "✘ Not yet", "calls klteach.theory.kl_divergence"),
    (check_kl_divergence, lambda q, p: theory.regularised_objective(q, p, 0.0), "✘ Not yet",
     "calls klteach.theory.kl_divergence"),
    (check_kl_divergence, numpy_kl, "✔ Correct", "eq. (2)"),
    # 2.2: eq. (5); the exercise allows theory.posterior, which the right answer uses
    (check_gradient_z, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_gradient_z, lambda z, w, q, tau: -gradient_z(z, w, q, tau), "✘ Not yet", "sign is flipped"),
    (check_gradient_z, lambda z, w, q, tau: theory.cross_entropy_gradients(z, w, q, tau)[0], "✘ Not yet",
     "calls klteach.theory.cross_entropy_gradients"),
    (check_gradient_z, autograd_gradient_z, "✘ Not yet", "that is klteach.exercises.ch2.autograd_gradient_z"),
    (check_gradient_z, lambda *a: autograd_gradient_z(*a), "✘ Not yet",
     "calls klteach.exercises.ch2.autograd_gradient_z"),
    (check_gradient_z, gradient_z, "✔ Correct", "autograd"),
    # 2.3: eq. (7); inverse priors with λ = 0 are (7) too
    (check_unregularised_teacher, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_unregularised_teacher, lambda p: torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).double(),
     "✘ Not yet", "one-hot"),
    (check_unregularised_teacher, theory.unregularised_teacher, "✘ Not yet",
     "that is klteach.theory.unregularised_teacher"),
    (check_unregularised_teacher, lambda p: theory.inverse_prior_teacher(p, lam=0.0), "✘ Not yet",
     "calls klteach.theory.inverse_prior_teacher"),
    (check_unregularised_teacher, lambda p: p.clone(), "✔ Correct", "eq. 7"),
    # 2.4: the momentum update
    (check_ema_teacher, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_ema_teacher, lambda t, s, m, n: ema_loop(s, t, m, n), "✘ Not yet", "swapped"),
    (check_ema_teacher, ema_with_library, "✘ Not yet", "calls klteach.normalisers.ema_"),
    (check_ema_teacher, ema_loop, "✔ Correct", "geometrically"),
])
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out
