"""Every setting of a run in one place: its type, default, allowed values, help text and kind.

The command line's flags (``python -m klteach train --help``), :meth:`klteach.train.Trainer.set`,
the check of what a resumed run may change and the dashboard's controls are all derived from
the fields of :class:`TrainConfig` and their :class:`SettingInfo`.

Each setting has a *kind*:

- ``live``: :meth:`~klteach.train.Trainer.set` applies it at the next step and the run goes on;
- ``restart``: :meth:`~klteach.train.Trainer.set` rebuilds the model and restarts at step 0;
- ``fixed``: chosen when the trainer is built.

A *result-neutral* setting (``SettingInfo.neutral``) changes where or how a run is computed, not
what it computes; a resumed run may change it. Values are converted to the field's type and
checked against its range once, whenever a field is assigned (also by ``dataclasses.replace``),
so a :class:`TrainConfig` never holds a value it does not allow.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from . import dist
from .data import DATASETS, Dataset
from .models import Architecture
from .normalisers import NormaliserName, PriorMode

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]
LrSchedule = Literal["constant", "cosine"]
Kind = Literal["live", "restart", "fixed"]
KINDS: tuple[Kind, ...] = ("live", "restart", "fixed")
MAX_CLUSTERS = 100_000
MAX_DIM = 4096
MAX_SEED = 2**32 - 1
RESUME_MAY_CHANGE = ("steps", "epochs")
"""Besides the result-neutral settings, what a resumed run may change: how far it goes."""


@dataclass(frozen=True)
class SettingInfo:
    """What one :class:`TrainConfig` field means and allows.

    ``low``/``high`` bound numbers (``low_open``/``high_open``: the bound itself is excluded);
    ``choices`` are the allowed strings; ``log_scale``: a slider for it should move on a log
    scale; ``neutral``: it does not change the result, so a resumed run may change it;
    ``flags``: its command-line spellings (a boolean flag sets the opposite of the default);
    ``symbol``: the paper's letter for it, if any."""

    help: str
    kind: Kind
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    log_scale: bool = False
    low_open: bool = False
    high_open: bool = False
    neutral: bool = False
    flags: tuple[str, ...] = ()
    symbol: str = ""


def setting(default: Any, help: str, kind: Kind, **info: Any) -> Any:
    """A :class:`TrainConfig` field carrying its :class:`SettingInfo`."""
    return field(default=default, metadata={"info": SettingInfo(help, kind, **info)})


MOMENTUM = dict(low=0.0, high=1.0, high_open=True)


