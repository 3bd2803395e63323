"""What the whole-training-set prior (eq. 15) costs, and a leaner way to compute it.

``--prior full`` re-estimates ``π_k = (1/N) Σ_x p_k(x)`` with the teacher over every training
image (once per epoch by default). This script

1. times ``Trainer.estimate_full_prior`` (the library's pass) for each ``--case DATASET:ARCH``;
2. times a *lean* pass that computes the same prior with less work: only the embedding ``z`` is
   kept (the library also keeps every backbone feature vector), larger batches, inference mode,
   and channels_last input on a GPU; it checks that both give the same prior;
3. counts the FLOPs (torch's FlopCounterMode) of one ResNet-18 teacher forward and of one whole
   training step per image, and from them *estimates* what the pass costs on a GPU relative to
   a training epoch (an estimate from counted FLOPs and an assumed efficiency, not a timing).

    python benchmarks/prior_cost.py                       # CPU: digits MLP, cifar10-sample SmallCNN
    python benchmarks/prior_cost.py --case /data/cifar10-jpg:resnet18 --device cuda

Writes ``benchmarks/results/prior_cost_<device>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from klteach import theory
from klteach.bench import (
    CIFAR10_TRAIN_IMAGES,
    busy_note,
    environment,
    forward_flops_per_image,
    measure_full_prior,
    step_flops_per_image,
    synchronize,
)
from klteach.data import Dataset, load_dataset, to_float
from klteach.models import build_model
from klteach.train import TrainConfig, Trainer, resolve_device, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
H100_BF16_DENSE_PEAK = 989e12
"""NVIDIA's datasheet figure for H100 SXM dense bf16 tensor-core FLOP/s (the H200 has the same)."""
H200_MEASURED_MATMUL = 788e12
"""An 8192^3 bf16 matrix product measured on this workplace's H200 (its KINDS.md notes)."""
ASSUMED_EFFICIENCIES = (0.15, 0.3, 0.5)
"""Fractions of the matmul rate a ResNet-18 on 32x32 images might reach: a range, not a measurement."""


@torch.inference_mode()
def lean_full_prior(trainer: Trainer, batch: int = 4096) -> torch.Tensor:
    """Eq. (15) with the teacher over the training set, keeping only the running sum of ``p``.

    Same result as ``Trainer.estimate_full_prior`` (up to float rounding), with no backbone
    features stored, bigger batches and (on a GPU) bf16 autocast with channels_last input.
    """
    model, images = trainer.teacher.eval(), trainer.dataset.train
    weights = model.prototypes.unit_weights.float()
    on_gpu = trainer.device.type == "cuda"
    total = torch.zeros(weights.shape[0], device=trainer.device)
    for start in range(0, images.shape[0], batch):
        x = to_float(images[start:start + batch])
        if on_gpu and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            z = model.embed(x)
        total += theory.sphere_posterior(z.float(), weights, trainer.config.tau_teacher).sum(0)
    return total / images.shape[0]


