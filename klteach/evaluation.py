"""How a run is measured: embeddings of a whole set, the whole-set prior, and an evaluation.

An evaluation (:func:`evaluate`) embeds the held-out set with the student and the teacher and
reports the collapse diagnostics of :mod:`klteach.metrics`, the cluster sizes of eq. (8) for the
student's ``p`` and the teacher's ``q``, KL(q‖p) of eq. (2), and, when labels exist, weighted kNN
accuracy and NMI/ARI. It never changes training: models are put in eval mode (the step puts
them back in training mode) and the kNN reference set is drawn with its own generator.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import dist, metrics, theory
from .data import to_float
from .models import ClusteringModel

if TYPE_CHECKING:
    from .train import Trainer

Autocast = Callable[[], AbstractContextManager[Any]]
"""A function giving the forward passes' precision context (see :meth:`Trainer.autocast`)."""


@torch.no_grad()
def embed_all(model: ClusteringModel, images: Tensor, autocast: Autocast, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """Backbone features and unit-norm embeddings (float32) of ``images``, in eval mode, in batches."""
    model.eval()
    feats, zs = [], []
    for start in range(0, images.shape[0], batch):
        x = to_float(images[start:start + batch])
        with autocast():
            f = model.backbone(x)
            z = model.head(f)
        zs.append(z.float())
        feats.append(f.float().flatten(1))
    return torch.cat(feats), torch.cat(zs)


@torch.no_grad()
def whole_set_prior(teacher: ClusteringModel, images: Tensor, tau: float, autocast: Autocast) -> Tensor:
    """Eq. (15): ``π_k = (1/N) Σ_x p_k(x)`` over ``images`` with the teacher. Under ``torchrun``
    each process embeds every ``world_size``-th image and the means are combined."""
    _, z = embed_all(teacher, images[dist.rank()::dist.world_size()], autocast)
    p = theory.sphere_posterior(z, teacher.prototypes.unit_weights.float(), tau)
    return dist.global_mean(p) if dist.is_distributed() else theory.cluster_prior(p)


def knn_bank_indices(train_size: int, bank_size: int, device: torch.device | str = "cpu") -> Tensor:
    """A fixed random subset of ``bank_size`` training samples for the kNN reference set. Random,
    not the first ones: image folders are stored class by class, so the first 2000 CIFAR-sample
    images hold only two classes. Seeded apart from training, so evaluating never changes it."""
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(0))
    return order[:bank_size].to(device)


@torch.no_grad()
def evaluate(trainer: Trainer) -> dict[str, Any]:
    """One evaluation row of ``metrics.jsonl`` for ``trainer`` at its current step (computed by
    this process alone, also under ``torchrun``)."""
    cfg, ds = trainer.config, trainer.dataset
    with dist.local_only():
        bank = knn_bank_indices(ds.train.shape[0], cfg.eval_size, ds.train.device)
        feats_bank, _ = embed_all(trainer.student, ds.train[bank], trainer.autocast)
        feats_test, z_student = embed_all(trainer.student, ds.test, trainer.autocast)
        _, z_teacher = embed_all(trainer.teacher, ds.test, trainer.autocast)
        p = theory.sphere_posterior(z_student, trainer.student.prototypes.unit_weights.float(), cfg.tau_student)
        trainer.normaliser.eval()
        q = trainer.normaliser(z_teacher, trainer.teacher.prototypes.unit_weights.float(), cfg.tau_teacher)
    result: dict[str, Any] = {"step": trainer.step_count, "loss": trainer.last_loss,
                              **metrics.assignment_metrics(p),
                              "kl_teacher_student": float(theory.kl_divergence(q, p)),
                              "embedding_std": metrics.embedding_std(z_student),
                              "normaliser": cfg.normaliser,
                              "cluster_sizes_student": theory.cluster_prior(p).tolist(),
                              "cluster_sizes_teacher": theory.cluster_prior(q).tolist()}
    if ds.test_labels is not None and ds.train_labels is not None:
        result["knn_accuracy"] = metrics.knn_accuracy(feats_bank, ds.train_labels[bank], feats_test, ds.test_labels)
        result.update(metrics.cluster_scores(p.argmax(-1), ds.test_labels))
    return result
