"""Diagnostics: is the model collapsing, and are its clusters any good?

Collapse threatens clustering SSL in three ways (see ``notebooks/equations.md``, "A note on
temperatures"), told apart by :func:`collapse_state`:

- **one cluster**: every sample goes to the same cluster (or to a handful); the entropy of the
  *mean* assignment falls, so the effective number of clusters drops towards 1;
- **uniform**: every sample's assignment goes flat; the *mean per-sample* entropy rises
  towards ``log K`` while the mean assignment looks perfectly balanced;
- **partial**: the soft assignments still spread over many clusters, but every sample's most
  likely cluster is one of only a few: most clusters win no sample at all.
"""
from __future__ import annotations

import math
from typing import Literal, TypedDict, get_args

import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from .theory import cluster_prior, entropy

CollapseState = Literal["healthy", "partial", "one-cluster", "uniform"]
COLLAPSE_STATES: tuple[CollapseState, ...] = get_args(CollapseState)
COLLAPSE_WORDS: dict[str, str] = {
    "healthy": "healthy", "partial": "partial collapse",
    "one-cluster": "one-cluster collapse", "uniform": "uniform collapse"}
"""What each state is called wherever a verdict is shown (demo table, dashboard, chapters)."""

ONE_CLUSTER_THRESHOLD = 3.0
"""At most this many effective clusters (fewer for small K, see :func:`one_cluster_threshold`):
collapsed to one cluster, or to a handful of them."""
UNIFORM_THRESHOLD = 0.9
"""Mean per-sample entropy above this fraction of ``log K``: collapsed to the uniform output."""
PARTIAL_THRESHOLD = 1 / 3
"""At most this fraction of the K clusters winning any sample (or a single one): partial collapse
(see :func:`collapse_state` for why a third)."""


class AssignmentMetrics(TypedDict):
    """The collapse diagnostics of one matrix of assignments (:func:`assignment_metrics`)."""

    effective_clusters: float
    clusters_used: int
    mean_entropy: float
    collapse: CollapseState


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


def collapse_state(effective: float, mean_ent: float, clusters: int, used: int,
                   samples: int | None = None) -> CollapseState:
    """``"one-cluster"``, ``"uniform"``, ``"partial"`` or ``"healthy"``, checked in that order.

    ``effective``: effective clusters (:func:`effective_clusters`); ``mean_ent``: mean per-sample
    entropy (:func:`mean_entropy`); ``clusters``: K; ``used``: clusters that win at least one
    sample (:func:`clusters_used`); ``samples``: how many samples were assigned (``N`` samples
    can use at most ``min(K, N)`` clusters).

    - one-cluster: ``effective ≤ min(3, 1 + K/10)`` (:func:`one_cluster_threshold`);
    - uniform: ``mean_ent ≥ 0.9 log K``;
    - partial: ``used ≤ K/3``, or a single cluster used: most clusters win no sample.

    Why clusters used: effective clusters come from the *soft* assignments, so rows that stay
    fairly flat keep them high while every argmax piles into a few clusters. A CIFAR-10 sample
    run with centering (K = 10, ``benchmarks/results/cifar_sample_cpu.json``) ended with 5.6
    effective clusters but every sample's argmax in 2 of them: by the first two rules, healthy.

    Why a third: on digits (K = 20, 1000 steps, seeds 0-2, judged every 100 steps) the runs that
    stay healthy never used fewer than 11 clusters (55 %; inverse priors at step 100), centering
    ended with 12-15, batch norm 16-19, Sinkhorn 20; with inverse priors, K from 5 to 80 used
    over 90 % (chapter 6). The CIFAR run above used 20 %. A third lies between, with a margin
    of about 1.6 on either side. An untrained network, whose argmaxes all fall in one cluster
    while its rows are nearly flat, is partial too: it has not spread its samples yet.
    """
    if clusters < 1 or not 0 <= used <= clusters:
        raise ValueError(f"need clusters >= 1 and 0 <= used <= clusters, got clusters={clusters}, used={used}")
    if effective <= one_cluster_threshold(clusters):
        return "one-cluster"
    if mean_ent >= UNIFORM_THRESHOLD * math.log(clusters):
        return "uniform"
    available = clusters if samples is None else min(clusters, samples)
    if available > 1 and used <= max(1.0, PARTIAL_THRESHOLD * available):
        return "partial"
    return "healthy"


def describe_collapse(state: str) -> str:
    """The words for a state of :func:`collapse_state`: ``"partial"`` -> ``"partial collapse"``."""
    if state not in COLLAPSE_WORDS:
        raise ValueError(f"unknown collapse state {state!r}; one of {', '.join(COLLAPSE_STATES)}")
    return COLLAPSE_WORDS[state]


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


def assignment_metrics(p: Tensor) -> AssignmentMetrics:
    """The collapse diagnostics of a matrix of assignments ``p`` ``(N, K)``: effective clusters
    beside clusters used, mean entropy, and the verdict of :func:`collapse_state`."""
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"assignments must be (N, K) with N >= 1, got shape {tuple(p.shape)}")
    eff, used, ent = effective_clusters(p), clusters_used(p), mean_entropy(p)
    return {"effective_clusters": eff, "clusters_used": used, "mean_entropy": ent,
            "collapse": collapse_state(eff, ent, p.shape[-1], used, p.shape[0])}