@dataclass
class TrainConfig:
    """Everything a run needs; ``python -m klteach train --help`` lists the same settings."""

    dataset: str = setting("digits", "toy, digits, cifar10, cifar10-sample, or the PATH of an image folder "
                           "ROOT/{train,test}/<class>/*.png (stored as an absolute path)", "restart")
    normaliser: NormaliserName = setting("inverse-prior", "how the teacher's output becomes the target q: "
                                         "inverse priors (eq. 14-16), DINO's centering (eq. 23), ...", "live")
    clusters: int = setting(20, "number of clusters K", "restart", low=2, high=MAX_CLUSTERS,
                            flags=("--clusters", "-K"), symbol="K")
    steps: int = setting(1000, "training steps in all (the planned total; the cosine schedule ends there)",
                         "live", low=0)
    epochs: float | None = setting(None, "train this many passes over the training set (overrides --steps)",
                                   "fixed", low=0, low_open=True)
    seed: int = setting(0, "seed of the model's initialisation and of the augmentation", "restart",
                        low=0, high=MAX_SEED)
    tau_student: float = setting(0.1, "student temperature τ of eq. (6)", "live", low=0, low_open=True,
                                 log_scale=True)
    tau_teacher: float = setting(0.04, "teacher temperature τ of eq. (7)", "live", low=0, low_open=True,
                                 log_scale=True)
    momentum: float = setting(0.9, "the teacher's EMA momentum (eq. 7)", "live", **MOMENTUM)
    copy_every: int = setting(0, "copy the student into the teacher every T steps (eq. 7) instead of the "
                              "EMA; 0 = EMA", "live", low=0)
    prior: PriorMode = setting("running", "where the inverse prior's π comes from (eq. 15): the batch, a "
                               "running average, or the full training set", "live")
    prior_every: int = setting(0, "steps between whole-set prior estimates (--prior full); 0 = once per epoch",
                               "live", low=0)
    lam: float = setting(1.0, "strength λ of the inverse prior (eq. 14)", "live", low=0)
    batch_size: int = setting(256, "images per step (each gives two views)", "restart", low=2)
    lr: float = setting(1e-3, "AdamW learning rate", "live", low=0, low_open=True, log_scale=True)
    weight_decay: float = setting(1e-4, "AdamW weight decay", "live", low=0)
    lr_schedule: LrSchedule = setting("constant", "learning-rate schedule after the warm-up", "live")
    warmup_steps: int = setting(0, "steps over which the learning rate rises linearly from 0", "live", low=0)
    device: Device = setting("auto", "where to train; auto = a CUDA GPU when there is one", "fixed",
                             neutral=True)
    precision: Precision = setting("auto", "arithmetic of the networks' forward passes; auto = bfloat16 "
                                   "autocast on a GPU, float32 on a CPU (logits and normalisers always "
                                   "float32)", "fixed")
    eval_every: int = setting(100, "steps between evaluations and checkpoints; 0 = only at the end", "live",
                              low=0, neutral=True)
    eval_size: int = setting(5000, "training samples in the kNN reference set of an evaluation", "live",
                             low=1, neutral=True)
    data_dir: str | None = setting(None, "folder holding cifar10 (default: $KLTEACH_DATA or data/)", "fixed",
                                   neutral=True)
    out: str | None = setting(None, "folder for config.json, metrics.jsonl and checkpoint.pt", "fixed",
                              neutral=True)
    arch: Architecture = setting("auto", "backbone; auto = ResNet-18 for 32x32 images on a GPU, else MLP "
                                 "(vectors, small images) or the small CNN", "restart")
    dim: int = setting(64, "embedding dimension D", "restart", low=2, high=MAX_DIM)
    width: int = setting(32, "channels of the small CNN's first stage (arch cnn; 16 costs a quarter of 32)",
                         "restart", low=1, high=1024)
    learnable_prototypes: bool = setting(True, "learn the weight vectors w_k; --fixed-prototypes keeps them "
                                         "at their random start", "restart",
                                         flags=("--fixed-prototypes",))
    centred_prototypes: bool = setting(False, "centre the weight vectors (eq. 20)", "restart")
    student_batchnorm: bool = setting(False, "batch-normalise the student's embeddings too (section 5 warns "
                                      "against it)", "live")
    teacher_batch_statistics: bool = setting(True, "the teacher's BatchNorm layers use the batch's own statistics, "
                                             "as the student's do (DINO); --teacher-running-statistics uses "
                                             "their running averages, as at evaluation", "live",
                                             flags=("--teacher-running-statistics",))
    prior_momentum: float = setting(0.9, "momentum of the running prior (--prior running)", "fixed",
                                    **MOMENTUM)
    centre_momentum: float = setting(0.9, "momentum of centering's centre (eq. 23)", "fixed", **MOMENTUM)
    compile: bool = setting(False, "torch.compile the networks", "fixed", neutral=True)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, convert(name, value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@cache
def _fields() -> dict[str, tuple[Any, SettingInfo]]:
    """Each setting's type (``None`` allowed is kept in the type) and its info, in field order."""
    hints = typing.get_type_hints(TrainConfig)
    result = {}
    for f in dataclasses.fields(TrainConfig):
        info = f.metadata["info"]
        choices = _literal_choices(hints[f.name])
        if choices:
            info = dataclasses.replace(info, choices=choices)
        result[f.name] = (hints[f.name], info)
    return result


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    return tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None


def setting_names() -> tuple[str, ...]:
    """Every setting, in the order of :class:`TrainConfig`."""
    return tuple(_fields())


def setting_info(name: str) -> SettingInfo:
    """The :class:`SettingInfo` of setting ``name``; ``ValueError`` for an unknown name."""
    try:
        return _fields()[name][1]
    except KeyError:
        raise ValueError(f"unknown setting {name!r}; the settings are {', '.join(_fields())}") from None


def settings_of_kind(kind: Kind) -> tuple[str, ...]:
    """The settings of one kind (``"live"``, ``"restart"`` or ``"fixed"``), in field order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return tuple(name for name, (_, info) in _fields().items() if info.kind == kind)


def neutral_settings() -> tuple[str, ...]:
    """The settings that do not change the result (a resumed run may change them)."""
    return tuple(name for name, (_, info) in _fields().items() if info.neutral)


# ---------------------------------------------------------------------- conversion

def convert(name: str, value: Any) -> Any:
    """``value`` as setting ``name``'s type, or ``ValueError`` naming the setting, the value and
    what is allowed. Numbers may come as strings (``"0.5"``), as from a text box or a flag."""
    info = setting_info(name)
    annotation = _fields()[name][0]
    base = _without_none(annotation)
    if value is None and base is not annotation:
        return None
    if info.choices is not None:
        if not isinstance(value, str) or value not in info.choices:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(info.choices)}")
        return value
    if base is bool:
        return _to_bool(name, value)
    if base in (int, float):
        number = _to_number(value, base)
        if number is None or not _in_range(number, info):
            raise ValueError(f"{_label(name, info)} must be {describe_allowed(name)}, got {value!r}")
        return number
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return dataset_location(value) if name == "dataset" else value


def _without_none(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if union and len(args) == 1 else annotation


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":   # numpy's bool too
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _to_number(value: Any, kind: type) -> float | int | None:
    """``value`` as an int or a finite float, or None when it is not one."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            return None
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        return int(float(value)) if float(value).is_integer() else None   # 8.0 from a slider is 8
    return float(value)


def _in_range(number: float, info: SettingInfo) -> bool:
    if info.low is not None and (number < info.low or (info.low_open and number == info.low)):
        return False
    return info.high is None or not (number > info.high or (info.high_open and number == info.high))


def _label(name: str, info: SettingInfo) -> str:
    return f"{name} ({info.symbol})" if info.symbol else name


def describe_allowed(name: str) -> str:
    """What setting ``name`` allows, in words: ``"a finite number > 0"``, ``"one of a, b"``, ..."""
    annotation, info = _fields()[name]
    if info.choices is not None:
        return "one of " + ", ".join(info.choices)
    base = _without_none(annotation)
    if base is bool:
        return "true or false"
    if base not in (int, float):
        return "a string"
    word = "an integer" if base is int else "a finite number"
    low, high = (_number(b, base) for b in (info.low, info.high))
    if info.low is not None and info.high is not None:
        return f"{word} in {'(' if info.low_open else '['}{low}, {high}{')' if info.high_open else ']'}"
    if info.low is not None:
        return f"{word} {'>' if info.low_open else '>='} {low}"
    return word if info.high is None else f"{word} <= {high}"


def _number(bound: float | None, kind: type) -> str:
    return "" if bound is None else str(int(bound) if kind is int or float(bound).is_integer() else bound)


def is_folder_path(dataset: str) -> bool:
    """True when ``dataset`` names an image folder rather than a dataset known by name (the rule
    of :func:`klteach.data.load_dataset`)."""
    return dataset not in DATASETS and (os.sep in dataset or Path(dataset).exists())


def dataset_location(dataset: str) -> str:
    """A dataset name as it is, an image folder's path made absolute (so a run can be resumed
    from another working directory)."""
    return os.path.abspath(os.path.expanduser(dataset)) if is_folder_path(dataset) else dataset


# ---------------------------------------------------------------------- building and resuming

def with_changes(config: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with ``changes`` applied and checked; ``ValueError`` for an unknown
    setting or a bad value (``config`` itself is never changed)."""
    for name in changes:
        setting_info(name)
    return dataclasses.replace(config, **changes)


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from saved settings (``config.json``, a checkpoint). Names of older
    versions are read too; unknown ones are a ``ValueError`` naming them."""
    values = {RENAMED.get(name, name): value for name, value in values.items()}
    unknown = [name for name in values if name not in _fields()]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    return TrainConfig(**values)


RENAMED = {"center_momentum": "centre_momentum"}
"""Settings that changed name: old name -> new name."""


def resume_conflicts(saved: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """The settings in ``asked`` that a resumed run may not take because they differ from the
    ``saved`` run's: all but the result-neutral ones, ``steps`` and ``epochs``. An image folder
    may move (the dataset's fingerprint is compared when the checkpoint is loaded)."""
    conflicts = []
    for name, value in asked.items():
        if name in RESUME_MAY_CHANGE or setting_info(name).neutral or name not in saved:
            continue
        old = convert(name, saved[name]) if saved[name] is not None else None
        if name == "dataset" and isinstance(old, str) and is_folder_path(old) and is_folder_path(value):
            continue
        if convert(name, value) != old:
            conflicts.append(name)
    return conflicts


# ---------------------------------------------------------------------- this machine, this data

def validate_config(config: TrainConfig) -> TrainConfig:
    """Raise ``ValueError`` unless ``config`` can run on this machine; return ``config``.
    (Each value was already checked when it was set.)"""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    return config


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is present, else the CPU; under ``torchrun`` each process
    takes the GPU of its ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.env_world_size() > 1:
        device = torch.device("cuda", dist.local_rank())
    return device


def check_batch_size(batch_size: int, dataset: Dataset) -> None:
    """Raise ``ValueError`` unless ``batch_size`` fits the training set and splits evenly over
    the processes (each takes an equal share of every batch)."""
    n_train = dataset.train.shape[0]
    if batch_size > n_train:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset "
                         f"{dataset.name!r} ({n_train} training samples)")
    if batch_size % dist.world_size():
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes "
                         f"({dist.world_size()}): each takes an equal share of every batch")


def same_dataset(saved: str, current: str) -> bool:
    """True when two ``dataset`` settings name the same data: the same name, or folder paths that
    resolve to the same folder (an older checkpoint may hold a relative path)."""
    if saved == current:
        return True
    return is_folder_path(saved) and is_folder_path(current) and Path(saved).resolve() == Path(current).resolve()


__all__ = ["TrainConfig", "SettingInfo", "setting_info", "settings_of_kind", "setting_names",
           "neutral_settings", "convert", "describe_allowed", "with_changes", "config_from_dict",
           "resume_conflicts", "dataset_location", "is_folder_path", "NormaliserName", "PriorMode",
           "Architecture", "Device", "Precision", "LrSchedule", "Kind", "KINDS", "validate_config", "resolve_device",
           "check_batch_size", "same_dataset"]