def time_pass(trainer: Trainer, compute, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``compute()`` (one untimed pass first on a GPU) and its last result."""
    if trainer.device.type == "cuda":
        compute()
    times, result = [], None
    for _ in range(repeats):
        synchronize(trainer.device)
        start = time.perf_counter()
        result = compute()
        synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def measure_case(dataset: Dataset, arch: str, device: str, repeats: int, lean_batch: int) -> dict:
    """Library pass and lean pass for one dataset and backbone, with the training step rate."""
    config = TrainConfig(dataset=dataset.name, arch=arch, device=device, normaliser="inverse-prior",
                         prior="full", batch_size=min(256, len(dataset.train)), eval_every=0)
    trainer = Trainer(config, data=dataset)
    library = measure_full_prior(trainer, repeats)
    lean_seconds, lean = time_pass(trainer, lambda: lean_full_prior(trainer, lean_batch), repeats)
    reference = trainer.estimate_full_prior()
    return {"dataset": dataset.name, "arch": arch, "backbone": type(trainer.student.backbone).__name__,
            "images": library["images"], "library_pass": library,
            "lean_pass": {"seconds_per_pass": lean_seconds, "images_per_s": library["images"] / lean_seconds,
                          "batch": lean_batch},
            "lean_speedup": library["seconds_per_pass"] / lean_seconds,
            "max_abs_difference_lean_vs_library": float((lean - reference).abs().max())}


def flop_estimate(device: str) -> dict:
    """Counted FLOPs of ResNet-18 (CIFAR) and the estimated GPU cost of a 50k-image prior pass."""
    forward = forward_flops_per_image(build_model("resnet18", (3, 32, 32), 20), (3, 32, 32))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    random_images = Dataset("random-32x32", images, None, images[:4], None, [], "images")
    step = step_flops_per_image(Trainer(TrainConfig(dataset="random-32x32", arch="resnet18", batch_size=4,
                                                    device="cpu", eval_every=0), data=random_images))
    pass_flops = forward * CIFAR10_TRAIN_IMAGES
    epoch_flops = step * CIFAR10_TRAIN_IMAGES
    return {
        "resnet18_forward_flops_per_image": forward, "train_step_flops_per_image": step,
        "prior_pass_flops_50k": pass_flops, "train_epoch_flops_50k": epoch_flops,
        "prior_pass_fraction_of_epoch_flops": pass_flops / epoch_flops,
        "estimated_prior_pass_seconds_h100_h200": {
            f"{eff:.0%} of {H200_MEASURED_MATMUL / 1e12:.0f} TFLOP/s": pass_flops / (eff * H200_MEASURED_MATMUL)
            for eff in ASSUMED_EFFICIENCIES},
        "estimated_note": ("ESTIMATE, not a timing: counted FLOPs divided by an assumed fraction of the "
                           "bf16 matmul rate measured on an H200 in this workplace (H100 SXM datasheet "
                           f"peak {H100_BF16_DENSE_PEAK / 1e12:.0f} TFLOP/s dense)"),
    }


def parse_case(text: str) -> tuple[str, str]:
    dataset, _, arch = text.rpartition(":")
    if not dataset or arch not in ("mlp", "cnn", "resnet18", "auto"):
        raise argparse.ArgumentTypeError(f"--case must be DATASET:ARCH with ARCH mlp, cnn, resnet18 "
                                         f"or auto, got {text!r}")
    return dataset, arch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append",
                        help="DATASET:ARCH (repeatable); default digits:mlp and cifar10-sample:cnn")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lean-batch", type=int, default=None,
                        help="images per batch of the lean pass (default 4096 on a GPU, 1024 on a CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    lean_batch = args.lean_batch or (4096 if device.type == "cuda" else 1024)
    cases = args.case or [("digits", "mlp"), ("cifar10-sample", "cnn")]
    env = environment(device)
    record = {"benchmark": "prior_cost", **env, "cases": []}
    for name, arch in cases:
        dataset = load_dataset(name, device=device, data_dir=args.data_dir)
        row = measure_case(dataset, arch, str(device), args.repeats, lean_batch)
        record["cases"].append(row)
        print(f"{name} {row['backbone']}: library pass {row['library_pass']['seconds_per_pass']:.2f} s, "
              f"lean pass {row['lean_pass']['seconds_per_pass']:.2f} s over {row['images']} images "
              f"(x{row['lean_speedup']:.2f}; max |Δπ| {row['max_abs_difference_lean_vs_library']:.1e})")
    record["flops"] = flop_estimate(str(device))
    flops = record["flops"]
    print(f"ResNet-18 forward {flops['resnet18_forward_flops_per_image'] / 1e9:.3f} GFLOP/image, training "
          f"step {flops['train_step_flops_per_image'] / 1e9:.2f} GFLOP/image: a 50k prior pass is "
          f"{flops['prior_pass_fraction_of_epoch_flops']:.1%} of an epoch's FLOPs")
    note = busy_note(env.get("load_average_1min"), env["nproc"]) if device.type == "cpu" else None
    if note:
        record["note"] = note
    out = args.out or RESULTS / f"prior_cost_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
