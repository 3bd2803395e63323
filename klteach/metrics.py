"""Diagnostics: is the model collapsing, and are its clusters any good?

Two collapses threaten clustering SSL (see ``paper/equations.md``, "A note on temperatures"):

- **one cluster**: every sample goes to the same cluster (or to a handful); the entropy of the
  *mean* assignment falls, so the effective number of clusters drops towards 1;
- **uniform**: every sample's assignment goes flat; the *mean per-sample* entropy rises
  towards ``log K`` while the mean assignment looks perfectly balanced.
"""
from __future__ import annotations

import math

import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from .theory import cluster_prior, entropy

ONE_CLUSTER_THRESHOLD = 3.0
"""At most this many effective clusters (fewer for small K, see :func:`one_cluster_threshold`):
collapsed to one cluster, or to a handful of them."""
UNIFORM_THRESHOLD = 0.9
"""Mean per-sample entropy above this fraction of ``log K``: collapsed to the uniform output."""


def effective_clusters(p: Tensor) -> float:
    """``exp(H(π))`` with ``π`` the mean assignment (eq. 8): K when balanced, 1 when collapsed."""
    return float(entropy(cluster_prior(p.float())).exp())


def clusters_used(p: Tensor) -> int:
    """How many distinct clusters win the argmax for at least one sample."""
    return int(p.argmax(-1).unique().numel())


def mean_entropy(p: Tensor) -> float:
    """Mean per-sample entropy of the assignments (nats): ``log K`` means uniform outputs."""
    return float(entropy(p.float()).mean())


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension standard deviation of unit-norm embeddings: 0 when all ``z`` coincide."""
    return float(torch.nn.functional.normalize(z.float(), dim=-1).std(0).mean())


def one_cluster_threshold(clusters: int) -> float:
    """Effective clusters at or below which K clusters count as collapsed: ``min(3, 1 + K/10)``
    (3 for K = 20, 1.8 for K = 8, 1.2 for K = 2)."""
    return min(ONE_CLUSTER_THRESHOLD, 1.0 + clusters / 10)


def collapse_state(effective: float, mean_ent: float, clusters: int) -> str:
    """``"one-cluster"``, ``"uniform"`` or ``"healthy"``, from the two diagnostics above."""
    if effective <= one_cluster_threshold(clusters):
        return "one-cluster"
    if mean_ent >= UNIFORM_THRESHOLD * math.log(clusters):
        return "uniform"
    return "healthy"


@torch.no_grad()
def knn_accuracy(train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Weighted k-nearest-neighbour accuracy (Wu et al. 2018, as in DINO): cosine similarity,
    the ``k`` nearest training samples vote with weight ``exp(sim / temperature)``."""
    train_z = torch.nn.functional.normalize(train_z.float(), dim=-1)
    test_z = torch.nn.functional.normalize(test_z.float(), dim=-1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, train_z.shape[0])
    correct = 0
    for start in range(0, test_z.shape[0], chunk):
        sims, idx = (test_z[start:start + chunk] @ train_z.T).topk(k, dim=-1)
        votes = torch.zeros(sims.shape[0], classes, device=sims.device, dtype=sims.dtype)
        votes.scatter_add_(1, train_y[idx].long(), (sims / temperature).exp())
        correct += int((votes.argmax(-1) == test_y[start:start + chunk].to(votes.device)).sum())
    return correct / test_z.shape[0]


def cluster_scores(assignments: Tensor, labels: Tensor) -> dict[str, float]:
    """NMI and ARI of hard cluster assignments against true labels (scikit-learn)."""
    a, y = assignments.cpu().numpy(), labels.cpu().numpy()
    return {"nmi": float(normalized_mutual_info_score(y, a)),
            "ari": float(adjusted_rand_score(y, a))}


def assignment_metrics(p: Tensor) -> dict[str, float]:
    """The collapse diagnostics of a matrix of assignments ``p`` ``(N, K)``."""
    eff, ent = effective_clusters(p), mean_entropy(p)
    return {"effective_clusters": eff, "clusters_used": clusters_used(p), "mean_entropy": ent,
            "collapse": collapse_state(eff, ent, p.shape[-1])}
