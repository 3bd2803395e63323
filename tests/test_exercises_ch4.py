"""Chapter 4 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet"."""
import math
import re

import numpy as np
import pytest
import torch

from klteach import theory
from klteach.exercises import check_centering_teacher, check_normaliser_lower_bound, check_prior_centering_gap


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def numpy_bound(z, w, tau):
    z, w = np.asarray(z), np.asarray(w)
    return math.log(len(w)) + z @ w.mean(0) / tau


def numpy_softmax(x, axis=-1):
    x = np.asarray(x)
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def numpy_centering(logits, tau):
    logits = np.asarray(logits)
    return numpy_softmax((logits - logits.mean(0)) / tau)


def teachers(z, w, tau):
    p = numpy_softmax(np.asarray(z @ w.T) / tau)
    q16 = p / p.mean(0)
    return q16 / q16.sum(1, keepdims=True), numpy_centering(z @ w.T, tau)


def numpy_gap(z, w, tau):
    a, b = teachers(z, w, tau)
    return (a * np.log(a / b)).sum(1).mean()


def library_teachers_gap(z, w, tau):
    """The gap with the library's two teachers, which the exercise allows."""
    exact = theory.prior_teacher_from_logits(z @ w.T, tau)
    centred = theory.centering_teacher(z @ w.T, tau)
    return theory.kl_divergence(exact, centred)


def test_right_answers_pass(capsys):
    for check, answer in [(check_normaliser_lower_bound, numpy_bound),
                          (check_centering_teacher, numpy_centering),
                          (check_prior_centering_gap, numpy_gap),
                          (check_prior_centering_gap, library_teachers_gap)]:
        ok, out = verdict(capsys, check, answer)
        assert ok and out.startswith("✔"), out


def test_success_message_reports_a_gap_that_shrinks_with_temperature(capsys):
    ok, out = verdict(capsys, check_prior_centering_gap, numpy_gap)
    high, low = map(float, re.search(r"gap is ([\d.]+) nats at τ = 0.3 and ([\d.]+) at τ = 0.05", out).groups())
    assert ok and high < low


@pytest.mark.parametrize("wrong, phrase", [
    (lambda z, w, tau: z @ w.mean(0) / tau, "log K is missing"),
    (lambda z, w, tau: math.log(len(w)) + z @ w.sum(0) / tau, "MEAN"),
    (lambda z, w, tau: math.log(len(w)) + z @ w.mean(0), "divide w̄·z by the temperature"),
    (lambda z, w, tau: torch.logsumexp(z @ w.T / tau, -1), "left side"),
    (lambda z, w, tau: np.exp(numpy_bound(z, w, tau)), "logarithm"),
    (lambda z, w, tau: numpy_bound(z, w, tau)[:3], "shape"),
    (lambda z, w, tau: numpy_bound(z, w, tau) + 0.1, "the library gives"),
])
def test_bound_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_normaliser_lower_bound, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda x, t: numpy_softmax(np.asarray(x) / t), "nothing was centred"),
    (lambda x, t: numpy_softmax((np.asarray(x) - np.asarray(x).mean(1, keepdims=True)) / t), "nothing was centred"),
    (lambda x, t: numpy_softmax((np.asarray(x) + np.asarray(x).mean(0)) / t), "wrong sign"),
    (lambda x, t: numpy_softmax(np.asarray(x) - np.asarray(x).mean(0)), "divide the centred logits"),
    (lambda x, t: numpy_softmax((np.asarray(x) - np.asarray(x).mean(0)) * t), "do not multiply"),
    (lambda x, t: numpy_softmax((np.asarray(x) - np.asarray(x).mean(0)) / t, axis=0), "dim 1"),
    (lambda x, t: numpy_centering(x, t)[:, :3], "shape"),
    (lambda x, t: np.roll(numpy_centering(x, t), 1, axis=0), "the library gives"),
])
def test_centering_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_centering_teacher, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda z, w, t: (lambda a, b: (b * np.log(b / a)).sum(1).mean())(*teachers(z, w, t)), "KL(centering"),
    (lambda z, w, t: numpy_gap(z, w, t) * len(z), "summed over the samples"),
    (lambda z, w, t: -numpy_gap(z, w, t), "never negative"),
    (lambda z, w, t: (lambda a, b: (a * np.log(a / b)).sum(1))(*teachers(z, w, t)), "one value per sample"),
    (lambda z, w, t: (lambda a, p: (a * np.log(a / p)).sum(1).mean())(
        teachers(z, w, t)[0], numpy_softmax(np.asarray(z @ w.T) / t)), "plain student softmax"),
    (lambda z, w, t: numpy_gap(z, w, 2 * t), "the library gives"),
    (lambda z, w, t: [1.0, 2.0], "one number"),
])
def test_gap_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_prior_centering_gap, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


VERDICTS = [
    # 4.1: eq. (18); the exercise allows the library's w̄ (eq. 19)
    (check_normaliser_lower_bound, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_normaliser_lower_bound, lambda z, w, tau: z @ w.mean(0) / tau, "✘ Not yet", "log K is missing"),
    (check_normaliser_lower_bound, lambda z, w, tau: theory.normaliser_jensen_bound(z, w, tau)[1], "✘ Not yet",
     "calls klteach.theory.normaliser_jensen_bound"),
    (check_normaliser_lower_bound, lambda z, w, tau: math.log(len(w)) + z @ theory.mean_weight_vector(w) / tau,
     "✔ Correct", "eq. 18"),
    (check_normaliser_lower_bound, numpy_bound, "✔ Correct", "eq. 18"),
    # 4.2: eq. (23), also through the library's normaliser
    (check_centering_teacher, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_centering_teacher, lambda x, t: numpy_softmax(np.asarray(x) / t), "✘ Not yet", "nothing was centred"),
    (check_centering_teacher, lambda x, t: theory.centering_teacher(x, t), "✘ Not yet",
     "calls klteach.theory.centering_teacher"),
    (check_centering_teacher, numpy_centering, "✔ Correct", "eq. 23"),
    # 4.3: the gap; the exercise allows the library's two teachers
    (check_prior_centering_gap, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_prior_centering_gap, lambda z, w, t: -numpy_gap(z, w, t), "✘ Not yet", "never negative"),
    (check_prior_centering_gap, lambda z, w, t: theory.prior_centering_gap(z, w, t), "✘ Not yet",
     "calls klteach.theory.prior_centering_gap"),
    (check_prior_centering_gap, library_teachers_gap, "✔ Correct", "the gap is"),
    (check_prior_centering_gap, numpy_gap, "✔ Correct", "the gap is"),
]


@pytest.mark.parametrize("check, answer, verdict_start, phrase", VERDICTS)
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out
