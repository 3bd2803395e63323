"""Each equation function against an independent computation (numpy/scipy/autograd)."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from klteach import theory


@pytest.fixture(autouse=True)
def float64_default():
    """Exact comparisons in float64, restored afterwards so other test files keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_posterior_is_bayes_rule_on_a_gaussian_mixture(rng):
    z, w = rng.normal(size=(7, 4)) * 2, rng.normal(size=(5, 4)) * 3   # not unit norm
    prior, tau = rng.dirichlet(np.ones(5)), 0.7
    # independent: Gaussian densities N(z; w_k, tau I) times priors, normalised (eq. 1)
    dens = np.array([[np.exp(-np.sum((zi - wk) ** 2) / (2 * tau)) for wk in w] for zi in z]) * prior
    expected = dens / dens.sum(1, keepdims=True)
    got = theory.posterior(torch.tensor(z), torch.tensor(w), tau, torch.tensor(prior))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # eq. (4) is its log
    logp = theory.log_posterior(torch.tensor(z), torch.tensor(w), tau, torch.tensor(prior))
    np.testing.assert_allclose(logp.numpy(), np.log(expected), rtol=1e-9)


def test_sphere_posterior_equals_mixture_posterior_for_unit_vectors(rng):
    z, w = torch.tensor(unit(rng.normal(size=(9, 6)))), torch.tensor(unit(rng.normal(size=(4, 6))))
    np.testing.assert_allclose(theory.sphere_posterior(z, w, 0.3).numpy(),
                               theory.posterior(z, w, 0.3).numpy(), rtol=1e-10)   # eq. (6) = (1)


def test_kl_divergence_matches_scipy_and_vanishes_only_at_equality(rng):
    from scipy.stats import entropy as scipy_kl
    q, p = rng.dirichlet(np.ones(5), size=8), rng.dirichlet(np.ones(5), size=8)
    expected = np.mean([scipy_kl(qi, pi) for qi, pi in zip(q, p)])
    assert float(theory.kl_divergence(torch.tensor(q), torch.tensor(p))) == pytest.approx(expected)
    assert float(theory.kl_divergence(torch.tensor(p), torch.tensor(p))) == pytest.approx(0, abs=1e-12)
    one_hot = torch.eye(5)[:3]                              # 0 log 0 = 0: no NaN
    assert math.isfinite(float(theory.kl_divergence(one_hot, torch.tensor(p[:3]))))


def test_cross_entropy_is_kl_plus_teacher_entropy(rng):
    q, p = torch.tensor(rng.dirichlet(np.ones(6), size=10)), torch.tensor(rng.dirichlet(np.ones(6), size=10))
    ce = theory.cross_entropy(q, p.log())                   # eq. (3)
    assert float(ce) == pytest.approx(float(theory.kl_divergence(q, p) + theory.entropy(q).mean()))


@pytest.mark.parametrize("with_prior", [False, True])
def test_eq5_gradients_match_autograd(rng, with_prior):
    z = torch.tensor(rng.normal(size=(6, 3)) * 1.5, requires_grad=True)
    w = torch.tensor(rng.normal(size=(4, 3)), requires_grad=True)
    q = torch.tensor(rng.dirichlet(np.ones(4), size=6))
    prior = torch.tensor(rng.dirichlet(np.ones(4))) if with_prior else None
    loss = theory.cross_entropy(q, theory.log_posterior(z, w, 0.4, prior))
    loss.backward()
    grad_z, grad_w = theory.cross_entropy_gradients(z.detach(), w.detach(), q, 0.4, prior)
    np.testing.assert_allclose(grad_z.numpy(), z.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_w.numpy(), w.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_inverse_prior_teacher_formula(rng):
    p = rng.dirichlet(np.ones(5), size=12)
    prior = p.mean(0)
    expected = p / prior
    expected /= expected.sum(1, keepdims=True)               # eq. (16)
    got = theory.inverse_prior_teacher(torch.tensor(p))       # prior estimated as the mean (eq. 15)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    half = theory.inverse_prior_teacher(torch.tensor(p), lam=0.5).numpy()
    expected_half = p / prior ** 0.5
    np.testing.assert_allclose(half, expected_half / expected_half.sum(1, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(theory.inverse_prior_teacher(torch.tensor(p), lam=0).numpy(), p, rtol=1e-10)


def test_inverse_prior_teacher_floors_empty_clusters():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.3, 0.7, 0.0]])
    q = theory.inverse_prior_teacher(p, prior=torch.tensor([0.4, 0.6, 0.0]))
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(2))


