"""Teachers: the ways of turning the teacher network's output into the supervisory signal ``q``.

All share one interface: ``normaliser(z, w, tau) -> q``, where ``z`` ``(B, D)`` are the
teacher's unit-norm embeddings of a batch, ``w`` ``(K, D)`` its unit-norm weight vectors and
``tau`` the teacher temperature. Their state (running prior, centre) lives in buffers, so it is
saved in checkpoints with ``state_dict()``. In training mode a call updates that state; in
``eval()`` mode it does not.

=================  ==============================================================  =========
name               teacher                                                         equation
=================  ==============================================================  =========
``none``           ``q = p``, the student's own posterior                           (7)
``inverse-prior``  ``q ∝ p / π^λ``, prior per batch, running (EMA) or whole set      (14)-(16)
``centering``      ``q = softmax((l - c)/τ)``, ``c`` an EMA of mean logits (DINO)   (23)
``batchnorm``      batch-normalise the teacher's features before its logits          (23), §5
``sinkhorn``       equipartition by Sinkhorn-Knopp (SwAV)                             §5
=================  ==============================================================  =========
"""
from __future__ import annotations

import math
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from . import theory
from .dist import all_sum, global_mean, is_distributed

NormaliserName = Literal["none", "inverse-prior", "centering", "batchnorm", "sinkhorn"]
PriorMode = Literal["batch", "running", "full"]
NORMALISERS: tuple[NormaliserName, ...] = get_args(NormaliserName)
PRIOR_MODES: tuple[PriorMode, ...] = get_args(PriorMode)


