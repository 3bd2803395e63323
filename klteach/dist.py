"""The few `torch.distributed` helpers the loop needs; everything is a no-op in one process.

Batch statistics (priors, centres, Sinkhorn marginals) must be computed over the *global*
batch: in a 2-process run each process sees half of it. These helpers all-reduce so that
the result equals what one process computes over the combined batch.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group (e.g. under ``torchrun``)."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 outside ``torchrun``)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's index (0 outside ``torchrun``)."""
    return torch_dist.get_rank() if is_distributed() else 0


def all_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes. In one process it is ``x`` itself (gradients flow);
    across processes it is a detached, all-reduced copy."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
    return x


def global_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over its first axis and over all processes' batches.

    With equal batch sizes per process this equals ``torch.cat(all batches).mean(0)``.
    """
    count = torch.tensor(float(x.shape[0]), device=x.device, dtype=x.dtype)
    return all_sum(x.sum(0)) / all_sum(count)