@pytest.mark.parametrize("lam", [1.0, 0.5, 2.0])
def test_self_consistent_closed_form_is_the_minimiser_of_objective_10(rng, lam):
    n, k = 12, 4
    p = rng.dirichlet(np.ones(k) * 0.7, size=n)
    p[:, 0] += 1.0                                             # an unbalanced student
    p /= p.sum(1, keepdims=True)

    def objective(a):                                          # eq. (10) with q = softmax(a) (constraint built in)
        q = softmax(a.reshape(n, k), axis=1)
        prior = q.mean(0)
        return np.mean(np.sum(q * (np.log(q) - np.log(p)), 1)) + lam * np.sum(prior * np.log(prior))

    found = minimize(objective, np.log(p).ravel(), method="BFGS", options={"gtol": 1e-11, "maxiter": 10000})
    q_numeric = softmax(found.x.reshape(n, k), axis=1)
    q_closed = theory.self_consistent_teacher(torch.tensor(p), lam, iterations=2000).numpy()
    np.testing.assert_allclose(q_closed, q_numeric, atol=2e-5)
    # and it satisfies the stationarity condition (13): log q - log p + λ log π is constant in k
    residual = np.log(q_closed) - np.log(p) + lam * np.log(q_closed.mean(0))
    np.testing.assert_allclose(residual - residual.mean(1, keepdims=True), 0, atol=1e-8)
    assert float(theory.regularised_objective(torch.tensor(q_closed), torch.tensor(p), lam)) == \
        pytest.approx(found.fun, abs=1e-8)


def test_jensen_bounds_18_and_21_hold(rng):
    for scale in (0.2, 1.0, 5.0):
        z, w = torch.tensor(rng.normal(size=(30, 8)) * scale), torch.tensor(rng.normal(size=(6, 8)))
        lhs, rhs = theory.normaliser_jensen_bound(z, w, 0.5)
        assert (lhs >= rhs - 1e-12).all()
        lhs, rhs = theory.data_jensen_bound(z, w, 0.5)
        assert (lhs >= rhs - 1e-12).all()
        # independent check of (21) in numpy
        logits = z.numpy() @ w.numpy().T / 0.5
        np.testing.assert_allclose(lhs.numpy(), logsumexp(logits, axis=0) - np.log(30))


def test_centering_teacher_is_softmax_of_centred_logits(rng):
    logits = torch.tensor(rng.normal(size=(10, 5)))
    expected = softmax((logits.numpy() - logits.numpy().mean(0)) / 0.2, axis=1)
    np.testing.assert_allclose(theory.centering_teacher(logits, 0.2).numpy(), expected, rtol=1e-10)
    centre = torch.tensor(rng.normal(size=5))
    np.testing.assert_allclose(theory.centering_teacher(logits, 0.2, centre).numpy(),
                               softmax((logits.numpy() - centre.numpy()) / 0.2, axis=1), rtol=1e-10)


def test_centering_approaches_inverse_prior_as_logit_spread_shrinks(rng):
    w = torch.tensor(unit(rng.normal(size=(10, 16))))
    w = w - w.mean(0)                                          # centred weight vectors, eq. (20)
    z = torch.tensor(unit(rng.normal(size=(200, 16))))
    gaps_tau = [float(theory.prior_centering_gap(z, w, tau)) for tau in (0.05, 0.2, 1.0, 5.0)]
    assert all(a > b for a, b in zip(gaps_tau, gaps_tau[1:])), gaps_tau
    gaps_spread = [float(theory.prior_centering_gap(z * s, w, 0.2)) for s in (2.0, 1.0, 0.3, 0.05)]
    assert all(a > b for a, b in zip(gaps_spread, gaps_spread[1:])), gaps_spread
    assert gaps_spread[-1] < 1e-4