def check_momentum(momentum: float, name: str = "momentum") -> float:
    """Return ``momentum`` as a float, or raise ``ValueError`` unless ``0 <= momentum < 1``."""
    try:
        value = float(momentum)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {momentum!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {momentum!r}")
    return value


def ema_(average: Tensor, value: Tensor, momentum: float) -> None:
    """In place: ``average ← m·average + (1 - m)·value`` (the exponential moving average)."""
    average.mul_(momentum).add_(value.to(average.dtype), alpha=1.0 - momentum)


class Normaliser(nn.Module):
    """Base class: ``forward(z, w, tau)`` returns the teacher distribution ``q`` ``(B, K)``."""

    name = "base"

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def check_batch(self, z: Tensor) -> None:
        """Refuse an empty batch in training mode: its mean is 0/0, and one NaN in a running
        prior or centre would spoil every later teacher."""
        if self.training and z.shape[0] == 0:
            raise ValueError(f"the {self.name} normaliser got an empty batch (0 samples) in training "
                             "mode; it needs at least one sample to update its batch statistics")


class NoNormaliser(Normaliser):
    """Eq. (7): the teacher is the (EMA or copied) student, ``q = softmax(w·z/τ)``. It collapses."""

    name = "none"

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:
        return theory.sphere_posterior(z, w, tau)


class InversePrior(Normaliser):
    """Eq. (14)-(16): scale the teacher's posterior by inverse cluster priors ``π^-λ``.

    ``prior`` says where ``π`` (eq. 15) comes from:

    - ``"batch"``: the mean posterior of this batch (noisy; misses clusters a batch lacks);
    - ``"running"``: an EMA of batch priors with ``prior_momentum``;
    - ``"full"``: the whole training set, set by the trainer every T steps with
      :meth:`set_full_prior` (the paper's preferred choice).

    Priors are floored at ``floor`` (default :data:`klteach.theory.PRIOR_FLOOR`) so an empty
    cluster cannot divide by zero. Keep the floor tiny: (16) can lift an emptied cluster by at
    most ``λ log(π_max / floor)`` in the logits, so a large floor leaves a collapsed run stuck.
    Measured on digits (K = 20) after 300 steps without a normaliser: back on inverse priors,
    a floor of ``0.01/K`` left 2-4 effective clusters for good, ``1e-6`` crept to 3 in 500
    steps, and ``1e-12`` (the actual priors stay above it) gave 11 within 225 steps.
    """

    name = "inverse-prior"

    def __init__(self, clusters: int, lam: float = 1.0, prior: PriorMode = "running",
                 prior_momentum: float = 0.9, floor: float | None = None) -> None:
        super().__init__()
        self.lam = theory.check_lambda(lam)
        self.prior_mode = check_prior_mode(prior)
        self.prior_momentum = check_momentum(prior_momentum, "prior_momentum")
        self.floor = floor if floor is not None else theory.PRIOR_FLOOR
        self.running_prior: Tensor
        self.full_prior: Tensor
        self.register_buffer("running_prior", torch.full((clusters,), 1.0 / clusters))
        self.register_buffer("full_prior", torch.full((clusters,), 1.0 / clusters))
        self.last_prior: Tensor = self.running_prior.clone()

    def set_full_prior(self, prior: Tensor) -> None:
        """Store ``π`` estimated over the whole training set with the teacher (eq. 15)."""
        self.full_prior.copy_(prior.detach())

    def current_prior(self, p: Tensor) -> Tensor:
        """The prior this batch is normalised with (updates the running prior in training)."""
        if self.prior_mode == "full":
            return self.full_prior
        batch_prior = global_mean(p.float())
        if self.prior_mode == "batch":
            return batch_prior
        if self.training:
            ema_(self.running_prior, batch_prior, self.prior_momentum)
        return self.running_prior

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:
        self.check_batch(z)
        p = theory.sphere_posterior(z, w, tau)
        self.last_prior = self.current_prior(p).detach().clone()
        return theory.inverse_prior_teacher(p, self.last_prior.to(p.dtype), self.lam, self.floor)


class Centering(Normaliser):
    """Eq. (23), DINO's form: ``q = softmax((w·z - c)/τ)`` with the centre ``c`` an EMA of
    the batch-mean logits (``c_k ≈ w_k·z̄``, eq. 21). The centre used is the one from before
    this batch, as in DINO."""

    name = "centering"

    def __init__(self, clusters: int, centre_momentum: float = 0.9) -> None:
        super().__init__()
        self.centre_momentum = check_momentum(centre_momentum, "centre_momentum")
        self.centre: Tensor
        self.register_buffer("centre", torch.zeros(clusters))
        self.register_load_state_dict_pre_hook(_rename_center_key)

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:
        self.check_batch(z)
        logits = z @ w.T
        q = theory.centering_teacher(logits, tau, self.centre.to(logits.dtype))
        if self.training:
            ema_(self.centre, global_mean(logits.float()), self.centre_momentum)
        return q


def _rename_center_key(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Checkpoints written before the buffer took the British spelling store it as ``center``."""
    if prefix + "center" in state_dict and prefix + "centre" not in state_dict:
        state_dict[prefix + "centre"] = state_dict.pop(prefix + "center")


class BatchNormTeacher(Normaliser):
    """Section 5, option 2: centre (and scale) the teacher's embeddings over the batch before
    its logits, ``z' = normalise((z - z̄)/σ)``: eq. (23) applied in feature space. Assumes
    centred weight vectors (eq. 20). The student must *not* do the same, or the two copy
    each other."""

    name = "batchnorm"

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:
        self.check_batch(z)
        return theory.sphere_posterior(batch_standardise(z, self.eps), w, tau)


def batch_standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-feature standardisation over the (global) batch, then back onto the unit sphere."""
    mean = global_mean(z.float())
    var = global_mean((z.float() - mean).pow(2))
    standardised = (z.float() - mean) / (var + eps).sqrt()
    return nn.functional.normalize(standardised, dim=-1).to(z.dtype)


class Sinkhorn(Normaliser):
    """SwAV's equipartition: Sinkhorn-Knopp iterations make every cluster receive ``B/K``
    of the batch's mass (the flat prior of eq. 8 imposed exactly) while each row sums to one."""

    name = "sinkhorn"

    def __init__(self, iterations: int = 3) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, z: Tensor, w: Tensor, tau: float) -> Tensor:
        self.check_batch(z)
        return sinkhorn_knopp(z @ w.T, tau, self.iterations)


def sinkhorn_knopp(logits: Tensor, tau: float, iterations: int = 3) -> Tensor:
    """Equipartitioned assignments ``q`` (rows sum to one, columns to ``B/K``) over the global batch.

    SwAV's ``distributed_sinkhorn``: start from ``exp(logits / τ)`` and alternately scale every
    cluster's column to mass ``1/K`` and every sample's row to ``1/B``, then multiply by ``B``.
    Here each scaling is a subtraction in log space (log-sum-exp), so nothing under- or
    overflows: the result stays exact as ``τ → 0`` and for logits of any magnitude, where
    ``exp`` would turn whole columns into zeros. ``B`` and the column sums are those of the
    batch of all processes.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if logits.shape[0] == 0:
        raise ValueError("sinkhorn_knopp needs at least one sample: a batch of 0 has no equipartition")
    log_q = logits.double() / theory.check_temperature(tau)                    # (B, K)
    log_clusters = math.log(log_q.shape[1])
    log_batch = all_sum(torch.tensor(float(log_q.shape[0]), device=log_q.device, dtype=log_q.dtype)).log()
    for _ in range(iterations):
        log_q = log_q - global_logsumexp(log_q) - log_clusters                  # each cluster: 1/K
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True) - log_batch        # each sample: 1/B
    return (log_q + log_batch).exp().to(logits.dtype)


def global_logsumexp(x: Tensor) -> Tensor:
    """``log Σ_x exp(x)`` over the first axis and over all processes' batches, shape ``(1, K)``."""
    top = x.max(dim=0, keepdim=True).values
    if is_distributed():
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    return all_sum((x - top).exp().sum(dim=0, keepdim=True)).log() + top


def check_prior_mode(prior: str) -> PriorMode:
    """Return ``prior`` or raise ``ValueError`` naming the allowed modes."""
    if prior not in PRIOR_MODES:
        raise ValueError(f"prior must be one of {', '.join(PRIOR_MODES)}; got {prior!r}")
    return cast(PriorMode, prior)


def check_normaliser(name: str) -> NormaliserName:
    """Return ``name`` or raise ``ValueError`` naming the allowed normalisers."""
    if name not in NORMALISERS:
        raise ValueError(f"unknown normaliser {name!r}; choose one of {', '.join(NORMALISERS)}")
    return cast(NormaliserName, name)


def make_normaliser(name: NormaliserName, clusters: int, lam: float = 1.0, prior: PriorMode = "running",
                    prior_momentum: float = 0.9, centre_momentum: float = 0.9,
                    sinkhorn_iterations: int = 3) -> Normaliser:
    """Build the teacher normaliser called ``name`` (one of :data:`NORMALISERS`)."""
    check_normaliser(name)
    if name == "none":
        return NoNormaliser()
    if name == "inverse-prior":
        return InversePrior(clusters, lam, prior, prior_momentum)
    if name == "centering":
        return Centering(clusters, centre_momentum)
    if name == "batchnorm":
        return BatchNormTeacher()
    return Sinkhorn(sinkhorn_iterations)
