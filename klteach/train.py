"""The student/teacher loop of clustering SSL, as alternating-direction K-L optimisation.

One step:

1. two augmented views of a batch;
2. the **teacher** (EMA of the student, or a copy every T steps: eq. 7) embeds each view and a
   :mod:`~klteach.normalisers` normaliser turns its logits into the supervisory signal ``q``
   (eq. 14-16 inverse priors, eq. 23 centering, ...);
3. the **student** gives ``log p`` (eq. 6) on the *other* view and takes a gradient step on the
   cross-entropy (eq. 3/11), which is the K-L divergence (2) up to the teacher's entropy;
4. the teacher follows the student (EMA momentum, or a copy every ``copy_every`` steps).

Settings in :data:`LIVE_SETTINGS` can be changed with :meth:`Trainer.set` while a run goes on;
they take effect at the next step (the widgets rely on this).

Reliability: a step is all or nothing (Ctrl-C waits for it to end; a failed step is undone), so
a run always stops at a step boundary; checkpoints hold everything needed to continue
bit-identically on a CPU and are written atomically. Under ``torchrun`` each process takes a
disjoint share of every global batch (see :mod:`klteach.dist`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch
from torch import Tensor, nn

from . import data as data_lib
from . import dist, metrics, theory
from .augment import augmentation_for
from .models import build_model
from .normalisers import (NORMALISERS, batch_standardise, check_momentum, check_normaliser,
                          check_prior_mode, make_normaliser)

DEVICES = ("auto", "cpu", "cuda")
LIVE_SETTINGS = ("normaliser", "tau_student", "tau_teacher", "momentum", "lam", "prior",
                 "copy_every", "lr")
"""Settings :meth:`Trainer.set` applies at the next step without restarting the run."""
RESTART_SETTINGS = ("clusters", "dataset", "seed", "arch", "dim", "batch_size")
"""Settings that rebuild the model and restart the run when changed with :meth:`Trainer.set`."""
NAN_CHECK_EVERY = 50
"""On a GPU the loss is checked for NaN/Inf every this many steps (each check waits for the GPU)."""
CHECKPOINT_KEYS = ("config", "step", "student", "teacher", "optimiser", "normaliser", "generator",
                   "torch_rng", "epoch_order", "last_loss", "history", "events")
"""What a checkpoint must contain (see :meth:`Trainer.state`)."""
COMPATIBLE_KEYS = ("clusters", "dim", "arch", "dataset", "normaliser", "learnable_prototypes",
                   "centred_prototypes")
"""Settings a checkpoint must share with the trainer that loads it (they shape the model and its state)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names the step and the likely cause."""


@dataclass
class TrainConfig:
    """Everything a run needs; the field names are the command-line flags (``--tau-student``)."""

    dataset: str = "digits"
    normaliser: str = "inverse-prior"
    clusters: int = 20
    steps: int = 1000
    epochs: float | None = None
    seed: int = 0
    tau_student: float = 0.1
    tau_teacher: float = 0.04
    momentum: float = 0.9
    copy_every: int = 0
    prior: str = "running"
    prior_every: int = 0
    lam: float = 1.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    device: str = "auto"
    eval_every: int = 100
    eval_size: int = 5000
    data_dir: str | None = None
    out: str | None = None
    arch: str = "auto"
    dim: int = 64
    width: int = 32
    """Channels of the small CNN's first stage (``arch='cnn'`` only; 16 is four times cheaper)."""
    learnable_prototypes: bool = True
    centred_prototypes: bool = False
    student_batchnorm: bool = False
    prior_momentum: float = 0.9
    center_momentum: float = 0.9
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_config(config: TrainConfig) -> TrainConfig:
    """Raise ``ValueError`` naming the first bad value and what is allowed; return ``config``."""
    theory.check_temperature(config.tau_student, "tau_student")
    theory.check_temperature(config.tau_teacher, "tau_teacher")
    theory.check_lambda(config.lam)
    check_momentum(config.momentum, "momentum")
    check_momentum(config.prior_momentum, "prior_momentum")
    check_momentum(config.center_momentum, "center_momentum")
    check_normaliser(config.normaliser)
    check_prior_mode(config.prior)
    _check_int(config.clusters, "clusters (K)", minimum=2)
    _check_int(config.steps, "steps", minimum=0)
    _check_int(config.batch_size, "batch_size", minimum=2)
    _check_int(config.width, "width", minimum=1)
    _check_int(config.eval_every, "eval_every", minimum=0)
    _check_int(config.copy_every, "copy_every", minimum=0)
    _check_int(config.prior_every, "prior_every", minimum=0)
    if config.epochs is not None and not config.epochs > 0:
        raise ValueError(f"epochs must be > 0, got {config.epochs!r}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr!r}")
    if config.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be constant or cosine, got {config.lr_schedule!r}")
    if config.device not in DEVICES:
        raise ValueError(f"unknown device {config.device!r}; choose one of {', '.join(DEVICES)}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    return config


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is present, else the CPU; under ``torchrun`` each process
    takes the GPU of its ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.env_world_size() > 1:
        device = torch.device("cuda", dist.local_rank())
    return device


def check_batch_size(batch_size: int, dataset: data_lib.Dataset) -> None:
    """Raise ``ValueError`` unless ``batch_size`` fits the training set and splits evenly over
    the processes (each takes an equal share of every batch)."""
    n_train = dataset.train.shape[0]
    if batch_size > n_train:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset "
                         f"{dataset.name!r} ({n_train} training samples)")
    if batch_size % dist.world_size():
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes "
                         f"({dist.world_size()}): each takes an equal share of every batch")


