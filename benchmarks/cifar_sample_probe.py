"""Why do SSL runs on the CIFAR-10 sample lose kNN accuracy? Controlled experiments, one change each.

Each *variant* changes one thing against a baseline (the trainer's defaults on the sample:
SmallCNN, K = 10, AdamW lr 1e-3, EMA momentum 0.9, tau 0.1/0.04) and trains for ``--steps`` steps,
evaluating at step 0 and every ``--eval-every`` steps with one fixed protocol, richer than
``Trainer.evaluate``'s, so the hypotheses about the *measurement* can be told apart from those
about *training*:

* kNN (k = 20, T = 0.07) on the backbone features in eval mode (what the library reports), on the
  unit-norm embeddings ``z``, and (at the last evaluation) on features with batch statistics;
* the bank: a fixed random 5000 of the 10,000 training images; queries: all 2000 test images;
* collapse diagnostics of the student's posterior on the test images (effective clusters,
  clusters used), NMI.

Every run is appended to ``--out`` (rewritten atomically after each run; a re-run of the same
variant and seed replaces its entry), with CPU and wall time and the machine's load.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/cifar_sample_probe.py baseline k100 --steps 300
    python benchmarks/cifar_sample_probe.py --list
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import klteach.train as train_module
from klteach import metrics, theory
from klteach.augment import CIFAR_AUGMENT, ImageAugment, channel_mean_std
from klteach.bench import cpu_model
from klteach.checkpoint import write_json_atomic
from klteach.config import TrainConfig
from klteach.data import Dataset, load_dataset, to_float
from klteach.models import build_model
from klteach.train import Trainer

RESULT = Path(__file__).resolve().parent / "results" / "cifar_sample_probe.json"
BANK, KNN_K, KNN_T = 5000, 20, 0.07


@dataclasses.dataclass
class Variant:
    """One controlled change: config overrides plus the few knobs TrainConfig does not have."""

    help: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    width: int = 32                      # SmallCNN channels of the first stage
    standardise: bool = False            # per-channel mean/std of the training set before the network
    augment: ImageAugment | None = None  # None: the library's CIFAR preset
    teacher_eval_bn: bool = False        # teacher uses running BN statistics instead of batch ones
    prototype_decay: bool = True         # AdamW weight decay also on the prototypes


MILD = ImageAugment(crop_scale=(0.5, 1.0), jitter=(0.2, 0.2, 0.2, 0.05), gray_p=0.1)
NO_COLOUR = ImageAugment(jitter_p=0.0, gray_p=0.0)
CROP_ONLY_STRONG = ImageAugment(crop_scale=(0.08, 1.0))

VARIANTS: dict[str, Variant] = {
    "baseline": Variant("trainer defaults on the sample: SmallCNN w32, K=10, lr 1e-3, m 0.9, batch 64"),
    "standardise": Variant("inputs standardised per channel (training-set mean/std)", standardise=True),
    "aug-mild": Variant("milder views: crop 0.5-1, jitter halved, grey 0.1", augment=MILD),
    "aug-nocolour": Variant("crop + flip only, no colour jitter or grayscale", augment=NO_COLOUR),
    "aug-crop008": Variant("crop scale 0.08-1 (SimCLR's)", augment=CROP_ONLY_STRONG),
    "teacher-eval-bn": Variant("teacher uses running BN statistics", teacher_eval_bn=True),
    "no-proto-decay": Variant("no weight decay on the prototypes", prototype_decay=False),
    "wd0": Variant("no weight decay at all", config={"weight_decay": 0.0}),
    "lr3e-3": Variant("lr 3e-3", config={"lr": 3e-3}),
    "lr3e-4": Variant("lr 3e-4", config={"lr": 3e-4}),
    "m0.99": Variant("teacher EMA momentum 0.99", config={"momentum": 0.99}),
    "m0.996": Variant("teacher EMA momentum 0.996 (DINO)", config={"momentum": 0.996}),
    "m0": Variant("teacher = student (momentum 0)", config={"momentum": 0.0}),
    "tt0.07": Variant("teacher temperature 0.07", config={"tau_teacher": 0.07}),
    "ts0.2": Variant("student temperature 0.2, teacher 0.1", config={"tau_student": 0.2, "tau_teacher": 0.1}),
    "k30": Variant("K = 30", config={"clusters": 30}),
    "k100": Variant("K = 100", config={"clusters": 100}),
    "k300": Variant("K = 300", config={"clusters": 300}),
    "issue-repro": Variant("issue 15's example: batch 128, lr 3e-3 (run it with --steps 240)",
                           config={"batch_size": 128, "lr": 3e-3}),
    "w16": Variant("SmallCNN width 16 (1/4 the multiply-adds)", width=16),
    "b256": Variant("batch 256", config={"batch_size": 256}),
}


def standardised(backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> nn.Module:
    """``backbone`` preceded by a fixed per-channel standardisation."""
    class Standardised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.out_features = backbone, backbone.out_features
            self.register_buffer("mean", mean.view(1, -1, 1, 1))
            self.register_buffer("std", std.view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner((x - self.mean) / self.std)
    return Standardised()


def model_builder(variant: Variant, dataset: Dataset) -> Callable[..., nn.Module]:
    """A ``build_model`` replacement for the trainer that applies the variant's width/standardisation."""
    mean, std = channel_mean_std(dataset.train)

    def build(arch, input_shape, clusters, **kwargs):
        model = build_model(arch, input_shape, clusters, **{**kwargs, "width": variant.width})
        if variant.standardise:
            model.backbone = standardised(model.backbone, mean, std)
        return model
    return build


