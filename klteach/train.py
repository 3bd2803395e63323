"""The student/teacher loop of clustering SSL, as alternating-direction K-L optimisation.

:meth:`Trainer.train_step` is one step, top to bottom:

1. two augmented views of a batch;
2. the **teacher** (an EMA of the student, or a copy every T steps: eq. 7) embeds them and a
   :mod:`~klteach.normalisers` normaliser turns its output into the target ``q`` (eq. 14-16
   inverse priors, eq. 23 centering, ...);
3. the **student** gives ``log p`` (eq. 6) on the same views;
4. the loss: the cross-entropy (eq. 3/11) of each view's ``q`` with the *other* view's ``log p``,
   which is the K-L divergence (2) up to the teacher's entropy;
5. a gradient step of the student;
6. the teacher follows the student.

Around it: the loss (:mod:`klteach.loss`), the settings (:mod:`klteach.config`; :meth:`Trainer.set`
changes them during a run), evaluation (:mod:`klteach.evaluation`), a whole run (:mod:`klteach.run`),
its files (:mod:`klteach.checkpoint`) and stopping (:mod:`klteach.interrupts`). A step is all or
nothing (Ctrl-C and SIGTERM wait for it; a failed step is undone), so a run always stops at a step
boundary and its checkpoint continues it bit for bit on a CPU. Under ``torchrun`` each process
takes a disjoint share of every global batch (:mod:`klteach.dist`).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint, dist, evaluation, theory
from . import data as data_lib
from . import run as run_lib
from .augment import augmentation_for
from .checkpoint import read_checkpoint, write_file_atomic, write_json_atomic
from .config import (
    TrainConfig,
    check_batch_size,
    resolve_device,
    setting_info,
    settings_of_kind,
    validate_config,
    with_changes,
)
from .interrupts import hold_interrupts
from .loss import StudentLogP, autocast_context, cross_view_loss
from .models import ClusteringModel, build_model
from .normalisers import NORMALISERS, InversePrior, Normaliser, make_normaliser

LIVE_SETTINGS = settings_of_kind("live")
"""Settings :meth:`Trainer.set` applies at the next step without restarting the run."""
RESTART_SETTINGS = settings_of_kind("restart")
"""Settings that rebuild the model and restart the run when changed with :meth:`Trainer.set`."""
NAN_CHECK_EVERY = 50
"""On a GPU the loss is checked for NaN/Inf every this many steps (each check waits for the GPU)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names the step and the likely cause."""


class Trainer:
    """Runs the loop for one :class:`TrainConfig`: ``train_step()``/``step()``, ``run()``,
    ``set()``, ``evaluate()``, ``assignments()``, ``save_checkpoint()``, ``Trainer.resume()``."""

    def __init__(self, config: TrainConfig | None = None, data: data_lib.Dataset | None = None,
                 **overrides: Any) -> None:
        """``Trainer(TrainConfig(...))`` or ``Trainer(dataset="digits", normaliser="none", ...)``;
        ``data`` passes an already loaded :class:`~klteach.data.Dataset` instead of loading one."""
        config = validate_config(with_changes(config or TrainConfig(), overrides))
        self.device = resolve_device(config.device)
        dist.init_from_env(self.device)
        dataset = data.to(self.device) if data is not None else self._load_data(config)
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.interrupted: int | None = None
        """The signal (SIGINT, SIGTERM) that stopped the last :meth:`run`, else None."""
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._install(config, dataset)

    def _load_data(self, config: TrainConfig) -> data_lib.Dataset:
        with dist.main_process_first():   # rank 0 downloads/extracts, the others then read
            return data_lib.load_dataset(config.dataset, device=self.device, data_dir=config.data_dir)

    # ------------------------------------------------------------------ construction
    def _install(self, config: TrainConfig, dataset: data_lib.Dataset) -> None:
        """Build the model, optimiser and normaliser for ``config`` and start at step 0. Everything
        is built before anything is replaced: if building fails, the trainer is as it was."""
        check_batch_size(config.batch_size, dataset)
        if config.epochs is not None:
            config = with_changes(config, {"steps": math.ceil(config.epochs * dataset.train.shape[0]
                                                              / config.batch_size)})
        dtype = {"float32": None, "bfloat16": torch.bfloat16}.get(
            config.precision, torch.bfloat16 if self.device.type == "cuda" else None)
        channels_last = dtype is not None and dataset.kind == "images"
        student = self._build_model(config, dataset, channels_last)
        teacher = copy.deepcopy(student).requires_grad_(False)
        student_log_p: nn.Module = StudentLogP(student, self.device, dtype)
        if dist.is_distributed():   # averages the gradients of all processes in backward()
            student_log_p = nn.parallel.DistributedDataParallel(
                student_log_p, device_ids=[self.device] if self.device.type == "cuda" else None)
        normaliser: Normaliser = self._make_normaliser(config)
        optimiser = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # all is built: from here on nothing can fail, and the trainer changes as a whole
        self.config, self.dataset, self.augment = config, dataset, augmentation_for(dataset)
        self.autocast_dtype, self.channels_last = dtype, channels_last
        self.student, self.teacher, self.normaliser, self.optimiser = student, teacher, normaliser, optimiser
        self.student_log_p = torch.compile(student_log_p) if config.compile else student_log_p
        self.teacher_embed = torch.compile(teacher.embed) if config.compile else teacher.embed
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.epoch_order = torch.empty(0, dtype=torch.long, device=self.device)
        self.step_count = 0
        self._loss: Tensor | float = float("nan")

    def _build_model(self, config: TrainConfig, dataset: data_lib.Dataset, channels_last: bool) -> ClusteringModel:
        """The student, initialised from ``config.seed`` without touching the process's random state."""
        arch = config.arch
        if arch == "auto" and self.device.type == "cuda" and dataset.kind == "images" \
                and dataset.train.shape[-1] >= 32:
            arch = "resnet18"
        small_input = dataset.kind == "vectors" or dataset.train.shape[-1] < 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(arch, tuple(dataset.train.shape[1:]), config.clusters, dim=config.dim,
                                hidden=256 if small_input else 512,
                                learnable_prototypes=config.learnable_prototypes,
                                centred_prototypes=config.centred_prototypes, width=config.width)
        model = model.to(self.device, torch.float32)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
        return dist.sync_batchnorm(model, self.device)   # batch statistics of the global batch

    def _make_normaliser(self, config: TrainConfig) -> Normaliser:
        return make_normaliser(config.normaliser, config.clusters, config.lam, config.prior, config.prior_momentum,
                               config.centre_momentum).to(self.device, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The networks' precision: bfloat16 autocast (``precision``: auto on a GPU, or bfloat16), else none."""
        return autocast_context(self.device, self.autocast_dtype)

    # ------------------------------------------------------------------ changing settings
    def set(self, **changes: Any) -> None:
        """Change settings. Live ones (:data:`LIVE_SETTINGS`) apply at the next step; restart ones
        (:data:`RESTART_SETTINGS`) rebuild the model and restart at step 0. Values are converted
        and checked as the constructor does; a bad value, or a setting fixed at construction,
        raises ``ValueError`` at once and changes nothing."""
        fixed = [name for name in changes if setting_info(name).kind == "fixed"]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change during a run (fixed when the trainer is "
                             f"built); live settings: {', '.join(LIVE_SETTINGS)}; settings that restart "
                             f"the run: {', '.join(RESTART_SETTINGS)}")
        with self._lock:
            config = with_changes(self.config, {**self._pending, **changes})
            if config.dataset == self.config.dataset:
                check_batch_size(config.batch_size, self.dataset)
            self._pending.update({name: getattr(config, name) for name in changes})

    def pending_changes(self) -> dict[str, Any]:
        """The changes queued by :meth:`set` that the next step will apply."""
        with self._lock:
            return dict(self._pending)

    def _apply_pending(self) -> None:
        """Apply the settings queued by :meth:`set` (they leave the queue either way). If a
        restart cannot be built (e.g. a new dataset does not load) nothing else changes."""
        with self._lock:
            changes, self._pending = self._pending, {}
        if not changes:
            return
        config = with_changes(self.config, changes)
        if "steps" in changes:       # a new planned total replaces the one --epochs gave
            config = with_changes(config, {"epochs": None})
        restart = any(name in RESTART_SETTINGS and value != getattr(self.config, name)
                      for name, value in changes.items())
        event = {"step": self.step_count, "event": "set", "changes": changes, "restart": restart}
        if restart:
            same_data = config.dataset == self.config.dataset and config.data_dir == self.config.data_dir
            self._install(config, self.dataset if same_data else self._load_data(config))
            self.history = []
        else:
            prior_changed = config.prior != self.config.prior and config.normaliser == "inverse-prior"
            if config.normaliser != self.config.normaliser or prior_changed:
                normaliser = self._make_normaliser(config)
                if isinstance(normaliser, InversePrior) and config.prior == "full":   # not uniform until due
                    normaliser.set_full_prior(evaluation.whole_set_prior(
                        self.teacher, self.dataset.train, config.tau_teacher, self.autocast))
                self.normaliser = normaliser
            elif isinstance(self.normaliser, InversePrior):
                self.normaliser.lam = config.lam
            for group in self.optimiser.param_groups:
                group["weight_decay"] = config.weight_decay
            self.config = config
        self.events.append(event)

    # ------------------------------------------------------------------ the step
    def train_step(self) -> None:
        """One step of the loop (see the module's docstring); the loss is then :attr:`last_loss`.

        A step is all or nothing: SIGINT/SIGTERM during it wait until it ends, and if it fails
        (a NaN loss, an error) everything it changed is put back, so the trainer stays at step n."""
        with hold_interrupts():
            self._apply_pending()
            cfg, undo = self.config, checkpoint.undo_point(self)
            try:
                self._follow_schedules()
                # 1. two augmented views of the next global batch; this process keeps its share
                views = self._two_views(self._next_batch())
                self._train_mode()
                # 2. the teacher's target q: its embeddings through the normaliser (eq. 7, 14-16, 23)
                with torch.no_grad():
                    with self.autocast():
                        z_teacher = self.teacher_embed(views)
                    w_teacher = self.teacher.prototypes.unit_weights.float()
                    q_a, q_b = self.normaliser(z_teacher.float(), w_teacher, cfg.tau_teacher).chunk(2)
                # 3. the student's log p (eq. 6)
                log_p_a, log_p_b = self.student_log_p(views, cfg.tau_student, cfg.student_batchnorm).chunk(2)
                # 4. each view's q supervises the other view's log p (eq. 3/11)
                loss = cross_view_loss([q_a, q_b], [log_p_a, log_p_b])
                mean_loss = dist.all_mean(loss.detach())          # the same on every process
                if self.device.type == "cpu" or self.step_count % NAN_CHECK_EVERY == 0:
                    self.check_finite(mean_loss)                  # on a GPU each check waits for it
                # 5. the student's gradient step (DDP averages the gradients over processes)
                self.optimiser.zero_grad(set_to_none=True)
                loss.backward()
            except BaseException:
                checkpoint.roll_back(self, undo)
                raise
            self.optimiser.step()
            self.step_count += 1
            # 6. the teacher follows the student (eq. 7)
            self._update_teacher()
            self._loss = mean_loss

    def step(self) -> float:
        """:meth:`train_step`, then its loss as a number (on a GPU reading it waits for the step
        to finish; :meth:`run` does not read it between evaluations)."""
        self.train_step()
        return self.last_loss

    @property
    def last_loss(self) -> float:
        """The loss of the last step (NaN before the first); under ``torchrun`` the mean over
        processes. Kept as a tensor and read from the device only when asked."""
        loss = self._loss
        return loss if isinstance(loss, float) else float(loss)

    @last_loss.setter
    def last_loss(self, value: float) -> None:
        self._loss = float(value)

    def _follow_schedules(self) -> None:
        """This step's learning rate (linear warm-up, then constant or cosine) and, when due, a new
        whole-set prior (eq. 15)."""
        cfg = self.config
        if isinstance(self.normaliser, InversePrior) and cfg.prior == "full" and self._prior_due():
            self.normaliser.set_full_prior(self.estimate_full_prior())
        lr = cfg.lr
        if cfg.warmup_steps and self.step_count < cfg.warmup_steps:
            lr *= (self.step_count + 1) / cfg.warmup_steps
        elif cfg.lr_schedule == "cosine" and cfg.steps:
            progress = min(1.0, (self.step_count - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
            lr *= 0.5 * (1 + math.cos(math.pi * progress))
        for group in self.optimiser.param_groups:
            group["lr"] = lr

    def _prior_due(self) -> bool:
        every = self.config.prior_every or max(1, self.dataset.train.shape[0] // self.config.batch_size)
        return self.step_count % every == 0

    def _next_batch(self) -> Tensor:
        """The next global batch: a fresh random permutation every epoch, no sample twice.
        Every process draws the same permutation (same seed), so they agree on the batch."""
        b = self.config.batch_size
        if self.epoch_order.numel() < b:
            self.epoch_order = torch.randperm(self.dataset.train.shape[0], generator=self.generator,
                                              device=self.device)
        idx, self.epoch_order = self.epoch_order[:b], self.epoch_order[b:]
        return self.dataset.train[idx]

    def _two_views(self, x: Tensor) -> Tensor:
        """Both views of this process's share of ``x``, stacked. Every process augments the whole
        global batch with the shared generator, then keeps its share: the random streams stay
        the same on all processes (one checkpoint fits all) and N processes compute what one does."""
        views = torch.cat([dist.shard(self.augment(x, self.generator).float()) for _ in range(2)])
        return views.contiguous(memory_format=torch.channels_last) if self.channels_last else views

    def _train_mode(self) -> None:
        self.student.train()
        # the teacher, like the student, normalises with the batch's statistics unless told otherwise
        self.teacher.train(self.config.teacher_batch_statistics)
        self.normaliser.train()

    @torch.no_grad()
    def _update_teacher(self) -> None:
        """Eq. (7): the teacher takes the student's parameters, by a copy every ``copy_every``
        steps or, when that is 0, by an exponential moving average with ``momentum``."""
        cfg = self.config
        if cfg.copy_every:
            if self.step_count % cfg.copy_every == 0:
                self.teacher.load_state_dict(self.student.state_dict())
            return
        for teacher_p, student_p in zip(self.teacher.parameters(), self.student.parameters()):
            teacher_p.lerp_(student_p.detach(), 1.0 - cfg.momentum)
        for teacher_b, student_b in zip(self.teacher.buffers(), self.student.buffers()):
            teacher_b.copy_(student_b)

    def check_finite(self, loss: Tensor | float) -> None:
        """Raise :class:`TrainingError` naming the step and the likely cause if ``loss`` is NaN/Inf."""
        if not math.isfinite(float(loss)):
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

    # ------------------------------------------------------------------ evaluation
    def embed_all(self, model: ClusteringModel, images: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor]:
        """Backbone features and unit-norm embeddings of ``images``, in eval mode, in batches."""
        return evaluation.embed_all(model, images, self.autocast, batch)

    def estimate_full_prior(self) -> Tensor:
        """Eq. (15) over the whole training set with the teacher (see :func:`klteach.evaluation.whole_set_prior`)."""
        return evaluation.whole_set_prior(self.teacher, self.dataset.train, self.config.tau_teacher, self.autocast)

    def knn_bank_indices(self) -> Tensor:
        """The training samples of the kNN reference set (see :func:`klteach.evaluation.knn_bank_indices`)."""
        return evaluation.knn_bank_indices(self.dataset.train.shape[0], self.config.eval_size,
                                           self.dataset.train.device)

    def evaluate(self) -> dict[str, Any]:
        """Collapse diagnostics, cluster sizes, KL(teacher‖student), kNN accuracy and NMI/ARI on
        held-out data (see :func:`klteach.evaluation.evaluate`)."""
        return evaluation.evaluate(self)

    @torch.no_grad()
    def assignments(self, images: Tensor | None = None) -> Tensor:
        """The student's posterior (eq. 6) on ``images`` (default: the test set)."""
        _, z = self.embed_all(self.student, self.dataset.test if images is None else images)
        return theory.sphere_posterior(z, self.student.prototypes.unit_weights.float(), self.config.tau_student)

    # ------------------------------------------------------------------ running and checkpoints
    def run(self, steps: int | None = None, callback: Callable[[dict], Any] | None = None,
            progress: bool = False, should_stop: Callable[[], bool] | None = None) -> list[dict]:
        """Take ``steps`` steps (default: the rest of ``config.steps``), evaluating every
        ``eval_every`` steps and at the end, writing the run's files to ``config.out``; stops
        cleanly on ``should_stop()``, Ctrl-C or SIGTERM (see :func:`klteach.run.run`)."""
        return run_lib.run(self, steps, callback, progress, should_stop)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly where it stands (see
        :func:`klteach.checkpoint.trainer_state`)."""
        return checkpoint.trainer_state(self)

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` atomically, with a checksum (see :func:`klteach.checkpoint.save_checkpoint`)."""
        checkpoint.save_checkpoint(path, self.state())
        return Path(path)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; a checkpoint of another run (other settings, model or data) is
        refused, naming the difference (see :func:`klteach.checkpoint.load_trainer_state`)."""
        checkpoint.load_trainer_state(self, state)
        with self._lock:
            self._pending = dict(state.get("pending", {}))

    @classmethod
    def resume(cls, path: str | os.PathLike, data: data_lib.Dataset | None = None,
               state: dict[str, Any] | None = None, **overrides: Any) -> Trainer:
        """The trainer saved at ``path``, ready to continue. ``overrides`` may change how far it
        goes (``steps``, ``epochs``) and result-neutral settings (``out``, ``device``, ...);
        ``data`` passes an already loaded dataset, ``state`` the checkpoint already read."""
        state = read_checkpoint(path) if state is None else state
        trainer = cls(checkpoint.resumed_config(path, state, overrides), data)
        trainer.load_state(state)
        return trainer


def train(**kwargs: Any) -> Trainer:
    """Build a :class:`Trainer` from keyword settings, run it to the end and return it."""
    trainer = Trainer(TrainConfig(**kwargs))
    trainer.run(progress=False)
    return trainer


__all__ = ["TrainConfig", "Trainer", "TrainingError", "train", "validate_config", "LIVE_SETTINGS",
           "RESTART_SETTINGS", "NORMALISERS", "cross_view_loss", "resolve_device", "check_batch_size",
           "read_checkpoint", "hold_interrupts", "write_file_atomic", "write_json_atomic"]
