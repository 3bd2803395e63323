"""Exercise checks for chapter 5, the loop at CIFAR scale: the two numbers that judge a run.

- 5.1 the **effective number of clusters** ``exp(H(π))``, the entropy of the mean assignment
  ``π = mean_x p(x)`` (eq. 8/15): the one-cluster collapse alarm;
- 5.2 the **weighted kNN accuracy** of frozen features (Wu et al. 2018, as in DINO).

Same conventions as chapter 1: each ``check_*`` calls the student's function on inputs of its
own, compares with :mod:`klteach.metrics`, prints what is wrong and returns ``True`` only for a
right answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import metrics, theory
from .checking import call_student, report

__all__ = ["check_effective_clusters", "check_knn_accuracy"]

ScalarMistake = tuple[Callable[..., float], str]
"""A typical wrong scalar answer (computed with the library) and the message that names it."""


def _scalar(answer: Tensor, what: str) -> float | str:
    """The answer as one finite float, or a message saying why it is not one."""
    if answer.numel() != 1:
        return f"return one number ({what}), not a tensor of shape {tuple(answer.shape)}"
    value = float(answer)
    if not math.isfinite(value):
        return f"you returned {value}; {what} is a finite number"
    return value


def _student_scalars(function: Callable[..., Any], cases: list[tuple], what: str,
                     unavailable: list[Callable[..., Any]]) -> list[float] | str:
    """The student's answer on every case as one finite float each (with the library's version,
    ``unavailable``, switched off), or the message saying what went wrong on the first case that failed."""
    values = []
    for case in cases:
        answer, problem = call_student(function, *case, unavailable=unavailable)
        if answer is None:
            return problem
        value = _scalar(answer, what)
        if isinstance(value, str):
            return value
        values.append(value)
    return values


def _diagnose_scalar(values: list[float], cases: list[tuple], expected: list[float],
                     mistakes: list[ScalarMistake], rel: float = 1e-6) -> str | None:
    """The message of the first mistake that reproduces the student's value on EVERY case and
    differs from the right value on at least one."""
    for wrong, message in mistakes:
        candidates = [wrong(*case) for case in cases]
        if all(math.isclose(v, c, rel_tol=rel, abs_tol=1e-9) for v, c in zip(values, candidates)) and \
                any(not math.isclose(c, e, rel_tol=rel, abs_tol=1e-9) for c, e in zip(candidates, expected)):
            return message
    return None


# ---------------------------------------------------------------- exercise 5.1: eq. (8)

def assignment_cases() -> list[Tensor]:
    """Student posteriors ``(N, K)`` to test on: unequal clusters, nearly one cluster, nearly flat rows."""
    generator = torch.Generator().manual_seed(51)
    scores = torch.randn(40, 6, generator=generator, dtype=torch.float64) * 2.0
    unequal = (scores + torch.linspace(2.0, 0.0, 6, dtype=torch.float64)).softmax(-1)
    one_cluster = (scores * 0.3 + torch.tensor([6.0, 0, 0, 0, 0, 0], dtype=torch.float64)).softmax(-1)
    flat = (scores * 0.05).softmax(-1)
    return [unequal, one_cluster, flat]


def _effective_mistakes() -> list[ScalarMistake]:
    prior_entropy = lambda p: float(theory.entropy(theory.cluster_prior(p)))  # noqa: E731
    return [
        (prior_entropy,
         "you returned the entropy H(π) itself (nats); the effective number of clusters is exp(H(π)), "
         "which reads as a count: K when balanced, 1 when collapsed"),
        (lambda p: math.exp(metrics.mean_entropy(p)),
         "you took the exponential of the mean PER-SAMPLE entropy: that measures how flat each "
         "sample's assignment is (the uniform-collapse alarm). Eq. (8) is about the MEAN assignment "
         "π_k = (1/N) Σ_x p_k(x): first average over the samples, then take the entropy"),
        (lambda p: math.exp(prior_entropy(p) / math.log(2)),
         "you computed the entropy in bits (log2) and then used exp; use natural logs with exp "
         "(or log2 with 2**)"),
        (lambda p: float(metrics.clusters_used(p)),
         "you counted the clusters that win the argmax for some sample (metrics.clusters_used); "
         "exp(H(π)) weighs each cluster by its share, so a cluster holding 1% counts for little"),
        (lambda p: float(1.0 / theory.cluster_prior(p).pow(2).sum()),
         "that is 1/Σ π_k², the participation ratio (a Rényi-2 count); the chapter's effective "
         "number of clusters is exp of the Shannon entropy, exp(-Σ π_k log π_k)"),
        (lambda p: math.exp(float(theory.entropy(p.sum(0)))),
         "you summed p over the samples without dividing by N: π must be a distribution (sum 1)"),
    ]


def check_effective_clusters(student_effective_clusters: Callable[..., Any]) -> bool:
    """Exercise 5.1: ``student_effective_clusters(p)`` returns ``exp(H(π))`` with
    ``π = (1/N) Σ_x p(x)`` (eq. 8/15) for a posterior ``p`` of shape ``(N, K)``: one number."""
    cases = assignment_cases()
    values = _student_scalars(student_effective_clusters, [(p,) for p in cases],
                              "the effective number of clusters", unavailable=[metrics.effective_clusters])
    if isinstance(values, str):
        return report(False, values)
    expected = [metrics.effective_clusters(p) for p in cases]
    if all(math.isclose(v, e, rel_tol=1e-6) for v, e in zip(values, expected)):
        return report(True, "exp(H(π)) = " + ", ".join(f"{e:.2f}" for e in expected) +
                      f" of K = {cases[0].shape[1]} for unequal clusters, an almost-collapsed model and "
                      "nearly flat rows (the last is balanced on average, although each sample is unsure)")
    hint = _diagnose_scalar(values, [(p,) for p in cases], expected, _effective_mistakes())
    if hint:
        return report(False, hint)
    wrong = next(i for i, (v, e) in enumerate(zip(values, expected)) if not math.isclose(v, e, rel_tol=1e-6))
    names = ["unequal clusters", "almost one cluster", "nearly flat rows"]
    return report(False, f"for the '{names[wrong]}' test posterior you returned {values[wrong]:.6g}, the "
                  f"library gives {expected[wrong]:.6g}; average p over the samples (dim 0), take the "
                  "entropy -Σ π log π in nats, then exp")


# ---------------------------------------------------------------- exercise 5.2: kNN accuracy

def _labelled_features(centres: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` noisy features around random class ``centres``, with lengths spread over a factor ~100."""
    y = torch.randint(centres.shape[0], (n,), generator=generator)
    x = centres[y] + 1.1 * torch.randn(n, centres.shape[1], generator=generator, dtype=torch.float64)
    scale = torch.exp(1.5 * torch.randn(n, 1, generator=generator, dtype=torch.float64))
    return x * scale, y


