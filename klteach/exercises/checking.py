"""What every chapter's exercise checkers share: calling the student's function safely, naming
the typical mistake an answer matches, and printing the verdict.

A checker (``klteach.exercises.chN.check_*``) computes the right answer with
:mod:`klteach.theory`, calls the student's function with :func:`call_student`, looks for a
known mistake with :func:`diagnose` (each :data:`Mistake` is a wrong formula computed with the
library plus the message that names it) and ends with :func:`report`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Mistake = tuple[Callable[..., Tensor], str]
"""A typical wrong answer (computed with the library) and the message that names it."""


def report(ok: bool, message: str) -> bool:
    """Print ``message`` after a tick or a cross and return ``ok``."""
    print(("✔ Correct: " if ok else "✘ Not yet: ") + message)
    return ok


def as_tensor(value: Any) -> Tensor:
    """The student's answer (tensor, numpy array, list or number) as a float64 tensor."""
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64).cpu()
    return torch.as_tensor(value, dtype=torch.float64)


def call_student(function: Callable[..., Any], *args: Any) -> tuple[Tensor | None, str]:
    """Call the student's function on copies of ``args``; return ``(answer, "")`` or
    ``(None, what went wrong)`` when it raises, returns something that is not numbers, or
    changes its inputs in place."""
    copies = [a.clone() if isinstance(a, Tensor) else a for a in args]
    name = getattr(function, "__name__", "your function")
    try:
        answer = as_tensor(function(*copies))
    except Exception as error:  # the student's code may fail in any way: say how
        return None, f"{name} raised {type(error).__name__}: {error}"
    for original, copy in zip(args, copies):
        if isinstance(original, Tensor) and not torch.equal(original, copy):
            return None, (f"{name} changed one of its input tensors in place (e.g. with /= or "
                          "a [...] = assignment); compute a new tensor instead")
    return answer, ""


def diagnose(answer: Tensor, expected: Tensor, mistakes: list[Mistake], args: tuple,
             atol: float = 1e-6) -> str | None:
    """The message of the first typical mistake ``answer`` matches, or None."""
    for wrong, message in mistakes:
        candidate = wrong(*args)
        if candidate.shape == answer.shape and torch.allclose(answer, candidate, atol=atol) \
                and not torch.allclose(candidate, expected, atol=atol):
            return message
    return None


def check_probability_rows(answer: Tensor, expected_shape: tuple[int, ...]) -> str | None:
    """What is wrong with a matrix that should hold one distribution over clusters per row."""
    n, k = expected_shape
    if tuple(answer.shape) == (k, n) and n != k:
        return (f"the shape is {tuple(answer.shape)}, the transpose of the expected (N, K) = "
                f"{expected_shape}: one row per sample, one column per cluster")
    if tuple(answer.shape) != expected_shape:
        return f"the shape is {tuple(answer.shape)}, expected (N, K) = {expected_shape}"
    if not torch.isfinite(answer).all():
        return "the result contains NaN or inf"
    if (answer < 0).any():
        return f"some probabilities are negative (smallest {float(answer.min()):.3g})"
    rows = answer.sum(1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-6):
        columns = answer.sum(0)
        if torch.allclose(columns, torch.ones_like(columns), atol=1e-6):
            return ("each column sums to 1: you normalised over the samples; normalise each row "
                    "(one sample) over the K clusters instead")
        return f"the rows must sum to 1 over the clusters, but they sum to e.g. {float(rows[0]):.4g}"
    return None


def first_difference(answer: Tensor, expected: Tensor) -> str:
    """Where ``answer`` and ``expected`` differ most, in words."""
    index = (answer - expected).abs().flatten().argmax()
    position = tuple(int(i) for i in torch.unravel_index(index, answer.shape))
    return (f"at index {position} you have {float(answer[position]):.6g}, "
            f"the library gives {float(expected[position]):.6g}")
