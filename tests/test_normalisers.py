"""The teacher normalisers: each against the equation it implements, and their state."""
import pytest
import torch

from klteach import metrics, theory
from klteach.normalisers import NORMALISERS, make_normaliser, sinkhorn_knopp


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = unit(torch.randn(64, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7))   # unbalanced batch
    w = unit(torch.randn(6, 8, generator=g))
    return z, w


@pytest.mark.parametrize("name", NORMALISERS)
def test_every_teacher_is_a_distribution(batch, name):
    z, w = batch
    q = make_normaliser(name, clusters=6)(z, w, 0.1)
    assert q.shape == (64, 6)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)
    assert (q >= 0).all()


@pytest.mark.parametrize("name", NORMALISERS)
def test_low_temperature_and_huge_logits_stay_finite(name):
    z = torch.tensor([[1e4, 0.0], [0.0, 1e4], [1e4, 1e4], [-1e4, 0.0]])
    w = unit(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    q = make_normaliser(name, clusters=3)(z, w, 0.01)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(4), atol=1e-5)


def test_none_is_the_student_posterior_eq7(batch):
    z, w = batch
    assert torch.allclose(make_normaliser("none", 6)(z, w, 0.1), theory.sphere_posterior(z, w, 0.1))


def test_inverse_prior_batch_mode_is_eq16_with_the_batch_prior(batch):
    z, w = batch
    teacher = make_normaliser("inverse-prior", 6, prior="batch")
    p = theory.sphere_posterior(z, w, 0.1)
    expected = theory.inverse_prior_teacher(p, p.mean(0), 1.0, floor=teacher.floor)
    assert torch.allclose(teacher(z, w, 0.1), expected, atol=1e-6)
    assert metrics.effective_clusters(teacher(z, w, 0.1)) > metrics.effective_clusters(p)


def test_running_prior_is_an_ema_updated_only_in_training(batch):
    z, w = batch
    teacher = make_normaliser("inverse-prior", 6, prior="running", prior_momentum=0.5)
    batch_prior = theory.sphere_posterior(z, w, 0.1).mean(0)
    teacher(z, w, 0.1)
    assert torch.allclose(teacher.running_prior, 0.5 / 6 + 0.5 * batch_prior, atol=1e-6)
    teacher.eval()
    before = teacher.running_prior.clone()
    teacher(z, w, 0.1)
    assert torch.equal(before, teacher.running_prior)


def test_full_prior_is_used_as_set(batch):
    z, w = batch
    teacher = make_normaliser("inverse-prior", 6, prior="full", lam=0.7)
    prior = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    teacher.set_full_prior(prior)
    expected = theory.inverse_prior_teacher(theory.sphere_posterior(z, w, 0.1), prior, 0.7)
    assert torch.allclose(teacher(z, w, 0.1), expected, atol=1e-6)


def test_centering_uses_the_previous_centre_then_updates_it(batch):
    z, w = batch
    teacher = make_normaliser("centering", 6, center_momentum=0.9)
    q_first = teacher(z, w, 0.1)
    assert torch.allclose(q_first, theory.sphere_posterior(z, w, 0.1), atol=1e-6)   # centre starts at 0
    assert torch.allclose(teacher.center, 0.1 * (z @ w.T).mean(0), atol=1e-6)
    centre = teacher.center.clone()
    assert torch.allclose(teacher(z, w, 0.1), theory.centering_teacher(z @ w.T, 0.1, centre), atol=1e-6)


def test_batchnorm_teacher_ignores_a_shift_shared_by_the_batch(batch):
    z, w = batch
    teacher = make_normaliser("batchnorm", 6)
    shifted = z + torch.linspace(-0.5, 0.5, 8)
    assert torch.allclose(teacher(z, w, 0.1), teacher(shifted, w, 0.1), atol=1e-5)
    assert metrics.effective_clusters(teacher(z, w, 0.1)) > \
        metrics.effective_clusters(theory.sphere_posterior(z, w, 0.1))


def test_sinkhorn_equipartitions_the_batch(batch):
    z, w = batch
    q = sinkhorn_knopp(z @ w.T, 0.1, iterations=50)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)
    assert torch.allclose(q.sum(0), torch.full((6,), 64 / 6), atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "whitening"}, "unknown normaliser 'whitening'"),
    ({"name": "inverse-prior", "prior": "epoch"}, "prior must be one of batch, running, full"),
    ({"name": "inverse-prior", "lam": -0.5}, "lam must be"),
    ({"name": "centering", "center_momentum": 1.0}, r"center_momentum must be in \[0, 1\)"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_normaliser(clusters=4, **kwargs)
