"""Chapter 5 checkers: a right answer passes; each typical mistake gets its own message; a stub
and an answer that hands the work to the library get "not yet"."""
import math

import numpy as np
import pytest
import torch

from klteach import metrics
from klteach.exercises import check_effective_clusters, check_knn_accuracy


def verdict(capsys, check, answer):
    ok = check(answer)
    return ok, capsys.readouterr().out


def numpy_effective_clusters(p):
    """exp(H(mean p)) from scratch, as a student would write it."""
    prior = np.asarray(p).mean(0)
    return float(np.exp(-(prior * np.log(prior)).sum()))


def numpy_knn_accuracy(train_z, train_y, test_z, test_y, k, temperature):
    """Weighted kNN vote from scratch in numpy."""
    a = np.asarray(train_z) / np.linalg.norm(train_z, axis=1, keepdims=True)
    b = np.asarray(test_z) / np.linalg.norm(test_z, axis=1, keepdims=True)
    sims = b @ a.T
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    correct = 0
    for row, label in zip(sims, test_y):
        nearest = np.argsort(-row)[:k]
        votes = np.zeros(train_y.max() + 1)
        np.add.at(votes, train_y[nearest], np.exp(row[nearest] / temperature))
        correct += votes.argmax() == label
    return correct / len(test_y)


def test_right_answers_pass(capsys):
    for check, answer in [(check_effective_clusters, numpy_effective_clusters),
                          (check_effective_clusters, lambda p: (-(p.mean(0) * p.mean(0).log()).sum()).exp()),
                          (check_knn_accuracy, numpy_knn_accuracy)]:
        ok, out = verdict(capsys, check, answer)
        assert ok and out.startswith("✔"), out


def entropy(x):
    return -(x * x.log()).sum(-1)


@pytest.mark.parametrize("wrong, phrase", [
    (lambda p: entropy(p.mean(0)), "entropy H(π) itself"),
    (lambda p: entropy(p).mean().exp(), "PER-SAMPLE"),
    (lambda p: 2 ** (entropy(p.mean(0)) / math.log(2)) * 0 + (entropy(p.mean(0)) / math.log(2)).exp(), "bits"),
    (lambda p: float(p.argmax(1).unique().numel()), "argmax"),
    (lambda p: 1 / (p.mean(0) ** 2).sum(), "participation ratio"),
    (lambda p: entropy(p.sum(0)).exp(), "without dividing by N"),
    (lambda p: entropy(p.mean(0)).exp() * 1.1, "library gives"),
    (lambda p: p.mean(0), "one number"),
    (lambda p: None, "NoneType"),
])
def test_effective_clusters_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_effective_clusters, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def unnormalised_knn(train_z, train_y, test_z, test_y, k, temperature):
    sims = test_z @ train_z.T
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(test_z), int(train_y.max()) + 1, dtype=torch.float64)
    votes.scatter_add_(1, train_y[idx], torch.softmax(top / temperature, dim=1))
    return float((votes.argmax(1) == test_y).double().mean())


def majority_vote_knn(train_z, train_y, test_z, test_y, k, temperature):
    """The k nearest vote with one vote each (ties go to the lowest label)."""
    a = torch.nn.functional.normalize(train_z, dim=1)
    b = torch.nn.functional.normalize(test_z, dim=1)
    idx = (b @ a.T).topk(k, dim=1).indices
    predicted = torch.stack([torch.bincount(train_y[row], minlength=int(train_y.max()) + 1).argmax()
                             for row in idx])
    return float((predicted == test_y).double().mean())


@pytest.mark.parametrize("wrong, phrase", [
    (lambda *c: 100 * numpy_knn_accuracy(*c), "percentage"),
    (lambda *c: 1 - numpy_knn_accuracy(*c), "error rate"),
    (majority_vote_knn, "equal vote"),
    (lambda *c: numpy_knn_accuracy(*c[:5], 1.0), "without dividing by the temperature"),
    (lambda *c: numpy_knn_accuracy(*c[:4], 1, c[5]), "only the nearest neighbour"),
    (unnormalised_knn, "unit-normalise"),
    (lambda *c: [0.5, 0.5], "one number"),
    (lambda *c: float("nan"), "finite"),
])
def test_knn_mistakes_are_named(capsys, wrong, phrase):
    ok, out = verdict(capsys, check_knn_accuracy, wrong)
    assert not ok and out.startswith("✘") and phrase in out, out


def test_checkers_leave_inputs_alone(capsys):
    def in_place(p):
        p /= 2
        return 1.0
    ok, out = verdict(capsys, check_effective_clusters, in_place)
    assert not ok and "in place" in out


def stub(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


VERDICTS = [
    # 5.1: exp(H(π)), eq. (8)/(15)
    (check_effective_clusters, stub, "✘ Not yet", "replace the `raise NotImplementedError()` in stub"),
    (check_effective_clusters, lambda p: entropy(p.mean(0)), "✘ Not yet", "entropy H(π) itself"),
    (check_effective_clusters, lambda p: metrics.effective_clusters(p), "✘ Not yet",
     "calls klteach.metrics.effective_clusters"),
    (check_effective_clusters, lambda p: metrics.assignment_metrics(p)["effective_clusters"], "✘ Not yet",
     "calls klteach.metrics.effective_clusters"),
    (check_effective_clusters, numpy_effective_clusters, "✔ Correct", "exp(H(π))"),
    # 5.2: weighted kNN accuracy
    (check_knn_accuracy, stub, "✘ Not yet", "replace the `raise NotImplementedError()`"),
    (check_knn_accuracy, lambda *c: 100 * numpy_knn_accuracy(*c), "✘ Not yet", "percentage"),
    (check_knn_accuracy, lambda tz, ty, sz, sy, k, t: metrics.knn_accuracy(tz, ty, sz, sy, k, t), "✘ Not yet",
     "calls klteach.metrics.knn_accuracy"),
    (check_knn_accuracy, numpy_knn_accuracy, "✔ Correct", "klteach.metrics.knn_accuracy"),
]


@pytest.mark.parametrize("check, answer, verdict_start, phrase", VERDICTS)
def test_stub_slip_delegation_and_right_answer(capsys, check, answer, verdict_start, phrase):
    ok, out = verdict(capsys, check, answer)
    assert ok == verdict_start.startswith("✔") and out.startswith(verdict_start) and phrase in out, out