def cross_view_loss(q_views: list[Tensor], log_p_views: list[Tensor]) -> Tensor:
    """Eq. (3)/(11) between *different* views: each teacher view supervises the other student view."""
    pairs = [(qi, lpj) for i, qi in enumerate(q_views) for j, lpj in enumerate(log_p_views) if i != j]
    return sum(theory.cross_entropy(q, lp) for q, lp in pairs) / len(pairs)


class StudentLogP(nn.Module):
    """The student's ``log p`` of eq. (6) as one module call, so that ``DistributedDataParallel``
    (which only sees ``forward``) covers every parameter that gets a gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, tau: float, standardise: bool = False) -> Tensor:
        """``log softmax(w·z/τ)``; with ``standardise`` the embeddings are batch-normalised first (§5)."""
        z = self.model.embed(x)
        if standardise:
            z = batch_standardise(z)
        return (z @ self.model.prototypes.unit_weights.T / tau).log_softmax(-1)


class Trainer:
    """Runs the loop for one :class:`TrainConfig`; ``step()``, ``run()``, ``set()``, ``evaluate()``."""

    def __init__(self, config: TrainConfig | None = None, data: data_lib.Dataset | None = None,
                 **overrides: Any) -> None:
        """``Trainer(TrainConfig(...))`` or ``Trainer(dataset="digits", normaliser="none", ...)``;
        ``data`` passes an already loaded :class:`~klteach.data.Dataset` instead of loading one."""
        config = dataclasses.replace(config or TrainConfig(), **overrides)
        self.config = validate_config(config)
        self.device = resolve_device(config.device)
        dist.init_from_env(self.device)
        if data is not None:
            self.dataset = data.to(self.device)
        else:
            with dist.main_process_first():   # rank 0 downloads/extracts, the others then read
                self.dataset = data_lib.load_dataset(config.dataset, device=self.device,
                                                     data_dir=config.data_dir)
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        cfg = self.config
        n_train = self.dataset.train.shape[0]
        check_batch_size(cfg.batch_size, self.dataset)
        if cfg.epochs is not None:
            self.config.steps = math.ceil(cfg.epochs * n_train / cfg.batch_size)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.augment = augmentation_for(self.dataset)
        arch = cfg.arch
        if arch == "auto" and self.device.type == "cuda" and self.dataset.kind == "images" \
                and self.dataset.train.shape[-1] >= 32:
            arch = "resnet18"
        small_input = self.dataset.kind == "vectors" or self.dataset.train.shape[-1] < 16
        self.student = build_model(arch, tuple(self.dataset.train.shape[1:]), cfg.clusters,
                                   dim=cfg.dim, hidden=256 if small_input else 512, width=cfg.width,
                                   learnable_prototypes=cfg.learnable_prototypes,
                                   centred_prototypes=cfg.centred_prototypes).to(self.device, torch.float32)
        if self.device.type == "cuda" and self.dataset.kind == "images":
            self.student = self.student.to(memory_format=torch.channels_last)
        self.student = dist.sync_batchnorm(self.student, self.device)   # batch statistics of the global batch
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.optimiser = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.student_log_p: nn.Module = StudentLogP(self.student)
        if dist.is_distributed():   # averages the gradients of all processes in backward()
            self.student_log_p = nn.parallel.DistributedDataParallel(
                self.student_log_p, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.normaliser = self._make_normaliser()
        self.step_count = 0
        self.epoch_order = torch.empty(0, dtype=torch.long, device=self.device)
        self.last_loss = float("nan")
        self._loss_tensor: Tensor | None = None
        self.forward = torch.compile(self._loss) if cfg.compile else self._loss

    def _make_normaliser(self):
        cfg = self.config
        return make_normaliser(cfg.normaliser, cfg.clusters, cfg.lam, cfg.prior,
                               cfg.prior_momentum, cfg.center_momentum).to(self.device, torch.float32)

    # ------------------------------------------------------------------ live settings
    def set(self, **changes: Any) -> None:
        """Change settings; live ones (:data:`LIVE_SETTINGS`) apply at the next step, the others
        (:data:`RESTART_SETTINGS`) rebuild the model and restart at step 0. Bad values raise
        ``ValueError`` at once and change nothing."""
        unknown = [k for k in changes if not hasattr(self.config, k)]
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; live settings are {', '.join(LIVE_SETTINGS)}")
        config = validate_config(dataclasses.replace(self.config, **changes))
        if "dataset" not in changes:
            check_batch_size(config.batch_size, self.dataset)
        with self._lock:
            self._pending.update(changes)

    def _apply_pending(self) -> None:
        """Apply the settings queued by :meth:`set`; if that fails (e.g. a new dataset cannot be
        loaded) the changes are dropped and nothing else changes."""
        with self._lock:
            changes, self._pending = self._pending, {}
        if not changes:
            return
        restart = any(k in RESTART_SETTINGS and v != getattr(self.config, k) for k, v in changes.items())
        config = dataclasses.replace(self.config, **changes)
        dataset = self.dataset
        if restart and config.dataset != self.config.dataset:
            with dist.main_process_first():
                dataset = data_lib.load_dataset(config.dataset, device=self.device, data_dir=config.data_dir)
        if restart:
            check_batch_size(config.batch_size, dataset)
        old_normaliser = self.config.normaliser
        self.config = config
        self.events.append({"step": self.step_count, "changes": changes, "restart": restart})
        if restart:
            self.dataset = dataset
            self.history.clear()
            self._build()
            return
        if self.config.normaliser != old_normaliser or "prior" in changes:
            self.normaliser = self._make_normaliser()
            if self.config.normaliser == "inverse-prior" and self.config.prior == "full":
                self.normaliser.set_full_prior(self.estimate_full_prior())   # not uniform until due
        if "lam" in changes and hasattr(self.normaliser, "lam"):
            self.normaliser.lam = float(self.config.lam)
        for group in self.optimiser.param_groups:
            group["lr"] = self.config.lr

    # ------------------------------------------------------------------ the step
    def _next_batch(self) -> Tensor:
        """The next global batch: a fresh random permutation every epoch, no sample twice.
        Every process draws the same permutation (same seed), so they agree on the batch."""
        b = self.config.batch_size
        if self.epoch_order.numel() < b:
            perm = torch.randperm(self.dataset.train.shape[0], generator=self.generator,
                                  device=self.device)
            self.epoch_order = perm
        idx, self.epoch_order = self.epoch_order[:b], self.epoch_order[b:]
        return self.dataset.train[idx]

    def _student_log_p(self, x: Tensor) -> Tensor:
        """``log p`` of eq. (6) at the student temperature (optionally batch-normalised: §5)."""
        return self.student_log_p(x, self.config.tau_student, self.config.student_batchnorm)

    @torch.no_grad()
    def _teacher_q(self, x: Tensor) -> Tensor:
        """The supervisory signal ``q`` from the teacher and the normaliser (eq. 7, 14-16, 23)."""
        z = self.teacher.embed(x).float()
        return self.normaliser(z, self.teacher.prototypes.unit_weights.float(), self.config.tau_teacher)

    def _loss(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        q_a, q_b = self._teacher_q(torch.cat([view_a, view_b])).chunk(2)
        log_p_a, log_p_b = self._student_log_p(torch.cat([view_a, view_b])).float().chunk(2)
        return cross_view_loss([q_a, q_b], [log_p_a, log_p_b])

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def step(self) -> float:
        """One optimisation step of the student and one update of the teacher. Returns the loss
        (under ``torchrun``: the mean over processes; on a GPU: the last one fetched, see ``run``).

        A step is all or nothing. Ctrl-C during it is held until it ends; if it fails (a NaN
        loss, an error) everything it changed is put back, so the trainer stays at step n."""
        with hold_interrupts():
            self._apply_pending()
            undo = self._undo_point()
            try:
                loss, global_loss = self._loss_of_next_batch()
                self.optimiser.zero_grad(set_to_none=True)
                loss.backward()
            except BaseException:
                self._roll_back(undo)
                raise
            self.optimiser.step()
            self.step_count += 1
            self._update_teacher()
            self._loss_tensor = global_loss
            if self.device.type == "cpu":
                self.last_loss = float(global_loss)
        return self.last_loss

    def _loss_of_next_batch(self) -> tuple[Tensor, Tensor]:
        """Draw a batch, make two views, and return this process's loss and its mean over processes."""
        cfg = self.config
        if cfg.prior == "full" and cfg.normaliser == "inverse-prior" and self._prior_due():
            self.normaliser.set_full_prior(self.estimate_full_prior())
        self._set_lr()
        x = self._next_batch()
        # every process augments the whole global batch with the shared generator, then keeps its
        # share: the random streams stay identical on all processes (one checkpoint fits all) and
        # N processes compute what one process computes for the same global batch
        view_a, view_b = self.augment(x, self.generator).float(), self.augment(x, self.generator).float()
        view_a, view_b = dist.shard(view_a), dist.shard(view_b)
        if self.device.type == "cuda" and x.dim() == 4:
            view_a = view_a.contiguous(memory_format=torch.channels_last)
            view_b = view_b.contiguous(memory_format=torch.channels_last)
        self.student.train()
        self.teacher.train()     # the teacher, like the student, uses batch statistics in training
        self.normaliser.train()
        with self._autocast():
            loss = self.forward(view_a, view_b)
        global_loss = dist.all_mean(loss.detach())
        self._check_finite(global_loss)
        return loss, global_loss

    def _undo_point(self) -> dict[str, Any]:
        """What a step changes before its optimiser update, kept so that a failed step can be undone."""
        return {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "epoch_order": self.epoch_order,
                "buffers": [b.detach().clone() for b in self._buffers()],
                "lr": [group["lr"] for group in self.optimiser.param_groups]}

    def _roll_back(self, undo: dict[str, Any]) -> None:
        """Put back what :meth:`_undo_point` kept: the trainer is as it was before the step."""
        self.generator.set_state(undo["generator"])
        torch.set_rng_state(undo["torch_rng"])
        if undo["cuda_rng"] is not None:
            torch.cuda.set_rng_state(undo["cuda_rng"], self.device)
        self.epoch_order = undo["epoch_order"]
        with torch.no_grad():
            for buffer, saved in zip(self._buffers(), undo["buffers"]):
                buffer.copy_(saved)
        for group, lr in zip(self.optimiser.param_groups, undo["lr"]):
            group["lr"] = lr
        self.optimiser.zero_grad(set_to_none=True)

    def _buffers(self) -> list[Tensor]:
        """State a forward pass changes in place: batch-norm statistics, running prior, centre."""
        return [*self.student.buffers(), *self.teacher.buffers(), *self.normaliser.buffers()]

    def _check_finite(self, loss: Tensor) -> None:
        """Stop on a NaN/Inf loss, naming the step and the likely cause (checked every step on a
        CPU; on a GPU every :data:`NAN_CHECK_EVERY` steps, so the step never waits for the device
        otherwise). Under ``torchrun`` ``loss`` is the mean over processes, so all stop together."""
        if self.device.type != "cpu" and self.step_count % NAN_CHECK_EVERY:
            return
        if bool(torch.isfinite(loss)):
            return
        raise TrainingError(self._non_finite_message(float(loss)))

    def _non_finite_message(self, value: float) -> str:
        cfg = self.config
        if not all(bool(torch.isfinite(p).all()) for p in self.student.parameters()):
            cause = "the student's weights are already NaN/Inf (an earlier step diverged)"
        elif self.dataset.train.is_floating_point() and not bool(torch.isfinite(self.dataset.train).all()):
            cause = "the training data contains NaN/Inf values"
        elif min(cfg.tau_student, cfg.tau_teacher) < 0.02:
            cause = f"temperatures too low (tau_student={cfg.tau_student}, tau_teacher={cfg.tau_teacher})"
        else:
            cause = f"learning rate too high (lr={cfg.lr})"
        where = "" if self.device.type == "cpu" else (
            f" (on a GPU the loss is checked every {NAN_CHECK_EVERY} steps: it may have diverged earlier)")
        return (f"loss became {value} at step {self.step_count}{where}; likely cause: {cause}. "
                "The last good checkpoint (if any) is kept.")

    def _prior_due(self) -> bool:
        every = self.config.prior_every or max(1, self.dataset.train.shape[0] // self.config.batch_size)
        return self.step_count % every == 0

    def _set_lr(self) -> None:
        cfg = self.config
        lr = cfg.lr
        if cfg.warmup_steps and self.step_count < cfg.warmup_steps:
            lr *= (self.step_count + 1) / cfg.warmup_steps
        elif cfg.lr_schedule == "cosine" and cfg.steps:
            progress = min(1.0, (self.step_count - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
            lr *= 0.5 * (1 + math.cos(math.pi * progress))
        for group in self.optimiser.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def _update_teacher(self) -> None:
        """Eq. (7): the teacher takes the student's parameters, by a copy every ``copy_every``
        steps or, when that is 0, by an exponential moving average with ``momentum``."""
        cfg = self.config
        if cfg.copy_every:
            if self.step_count % cfg.copy_every == 0:
                self.teacher.load_state_dict(self.student.state_dict())
            return
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.lerp_(s.detach(), 1.0 - cfg.momentum)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed_all(self, model: torch.nn.Module, images: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor]:
        """Backbone features and unit-norm embeddings of ``images``, in eval mode, in batches."""
        model.eval()
        feats, zs = [], []
        for start in range(0, images.shape[0], batch):
            x = data_lib.to_float(images[start:start + batch])
            with self._autocast():
                f = model.backbone(x)
                zs.append(model.head(f).float())
            feats.append(f.float().flatten(1))
        return torch.cat(feats), torch.cat(zs)

    @torch.no_grad()
    def estimate_full_prior(self) -> Tensor:
        """Eq. (15): ``π_k = (1/N) Σ_x p_k(x)`` over the whole training set, with the teacher.
        Under ``torchrun`` each process embeds every ``world_size``-th image and the means are combined."""
        _, z = self.embed_all(self.teacher, self.dataset.train[dist.rank()::dist.world_size()])
        p = theory.sphere_posterior(z, self.teacher.prototypes.unit_weights.float(), self.config.tau_teacher)
        return dist.global_mean(p) if dist.is_distributed() else theory.cluster_prior(p)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Collapse diagnostics, KL(teacher‖student), kNN accuracy and NMI/ARI on held-out data
        (computed by this process alone, also under ``torchrun``)."""
        with dist.local_only():
            return self._evaluate()

    def knn_bank_indices(self) -> Tensor:
        """A fixed random subset of ``eval_size`` training samples for the kNN reference set.
        Random, not the first ones: image folders are stored class by class, so the first
        2000 CIFAR-sample images hold only two classes. Seeded apart from the training RNG, so
        evaluating never changes training."""
        n = self.dataset.train.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return order[: self.config.eval_size].to(self.dataset.train.device)

    def _evaluate(self) -> dict[str, Any]:
        cfg, ds = self.config, self.dataset
        bank = self.knn_bank_indices()
        feats_bank, _ = self.embed_all(self.student, ds.train[bank])
        feats_test, z_student = self.embed_all(self.student, ds.test)
        _, z_teacher = self.embed_all(self.teacher, ds.test)
        w = self.student.prototypes.unit_weights.float()
        p = theory.sphere_posterior(z_student, w, cfg.tau_student)
        self.normaliser.eval()
        q = self.normaliser(z_teacher, self.teacher.prototypes.unit_weights.float(), cfg.tau_teacher)
        result: dict[str, Any] = {"step": self.step_count, "loss": self.last_loss,
                                  **metrics.assignment_metrics(p),
                                  "kl_teacher_student": float(theory.kl_divergence(q, p)),
                                  "embedding_std": metrics.embedding_std(z_student),
                                  "normaliser": cfg.normaliser}
        if ds.test_labels is not None and ds.train_labels is not None:
            result["knn_accuracy"] = metrics.knn_accuracy(feats_bank, ds.train_labels[bank],
                                                          feats_test, ds.test_labels)
            result.update(metrics.cluster_scores(p.argmax(-1), ds.test_labels))
        return result

    @torch.no_grad()
    def assignments(self, images: Tensor | None = None) -> Tensor:
        """The student's posterior (eq. 6) on ``images`` (default: the test set)."""
        _, z = self.embed_all(self.student, self.dataset.test if images is None else images)
        return theory.sphere_posterior(z, self.student.prototypes.unit_weights.float(),
                                       self.config.tau_student)

    # ------------------------------------------------------------------ running
    def run(self, steps: int | None = None, callback: Callable[[dict], Any] | None = None,
            progress: bool = False, should_stop: Callable[[], bool] | None = None) -> list[dict]:
        """Take ``steps`` steps (default: the rest of ``config.steps``), evaluating every
        ``eval_every`` steps and at the end; ``callback(metrics)`` sees each evaluation.

        Stopping happens between steps: when ``should_stop()`` returns True, on Ctrl-C (a second
        Ctrl-C aborts at once, still at a step boundary, without the final evaluation) or when a
        callback raises ``KeyboardInterrupt``. The run then evaluates and writes its checkpoint
        as at the end. Under ``torchrun`` all processes stop at the same step; only rank 0
        shows progress and writes files."""
        steps = self.config.steps - self.step_count if steps is None else steps
        bar = _progress_bar(steps, progress and dist.is_main())
        out = Path(self.config.out) if self.config.out else None
        if out and dist.is_main():
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", self.config.to_dict())
        interrupt = StopOnInterrupt()
        try:
            with interrupt:
                for _ in range(max(0, steps)):
                    if dist.any_rank(interrupt.requested or bool(should_stop and should_stop())):
                        break
                    loss = self.step()
                    bar.update(1)
                    every = self.config.eval_every
                    if every and self.step_count % every == 0:
                        self._record(callback, out, bar)
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        except KeyboardInterrupt:
            if interrupt.aborted:
                raise
        finally:
            bar.close()
        if not self.history or self.history[-1]["step"] != self.step_count:
            self._record(callback, out, None)
        return self.history

    def _record(self, callback, out: Path | None, bar) -> None:
        """Evaluate (rank 0; every process gets the result), then write the checkpoint and
        ``metrics.jsonl`` (rank 0), then call ``callback``. A NaN loss is never checkpointed."""
        if self._loss_tensor is not None:
            self.last_loss = float(self._loss_tensor)
        if self.step_count and not math.isfinite(self.last_loss):
            raise TrainingError(self._non_finite_message(self.last_loss))
        result = dist.broadcast_object(self.evaluate() if dist.is_main() else None)
        self.history.append(result)
        if out and dist.is_main():
            with hold_interrupts():   # Ctrl-C waits until both files are written
                self.save_checkpoint(out / "checkpoint.pt")
                write_jsonl_atomic(out / "metrics.jsonl", self.history)
        if bar is not None:
            bar.set_postfix(eff=f"{result['effective_clusters']:.1f}", refresh=False)
        if callback:
            callback(result)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly where it stands, as CPU copies:
        models, optimiser, normaliser state (running/whole-set prior, centre), every random
        state, the rest of this epoch's order, the step, settings (also those not yet applied),
        history and events."""
        return _cpu_copy({
            "config": self.config.to_dict(), "step": self.step_count,
            "model": type(self.student.backbone).__name__,
            "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
            "optimiser": self.optimiser.state_dict(), "normaliser": self.normaliser.state_dict(),
            "generator": self.generator.get_state(), "generator_device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "epoch_order": self.epoch_order, "last_loss": self.last_loss,
            "history": self.history, "events": self.events, "pending": dict(self._pending)})

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` atomically: a temporary file, then a rename. If writing fails the
        previous checkpoint at ``path`` is untouched and no temporary file is left."""
        path = Path(path)
        state = self.state()
        write_file_atomic(path, lambda file: torch.save(state, file))
        return path

    @classmethod
    def resume(cls, path: str | os.PathLike, **overrides: Any) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save_checkpoint`; ``overrides``
        (e.g. ``steps=``, ``out=``, ``data=``) are passed to the constructor."""
        state = read_checkpoint(path)
        try:
            config = TrainConfig(**state["config"])
        except TypeError as error:
            raise ValueError(f"{path}: the checkpoint's settings do not fit this version of klteach "
                             f"({error})") from None
        trainer = cls(config, **overrides)
        trainer.load_state(state)
        return trainer

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; a checkpoint from a different model shape is refused clearly."""
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise ValueError(f"not a klteach checkpoint: it lacks {', '.join(missing)}")
        cfg = state["config"]
        for key in COMPATIBLE_KEYS:
            if key in cfg and cfg[key] != getattr(self.config, key):
                raise ValueError(f"checkpoint is incompatible: it has {key}={cfg.get(key)!r}, "
                                 f"this run has {key}={getattr(self.config, key)!r}")
        model = type(self.student.backbone).__name__
        if state.get("model", model) != model:
            raise ValueError(f"checkpoint is incompatible: its model is a {state['model']}, this run "
                             f"builds a {model} (arch={self.config.arch!r} on {self.device.type})")
        try:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimiser.load_state_dict(state["optimiser"])
            self.normaliser.load_state_dict(state["normaliser"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"checkpoint is incompatible with this model: {error}") from None
        if state.get("generator_device", "cpu") == self.device.type:
            self.generator.set_state(state["generator"])
        else:
            warnings.warn(f"checkpoint was written on {state['generator_device']}, this run is on "
                          f"{self.device.type}: the augmentation random stream restarts from the seed",
                          stacklevel=2)
            self.generator.manual_seed(self.config.seed + state["step"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch_order = state["epoch_order"].to(self.device)
        self.step_count = state["step"]
        self.last_loss = state["last_loss"]
        self._loss_tensor = None
        self.history = list(state["history"])
        self.events = list(state["events"])
        with self._lock:
            self._pending = dict(state.get("pending", {}))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file (tensors and plain data only), or raise a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a klteach checkpoint (no settings in it)")
    return state


def _cpu_copy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a CPU copy (dicts, lists and tuples are walked)."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value) for value in obj)
    return copy.deepcopy(obj)


# ---------------------------------------------------------------------- interrupts and files
@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it to the handler that was in place
    (by default: ``KeyboardInterrupt`` right after the block). The block runs to its end.
    Signals only reach the main thread, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        _restore_sigint(previous)
    for frame in held:   # only when the block succeeded; an error stops the caller anyway
        _deliver_sigint(previous, frame)


def _restore_sigint(handler: Any) -> None:
    # None: the handler was not installed from Python; the default is the closest we can restore
    signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)


def _deliver_sigint(handler: Any, frame: Any) -> None:
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


class StopOnInterrupt:
    """Within ``run()``: the first Ctrl-C asks the loop to stop at the next step boundary
    (``requested``); a second raises ``KeyboardInterrupt`` (``aborted``). Main thread only."""

    def __init__(self) -> None:
        self.requested = self.aborted = self._installed = False
        self._previous: Any = None

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            _restore_sigint(self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.aborted = True
            raise KeyboardInterrupt
        self.requested = True
        if dist.is_main():
            print("\nCtrl-C: stopping after this step (press again to abort at once)", file=sys.stderr)


def write_file_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename: readers see the
    old file or the new one, never half of one. If ``write`` fails the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so it is never half-written."""
    write_file_atomic(path, lambda file: file.write(json.dumps(obj, indent=2).encode()))


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (the whole file is rewritten each time, so it
    always matches the checkpoint's history, also after a resume)."""
    write_file_atomic(path, lambda file: file.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, desc="training", unit="step")


def train(**kwargs: Any) -> Trainer:
    """Build a :class:`Trainer` from keyword settings, run it to the end and return it."""
    trainer = Trainer(TrainConfig(**kwargs))
    trainer.run(progress=False)
    return trainer


__all__ = ["TrainConfig", "Trainer", "TrainingError", "train", "validate_config", "LIVE_SETTINGS",
           "RESTART_SETTINGS", "NORMALISERS", "cross_view_loss", "resolve_device", "check_batch_size",
           "read_checkpoint", "hold_interrupts", "write_file_atomic", "write_json_atomic"]
