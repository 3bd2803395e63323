"""Chapter 3 checkers: a right answer passes, typical mistakes get their specific hint."""
import pytest
import torch

from klteach import theory
from klteach.exercises import ch3


@pytest.fixture
def p():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(40, 5, generator=g, dtype=torch.float64), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1)
    return theory.sphere_posterior(z, w, 0.3)


def said(capsys):
    return capsys.readouterr().out


def test_cluster_prior_right_answer_passes(p, capsys):
    assert ch3.check_cluster_prior(p.mean(0), p)
    assert said(capsys).startswith("Correct!")


@pytest.mark.parametrize("wrong, hint", [
    (lambda p: p.sum(0), "Divide by N"),
    (lambda p: p.mean(1), "Average over the samples"),
    (lambda p: p.argmax(-1).bincount(minlength=6).double() / 40, "hard (argmax)"),
    (lambda p: p.mean(0)[:3], "shape (3,)"),
    (lambda p: None, "no answer yet"),
    (lambda p: p.mean(0) * 0.5, "sums to 0.5"),
    (lambda p: p.mean(0).roll(1), "cluster"),
])
def test_cluster_prior_wrong_answers_get_specific_hints(p, capsys, wrong, hint):
    assert not ch3.check_cluster_prior(wrong(p), p)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def test_inverse_prior_teacher_right_answer_passes(p, capsys):
    prior = p.mean(0)
    q = p / prior
    assert ch3.check_inverse_prior_teacher(q / q.sum(1, keepdim=True), p, prior)
    assert ch3.check_inverse_prior_teacher((p / prior**0.5) / (p / prior**0.5).sum(1, keepdim=True), p, prior, lam=0.5)
    assert "Correct!" in said(capsys)


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, pi: p / pi, "did not renormalise"),
    (lambda p, pi: (p / pi) / (p / pi).sum(0, keepdim=True), "columns sum to one"),
    (lambda p, pi: (p * pi) / (p * pi).sum(1, keepdim=True), "multiplied by the prior"),
    (lambda p, pi: p.clone(), "unchanged"),
    (lambda p, pi: -p, "negative"),
    (lambda p, pi: (p / pi)[:, :-1], "shape"),
    (lambda p, pi: torch.full_like(p, float("nan")), "NaN"),
    (lambda p, pi: p.roll(1, 0), "sample"),
])
def test_inverse_prior_teacher_wrong_answers_get_specific_hints(p, capsys, wrong, hint):
    prior = p.mean(0)
    assert not ch3.check_inverse_prior_teacher(wrong(p, prior), p, prior)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def test_inverse_prior_teacher_notices_a_forgotten_lambda(p, capsys):
    prior = p.mean(0)
    q = p / prior
    assert not ch3.check_inverse_prior_teacher(q / q.sum(1, keepdim=True), p, prior, lam=0.3)
    assert "λ = 0.3" in said(capsys)


def test_inverse_prior_teacher_rejects_bad_inputs(p):
    with pytest.raises(ValueError, match="one value per cluster"):
        ch3.check_inverse_prior_teacher(p, p, p.mean(0)[:2])
    with pytest.raises(ValueError, match="sum to one"):
        ch3.check_inverse_prior_teacher(p, p * 2, p.mean(0))
    with pytest.raises(ValueError, match="lam"):
        ch3.check_inverse_prior_teacher(p, p, p.mean(0), lam=-1)


def reference_gradient(q, p, lam):
    n = q.shape[0]
    return ((q / p).log() + 1) / n + lam * (q.mean(0).log() + 1) / n


def test_objective_gradient_right_answer_passes(p, capsys):
    q = theory.inverse_prior_teacher(p)
    assert ch3.check_objective_gradient(reference_gradient(q, p, 0.7), q, p, lam=0.7)
    assert "Correct!" in said(capsys)


@pytest.mark.parametrize("wrong, hint", [
    (lambda q, p, lam: reference_gradient(q, p, lam) * q.shape[0], "N times too large"),
    (lambda q, p, lam: reference_gradient(q, p, lam) - (1 + lam) / q.shape[0], "same constant"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0] - lam * (q.mean(0).log() + 1) / q.shape[0],
     "wrong sign"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0] + lam * (q.mean(0).log() + 1), "prior term"),
    (lambda q, p, lam: ((q / p).log() + 1) / q.shape[0], "sample"),
])
def test_objective_gradient_wrong_answers_get_specific_hints(p, capsys, wrong, hint):
    q = theory.inverse_prior_teacher(p)
    assert not ch3.check_objective_gradient(wrong(q, p, 1.0), q, p, lam=1.0)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def test_checkers_are_exported():
    import klteach.exercises as ex
    for name in ch3.__all__:
        assert getattr(ex, name) is getattr(ch3, name)
