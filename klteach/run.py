"""A whole run: steps, evaluations, the run's files, and a clean stop (:meth:`Trainer.run`).

Every ``eval_every`` steps and at the end the trainer is evaluated and, with ``config.out``, the
checkpoint, ``metrics.jsonl`` and ``config.json`` are written (:mod:`klteach.checkpoint`). The
run stops between steps when ``should_stop()`` returns True, when a callback raises
``KeyboardInterrupt``, or on Ctrl-C or SIGTERM (:mod:`klteach.interrupts`); it then writes its
checkpoint at once, evaluates and writes again. A second Ctrl-C or SIGTERM aborts with
``KeyboardInterrupt`` after writing the checkpoint of the last completed step. Under
``torchrun`` all processes stop at the same step; only rank 0 shows progress and writes files.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint, dist
from .interrupts import StopOnInterrupt, hold_interrupts

if TYPE_CHECKING:
    from .train import Trainer

Callback = Callable[[dict[str, Any]], Any]


def run(trainer: Trainer, steps: int | None = None, callback: Callback | None = None, progress: bool = False,
        should_stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Take ``steps`` steps (default: until ``config.steps``, also when :meth:`Trainer.set`
    changes it during the run), evaluating every ``eval_every`` steps and at the end;
    ``callback(metrics)`` sees each evaluation. Afterwards ``trainer.interrupted`` is the signal
    that stopped the run, or None. Returns the history."""
    out = None
    if trainer.config.out and dist.is_main():
        out = checkpoint.open_run_folder(trainer.config.out, trainer.config.to_dict())
    total = trainer.config.steps - trainer.step_count if steps is None else steps
    with StopOnInterrupt() as interrupt, _progress_bar(max(0, total), progress and dist.is_main()) as bar:
        try:
            _take_steps(trainer, steps, interrupt, should_stop, callback, out, bar)
            if not trainer.history or trainer.history[-1]["step"] != trainer.step_count:
                if interrupt.requested:
                    save(trainer, out)     # first: a scheduler's SIGTERM may soon be followed by SIGKILL
                record(trainer, callback, out)
        except KeyboardInterrupt:
            if trainer.step_count == 0 or math.isfinite(trainer.last_loss):
                save(trainer, out)         # aborted: the last completed step, without an evaluation
            raise
        finally:
            trainer.interrupted = interrupt.signal
    return trainer.history


def _take_steps(trainer: Trainer, steps: int | None, interrupt: StopOnInterrupt, should_stop: Callable[[], bool] | None,
                callback: Callback | None, out: Path | None, bar: Any) -> None:
    taken = 0
    try:
        while taken < steps if steps is not None else trainer.step_count < trainer.config.steps:
            if dist.any_rank(interrupt.requested or bool(should_stop and should_stop())):
                return
            trainer.train_step()
            taken += 1
            bar.update(1)
            every = trainer.config.eval_every
            if every and trainer.step_count % every == 0:
                record(trainer, callback, out, bar)
    except KeyboardInterrupt:
        if interrupt.aborted:
            raise                  # a callback's KeyboardInterrupt only asks the run to stop


def record(trainer: Trainer, callback: Callback | None, out: Path | None, bar: Any = None) -> None:
    """Evaluate (rank 0; every process gets the result), write the run's files (rank 0), then
    call ``callback``. A NaN loss is never checkpointed."""
    if trainer.step_count:
        trainer.check_finite(trainer.last_loss)
    result = dist.broadcast_object(trainer.evaluate() if dist.is_main() else None)
    trainer.history.append(result)
    save(trainer, out)
    if bar is not None:
        bar.set_postfix(loss=f"{trainer.last_loss:.3f}", eff=f"{result['effective_clusters']:.1f}", refresh=False)
    if callback:
        callback(result)


def save(trainer: Trainer, out: Path | None) -> None:
    """Write the checkpoint, ``metrics.jsonl`` and ``config.json`` to ``out`` (if any); a Ctrl-C
    or SIGTERM waits until all are written."""
    if out is not None:
        with hold_interrupts():
            checkpoint.write_run(out, trainer.state(), checkpoint.metrics_rows(trainer.history, trainer.events))


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, desc="training", unit="step")
