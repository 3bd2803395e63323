"""Chapter 1 checkers: a right answer passes; each typical mistake gets its own message."""
import math

import numpy as np
import pytest
import torch

from klteach import metrics, theory
from klteach.exercises import check_posterior, check_radius_temperature, check_temperature_for_entropy


def numpy_posterior(z, w, tau, prior):
    """A from-scratch eq. (1) in numpy, stable at low temperature (as a student would write it)."""
    z, w, prior = (np.asarray(a, dtype=float) for a in (z, w, prior))
    exponent = -((z[:, None, :] - w[None, :, :]) ** 2).sum(-1) / (2 * tau) + np.log(prior)
    exponent -= exponent.max(1, keepdims=True)
    unnormalised = np.exp(exponent)
    return unnormalised / unnormalised.sum(1, keepdims=True)


def softmax(scores):
    return (scores - scores.max(1, keepdims=True).values).exp() / \
        (scores - scores.max(1, keepdims=True).values).exp().sum(1, keepdims=True)


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def test_right_posterior_passes_in_numpy_and_torch(capsys):
    assert verdict(capsys, check_posterior, numpy_posterior)[0]
    ok, out = verdict(capsys, check_posterior, theory.posterior)
    assert ok and out.startswith("✔")


@pytest.mark.parametrize("wrong, phrase", [
    (lambda z, w, tau, prior: theory.posterior(z, w, tau), "left out the prior"),
    (lambda z, w, tau, prior: theory.posterior(z, w, tau / 2, prior), "divided by τ"),
    (lambda z, w, tau, prior: softmax(theory.squared_distances(z, w) / (2 * tau) + prior.log()), "sign"),
    (lambda z, w, tau, prior: softmax(-theory.squared_distances(z, w).sqrt() / (2 * tau) + prior.log()),
     "squared distance"),
    (lambda z, w, tau, prior: softmax(z @ w.T / tau + prior.log()), "unit vectors"),
    (lambda z, w, tau, prior: theory.posterior(z, w, tau, prior).T, "transpose"),
    (lambda z, w, tau, prior: (lambda e: e / e.sum(0))(theory.posterior(z, w, tau, prior)), "normalised over the samples"),
    (lambda z, w, tau, prior: theory.posterior(z, w, tau, prior) * 2, "sum to 1"),
    (lambda z, w, tau, prior: 1 / 0, "ZeroDivisionError"),
])
def test_typical_posterior_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_posterior, wrong)
    assert not ok and out.startswith("✘") and phrase in out


def test_naive_exp_is_caught_at_low_temperature(capsys):
    def naive(z, w, tau, prior):
        dens = prior * torch.exp(-theory.squared_distances(z, w) / (2 * tau))
        return dens / dens.sum(1, keepdim=True)
    ok, out = verdict(capsys, check_posterior, naive)
    assert not ok and "log-sum-exp" in out


def test_in_place_change_of_inputs_is_reported(capsys):
    def scales_z_in_place(z, w, tau, prior):
        z /= 2
        return theory.posterior(z, w, tau, prior)
    ok, out = verdict(capsys, check_posterior, scales_z_in_place)
    assert not ok and "in place" in out


def bisect_temperature(z, w, target):
    low, high = math.log(1e-4), math.log(1e3)
    for _ in range(50):
        mid = (low + high) / 2
        if metrics.mean_entropy(theory.sphere_posterior(z, w, math.exp(mid))) > target:
            high = mid
        else:
            low = mid
    return math.exp((low + high) / 2)


def test_temperature_for_entropy(capsys):
    assert verdict(capsys, check_temperature_for_entropy, bisect_temperature)[0]
    ok, out = verdict(capsys, check_temperature_for_entropy, lambda z, w, t: 2 * bisect_temperature(z, w, t))
    assert not ok and "too high" in out
    ok, out = verdict(capsys, check_temperature_for_entropy, lambda z, w, t: 0.5 * bisect_temperature(z, w, t))
    assert not ok and "too low" in out
    ok, out = verdict(capsys, check_temperature_for_entropy, lambda z, w, t: -1.0)
    assert not ok and "positive" in out
    ok, out = verdict(capsys, check_temperature_for_entropy, lambda z, w, t: torch.ones(3))
    assert not ok and "one number" in out


@pytest.mark.parametrize("answer, phrase", [
    (lambda tau, r: tau, "only for r = 1"),
    (lambda tau, r: tau / r, "not r"),
    (lambda tau, r: tau * r * r, "upside down"),
    (lambda tau, r: tau + r, "expand"),
    (lambda tau, r: 0.0, "positive"),
])
def test_radius_temperature(capsys, answer, phrase):
    assert verdict(capsys, check_radius_temperature, lambda tau, r: tau / r ** 2)[0]
    ok, out = verdict(capsys, check_radius_temperature, answer)
    assert not ok and phrase in out
