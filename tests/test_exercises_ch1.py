"""Chapter 1 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet". Also the machinery every
chapter's checkers share (klteach.exercises.checking)."""
import math
import threading

import numpy as np
import pytest
import torch

from klteach import metrics, theory
from klteach.exercises import check_posterior, check_radius_temperature, check_temperature_for_entropy
from klteach.exercises.checking import LibraryVersionUsed, library_unavailable
from klteach.theory import posterior as library_posterior


def numpy_posterior(z, w, tau, prior):
    """A from-scratch eq. (1) in numpy, stable at low temperature (as a student would write it)."""
    z, w, prior = (np.asarray(a, dtype=float) for a in (z, w, prior))
    exponent = -((z[:, None, :] - w[None, :, :]) ** 2).sum(-1) / (2 * tau) + np.log(prior)
    exponent -= exponent.max(1, keepdims=True)
    unnormalised = np.exp(exponent)
    return unnormalised / unnormalised.sum(1, keepdims=True)


def torch_posterior(z, w, tau, prior=None):
    """Eq. (1) from scratch in torch; equal priors when ``prior`` is None."""
    prior = torch.full((w.shape[0],), 1 / w.shape[0], dtype=z.dtype) if prior is None else prior
    return softmax(-((z[:, None, :] - w[None, :, :]) ** 2).sum(-1) / (2 * tau) + prior.log())


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


def softmax(scores):
    return (scores - scores.max(1, keepdims=True).values).exp() / \
        (scores - scores.max(1, keepdims=True).values).exp().sum(1, keepdims=True)


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def test_right_posterior_passes_in_numpy_and_torch(capsys):
    assert verdict(capsys, check_posterior, numpy_posterior)[0]
    ok, out = verdict(capsys, check_posterior, torch_posterior)
    assert ok and out.startswith("✔")


@pytest.mark.parametrize("wrong, phrase", [
    (lambda z, w, tau, prior: torch_posterior(z, w, tau), "left out the prior"),
    (lambda z, w, tau, prior: torch_posterior(z, w, tau / 2, prior), "divided by τ"),
    (lambda z, w, tau, prior: softmax(theory.squared_distances(z, w) / (2 * tau) + prior.log()), "sign"),
    (lambda z, w, tau, prior: softmax(-theory.squared_distances(z, w).sqrt() / (2 * tau) + prior.log()),
     "squared distance"),
    (lambda z, w, tau, prior: softmax(z @ w.T / tau + prior.log()), "unit vectors"),
    (lambda z, w, tau, prior: torch_posterior(z, w, tau, prior).T, "transpose"),
    (lambda z, w, tau, prior: (lambda e: e / e.sum(0))(torch_posterior(z, w, tau, prior)),
     "normalised over the samples"),
    (lambda z, w, tau, prior: torch_posterior(z, w, tau, prior) * 2, "sum to 1"),
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
        return torch_posterior(z, w, tau, prior)
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


def numerical_radius_temperature(tau, r):
    """T read off the library's eq. (1) at two unit directions: allowed, the library has no T."""
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    log_p = theory.log_posterior(r * z, r * w, tau)[0]
    return float((1.0 - 0.0) / (log_p[0] - log_p[1]))


@pytest.mark.parametrize("check, answer, verdict_start, phrase", [
    # 1.1: eq. (1)
    (check_posterior, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_posterior, lambda z, w, tau, prior: numpy_posterior(z, w, tau, torch.ones(4) / 4), "✘ Not yet",
     "left out the prior"),
    (check_posterior, lambda z, w, tau, prior: theory.posterior(z, w, tau, prior), "✘ Not yet",
     "calls klteach.theory.posterior, the library's own answer"),
    (check_posterior, lambda z, w, tau, prior: library_posterior(z, w, tau, prior), "✘ Not yet",
     "calls klteach.theory.posterior"),
    (check_posterior, lambda z, w, tau, prior: theory.log_posterior(z, w, tau, prior).exp(), "✘ Not yet",
     "calls klteach.theory.log_posterior"),
    (check_posterior, numpy_posterior, "✔ Correct", "eq. (1)"),
    # 1.2: T = τ/r² has no library version; reading T off the library's eq. (1) is allowed
    (check_radius_temperature, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_radius_temperature, lambda tau, r: tau, "✘ Not yet", "only for r = 1"),
    (check_radius_temperature, numerical_radius_temperature, "✔ Correct", "τ/r²"),
    (check_radius_temperature, lambda tau, r: tau / r ** 2, "✔ Correct", "τ/r²"),
    # 1.3: the search has no library version; the exercise allows the library's posterior and entropy
    (check_temperature_for_entropy, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_temperature_for_entropy, lambda z, w, t: 2 * bisect_temperature(z, w, t), "✘ Not yet", "too high"),
    (check_temperature_for_entropy, bisect_temperature, "✔ Correct", "all three target entropies"),
])
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out


# ---------------------------------------------------------------- the shared machinery

def test_library_is_restored_after_a_check(capsys):
    originals = theory.posterior, theory.log_posterior, library_posterior
    verdict(capsys, check_posterior, lambda z, w, tau, prior: theory.posterior(z, w, tau, prior))
    assert (theory.posterior, theory.log_posterior, library_posterior) == originals


def test_library_is_restored_when_the_student_interrupts(capsys):
    def interrupted(z, w, tau, prior):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        check_posterior(interrupted)
    assert theory.posterior is library_posterior


def test_the_student_cannot_catch_the_switch_off(capsys):
    def careful(z, w, tau, prior):
        try:
            return theory.posterior(z, w, tau, prior)
        except Exception:
            return torch_posterior(z, w, tau)
    ok, out = verdict(capsys, check_posterior, careful)
    assert not ok and "calls klteach.theory.posterior" in out


def test_other_threads_keep_the_library():
    """A dashboard training in the background while a student runs a check must not break."""
    z, w = torch.randn(5, 3), torch.randn(4, 3)
    results = []
    with library_unavailable([theory.posterior]):
        with pytest.raises(LibraryVersionUsed):
            theory.posterior(z, w, 0.5)
        worker = threading.Thread(target=lambda: results.append(theory.posterior(z, w, 0.5)))
        worker.start()
        worker.join()
    assert torch.allclose(results[0], library_posterior(z, w, 0.5))


def test_a_notimplementederror_with_a_message_is_not_taken_for_the_stub(capsys):
    def unfinished(z, w, tau, prior):
        raise NotImplementedError("the prior is still missing")
    ok, out = verdict(capsys, check_posterior, unfinished)
    assert not ok and "raised NotImplementedError: the prior is still missing" in out
