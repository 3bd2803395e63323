"""Chapter 4 checkers: a right answer passes; each typical mistake gets its own message."""
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


def test_right_answers_pass(capsys):
    for check, answer in [(check_normaliser_lower_bound, numpy_bound),
                          (check_centering_teacher, numpy_centering),
                          (check_centering_teacher, theory.centering_teacher),
                          (check_prior_centering_gap, numpy_gap),
                          (check_prior_centering_gap, theory.prior_centering_gap)]:
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
    (lambda l, t: numpy_softmax(np.asarray(l) / t), "nothing was centred"),
    (lambda l, t: numpy_softmax((np.asarray(l) - np.asarray(l).mean(1, keepdims=True)) / t), "nothing was centred"),
    (lambda l, t: numpy_softmax((np.asarray(l) + np.asarray(l).mean(0)) / t), "wrong sign"),
    (lambda l, t: numpy_softmax(np.asarray(l) - np.asarray(l).mean(0)), "divide the centred logits"),
    (lambda l, t: numpy_softmax((np.asarray(l) - np.asarray(l).mean(0)) * t), "do not multiply"),
    (lambda l, t: numpy_softmax((np.asarray(l) - np.asarray(l).mean(0)) / t, axis=0), "dim 1"),
    (lambda l, t: numpy_centering(l, t)[:, :3], "shape"),
    (lambda l, t: np.roll(numpy_centering(l, t), 1, axis=0), "the library gives"),
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
