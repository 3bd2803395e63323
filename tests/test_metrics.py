"""klteach.metrics: the collapse verdict (contract 3) and the diagnostics behind it."""
import math

import pytest
import torch

from klteach import metrics
from klteach.metrics import COLLAPSE_STATES, assignment_metrics, collapse_state, describe_collapse


def diffuse_rows_with_argmax_in(columns: list[int], samples: int = 2000, clusters: int = 10,
                                lift: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Soft assignments whose rows are fairly flat but whose argmax always falls in ``columns``:
    what a CIFAR-sample run looked like when it collapsed partly."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(samples, clusters, generator=g)
    winner = torch.tensor(columns)[torch.randint(len(columns), (samples,), generator=g)]
    logits[torch.arange(samples), winner] = logits.max(1).values + lift
    return logits.softmax(-1)


def test_samples_in_two_of_ten_clusters_are_a_partial_collapse_not_healthy():
    p = diffuse_rows_with_argmax_in([3, 7])
    result = assignment_metrics(p)
    assert result["clusters_used"] == 2
    assert result["effective_clusters"] > metrics.one_cluster_threshold(10)   # the soft view looks fine
    assert result["mean_entropy"] < metrics.UNIFORM_THRESHOLD * math.log(10)
    assert result["collapse"] == "partial"
    assert describe_collapse(result["collapse"]) == "partial collapse"


@pytest.mark.parametrize("effective, entropy, clusters, used, expected", [
    # recorded runs: digits K = 20, 1000 steps (python -m klteach demo, seed 0)
    (2.1, 0.04, 20, 3, "one-cluster"),     # none
    (17.3, 0.23, 20, 20, "healthy"),       # inverse-prior
    (13.8, 0.13, 20, 15, "healthy"),       # centering
    (16.6, 0.18, 20, 19, "healthy"),       # batchnorm
    (19.6, 0.29, 20, 20, "healthy"),       # sinkhorn
    # CIFAR-10 sample, K = 10, centering after 300 steps: soft 5.6 effective, argmax in 2 clusters
    (5.58, 1.63, 10, 2, "partial"),
    # chapter 4: centering without sharpening (flat rows) and sharpening without centering
    (20.0, 2.99, 20, 20, "uniform"),
    (2.17, 0.07, 20, 4, "one-cluster"),
    # K = 80 with inverse priors (chapter 6): many clusters, most in use
    (56.2, 0.5, 80, 75, "healthy"),
    # digits: the fewest clusters a healthy run used (inverse priors, seed 1, step 100)
    (11.0, 0.3, 20, 11, "healthy"),
    (4.0, 1.0, 10, 3, "partial"),          # a third of K = 10
    (4.0, 1.0, 10, 4, "healthy"),
    (1.5, 0.5, 2, 1, "partial"),           # K = 2: one cluster takes every sample
    (4.96, 1.6, 10, 1, "partial"),         # an untrained CNN on the CIFAR sample (step 0)
])
def test_verdicts_of_recorded_runs(effective, entropy, clusters, used, expected):
    assert collapse_state(effective, entropy, clusters, used) == expected


def test_fewer_samples_than_clusters_are_judged_against_what_they_could_use():
    p = torch.eye(10)[:4] * 0.6 + 0.04                     # 4 samples, each in its own cluster
    assert assignment_metrics(p)["clusters_used"] == 4
    assert collapse_state(4.0, 1.5, 10, 4, samples=4) == "healthy"
    assert collapse_state(3.5, 1.5, 10, 3) == "partial"
    assert collapse_state(3.5, 1.5, 10, 3, samples=4) == "healthy"


def test_every_state_has_words_and_unknown_ones_are_refused():
    assert [describe_collapse(s) for s in COLLAPSE_STATES] == [
        "healthy", "partial collapse", "one-cluster collapse", "uniform collapse"]
    with pytest.raises(ValueError, match="unknown collapse state 'collapsed'.*partial"):
        describe_collapse("collapsed")
    with pytest.raises(ValueError, match="used <= clusters"):
        collapse_state(5.0, 1.0, 10, 11)
    with pytest.raises(ValueError, match=r"\(N, K\) with N >= 1"):
        assignment_metrics(torch.zeros(0, 10))


def test_one_hot_collapse_and_flat_rows_on_real_digits():
    """Real digits pixels as embeddings: one cluster, flat rows and a spread assignment."""
    from klteach.data import load_dataset, to_float

    x = torch.nn.functional.normalize(to_float(load_dataset("digits").test).flatten(1), dim=-1)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(20, x.shape[1], generator=g), dim=-1)
    spread = (x - x.mean(0)) @ w.T
    assert assignment_metrics((spread / 0.02).softmax(-1))["collapse"] == "healthy"
    assert assignment_metrics((spread / 100.0).softmax(-1))["collapse"] == "uniform"
    bias = torch.zeros(20)
    bias[0] = 10.0
    assert assignment_metrics((spread / 0.02 + bias).softmax(-1))["collapse"] == "one-cluster"