class ProbeTrainer(Trainer):
    """The library's trainer with the variant's teacher-BN and prototype-decay switches."""

    variant: Variant

    def _install(self, config, dataset) -> None:
        super()._install(config, dataset)
        if not self.variant.prototype_decay:
            protos = [self.student.prototypes.weight]
            rest = [p for p in self.student.parameters() if p is not protos[0]]
            self.optimiser = torch.optim.AdamW([{"params": rest}, {"params": protos, "weight_decay": 0.0}],
                                               lr=config.lr, weight_decay=config.weight_decay)

    def _train_mode(self) -> None:
        super()._train_mode()
        if self.variant.teacher_eval_bn:
            self.teacher.eval()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, train_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and embeddings; ``train_mode`` uses batch statistics on a copy."""
    if train_mode:
        model = copy.deepcopy(model).train()
    else:
        model.eval()
    f, z = [], []
    for start in range(0, len(images), 500):
        x = to_float(images[start:start + 500])
        h = model.backbone(x)
        f.append(h.flatten(1))
        z.append(model.head(h))
    return torch.cat(f), torch.cat(z)


def effective_rank(features: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of the centred features (Roy &
    Vetterli 2007): how many directions the representation really uses."""
    singular = torch.linalg.svdvals(features - features.mean(0))
    weights = singular / singular.sum()
    return float(torch.exp(-(weights * weights.clamp_min(1e-12).log()).sum()))


