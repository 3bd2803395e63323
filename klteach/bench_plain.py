"""The library's training step against the same step written as a minimal PyTorch loop.

:class:`PlainLoop` is what a reader would write from the paper in twenty lines: same model,
batch, views, normaliser, loss, optimiser and teacher update as :meth:`Trainer.train_step`, and
none of its bookkeeping. :func:`compare_with_plain_loop` times both on the same machine, in
alternation, so the ratio of their speeds is what that bookkeeping costs.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .bench_env import load_average
from .bench_measure import check_count, time_steps, torch_threads
from .loss import autocast_context
from .normalisers import make_normaliser
from .train import Trainer


class PlainLoop:
    """The training step of :class:`~klteach.train.Trainer` as a minimal PyTorch loop.

    Same model (a copy of the trainer's student), batch, two augmented views, precision and
    memory format, teacher normaliser, cross-view cross-entropy (eq. 3 between views), AdamW and
    EMA teacher (eq. 7); none of the trainer's bookkeeping (live settings, undo point, interrupt
    guard, NaN check, schedules).
    """

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.config
        self.config, self.device = cfg, trainer.device
        self.images = trainer.dataset.train
        self.augment = trainer.augment
        self.autocast_dtype, self.channels_last = trainer.autocast_dtype, trainer.channels_last
        self.student = copy.deepcopy(trainer.student).train()
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.normaliser = make_normaliser(cfg.normaliser, cfg.clusters, cfg.lam, cfg.prior, cfg.prior_momentum,
                                          cfg.centre_momentum).to(self.device)
        self.optimiser = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)

    def loss(self, views: torch.Tensor) -> torch.Tensor:
        """Cross-view cross-entropy of the two halves of ``views`` (eq. 3; teacher q, student log p)."""
        cfg = self.config
        with autocast_context(self.device, self.autocast_dtype):
            with torch.no_grad():
                z_teacher = self.teacher.embed(views)
            z_student = self.student.embed(views)
        # logits, normaliser and loss in float32, as the trainer computes them
        with torch.no_grad():
            q = self.normaliser(z_teacher.float(), self.teacher.prototypes.unit_weights, cfg.tau_teacher)
        log_p = (z_student.float() @ self.student.prototypes.unit_weights.T / cfg.tau_student).log_softmax(-1)
        q_a, q_b = q.chunk(2)
        log_p_a, log_p_b = log_p.chunk(2)
        return -((q_a * log_p_b).sum(-1).mean() + (q_b * log_p_a).sum(-1).mean()) / 2

    def step(self) -> None:
        """Draw a batch, make two views, take an AdamW step, move the teacher (eq. 7, EMA)."""
        index = torch.randint(len(self.images), (self.config.batch_size,), generator=self.generator,
                              device=self.device)
        x = self.images[index]
        views = torch.cat([self.augment(x, self.generator), self.augment(x, self.generator)]).float()
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        loss = self.loss(views)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.lerp_(s, 1.0 - self.config.momentum)
            for teacher_buffer, student_buffer in zip(self.teacher.buffers(), self.student.buffers()):
                teacher_buffer.copy_(student_buffer)


def compare_with_plain_loop(trainer: Trainer, steps: int, warmup: int,
                            threads: Sequence[int]) -> list[dict[str, Any]]:
    """images/s of ``trainer.train_step()`` against :class:`PlainLoop` with each number of CPU threads.

    After ``warmup`` untimed steps of each, the two alternate step by step on a CPU (so a change
    in the machine's load hits both alike) and in blocks of ``steps`` on a GPU (a sync per step
    would slow both). ``ratio`` = library images/s / plain images/s (1 = no overhead), by wall
    time; ``cpu_ratio`` by process CPU time, steadier on a shared machine."""
    check_count(steps, "bench_steps", 1)
    check_count(warmup, "warmup", 0)
    plain = PlainLoop(trainer)
    block = 1 if trainer.device.type == "cpu" else steps
    rows = []
    for count in threads:
        check_count(count, "threads", 1)
        with torch_threads(count):
            load_before = load_average()
            time_steps(trainer.train_step, warmup, trainer.device)
            time_steps(plain.step, warmup, trainer.device)
            library, plain_time = [0.0, 0.0], [0.0, 0.0]
            for _ in range(steps // block):
                for total, step in ((library, trainer.train_step), (plain_time, plain.step)):
                    wall, cpu = time_steps(step, block, trainer.device)
                    total[0] += wall
                    total[1] += cpu
        images = trainer.config.batch_size * steps
        rows.append({"threads": count, "timed_steps": steps, "warmup_steps": warmup,
                     "library_images_per_s": images / library[0], "plain_images_per_s": images / plain_time[0],
                     "ratio": plain_time[0] / library[0], "cpu_ratio": plain_time[1] / library[1],
                     "library_seconds": library[0], "plain_seconds": plain_time[0],
                     "library_cpu_seconds": library[1], "plain_cpu_seconds": plain_time[1],
                     "load_average_1min_before": load_before, "load_average_1min_after": load_average()})
    return rows


__all__ = ["PlainLoop", "compare_with_plain_loop"]
