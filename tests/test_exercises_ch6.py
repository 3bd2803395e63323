"""Chapter 6 checkers: a right answer passes; each typical mistake gets its own message."""
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from klteach.exercises import check_centred_weights, check_sinkhorn, check_temperature_for_dimension


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
