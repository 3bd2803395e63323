"""Chapter 4 checkers: a right answer passes, typical mistakes get their specific hint."""
import math

import pytest
import torch

from klteach import theory
from klteach.exercises import ch4


@pytest.fixture
def zw():
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    return z, w


def said(capsys):
    return capsys.readouterr().out


def right_bound(z, w, tau):
    return torch.logsumexp(z @ w.T / tau, -1), math.log(w.shape[0]) + z @ w.mean(0) / tau


def test_jensen_bound_right_answer_passes(zw, capsys):
    z, w = zw
    assert ch4.check_normaliser_jensen_bound(*right_bound(z, w, 0.2), z, w, 0.2)
    assert said(capsys).startswith("Correct!")


@pytest.mark.parametrize("wrong, hint", [
    (lambda z, w, t: right_bound(z, w, t)[::-1], "swapped"),
    (lambda z, w, t: (right_bound(z, w, t)[0], right_bound(z, w, t)[1] - math.log(5)), "missing log K"),
    (lambda z, w, t: (right_bound(z, w, t)[0], math.log(5) + z @ w.sum(0) / t), "MEAN"),
    (lambda z, w, t: (torch.logsumexp(z @ w.T, -1), right_bound(z, w, t)[1]), "divide the logits"),
    (lambda z, w, t: tuple(x.exp() for x in right_bound(z, w, t)), "logarithms"),
    (lambda z, w, t: (right_bound(z, w, t)[0][:3], right_bound(z, w, t)[1]), "shape"),
    (lambda z, w, t: (None, None), "no answer yet"),
])
def test_jensen_bound_wrong_answers_get_specific_hints(zw, capsys, wrong, hint):
    z, w = zw
    assert not ch4.check_normaliser_jensen_bound(*wrong(z, w, 0.2), z, w, 0.2)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def test_centering_teacher_right_answer_passes(zw, capsys):
    z, w = zw
    logits = z @ w.T
    assert ch4.check_centering_teacher(((logits - logits.mean(0)) / 0.1).softmax(-1), logits, 0.1)
    assert said(capsys).startswith("Correct!")


@pytest.mark.parametrize("wrong, hint", [
    (lambda l, t: (l / t).softmax(-1), "nothing was centred"),
    (lambda l, t: ((l - l.mean(1, keepdim=True)) / t).softmax(-1), "nothing was centred"),
    (lambda l, t: ((l + l.mean(0)) / t).softmax(-1), "wrong sign"),
    (lambda l, t: (l - l.mean(0)).softmax(-1), "divide the centred logits"),
    (lambda l, t: ((l - l.mean(0)) * t).softmax(-1), "do not multiply"),
    (lambda l, t: ((l - l.mean(0)) / t).softmax(0), "dim 1"),
    (lambda l, t: ((l - l.mean(0)) / t).softmax(-1).roll(1, 0), "sample"),
])
def test_centering_teacher_wrong_answers_get_specific_hints(zw, capsys, wrong, hint):
    z, w = zw
    logits = z @ w.T
    assert not ch4.check_centering_teacher(wrong(logits, 0.1), logits, 0.1)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def gap_parts(z, w, tau):
    p = (z @ w.T / tau).softmax(-1)
    q16 = p / p.mean(0)
    q16 = q16 / q16.sum(1, keepdim=True)
    l = z @ w.T
    q23 = ((l - l.mean(0)) / tau).softmax(-1)
    return q16, q23


def test_gap_right_answer_passes(zw, capsys):
    z, w = zw
    q16, q23 = gap_parts(z, w, 0.1)
    answer = (q16 * (q16 / q23).log()).sum(1).mean()
    assert ch4.check_prior_centering_gap(answer, z, w, 0.1)
    assert ch4.check_prior_centering_gap(float(answer), z, w, 0.1)
    assert said(capsys).startswith("Correct!")


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, b: (b * (b / a).log()).sum(1).mean(), "KL(centering"),
    (lambda a, b: (a * (a / b).log()).sum(), "summed over the samples"),
    (lambda a, b: -(a * (a / b).log()).sum(1).mean(), "never negative"),
    (lambda a, b: (a * (a / b).log()).sum(1), "shape"),
])
def test_gap_wrong_answers_get_specific_hints(zw, capsys, wrong, hint):
    z, w = zw
    assert not ch4.check_prior_centering_gap(wrong(*gap_parts(z, w, 0.1)), z, w, 0.1)
    out = said(capsys)
    assert out.startswith("Not yet:") and hint in out


def test_checkers_reject_bad_inputs(zw):
    z, w = zw
    with pytest.raises(ValueError, match="same dimension"):
        ch4.check_prior_centering_gap(0.0, z, w[:, :3], 0.1)
    with pytest.raises(ValueError, match="tau"):
        ch4.check_centering_teacher(z @ w.T, z @ w.T, 0)
    with pytest.raises(ValueError, match="2-D"):
        ch4.check_normaliser_jensen_bound(None, None, z[0], w, 0.1)


def test_checkers_are_exported():
    import klteach.exercises as ex
    for name in ch4.__all__:
        assert getattr(ex, name) is getattr(ch4, name)
