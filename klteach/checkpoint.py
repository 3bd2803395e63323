"""The files of a run, written so that nothing is lost.

``DIR/config.json`` holds the settings; ``DIR/metrics.jsonl`` one strict-JSON object per line:
each evaluation (``{"step": N, "loss": ..., "cluster_sizes_student": [...], ...}``) and each
setting changed during the run (``{"step": N, "event": "set", "changes": {...}, "restart": ...}``),
read back with :func:`read_metrics`; ``DIR/checkpoint.pt`` everything needed to continue the run
bit for bit (see :meth:`klteach.train.Trainer.state`) and a checksum of it.

Every file is written through a temporary file and a rename, so a reader sees the old file or
the new one, never half of one. A failed write leaves the old file, removes its temporary file
and raises one line, ``cannot write checkpoint to DIR: no space left on device``; a temporary
file left by a killed process is removed at the next start in that folder.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import data as data_lib
from .config import (
    RESUME_MAY_CHANGE,
    TrainConfig,
    config_from_dict,
    resume_conflicts,
    same_dataset,
    setting_info,
    setting_names,
    with_changes,
)

if TYPE_CHECKING:
    from .train import Trainer

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.jsonl", "config.json"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT)
CHECKPOINT_KEYS = ("config", "step", "student", "teacher", "optimiser", "normaliser", "generator",
                   "epoch_order", "last_loss", "history", "events")
"""What a checkpoint must contain (see :meth:`klteach.train.Trainer.state`)."""


class WriteError(OSError):
    """A file could not be written; the message names it, its folder and why (``errno`` too)."""

    def __str__(self) -> str:
        return str(self.strerror)


# ---------------------------------------------------------------------- atomic writes

def write_file_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], what: str | None = None) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename. If anything fails
    the old file stays, the temporary file is removed, and an ``OSError`` becomes a
    :class:`WriteError` saying ``cannot write WHAT to FOLDER: REASON``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_error(error)
        if cause is None:
            raise
        raise WriteError(cause.errno, f"cannot write {what or path.name} to {path.parent}: "
                                      f"{_reason(cause)}") from error


def _os_error(error: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``error`` (torch wraps a failed write in a ``RuntimeError``)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON: non-finite numbers are written as ``null``."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON to ``path``, atomically."""
    write_file_atomic(path, lambda file: file.write(to_json(obj, indent=2).encode()))


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write one strict-JSON object per line, atomically (the whole file each time, so it always
    matches the checkpoint, also after a resume)."""
    write_file_atomic(path, lambda file: file.write("".join(to_json(row) + "\n" for row in rows).encode()))


# ---------------------------------------------------------------------- metrics.jsonl

def metrics_rows(history: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``: the evaluations and the setting changes of the current run
    in step order (a change at step N took effect after step N's evaluation). After a restart the
    file describes the new run and begins with the change that restarted it."""
    restarts = [i for i, event in enumerate(events) if event.get("restart")]
    opening, later = [], events
    if restarts:
        opening, later = events[restarts[-1]:restarts[-1] + 1], events[restarts[-1] + 1:]
    return opening + sorted(history + later, key=lambda row: (row["step"], "event" in row))


