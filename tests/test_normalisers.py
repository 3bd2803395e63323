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
    teacher = make_normaliser("centering", 6, centre_momentum=0.9)
    q_first = teacher(z, w, 0.1)
    assert torch.allclose(q_first, theory.sphere_posterior(z, w, 0.1), atol=1e-6)   # centre starts at 0
    assert torch.allclose(teacher.centre, 0.1 * (z @ w.T).mean(0), atol=1e-6)
    centre = teacher.centre.clone()
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


def test_a_centre_saved_under_the_old_spelling_still_loads(batch):
    z, w = batch
    saved = make_normaliser("centering", 6)
    saved(z, w, 0.1)
    old_checkpoint = {"center": saved.state_dict()["centre"]}
    restored = make_normaliser("centering", 6)
    restored.load_state_dict(old_checkpoint)
    assert torch.equal(restored.centre, saved.centre)


@pytest.mark.parametrize("name", [n for n in NORMALISERS if n != "none"])
def test_an_empty_batch_in_training_is_refused_and_changes_nothing(batch, name):
    z, w = batch
    teacher = make_normaliser(name, 6)
    teacher(z, w, 0.1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with pytest.raises(ValueError, match="empty batch"):
        teacher(z[:0], w, 0.1)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]) and torch.isfinite(value).all(), key
    assert torch.isfinite(teacher(z, w, 0.1)).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "whitening"}, "unknown normaliser 'whitening'"),
    ({"name": "inverse-prior", "prior": "epoch"}, "prior must be one of batch, running, full"),
    ({"name": "inverse-prior", "lam": -0.5}, "lam must be"),
    ({"name": "centering", "centre_momentum": 1.0}, r"centre_momentum must be in \[0, 1\)"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_normaliser(clusters=4, **kwargs)


# ---------------------------------------------------------------- Sinkhorn at the edges (issue 10)

def swav_sinkhorn(scores, epsilon, iterations, exp=torch.exp):
    """SwAV's ``distributed_sinkhorn`` in one process, from its description, in exp space.

    ``Q = exp(scores / ε)``, read as a K x B matrix, is scaled to total mass 1; every iteration
    scales each prototype's row to mass 1/K, then each sample's column to 1/B; at the end the
    columns are multiplied by B, so every sample's assignment sums to one. Works on float64
    tensors, or on nested lists of Decimals when ``exp`` is ``Decimal.exp``."""
    rows, cols = len(scores), len(scores[0])
    q = [[exp(scores[i][k] / epsilon) for i in range(rows)] for k in range(cols)]   # K x B
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / (sum(row) * cols) for v in row] for row in q]
        col_sums = [sum(q[k][i] for k in range(cols)) for i in range(rows)]
        q = [[q[k][i] / (col_sums[i] * rows) for i in range(rows)] for k in range(cols)]
    return [[q[k][i] * rows for k in range(cols)] for i in range(rows)]                # B x K


def exact_sinkhorn(logits, tau, iterations):
    """SwAV's algorithm in 60-digit decimal arithmetic: exact where float64 under- or overflows."""
    import decimal

    context = decimal.Context(prec=60, Emax=10**9, Emin=-10**9)
    with decimal.localcontext(context):
        scores = [[decimal.Decimal(float(v)) for v in row] for row in logits.double()]
        q = swav_sinkhorn(scores, decimal.Decimal(tau), iterations, exp=lambda d: d.exp())
        return torch.tensor([[float(v) for v in row] for row in q], dtype=torch.float64)


def cosine_logits(rows=12, clusters=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, w = unit(torch.randn(rows, 8, generator=g, dtype=torch.float64)), \
        unit(torch.randn(clusters, 8, generator=g, dtype=torch.float64))
    return z @ w.T


@pytest.mark.parametrize("tau, iterations", [(0.1, 3), (0.05, 3), (0.05, 1), (0.5, 20)])
def test_sinkhorn_equals_swav_where_swav_is_finite(tau, iterations):
    logits = cosine_logits()
    reference = torch.tensor(swav_sinkhorn(logits.tolist(), tau, iterations,
                                           exp=lambda v: torch.tensor(v, dtype=torch.float64).exp()))
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(sinkhorn_knopp(logits, tau, iterations), reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau, scale", [(1e-3, 1.0), (1e-5, 1.0), (0.05, 1e3)])
def test_sinkhorn_is_exact_at_low_temperature_and_huge_logits(tau, scale):
    """Where SwAV's exp underflows (whole columns), the log-domain result still equals the exact one."""
    logits = cosine_logits() * scale
    logits[:, 1] -= 1e3 * (scale > 1)           # a column far below the rest: it underflowed to uniform
    q = sinkhorn_knopp(logits, tau, 3)
    torch.testing.assert_close(q, exact_sinkhorn(logits, tau, 3), rtol=0, atol=1e-9)
    assert torch.allclose(q.sum(1), torch.ones(len(q), dtype=q.dtype))
    assert q.max(1).values.min() > 0.5          # sharp assignments, not near-uniform rows


def test_sinkhorn_in_float32_matches_float64():
    logits = cosine_logits(64, 10)
    torch.testing.assert_close(sinkhorn_knopp(logits.float(), 0.05), sinkhorn_knopp(logits, 0.05).float())
