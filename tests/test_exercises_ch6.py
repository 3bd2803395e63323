"""Chapter 6 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet"."""
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from klteach import theory
from klteach.exercises import check_centred_weights, check_sinkhorn, check_temperature_for_dimension
from klteach.exercises.ch6 import random_logit_std
from klteach.models import Prototypes
from klteach.normalisers import sinkhorn_knopp


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def numpy_centre(w):
    w = np.asarray(w)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    w = w - w.mean(0)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def numpy_sinkhorn(logits, tau, iterations):
    """SwAV's Sinkhorn-Knopp from scratch: columns to 1/K, rows to 1/B, times B at the end."""
    scores = np.asarray(logits) / tau
    mass = np.exp(scores - scores.max())
    mass /= mass.sum()
    batch, clusters = mass.shape
    for _ in range(iterations):
        mass = mass / mass.sum(0, keepdims=True) / clusters
        mass = mass / mass.sum(1, keepdims=True) / batch
    return mass * batch


def test_right_answers_pass(capsys):
    for check, answer in [(check_centred_weights, numpy_centre),
                          (check_sinkhorn, numpy_sinkhorn),
                          (check_temperature_for_dimension, lambda dim, s: 1 / (s * math.sqrt(dim)))]:
        ok, out = verdict(capsys, check, answer)
        assert ok and out.startswith("✔"), out


def test_centred_check_does_not_touch_the_global_seed(capsys):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_centred_weights(numpy_centre)
    assert torch.equal(torch.rand(3), expected)


def unit(w):
    return normalize(w, dim=-1)


@pytest.mark.parametrize("wrong, phrase", [
    (lambda w: unit(w) - unit(w).mean(0), "no longer unit vectors"),
    (lambda w: unit(unit(w) - unit(w).mean(1, keepdim=True)), "own mean coordinate"),
    (lambda w: unit(w - w.mean(0)), "FIRST"),
    (lambda w: unit(w), "only normalised"),
    (lambda w: unit(unit(w) - unit(w).sum(0)), "not their sum"),
    (lambda w: numpy_centre(w).T, "one row per weight vector"),
    (lambda w: numpy_centre(w)[::-1].copy(), "the library gives"),
    (lambda w: 1 / 0, "ZeroDivisionError"),
])
def test_centred_weights_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_centred_weights, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def rows_first(logits, tau, iterations):
    mass = np.exp(np.asarray(logits) / tau)
    for _ in range(iterations):
        mass = mass / mass.sum(1, keepdims=True)
        mass = mass / mass.sum(0, keepdims=True) / mass.shape[1]
    return mass * mass.shape[0]


@pytest.mark.parametrize("wrong, phrase", [
    (lambda logits, tau, it: torch.softmax(logits / tau, dim=1), "plain softmax"),
    (lambda logits, tau, it: numpy_sinkhorn(logits, 1.0, it), "temperature"),
    (lambda logits, tau, it: numpy_sinkhorn(logits, tau, it) / logits.shape[0], "1/B"),
    (lambda logits, tau, it: numpy_sinkhorn(logits, tau, 1), "single round"),
    (rows_first, "columns (clusters) first"),
    (lambda logits, tau, it: numpy_sinkhorn(logits.T, tau, it).T, "swapped the roles"),
    (lambda logits, tau, it: numpy_sinkhorn(logits, tau, it)[:, :3], "shape"),
    (lambda logits, tau, it: numpy_sinkhorn(logits, tau, it) * 1.01, "rows must sum to 1"),
])
def test_sinkhorn_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_sinkhorn, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda dim, s: 1 / (s * dim), "VARIANCE"),
    (lambda dim, s: math.sqrt(dim) / s, "upside down"),
    (lambda dim, s: s / math.sqrt(dim), "smaller τ"),
    (lambda dim, s: 1 / s, "ignores the dimension"),
    (lambda dim, s: 0.9 / (s * math.sqrt(dim)), "standard deviation"),
    (lambda dim, s: -1.0, "positive"),
])
def test_temperature_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_temperature_for_dimension, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


def centred_by_the_model(w):
    prototypes = Prototypes(w.shape[1], w.shape[0], learnable=False, centred=True)
    prototypes.weight = w.float()
    return prototypes.unit_weights


def bisect_on_the_checkers_measurement(dim, logit_std):
    low, high = 1e-4, 1e3
    for _ in range(60):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if random_logit_std(dim, middle) > logit_std else (low, middle)
    return math.sqrt(low * high)


VERDICTS = [
    # 6.1: eq. (19)-(20)
    (check_centred_weights, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_centred_weights, lambda w: unit(w) - unit(w).mean(0), "✘ Not yet", "no longer unit vectors"),
    (check_centred_weights, centred_by_the_model, "✘ Not yet", "calls klteach.theory.centre_weights"),
    (check_centred_weights, lambda w: unit(theory.centre_weights(unit(w))), "✘ Not yet",
     "calls klteach.theory.centre_weights"),
    (check_centred_weights, numpy_centre, "✔ Correct", "‖w̄‖"),
    # 6.2: Sinkhorn-Knopp
    (check_sinkhorn, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_sinkhorn, lambda logits, tau, it: torch.softmax(logits / tau, dim=1), "✘ Not yet", "plain softmax"),
    (check_sinkhorn, lambda logits, tau, it: sinkhorn_knopp(logits, tau, it), "✘ Not yet",
     "calls klteach.normalisers.sinkhorn_knopp"),
    (check_sinkhorn, numpy_sinkhorn, "✔ Correct", "cluster sizes"),
    # 6.3: τ for a dimension; no library version, but the checker's own measurement must not do the work
    (check_temperature_for_dimension, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_temperature_for_dimension, lambda dim, s: 1 / (s * dim), "✘ Not yet", "VARIANCE"),
    (check_temperature_for_dimension, bisect_on_the_checkers_measurement, "✘ Not yet",
     "calls klteach.exercises.ch6.random_logit_std"),
    (check_temperature_for_dimension, lambda dim, s: 1 / (s * math.sqrt(dim)), "✔ Correct", "τ = 1/(s·√D)"),
]


@pytest.mark.parametrize("check, answer, verdict_start, phrase", VERDICTS)
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out
