"""The paper's equations (1)-(23) as small tensor functions.

Every function cites the equation it implements; the numbers are those of
``notebooks/equations.md``. Shapes: ``z`` is ``(N, D)`` embeddings, ``w`` is ``(K, D)``
cluster weight (mean) vectors, probabilities ``p``/``q`` are ``(N, K)`` with rows
summing to one. ``tau`` is the temperature (the isotropic variance of each cluster).

Everything is computed in log space (log-sum-exp), so temperatures down to 0.01 and
logits of magnitude 1e4 stay finite.
"""
from __future__ import annotations

import torch
from torch import Tensor

PRIOR_FLOOR = 1e-12
"""Smallest cluster prior used in a division (eq. 16): empty clusters must not divide by zero.
Small on purpose, since the floor also caps how hard (16) pulls samples into an emptied cluster."""


def check_temperature(tau: float, name: str = "tau") -> float:
    """Return ``tau`` as a float, or raise ``ValueError`` if it is not a positive number."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {tau!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {tau!r}")
    return value


def check_prior(prior: Tensor, components: int) -> Tensor:
    """Return ``prior`` if it is ``components`` finite values ``≥ 0``, not all zero; else ``ValueError``."""
    if tuple(prior.shape) != (components,):
        raise ValueError(f"prior must have one value for each of the {components} components, "
                         f"got shape {tuple(prior.shape)}")
    if not torch.isfinite(prior).all():
        raise ValueError(f"prior must be finite, got {prior.tolist()}")
    if (prior < 0).any():
        raise ValueError(f"prior must not be negative, got {prior.tolist()}")
    if not (prior > 0).any():
        raise ValueError("prior must give at least one component a positive probability, got all zeros")
    return prior


def _log_prior(prior: Tensor | None, like: Tensor) -> Tensor:
    """Log of a prior over the K columns of ``like``, renormalised; equal priors when None.

    A prior of exactly 0 gives ``log 0 = -inf``: that component's posterior (1) is exactly 0.
    """
    if prior is None:
        return torch.zeros(like.shape[-1], dtype=like.dtype, device=like.device)
    prior = check_prior(prior, like.shape[-1]).to(like.dtype)
    return prior.log() - prior.sum().log()


# ---------------------------------------------------------------- section 3: the mixture model

def squared_distances(z: Tensor, w: Tensor) -> Tensor:
    """``‖z(x) - w_k‖²`` for every sample and cluster, shape ``(N, K)``."""
    return (z.unsqueeze(1) - w.unsqueeze(0)).pow(2).sum(-1)


def log_posterior(z: Tensor, w: Tensor, tau: float, prior: Tensor | None = None) -> Tensor:
    """Eq. (4): ``log p_k = log π_k - ‖z-w_k‖²/(2τ) - log Σ_j π_j exp(-‖z-w_j‖²/(2τ))``."""
    tau = check_temperature(tau)
    neg_dist = -squared_distances(z, w) / (2 * tau)
    return (_log_prior(prior, neg_dist) + neg_dist).log_softmax(dim=-1)


def posterior(z: Tensor, w: Tensor, tau: float, prior: Tensor | None = None) -> Tensor:
    """Eq. (1): Bayes' posterior of an isotropic Gaussian mixture with variance ``tau``.

    ``z`` and ``w`` may have any norm; ``prior`` defaults to equal priors ``1/K``.
    """
    return log_posterior(z, w, tau, prior).exp()


def sphere_posterior(z: Tensor, w: Tensor, tau: float) -> Tensor:
    """Eq. (6): on the unit sphere, (1) with equal priors is ``softmax_k(w_k·z / τ)``."""
    return softmax_with_temperature(z @ w.T, tau)


def softmax_with_temperature(scores: Tensor, tau: float) -> Tensor:
    """``softmax(scores / τ)`` over the last axis: the form every teacher and student takes (eq. 6)."""
    return (scores / check_temperature(tau)).softmax(dim=-1)


# ---------------------------------------------------------------- section 3: distillation

def check_same_shape(q: Tensor, p: Tensor, what: str, p_name: str = "p") -> None:
    """Raise ``ValueError`` naming both shapes unless ``q`` and ``p`` have the same shape
    (broadcasting would silently compare samples with the wrong rows)."""
    if q.shape != p.shape:
        raise ValueError(f"{what} needs q and {p_name} of the same shape, got q {tuple(q.shape)} "
                         f"and {p_name} {tuple(p.shape)}")


def kl_divergence(q: Tensor, p: Tensor) -> Tensor:
    """Eq. (2): ``D(q‖p) = (1/N) Σ_x Σ_k q_k log(q_k / p_k)``, the mean over samples.

    Terms with ``q_k = 0`` contribute zero (``0 log 0 = 0``).
    """
    check_same_shape(q, p, "kl_divergence")
    return (torch.special.xlogy(q, q) - torch.special.xlogy(q, p)).sum(-1).mean()


def cross_entropy(q: Tensor, log_p: Tensor) -> Tensor:
    """Eq. (3)/(11): ``L_CE = -(1/N) Σ_x Σ_k q_k log p_k``; takes ``log p`` for stability."""
    check_same_shape(q, log_p, "cross_entropy", "log_p")
    return -(q * log_p).sum(-1).mean()


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy ``-Σ_k p_k log p_k`` of each row (nats), shape ``(N,)`` or scalar for a vector."""
    return -torch.special.xlogy(p, p).sum(-1)


