"""Chapter 3 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet"."""
import numpy as np
import pytest
import torch

from klteach import theory
from klteach.exercises import check_cluster_prior, check_inverse_prior_teacher, check_objective_gradient
from klteach.exercises.ch3 import objective_gradient


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def numpy_teacher(p, prior, lam):
    """Eq. (16) from scratch in numpy, with the floor the paper asks for."""
    p, prior = np.asarray(p), np.maximum(np.asarray(prior), 1e-8)
    q = p / prior ** lam
    return q / q.sum(1, keepdims=True)


def numpy_gradient(q, p, lam):
    q, p = np.asarray(q), np.asarray(p)
    n = q.shape[0]
    return (np.log(q / p) + 1) / n + lam * (np.log(q.mean(0)) + 1) / n


def test_right_answers_pass(capsys):
    for check, answer in [(check_cluster_prior, lambda p: p.mean(0)),
                          (check_cluster_prior, lambda p: np.asarray(p).sum(0) / len(p)),
                          (check_inverse_prior_teacher, numpy_teacher),
                          (check_objective_gradient, numpy_gradient)]:
        ok, out = verdict(capsys, check, answer)
        assert ok and out.startswith("✔"), out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda p: p.sum(0), "sum to N"),
    (lambda p: p.mean(1), "one value per sample"),
    (lambda p: torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).double().mean(0), "hard (argmax)"),
    (lambda p: p.max(0).values, "largest posterior"),
    (lambda p: p.mean(0)[:3], "shape (K,)"),
    (lambda p: p.mean(0).roll(1), "the library gives"),
    (lambda p: None, "NoneType"),
    (lambda p: 1 / 0, "ZeroDivisionError"),
])
def test_cluster_prior_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_cluster_prior, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def without_floor(p, prior, lam):
    q = p / prior ** lam
    return q / q.sum(1, keepdim=True)


@pytest.mark.parametrize("wrong, phrase", [
    (lambda p, prior, lam: p / prior ** lam, "did not renormalise"),
    (lambda p, prior, lam: (lambda q: q / q.sum(0))(p / prior ** lam), "normalised over the samples"),
    (lambda p, prior, lam: numpy_teacher(p, 1 / prior, lam), "DIVIDES"),
    (lambda p, prior, lam: p.clone(), "unchanged"),
    (lambda p, prior, lam: numpy_teacher(p, prior, 1.0), "you used λ = 1"),
    (lambda p, prior, lam: numpy_teacher(p, prior, 1 / lam), "π_k^(1/λ)"),
    (lambda p, prior, lam: numpy_teacher(p, p.mean(0), lam), "re-estimated"),
    (lambda p, prior, lam: numpy_teacher(p, prior, lam).T, "transpose"),
    (without_floor, "floor the prior"),
    (lambda p, prior, lam: numpy_teacher(p, prior, lam) + 0.01 * np.eye(*p.shape), "sum to 1"),
])
def test_inverse_prior_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_inverse_prior_teacher, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def test_inverse_prior_checker_does_not_accept_in_place_changes(capsys):
    def in_place(p, prior, lam):
        p /= prior ** lam
        return p / p.sum(1, keepdim=True)
    ok, out = verdict(capsys, check_inverse_prior_teacher, in_place)
    assert not ok and "in place" in out


@pytest.mark.parametrize("wrong, phrase", [
    (lambda q, p, lam: numpy_gradient(q, p, lam) * q.shape[0], "N times too large"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0] + lam * (q.mean(0).log() + 1), "prior term is N times"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0] - lam * (q.mean(0).log() + 1) / q.shape[0], "wrong sign"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0], "entropy term"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0] + lam * (p.mean(0).log() + 1) / q.shape[0], "TEACHER"),
    (lambda q, p, lam: numpy_gradient(q, p, lam) - (1 + lam) / q.shape[0], "(1 + λ)/N"),
    (lambda q, p, lam: numpy_gradient(q, p, 1.0), "λ = 0.3"),
    (lambda q, p, lam: numpy_gradient(q, p, lam)[:, :2], "shape"),
])
def test_gradient_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_objective_gradient, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def test_objective_gradient_reference_is_eq_12():
    """The autograd reference agrees with (12) written out, and the closed form zeroes it up to μ."""
    from klteach.exercises.ch3 import objective_gradient, student_posteriors
    p = student_posteriors(7, 4, seed=0)
    q = theory.self_consistent_teacher(p, 0.7, iterations=100)
    grad = objective_gradient(q, p, 0.7)
    np.testing.assert_allclose(grad.numpy(), numpy_gradient(q, p, 0.7), atol=1e-12)
    # stationarity (13): the gradient is the same for every k (it equals -μ_x)
    assert float((grad - grad.mean(1, keepdim=True)).abs().max()) < 1e-8


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


def autograd_of_library_objective(q, p, lam):
    q = q.clone().requires_grad_(True)
    theory.regularised_objective(q, p, lam).backward()
    return q.grad


VERDICTS = [
    # 3.1: eq. (15)
    (check_cluster_prior, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_cluster_prior, lambda p: p.sum(0), "✘ Not yet", "sum to N"),
    (check_cluster_prior, lambda p: theory.cluster_prior(p), "✘ Not yet", "calls klteach.theory.cluster_prior"),
    (check_cluster_prior, lambda p: p.mean(0), "✔ Correct", "eq. 15"),
    # 3.2: eq. (14)/(16), also through the library's normaliser
    (check_inverse_prior_teacher, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_inverse_prior_teacher, lambda p, prior, lam: numpy_teacher(p, 1 / prior, lam), "✘ Not yet", "DIVIDES"),
    (check_inverse_prior_teacher, lambda p, prior, lam: theory.inverse_prior_teacher(p, prior, lam), "✘ Not yet",
     "calls klteach.theory.inverse_prior_teacher"),
    (check_inverse_prior_teacher, lambda p, prior, lam: theory.prior_teacher_from_logits(p.log(), 1.0, lam),
     "✘ Not yet", "calls klteach.theory.inverse_prior_teacher"),
    (check_inverse_prior_teacher, numpy_teacher, "✔ Correct", "eq. 14/16"),
    # 3.3: eq. (12)
    (check_objective_gradient, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_objective_gradient, lambda q, p, lam: ((q / p).log() + 1) / q.shape[0], "✘ Not yet", "entropy term"),
    (check_objective_gradient, autograd_of_library_objective, "✘ Not yet",
     "calls klteach.theory.regularised_objective"),
    (check_objective_gradient, lambda q, p, lam: objective_gradient(q, p, lam), "✘ Not yet",
     "calls klteach.exercises.ch3.objective_gradient"),
    (check_objective_gradient, numpy_gradient, "✔ Correct", "autograd's gradient of (10)"),
]


@pytest.mark.parametrize("check, answer, verdict_start, phrase", VERDICTS)
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out
