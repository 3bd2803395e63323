"""The few `torch.distributed` helpers the loop needs; everything is a no-op in one process.

Batch statistics (priors, centres, Sinkhorn marginals, batch-norm statistics) must be
computed over the *global* batch: in a 2-process run each process sees half of it. These
helpers all-reduce so that the result equals what one process computes over the combined
batch.

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) :func:`init_from_env` starts the
process group: NCCL when the model lives on a GPU, gloo on CPUs. Every process builds the
same model from the same seed and draws the same random numbers; each takes its own slice
of every global batch (:func:`shard`). Only public APIs of torch are used.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)
_local_only = False
_control_group: tuple[Any, Any] | None = None   # (the process group it belongs to, the gloo group)


def is_distributed() -> bool:
    """True inside an initialised process group (e.g. under ``torchrun``), outside :func:`local_only`."""
    return not _local_only and torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 outside ``torchrun``)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's index (0 outside ``torchrun``)."""
    return torch_dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True in the one process that writes files, evaluates and prints (rank 0)."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when it is not set)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` as set by ``torchrun``: which GPU of this machine the process uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device) -> bool:
    """Start the process group from ``torchrun``'s environment when ``WORLD_SIZE > 1``.

    NCCL for a CUDA ``device`` (which becomes this process's current GPU), gloo otherwise.
    Does nothing when a group already exists or in one process. Returns :func:`is_distributed`.
    """
    if env_world_size() > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                      init_method="env://")
        atexit.register(_destroy)
    return is_distributed()


def _destroy() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _control() -> Any:
    """A gloo group for small host-side agreements (stop flags), so they never wait for a GPU.
    Made once per process group (every process must create it at the same point)."""
    global _control_group
    world = torch_dist.group.WORLD
    if _control_group is None or _control_group[0] is not world:
        gloo = torch_dist.get_backend() == "gloo"
        _control_group = (world, world if gloo else torch_dist.new_group(backend="gloo"))
    return _control_group[1]


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within this block every helper acts as in one process (for rank 0's evaluation)."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


def all_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes. In one process it is ``x`` itself.

    Across processes gradients flow through it when ``x`` needs them (the backward pass
    sums the gradients of every process's loss); otherwise it is a detached copy."""
    if not is_distributed():
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _SumOverProcesses.apply(x)
    x = x.detach().clone()
    torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
    return x


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) with a backward pass: the gradient reaching each process's ``x`` is the
    sum over processes of the gradients of their losses with respect to the total."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        total = x.detach().clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


def global_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over its first axis and over all processes' batches.

    With equal batch sizes per process this equals ``torch.cat(all batches).mean(0)``.
    """
    count = torch.tensor(float(x.shape[0]), device=x.device, dtype=x.dtype)
    return all_sum(x.sum(0)) / all_sum(count)


def all_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over processes (a detached copy); ``x`` itself in one process."""
    return all_sum(x.detach()) / world_size() if is_distributed() else x.detach()


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any: the ranks agree to stop together."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)])
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX, group=_control())
    return bool(value.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable object) on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0, group=_control())
    return box[0]


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        torch_dist.barrier(group=_control())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads and extracts data), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard(batch: Tensor) -> Tensor:
    """This process's slice of a global batch: ``world_size()`` equal, disjoint, contiguous parts."""
    if not is_distributed():
        return batch
    size = batch.shape[0] // world_size()
    return batch[rank() * size:(rank() + 1) * size]


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""The layers :func:`convert_to_global_batchnorm` replaces."""


class GlobalBatchNorm(nn.Module):
    """Batch normalisation with the mean and variance of the *global* batch, on any device.

    ``torch.nn.SyncBatchNorm`` does the same but only for GPUs; this is its counterpart for
    gloo on CPUs. Statistics are all-reduced in two passes (the mean, then the mean squared
    deviation) and gradients flow through them; running statistics use the unbiased variance,
    as ``BatchNorm`` does. In one process, or in eval mode, it computes what ``BatchNorm``
    computes (with :func:`torch.nn.functional.batch_norm`). Parameters and buffers have
    ``BatchNorm``'s names, so state dicts are interchangeable.
    """

    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        tracked = track_running_stats
        self.register_buffer("running_mean", torch.zeros(num_features) if tracked else None)
        self.register_buffer("running_var", torch.ones(num_features) if tracked else None)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long) if tracked else None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")
        factor = self._count_batch()
        if not (self.training and is_distributed()):   # as BatchNorm.forward
            track = not self.training or self.track_running_stats
            return nn.functional.batch_norm(
                x, self.running_mean if track else None, self.running_var if track else None,
                self.weight, self.bias, self.training or self.running_mean is None, factor, self.eps)
        reduce_dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_sum(x.sum(reduce_dims)) / count
        centred = x - mean.view(shape)
        var = all_sum(centred.pow(2).sum(reduce_dims)) / count
        if self.running_mean is not None and self.running_var is not None and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), factor)
        y = centred * (var + self.eps).rsqrt().view(shape)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _count_batch(self) -> float:
        """Count a training batch; the running statistics' update factor (``momentum``, or the
        cumulative average ``1/n`` when it is None)."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    @classmethod
    def replacing(cls, layer: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) -> GlobalBatchNorm:
        """A :class:`GlobalBatchNorm` sharing ``layer``'s parameters and buffers (a ``BatchNorm*d``)."""
        converted = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if getattr(layer, name) is not None:
                setattr(converted, name, getattr(layer, name))
        converted.train(layer.training)
        return converted


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm*d`` in ``module`` by a :class:`GlobalBatchNorm` with the same
    parameters and buffers (state-dict keys are unchanged)."""
    if isinstance(module, BATCH_NORMS):
        return GlobalBatchNorm.replacing(module)
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batchnorm(child))
    return module


def sync_batchnorm(module: ModuleT, device: torch.device) -> ModuleT:
    """Batch norm over the global batch: ``torch.nn.SyncBatchNorm`` on a GPU, else
    :class:`GlobalBatchNorm` (in place: the module's layers are replaced). Unchanged in one process."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        return cast(ModuleT, nn.SyncBatchNorm.convert_sync_batchnorm(module))
    return cast(ModuleT, convert_to_global_batchnorm(module))