def test_centering_is_the_exact_teacher_reweighted_by_the_centering_offsets(rng):
    z = torch.tensor(unit(rng.normal(size=(40, 8))))
    w = torch.tensor(unit(rng.normal(size=(6, 8))))
    scores, tau = z @ w.T, 0.1
    exact = theory.prior_teacher_from_logits(scores, tau)                 # (16)/(17)
    d = theory.centering_offsets(scores, tau)
    # independent: log pi_k from numpy, minus the data mean of the logits
    s = scores.numpy() / tau
    expected = np.log(softmax(s, axis=1).mean(0)) - s.mean(0)
    np.testing.assert_allclose(d.numpy(), expected, rtol=1e-10)
    reweighted = (exact.log() + d).softmax(dim=-1)
    np.testing.assert_allclose(reweighted.numpy(), theory.centering_teacher(scores, tau).numpy(), atol=1e-12)
    # the offsets do vary here, so the teachers differ; a constant offset would change nothing
    assert float(d.std()) > 0.1 and float(theory.prior_centering_gap(z, w, tau)) > 1e-4


def test_equal_normaliser_teacher_is_17_when_every_normaliser_is_the_same(rng):
    scores, tau = torch.tensor(rng.normal(size=(30, 5))), 0.3
    s = scores.numpy() / tau
    expected = softmax(s - logsumexp(s, axis=0), axis=1)                  # exp(s_k(x)) / sum_x' exp(s_k(x'))
    np.testing.assert_allclose(theory.equal_normaliser_teacher(scores, tau).numpy(), expected, rtol=1e-10)
    # rows whose logits share one log-normaliser: then it is the exact teacher (17)
    equalised = scores - tau * torch.logsumexp(scores / tau, dim=1, keepdim=True)
    np.testing.assert_allclose(theory.equal_normaliser_teacher(equalised, tau).numpy(),
                               theory.prior_teacher_from_logits(equalised, tau).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="tau"):
        theory.equal_normaliser_teacher(scores, 0)


def test_extreme_temperatures_and_logits_stay_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]])
    for q in (theory.softmax_with_temperature(logits, 0.01), theory.centering_teacher(logits, 0.01),
              theory.inverse_prior_teacher(theory.softmax_with_temperature(logits, 0.01))):
        assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(2))


@pytest.mark.parametrize("tau", [0, -1, float("nan"), "hot", float("inf")])
def test_bad_temperature_is_a_clear_error(tau):
    with pytest.raises(ValueError, match="tau"):
        theory.sphere_posterior(torch.ones(1, 2), torch.ones(3, 2), tau)


def test_negative_lambda_is_a_clear_error():
    with pytest.raises(ValueError, match="lam"):
        theory.inverse_prior_teacher(torch.full((2, 3), 1 / 3), lam=-1)


def test_a_component_with_prior_zero_gets_posterior_zero():
    """Eq. (1) with π_0 = 0: component 0 is impossible, however close z is to w_0."""
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    w = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    p = theory.posterior(z, w, 0.1, torch.tensor([0.0, 0.5, 0.5]))
    assert (p[:, 0] == 0).all()
    np.testing.assert_allclose(p[:, 1:].numpy(), theory.posterior(z, w[1:], 0.1).numpy(), rtol=1e-12)
    assert torch.isneginf(theory.log_posterior(z, w, 0.1, torch.tensor([0.0, 0.5, 0.5]))[:, 0]).all()


@pytest.mark.parametrize("prior, message", [
    ([0.0, 0.0, 0.0], "at least one"), ([0.5, -0.1, 0.6], "negative"), ([0.5, float("nan"), 0.5], "finite"),
    ([0.5, 0.5], "3 components"),
])
def test_bad_priors_are_clear_errors(prior, message):
    with pytest.raises(ValueError, match=message):
        theory.posterior(torch.zeros(2, 2), torch.eye(3, 2), 0.1, torch.tensor(prior))


def test_kl_divergence_of_mismatched_shapes_names_both():
    q, p = torch.full((4, 3), 1 / 3), torch.full((1, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"q \(4, 3\).*p \(1, 3\)"):
        theory.kl_divergence(q, p)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        theory.cross_entropy(q, torch.zeros(4, 2))
