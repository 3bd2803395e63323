"""What every chapter's exercise checkers share: calling the student's function safely, naming
the typical mistake an answer matches, and printing the verdict.

A checker (``klteach.exercises.chN.check_*``) computes the right answer with
:mod:`klteach.theory`, calls the student's function with :func:`call_student`, looks for a
known mistake with :func:`diagnose` (each :data:`Mistake` is a wrong formula computed with the
library plus the message that names it) and ends with :func:`report`.

While the student's function runs, the library's own version of the exercise is made
unavailable (:func:`library_unavailable`): an answer that only hands the work to it is told so,
instead of passing. A student's function that still holds the student edition's stub
(``raise NotImplementedError()``) gets "not yet", not a traceback.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

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


class LibraryVersionUsed(BaseException):
    """The student's function called the library's own version of the exercise.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a ``try: ... except Exception``
    in the student's code cannot hide it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def qualified_name(function: Callable[..., Any]) -> str:
    """``klteach.theory.kl_divergence`` for :func:`klteach.theory.kl_divergence`."""
    return f"{function.__module__}.{function.__qualname__}"


def _stand_in(original: Callable[..., Any], owner: int) -> Callable[..., Any]:
    """Raises :class:`LibraryVersionUsed` in the checker's thread; other threads (a dashboard
    training in the background) keep the real function."""
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == owner:
            raise LibraryVersionUsed(qualified_name(original))
        return original(*args, **kwargs)
    return unavailable


@contextlib.contextmanager
def library_unavailable(functions: Iterable[Callable[..., Any]],
                        namespaces: Iterable[dict[str, Any]] = ()) -> Iterator[None]:
    """Within the block, every name bound to one of ``functions`` raises
    :class:`LibraryVersionUsed` when called from this thread: the names in every loaded module
    (``klteach.theory.kl_divergence``, the copy ``from .theory import ...`` made in
    ``klteach.metrics``, a notebook's own ``from klteach.theory import ...``) and in
    ``namespaces`` (the student's globals). Everything is restored on the way out."""
    owner = threading.get_ident()
    stand_ins = {id(f): (f, _stand_in(f, owner)) for f in functions}
    replaced: list[tuple[dict[str, Any], str, Any]] = []
    if stand_ins:
        modules = [getattr(m, "__dict__", None) for m in list(sys.modules.values())]
        for namespace in [m for m in modules if isinstance(m, dict)] + list(namespaces):
            for key, value in list(namespace.items()):
                original, stand_in = stand_ins.get(id(value), (None, None))
                if original is value:
                    namespace[key] = stand_in
                    replaced.append((namespace, key, value))
    try:
        yield
    finally:
        for namespace, key, value in reversed(replaced):
            namespace[key] = value


def call_student(function: Callable[..., Any], *args: Any,
                 unavailable: Iterable[Callable[..., Any]] = ()) -> tuple[Tensor | None, str]:
    """Call the student's function on copies of ``args``, with the library's own version of
    the exercise (``unavailable``) switched off; return ``(answer, "")`` or
    ``(None, what went wrong)`` when it is still the stub, calls the library's version, raises,
    returns something that is not numbers, or changes its inputs in place."""
    copies = [a.clone() if isinstance(a, Tensor) else a for a in args]
    name = getattr(function, "__name__", "your function")
    unavailable = list(unavailable)
    write_it = "write it yourself (the checker switches the library's version off while it runs yours)"
    if any(function is library for library in unavailable):   # check_x(theory.x) itself
        return None, f"that is {qualified_name(function)}, the library's own answer to this exercise: {write_it}"
    try:
        with library_unavailable(unavailable, [getattr(function, "__globals__", {})]):
            answer = as_tensor(function(*copies))
    except LibraryVersionUsed as used:
        return None, f"{name} calls {used.name}, the library's own answer to this exercise: {write_it}"
    except NotImplementedError as error:
        if not str(error):   # the student edition's stub: `raise NotImplementedError()`
            return None, f"replace the `raise NotImplementedError()` in {name} with your answer"
        return None, f"{name} raised NotImplementedError: {error}"
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
