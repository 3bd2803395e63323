"""FLOPs of a training step, counted by torch, and the share of the hardware's peak they reach.

A multiply-add counts as 2 FLOPs (:class:`torch.utils.flop_counter.FlopCounterMode` counts
matrix products and convolutions). Model FLOP utilisation (MFU) = achieved FLOP/s / peak FLOP/s,
against the datasheet's dense bf16 peak and against what a large bf16 matrix product reaches.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch

from .bench_env import device_name, synchronize
from .models import ClusteringModel
from .train import Trainer

DATASHEET_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
"""Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets, by name fragment."""


def forward_flops_per_image(model: ClusteringModel, input_shape: tuple[int, ...], batch: int = 4) -> int:
    """FLOPs of one embedding (backbone + head) of one input, counted by torch on a float32 CPU
    copy of ``model``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).float().cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.embed(torch.rand(batch, *input_shape))
    return counter.get_total_flops() // batch


def step_flops_per_image(trainer: Trainer) -> int:
    """FLOPs of one training step per batch image (teacher and student on both views, backward
    included), counted by torch while ``trainer`` takes one real step (on a CPU trainer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return counter.get_total_flops() // trainer.config.batch_size


def datasheet_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 peak for a GPU called ``name``, if it is in the table."""
    return next((peak for fragment, peak in DATASHEET_BF16_TFLOPS if fragment in name), None)


def measure_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of a large bf16 matrix product on a GPU: what its tensor cores reach in practice."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def model_flops_utilisation(trainer: Trainer, images_per_s: float) -> dict[str, Any]:
    """FLOPs per image of a step (counted on one more real step), the FLOP/s the measured speed
    means, and on a GPU its share of a large matrix product's and of the datasheet's peak (MFU)."""
    flops = step_flops_per_image(trainer)
    achieved = images_per_s * flops / 1e12
    result: dict[str, Any] = {"flops_per_image": flops, "achieved_tflops": achieved}
    if trainer.device.type == "cuda":
        matmul = measure_matmul_tflops(trainer.device)
        peak = datasheet_tflops(device_name(trainer.device))
        result.update(matmul_bf16_tflops=matmul, mfu_vs_matmul=achieved / matmul,
                      datasheet_bf16_tflops=peak, mfu=None if peak is None else achieved / peak)
    return result


__all__ = ["forward_flops_per_image", "step_flops_per_image", "datasheet_tflops", "measure_matmul_tflops",
           "model_flops_utilisation", "DATASHEET_BF16_TFLOPS"]
