"""The loss of one training step, and the student's side of it.

The student's ``log p`` (eq. 6) on each view is compared with the teacher's target ``q`` on the
*other* view by the cross-entropy (eq. 3/11), which is the K-L divergence (2) up to the
teacher's entropy. The networks may run in bfloat16 autocast (``precision``); the logits
``w·z/τ``, the normalisers and the loss always run in float32, outside autocast: bfloat16's 8-bit
mantissa would turn ``1/τ = 25`` times a score into noise.
"""
from __future__ import annotations

import contextlib
from typing import Any, cast

import torch
from torch import Tensor, nn

from . import theory
from .models import ClusteringModel
from .normalisers import batch_standardise


def cross_view_loss(q_views: list[Tensor], log_p_views: list[Tensor]) -> Tensor:
    """Eq. (3)/(11) between *different* views: each teacher view supervises the other student view."""
    pairs = [(qi, lpj) for i, qi in enumerate(q_views) for j, lpj in enumerate(log_p_views) if i != j]
    return cast(Tensor, sum(theory.cross_entropy(q, lp) for q, lp in pairs)) / len(pairs)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s kind, or nothing when ``dtype`` is None (float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class StudentLogP(nn.Module):
    """The student's ``log p`` of eq. (6) as one module call, so that ``DistributedDataParallel``
    (which only sees ``forward``) covers every parameter that gets a gradient. The network runs
    under autocast to ``dtype`` (None: float32), the logits ``w·z/τ`` in float32 outside it."""

    def __init__(self, model: ClusteringModel, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.device, self.dtype = model, device, dtype

    def forward(self, x: Tensor, tau: float, standardise: bool = False) -> Tensor:
        """``log softmax(w·z/τ)``; with ``standardise`` the embeddings are batch-normalised first (§5)."""
        with autocast_context(self.device, self.dtype):
            z = self.model.embed(x)
        z = z.float()
        if standardise:
            z = batch_standardise(z)
        return (z @ self.model.prototypes.unit_weights.float().T / tau).log_softmax(-1)


__all__ = ["cross_view_loss", "StudentLogP", "autocast_context"]