@torch.no_grad()
def probe(trainer: Trainer, bank: torch.Tensor, last: bool) -> dict[str, Any]:
    ds, model = trainer.dataset, trainer.student
    f_bank, z_bank = features(model, ds.train[bank])
    f_test, z_test = features(model, ds.test)
    y_bank = ds.train_labels[bank]
    p = theory.sphere_posterior(z_test, model.prototypes.unit_weights.float(), trainer.config.tau_student)
    row = {"step": trainer.step_count, "loss": trainer.last_loss,
           "knn_features": metrics.knn_accuracy(f_bank, y_bank, f_test, ds.test_labels, KNN_K, KNN_T),
           "knn_embedding": metrics.knn_accuracy(z_bank, y_bank, z_test, ds.test_labels, KNN_K, KNN_T),
           "effective_clusters": metrics.effective_clusters(p), "clusters_used": metrics.clusters_used(p),
           "mean_entropy": metrics.mean_entropy(p), **metrics.cluster_scores(p.argmax(-1), ds.test_labels),
           "feature_rank": effective_rank(f_test), "embedding_rank": effective_rank(z_test)}
    prior = getattr(trainer.normaliser, "running_prior", None)
    if prior is not None:   # what the teacher saw on training views (eq. 15, running)
        row["teacher_running_prior_effective"] = float(theory.entropy(prior).exp())
    if last:
        fb, _ = features(model, ds.train[bank], train_mode=True)
        ft, zt = features(model, ds.test, train_mode=True)
        row["knn_features_batch_stats"] = metrics.knn_accuracy(fb, y_bank, ft, ds.test_labels, KNN_K, KNN_T)
        pt = theory.sphere_posterior(zt, model.prototypes.unit_weights.float(), trainer.config.tau_student)
        row["effective_clusters_batch_stats"] = metrics.effective_clusters(pt)
        row["clusters_used_batch_stats"] = metrics.clusters_used(pt)
    model.train()
    return row


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, augment: Callable | None, batches: int = 20,
                        batch_size: int = 256, seed: int = 0) -> None:
    """Set every BN layer's running statistics to their average over ``batches`` batches (of
    augmented views when ``augment`` is given, else of the clean images); weights unchanged."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None                       # cumulative average over the batches
    model.train()
    for _ in range(batches):
        x = images[torch.randint(len(images), (batch_size,), generator=generator)]
        model.backbone(augment(x, generator) if augment else to_float(x))
    model.eval()


def untrained_knn(dataset: Dataset, widths: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    """kNN of untrained networks with their BN layers in four states: fresh running statistics
    (mean 0, var 1: what step 0 of ``Trainer.evaluate`` measures), batch statistics, running
    statistics calibrated on augmented views (what training would give a network that does not
    learn), and calibrated on clean images. Also raw pixels."""
    bank = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(1))[:BANK]
    y_bank = dataset.train_labels[bank]
    rows = [{"model": "pixels", "seed": None, "knn": metrics.knn_accuracy(
        to_float(dataset.train[bank]).flatten(1), y_bank, to_float(dataset.test).flatten(1), dataset.test_labels,
        KNN_K, KNN_T)}]
    print(f"  pixels: kNN {rows[0]['knn']:.3f}", flush=True)
    for width in widths:
        for seed in seeds:
            torch.manual_seed(seed)
            model = model_builder(Variant("untrained", width=width), dataset)("cnn", (3, 32, 32), 10)
            row: dict[str, Any] = {"model": f"SmallCNN w{width}", "seed": seed}
            for state in ("fresh", "batch", "augmented", "clean"):
                if state in ("augmented", "clean"):
                    calibrate_batchnorm(model, dataset.train, CIFAR_AUGMENT if state == "augmented" else None)
                fb, _ = features(model, dataset.train[bank], train_mode=state == "batch")
                ft, _ = features(model, dataset.test, train_mode=state == "batch")
                row[f"knn_bn_{state}"] = metrics.knn_accuracy(fb, y_bank, ft, dataset.test_labels, KNN_K, KNN_T)
                row[f"rank_bn_{state}"] = effective_rank(ft)
            rows.append(row)
            print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
    return rows


def run_variant(name: str, variant: Variant, dataset: Dataset, steps: int, eval_every: int,
                seed: int, normaliser: str) -> dict[str, Any]:
    config = TrainConfig(dataset="cifar10-sample", arch="cnn", clusters=10, batch_size=64, steps=steps,
                         eval_every=0, seed=seed, device="cpu", normaliser=normaliser, width=variant.width)
    config = dataclasses.replace(config, **variant.config)
    original = train_module.build_model
    train_module.build_model = model_builder(variant, dataset)
    try:
        ProbeTrainer.variant = variant
        trainer = ProbeTrainer(config, data=dataset)
    finally:
        train_module.build_model = original
    if variant.augment is not None:
        trainer.augment = variant.augment
    bank = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(1))[:BANK]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    rows = [probe(trainer, bank, last=False)]
    train_cpu = 0.0
    while trainer.step_count < steps:
        start = time.process_time()
        for _ in range(min(eval_every, steps - trainer.step_count)):
            trainer.train_step()
        train_cpu += time.process_time() - start
        rows.append(probe(trainer, bank, last=trainer.step_count >= steps))
        r = rows[-1]
        print(f"  {name:<16} step {r['step']:>4}  kNN feat {r['knn_features']:.3f}  emb {r['knn_embedding']:.3f}  "
              f"eff {r['effective_clusters']:5.2f} used {r['clusters_used']:>3}  NMI {r['nmi']:.3f}  "
              f"rank {r['feature_rank']:.1f}/{r['embedding_rank']:.1f}  "
              f"loss {r['loss']:.3f}  ({train_cpu:.0f} s CPU training)", flush=True)
    return {"variant": name, "help": variant.help, "seed": seed, "normaliser": normaliser,
            "config": {k: v for k, v in config.to_dict().items()
                       if k in ("clusters", "batch_size", "lr", "momentum", "tau_student", "tau_teacher",
                                "weight_decay")},
            "steps": steps, "evaluations": rows, "train_cpu_seconds": round(train_cpu, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "wall_seconds": round(time.perf_counter() - wall0, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--normaliser", default="inverse-prior")
    parser.add_argument("--width", type=int, default=32, help="SmallCNN width under every variant")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--untrained", action="store_true",
                        help="only the kNN of untrained networks, BN states compared (3 seeds, widths 16 and 32)")
    args = parser.parse_args()
    if args.untrained:
        torch.set_num_threads(1)
        rows = untrained_knn(load_dataset("cifar10-sample"), [16, 32], [0, 1, 2])
        write_json_atomic(args.out.with_name("cifar_sample_untrained.json"), {
            "benchmark": "cifar_sample_untrained", "cpu": cpu_model(), "torch": torch.__version__,
            "bank": BANK, "queries": "all 2000 test images", "knn": {"k": KNN_K, "temperature": KNN_T},
            "load_average_1min": round(os.getloadavg()[0], 2), "rows": rows})
        return
    if args.list or not args.variants:
        for name, v in VARIANTS.items():
            print(f"{name:<16} {v.help}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; --list shows them")
    torch.set_num_threads(1)
    dataset = load_dataset("cifar10-sample")
    for name in args.variants:
        print(f"{name}: {VARIANTS[name].help}", flush=True)
        variant = VARIANTS[name]
        if args.width != 32 and variant.width == 32:
            variant = dataclasses.replace(variant, width=args.width)
            name = f"{name}@w{args.width}"
        result = run_variant(name, variant, dataset, args.steps, args.eval_every, args.seed, args.normaliser)
        with open(f"/tmp/{args.out.name}.lock", "w") as lock:   # several processes may append
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = json.loads(args.out.read_text()) if args.out.exists() else {
                "benchmark": "cifar_sample_probe", "cpu": cpu_model(), "nproc": os.cpu_count(),
                "torch": torch.__version__, "runs": []}
            key = (name, args.seed, args.normaliser, args.steps)
            record["runs"] = [r for r in record["runs"]
                              if (r["variant"], r["seed"], r["normaliser"], r["steps"]) != key] + [result]
            write_json_atomic(args.out, record)


if __name__ == "__main__":
    main()
