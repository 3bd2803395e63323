"""Stopping a run without losing it: Ctrl-C (SIGINT) and SIGTERM wait for the step boundary.

A person presses Ctrl-C; a scheduler, ``timeout`` or ``docker stop`` sends SIGTERM. Both are
handled alike. A training step holds them until it ends (:func:`hold_interrupts`), so a run
always stops between steps. Within :meth:`klteach.train.Trainer.run` the first signal asks the
loop to stop after the current step, then the run writes its checkpoint; a second one aborts at
once (``KeyboardInterrupt``), still at a step boundary (:class:`StopOnInterrupt`).
Signals reach only the main thread; in any other thread these helpers do nothing.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from . import dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"Ctrl-C"`` for SIGINT, else the signal's name (``"SIGTERM"``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers that were
    in place (by default: ``KeyboardInterrupt``, or the end of the process for SIGTERM). The block
    runs to its end; if it raises, the held signals are dropped (the error stops the caller)."""
    if not _in_main_thread():
        yield
        return
    held: list[tuple[int, FrameType | None]] = []
    previous: dict[int, Any] = {signum: signal.signal(signum, lambda n, frame: held.append((n, frame)))
                                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            _restore(signum, handler)
    for signum, frame in held:
        _deliver(signum, previous[signum], frame)


def _restore(signum: int, handler: Any) -> None:
    # None: the handler was not installed from Python; the default is the closest we can restore
    signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _deliver(signum: int, handler: Any, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL or (handler is None and signum != signal.SIGINT):
        signal.raise_signal(signum)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


class StopOnInterrupt:
    """Within ``run()``: the first SIGINT or SIGTERM asks the loop to stop at the next step
    boundary (``requested``; ``signal`` says which); a second raises ``KeyboardInterrupt``
    (``aborted``). Main thread only; the previous handlers are put back on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.aborted = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopOnInterrupt:
        if _in_main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            _restore(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            self.aborted = True
            raise KeyboardInterrupt
        self.signal = signum
        if dist.is_main():
            again = "press again" if signum == signal.SIGINT else "send it again"
            print(f"\n{signal_name(signum)}: stopping after this step ({again} to abort at once)",
                  file=sys.stderr)