def read_metrics(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(evaluations, events)`` from a ``metrics.jsonl`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    evaluations: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        (events if "event" in row else evaluations).append(row)
    return evaluations, events


# ---------------------------------------------------------------------- checkpoints

def cpu_copy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a CPU copy (dicts, lists and tuples are walked)."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return copy.deepcopy(obj)


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 of everything in a checkpoint but its ``"checksum"``: every tensor's bytes, dtype
    and shape, and every other value, walked in a fixed order."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "checksum"})
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        digest.update(f"tensor {obj.dtype} {tuple(obj.shape)};".encode())
        digest.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__} {len(obj)};".encode())
        for value in obj:
            _feed(digest, value)
    else:
        digest.update(f"{type(obj).__name__} {obj!r};".encode())


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (CPU tensors and plain data) and its :func:`checksum` to ``path``, atomically."""
    state = {**state, "checksum": checksum(state)}
    write_file_atomic(path, lambda file: torch.save(state, file), what="checkpoint")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (tensors and plain data only), or raise a clear error naming the file:
    missing, unreadable, not a klteach checkpoint, or damaged (its checksum does not match)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        first = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(error).__name__}: {first}") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a klteach checkpoint (no settings in it)")
    if "checksum" in state and checksum(state) != state["checksum"]:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum written with "
                         "them; use an intact copy")
    return state


# ---------------------------------------------------------------------- a trainer's state

def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to continue ``trainer``'s run exactly where it stands, as CPU copies:
    models, optimiser, normaliser state (running/whole-set prior, centre), the augmentation
    generator, the rest of this epoch's order, the step, settings (also those not yet applied),
    history, events and the dataset's fingerprint. (The process's own random generators are
    not part of it: a step never draws from them.)"""
    return cpu_copy({
        "config": trainer.config.to_dict(), "step": trainer.step_count,
        "model": type(trainer.student.backbone).__name__,
        "student": trainer.student.state_dict(), "teacher": trainer.teacher.state_dict(),
        "optimiser": trainer.optimiser.state_dict(), "normaliser": trainer.normaliser.state_dict(),
        "generator": trainer.generator.get_state(), "generator_device": trainer.device.type,
        "epoch_order": trainer.epoch_order, "last_loss": trainer.last_loss,
        "history": trainer.history, "events": trainer.events, "pending": trainer.pending_changes(),
        "dataset_fingerprint": getattr(trainer.dataset, "fingerprint", None)})


def load_trainer_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Restore :func:`trainer_state` into ``trainer``; a checkpoint of another run (other settings,
    model or data) is refused, naming the difference, before anything changes."""
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(f"not a klteach checkpoint: it lacks {', '.join(missing)}")
    _check_same_run(trainer, state)
    try:
        for part in ("student", "teacher", "optimiser", "normaliser"):
            getattr(trainer, part).load_state_dict(state[part])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(f"checkpoint is incompatible with this model: {error}") from None
    if state.get("generator_device", "cpu") == trainer.device.type:
        trainer.generator.set_state(state["generator"])
    else:
        warnings.warn(f"checkpoint was written on {state['generator_device']}, this run is on "
                      f"{trainer.device.type}: the augmentation random stream restarts from the seed",
                      stacklevel=3)
        trainer.generator.manual_seed(trainer.config.seed + state["step"])
    trainer.epoch_order = state["epoch_order"].to(trainer.device)
    trainer.step_count, trainer.last_loss = state["step"], state["last_loss"]
    trainer.history, trainer.events = list(state["history"]), list(state["events"])


def _check_same_run(trainer: Trainer, state: dict[str, Any]) -> None:
    saved = config_from_dict(state["config"]).to_dict()
    for name in setting_names():
        if name in RESUME_MAY_CHANGE or setting_info(name).neutral or name == "dataset":
            continue
        if saved[name] != getattr(trainer.config, name) and name in state["config"]:
            raise ValueError(f"checkpoint is incompatible: it has {name}={saved[name]!r}, "
                             f"this run has {name}={getattr(trainer.config, name)!r}")
    old, new = state.get("dataset_fingerprint"), getattr(trainer.dataset, "fingerprint", None)
    if old and new:
        change = data_lib.fingerprint_change(old, new)
        if change:
            raise ValueError(f"the dataset changed since the checkpoint was written: {change}")
    elif not same_dataset(saved["dataset"], trainer.config.dataset):
        raise ValueError(f"checkpoint is incompatible: it has dataset={saved['dataset']!r}, "
                         f"this run has dataset={trainer.config.dataset!r}")
    model = type(trainer.student.backbone).__name__
    if state.get("model", model) != model:
        raise ValueError(f"checkpoint is incompatible: its model is a {state['model']}, this run "
                         f"builds a {model} (arch={trainer.config.arch!r} on {trainer.device.type})")


def resumed_config(path: str | os.PathLike, state: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The settings of the run saved in ``state`` with ``overrides``, which may change only how
    far it goes and result-neutral settings (see :func:`klteach.config.resume_conflicts`)."""
    try:
        config = config_from_dict(state["config"])
    except ValueError as error:
        raise ValueError(f"{path}: the checkpoint's settings do not fit this version of klteach "
                         f"({error})") from None
    conflicts = resume_conflicts(config.to_dict(), overrides)
    if conflicts:
        raise ValueError(f"a resumed run keeps its settings; only {', '.join(RESUME_MAY_CHANGE)} and "
                         f"result-neutral settings may change, not {', '.join(conflicts)}")
    if "steps" in overrides and "epochs" not in overrides:
        overrides = {**overrides, "epochs": None}      # a new planned total replaces the one epochs gave
    return with_changes(config, overrides)


def undo_point(trainer: Trainer) -> dict[str, Any]:
    """What a step changes before its optimiser update, kept so that a failed step can be undone."""
    return {"generator": trainer.generator.get_state(), "epoch_order": trainer.epoch_order,
            "buffers": [b.detach().clone() for b in _step_buffers(trainer)],
            "groups": [dict(group) for group in trainer.optimiser.param_groups]}


def roll_back(trainer: Trainer, undo: dict[str, Any]) -> None:
    """Put back what :func:`undo_point` kept: the trainer is as it was before the step."""
    trainer.generator.set_state(undo["generator"])
    trainer.epoch_order = undo["epoch_order"]
    with torch.no_grad():
        for buffer, saved in zip(_step_buffers(trainer), undo["buffers"]):
            buffer.copy_(saved)
    for group, saved in zip(trainer.optimiser.param_groups, undo["groups"]):
        group.update({key: value for key, value in saved.items() if key != "params"})
    trainer.optimiser.zero_grad(set_to_none=True)


def _step_buffers(trainer: Trainer) -> list[Tensor]:
    """State a forward pass changes in place: batch-norm statistics, running prior, centre."""
    return [*trainer.student.buffers(), *trainer.teacher.buffers(), *trainer.normaliser.buffers()]


# ---------------------------------------------------------------------- the run folder

def open_run_folder(folder: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Make ``folder`` if needed, remove temporary files a killed process left in it, and write
    ``config.json``; an ``OSError`` names the folder."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(error.errno, f"cannot write to --out {path}: {_reason(error)}") from error
    remove_stale_temp_files(path)
    write_json_atomic(path / CONFIG, settings)
    return path


def run_files_in(folder: str | os.PathLike) -> list[str]:
    """Which of ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` ``folder`` holds."""
    return [name for name in RUN_FILES if (Path(folder) / name).is_file()]


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.checkpoint.pt.*.tmp``, ...) a killed process left in
    ``folder``; returns them."""
    stale = [path for name in RUN_FILES for path in Path(folder).glob(f".{name}.*.tmp")]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def clear_run(folder: str | os.PathLike) -> None:
    """Remove a previous run's files (and only those) from ``folder``."""
    remove_stale_temp_files(folder)
    for name in run_files_in(folder):
        (Path(folder) / name).unlink()


def write_run(folder: Path, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write the checkpoint, then ``metrics.jsonl`` and ``config.json`` to match it."""
    save_checkpoint(folder / CHECKPOINT, state)
    write_jsonl_atomic(folder / METRICS, rows)
    write_json_atomic(folder / CONFIG, state["config"])


__all__ = ["write_file_atomic", "write_json_atomic", "write_jsonl_atomic", "read_metrics", "metrics_rows",
           "save_checkpoint", "read_checkpoint", "checksum", "cpu_copy", "run_files_in",
           "remove_stale_temp_files", "clear_run", "write_run", "to_json", "json_safe", "WriteError",
           "CHECKPOINT_KEYS", "RUN_FILES"]