def cross_entropy_gradients(z: Tensor, w: Tensor, q: Tensor, tau: float,
                            prior: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eq. (5): the analytic gradients of the cross-entropy (3) under the mixture (1).

    Returns ``(∂L/∂z, ∂L/∂w)`` for ``L`` the mean over the N samples:
    ``∂L/∂z = -(1/τ) Σ_k (q_k - p_k) w_k`` and ``∂L/∂w_k = -(1/τ) Σ_x (q_k - p_k)(z - w_k)``
    (each per-sample term divided by N).
    """
    tau = check_temperature(tau)
    n = z.shape[0]
    diff = q - posterior(z, w, tau, prior)                      # (N, K)
    grad_z = -(diff @ w) / (tau * n)
    grad_w = -(diff.T @ z - diff.sum(0).unsqueeze(1) * w) / (tau * n)
    return grad_z, grad_w


def unregularised_teacher(p: Tensor) -> Tensor:
    """Eq. (7): minimising (2) over ``q`` alone gives ``q = p``: the teacher copies the student."""
    return p.clone()


# ---------------------------------------------------------------- section 4: regularised K-L

def cluster_prior(p: Tensor) -> Tensor:
    """Eq. (8)/(15): the prior of each cluster, ``π_k = (1/N) Σ_x p_k(x)``."""
    return p.mean(0)


def regularised_objective(q: Tensor, p: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. (9)/(10): ``J = D(q‖p) - λ H(π)`` with ``π = mean_x q(x)`` (rows of ``q`` sum to one)."""
    return kl_divergence(q, p) - lam * entropy(cluster_prior(q))


def check_lambda(lam: float) -> float:
    """Return ``lam`` as a float, or raise ``ValueError`` unless it is finite and ``≥ 0``."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number >= 0, got {lam!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    return value


def inverse_prior_teacher(p: Tensor, prior: Tensor | None = None, lam: float = 1.0,
                          floor: float = PRIOR_FLOOR) -> Tensor:
    """Eq. (14)-(16): ``q_k(x) ∝ p_k(x) / π_k^λ``, renormalised over ``k``.

    ``prior`` is ``π`` (eq. 15); when None it is estimated as the mean of ``p`` over the
    rows given. Priors are floored at ``floor`` so an empty cluster cannot divide by zero.
    ``lam = 0`` is no normalisation (eq. 7); ``lam = 1`` is the paper's teacher (16).
    """
    lam = check_lambda(lam)
    if prior is None:
        prior = cluster_prior(p)
    log_q = p.clamp_min(torch.finfo(p.dtype).tiny).log() - lam * prior.clamp_min(floor).log()
    return log_q.softmax(dim=-1)


def self_consistent_teacher(p: Tensor, lam: float = 1.0, iterations: int = 500) -> Tensor:
    """Iterate (16) with ``π = mean_x q`` (eq. 8) until the prior is self-consistent.

    The fixed point satisfies the stationarity condition (13) of the regularised
    objective (10) exactly: ``log q - log p + λ log π`` is constant over ``k``.
    Plain iteration overshoots for ``λ ≥ 1`` (a big prior gives a small one next time),
    so ``log π`` moves only ``1/(1+λ)`` of the way each iteration, which converges.
    """
    lam = check_lambda(lam)
    step = 1.0 / (1.0 + lam)
    log_prior = cluster_prior(p).log()
    for _ in range(iterations):
        q = inverse_prior_teacher(p, log_prior.exp(), lam)
        log_prior = (1 - step) * log_prior + step * cluster_prior(q).log()
    return inverse_prior_teacher(p, log_prior.exp(), lam)


# ---------------------------------------------------------------- section 5: centering

def mean_weight_vector(w: Tensor) -> Tensor:
    """Eq. (19): ``w̄ = (1/K) Σ_j w_j``."""
    return w.mean(0)


def centre_weights(w: Tensor) -> Tensor:
    """Eq. (20) assumes ``w̄ = 0``: subtract the mean weight vector."""
    return w - mean_weight_vector(w)


def prior_teacher_from_logits(scores: Tensor, tau: float, lam: float = 1.0) -> Tensor:
    """Eq. (17): (16) written with the softmax (6) of ``scores = w·z``, prior from the same rows."""
    return inverse_prior_teacher(softmax_with_temperature(scores, tau), None, lam)


def normaliser_jensen_bound(z: Tensor, w: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Eq. (18): ``Σ_j exp(w_j·z/τ) ≥ K exp(w̄·z/τ)``. Returns ``(log lhs, log rhs)`` per sample."""
    tau = check_temperature(tau)
    lhs = torch.logsumexp(z @ w.T / tau, dim=-1)
    rhs = torch.log(torch.tensor(float(w.shape[0]), dtype=z.dtype)) + z @ mean_weight_vector(w) / tau
    return lhs, rhs


def data_jensen_bound(z: Tensor, w: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Eq. (21): ``(1/N) Σ_x exp(w_k·z(x)/τ) ≥ exp(w_k·z̄/τ)``. Returns ``(log lhs, log rhs)`` per cluster."""
    tau = check_temperature(tau)
    n = torch.tensor(float(z.shape[0]), dtype=z.dtype)
    lhs = torch.logsumexp(z @ w.T / tau, dim=0) - n.log()
    rhs = w @ z.mean(0) / tau
    return lhs, rhs


def equal_normaliser_teacher(scores: Tensor, tau: float) -> Tensor:
    """Eq. (17) once every sample's normaliser ``Σ_j exp(s_j(x'))`` is taken to be the same
    constant, as (20) does: ``q_k(x) ∝ exp(s_k(x)) / ((1/N) Σ_x' exp(s_k(x')))``, with
    ``s = scores / τ``. The data average is still exact; (21) is what replaces it next."""
    s = scores / check_temperature(tau)
    return (s - s.logsumexp(dim=0)).softmax(dim=-1)


def centering_teacher(logits: Tensor, tau: float, centre: Tensor | None = None) -> Tensor:
    """Eq. (22)-(23): ``q_k(x) = softmax_k((l_k(x) - c_k) / τ)`` with ``l_k = w_k·z``.

    The centre ``c`` defaults to the mean logit over the rows, ``c_k = w_k·z̄`` (eq. 21):
    DINO's centering. DINO keeps ``c`` as an EMA of batch means instead.
    """
    if centre is None:
        centre = logits.mean(0)
    return softmax_with_temperature(logits - centre, tau)


def prior_centering_gap(z: Tensor, w: Tensor, tau: float, lam: float = 1.0) -> Tensor:
    """Mean ``KL(q_prior ‖ q_centering)`` between the exact teacher (16)/(17) and centering (23).

    Zero when the Jensen bounds (18) and (21) are tight; grows as ``τ`` falls or the spread
    of the logits grows. The centering teacher enters through its log (log-softmax), so the
    gap stays finite even where its probabilities underflow to zero.
    """
    scores = z @ w.T
    exact = prior_teacher_from_logits(scores, tau, lam)
    log_centering = ((scores - scores.mean(0)) / check_temperature(tau)).log_softmax(dim=-1)
    return (torch.special.xlogy(exact, exact) - exact * log_centering).sum(-1).mean()


def centering_offsets(scores: Tensor, tau: float) -> Tensor:
    """``d_k = log π_k - (1/N) Σ_x s_k(x)``, ``s = scores / τ``: centering (23) is the exact
    teacher (16)/(17) reweighted by ``exp(d_k)`` and renormalised over ``k``.

    Only how ``d_k`` varies over ``k`` matters (a constant drops out); the two teachers are
    equal exactly when it does not vary. ``π`` is the mean posterior (15) of the same rows.
    """
    s = scores / check_temperature(tau)
    log_prior = s.log_softmax(dim=-1).logsumexp(dim=0) - torch.log(torch.tensor(float(s.shape[0]), dtype=s.dtype))
    return log_prior - s.mean(0)