def knn_cases() -> list[tuple[Tensor, Tensor, Tensor, Tensor, int, float]]:
    """Feature banks with overlapping classes and very unequal norms (cosine ≠ dot product)."""
    cases = []
    for seed, (classes, k, temperature) in enumerate([(3, 5, 0.1), (4, 10, 0.07), (3, 7, 0.5)]):
        generator = torch.Generator().manual_seed(520 + seed)
        centres = torch.randn(classes, 6, generator=generator, dtype=torch.float64)
        train_z, train_y = _labelled_features(centres, 120, generator)
        test_z, test_y = _labelled_features(centres, 80, generator)
        cases.append((train_z, train_y, test_z, test_y, k, temperature))
    return cases


def library_knn(train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, k: int, temperature: float,
                *, use_k: int | None = None, use_temperature: float | None = None) -> float:
    """:func:`klteach.metrics.knn_accuracy` on one of :func:`knn_cases`, optionally with another
    ``k`` or temperature (the typical slips)."""
    return metrics.knn_accuracy(train_z, train_y, test_z, test_y, k=use_k or k,
                                temperature=use_temperature or temperature)


def _knn_mistakes() -> list[ScalarMistake]:
    right = library_knn
    return [
        (lambda *case: 100 * right(*case), "you returned a percentage; return the fraction in [0, 1]"),
        (lambda *case: 1 - right(*case), "you returned the error rate (wrong predictions); return the "
                                         "fraction of test samples predicted right"),
        (lambda *case: library_knn(*case, use_temperature=1e12),
         "every neighbour gets one equal vote: weight each of the k votes by exp(similarity / temperature), "
         "so the nearest neighbours count most"),
        (lambda *case: library_knn(*case, use_temperature=1.0),
         "you weighted the votes by exp(similarity) without dividing by the temperature"),
        (lambda *case: library_knn(*case, use_k=1),
         "you used only the nearest neighbour; let the k nearest vote"),
    ]


def check_knn_accuracy(student_knn_accuracy: Callable[..., Any]) -> bool:
    """Exercise 5.2: ``student_knn_accuracy(train_z, train_y, test_z, test_y, k, temperature)``
    returns the weighted kNN accuracy of :func:`klteach.metrics.knn_accuracy`: cosine similarity
    (unit-normalise both sides), the ``k`` most similar training samples vote for their label with
    weight ``exp(sim / temperature)``, the label with the largest total wins."""
    cases = knn_cases()
    values = _student_scalars(student_knn_accuracy, cases, "the accuracy", unavailable=[metrics.knn_accuracy])
    if isinstance(values, str):
        return report(False, values)
    expected = [library_knn(*case) for case in cases]
    if all(math.isclose(v, e, abs_tol=1e-9) for v, e in zip(values, expected)):
        return report(True, "your kNN accuracies " + ", ".join(f"{e:.3f}" for e in expected) +
                      " equal klteach.metrics.knn_accuracy on all three feature banks")
    hint = _diagnose_scalar(values, cases, expected, _knn_mistakes())
    if hint:
        return report(False, hint)
    if not all(0.0 <= v <= 1.0 for v in values):
        return report(False, f"an accuracy lies in [0, 1]; you returned {values}")
    wrong = next(i for i, (v, e) in enumerate(zip(values, expected)) if not math.isclose(v, e, abs_tol=1e-9))
    _, _, _, _, k, temperature = cases[wrong]
    return report(False, f"on test bank {wrong + 1} (k = {k}, temperature = {temperature}) you get "
                  f"{values[wrong]:.4f}, the library {expected[wrong]:.4f}. These features have very "
                  "different lengths: did you unit-normalise both sides so the similarity is a cosine?")
