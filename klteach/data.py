"""Datasets as tensors: toy mixtures on the sphere, digits, CIFAR-10 and image folders.

``load_dataset(name_or_path)`` returns a :class:`Dataset` whose images are ``uint8``
``(N, C, H, W)`` tensors (vectors: ``float32`` ``(N, D)`` of unit norm) on the chosen device.
Convert images to floats in ``[0, 1]`` with :func:`to_float`, the one place that does it.

Names: ``"toy"`` (a Gaussian mixture on the unit sphere, the model of eq. 1 and 6),
``"digits"`` (scikit-learn's 8×8 digits), ``"cifar10"`` (the official python-format archive,
downloaded when online and checked against its MD5, :mod:`klteach.cifar10`),
``"cifar10-sample"`` (a small real CIFAR-10 sample shipped in ``data/``), or the path of an
image folder ``ROOT/{train,test}/<class>/*.jpg`` (:mod:`klteach.imagefolder`).

Every dataset carries a ``fingerprint`` of what it was read from, so that a resumed run can
tell when its data changed (:func:`fingerprint_change`). Notes that do not stop loading
(files skipped) are :class:`DataWarning` warnings.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import numbers
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cifar10 import CIFAR10_ARCHIVE, CIFAR10_FILES, CIFAR10_FOLDER, read_cifar10
from .imagefolder import (
    IMAGE_SUFFIXES,
    SAMPLE_REPAIR,
    DataWarning,
    ImageTree,
    decode_tree,
    read_sample_archive,
    scan_image_folder,
)

__all__ = ["DATASETS", "IMAGE_SUFFIXES", "CIFAR10_ARCHIVE", "CIFAR10_FILES", "CIFAR10_FOLDER", "SAMPLE_ARCHIVE",
           "DataWarning", "Dataset", "load_dataset", "to_float", "check_device", "subsample_train",
           "make_toy_sphere", "load_toy", "load_digits", "load_image_folder", "load_cifar10_sample",
           "load_cifar10", "fingerprint_change"]

DATASETS = ("toy", "digits", "cifar10", "cifar10-sample")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
INSTALLED_DATA_DIR = Path(sys.prefix) / "share" / "klteach" / "data"
"""Where ``pip install .`` (not editable) puts the shipped sample (pyproject's data-files)."""
SAMPLE_ARCHIVE = "cifar10-sample.tar.xz"
TOY_TRAIN, TOY_TEST = 2000, 1000
DIGITS_TEST_FRACTION, SPLIT_SEED = 0.2, 0


@dataclass
class Dataset:
    """A train/test split. Images: ``uint8 (N, C, H, W)``; vectors: ``float32 (N, D)``, unit norm."""

    name: str
    train: Tensor
    train_labels: Tensor | None
    test: Tensor
    test_labels: Tensor | None
    classes: list[str]
    kind: str  # "vectors" or "images"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What the data were read from: ``files`` (how many), ``sha256``, ``source`` (see
    :func:`fingerprint_change`). A Dataset built by hand gets a hash of its tensors."""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = tensor_fingerprint(
                self.name, [self.train, self.train_labels, self.test, self.test_labels])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(3, 32, 32)`` or ``(3,)``."""
        return tuple(self.train.shape[1:])

    def to(self, device: str | torch.device, copy: bool = False) -> Dataset:
        """The same dataset with every tensor on ``device`` (copies of them with ``copy=True``)."""
        device = check_device(device)

        def move(t: Tensor) -> Tensor:
            return t.to(device, copy=copy)

        return dataclasses.replace(
            self, train=move(self.train), test=move(self.test), classes=list(self.classes),
            train_labels=None if self.train_labels is None else move(self.train_labels),
            test_labels=None if self.test_labels is None else move(self.test_labels))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, kind={self.kind!r}, train={tuple(self.train.shape)} "
                f"{self.train.dtype}, test={tuple(self.test.shape)}, classes={len(self.classes)}, "
                f"device={self.train.device})")


def to_float(images: Tensor) -> Tensor:
    """``uint8`` images in ``0..255`` as ``float32`` in ``[0, 1]`` (floats are returned as float32)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if images.is_floating_point():
        return images.to(torch.float32)
    raise ValueError(f"images must be uint8 (0..255) or float (0..1), got dtype {images.dtype}")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or ``ValueError`` if it is unknown or not available."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use 'cpu'")
    return device


def load_dataset(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                 data_dir: str | os.PathLike | None = None, sample_size: int | None = None,
                 seed: int = 0) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`) or from an image-folder path.

    ``data_dir`` is where ``cifar10`` lives (default ``$KLTEACH_DATA`` or the repository's
    ``data/``). ``sample_size`` keeps a random subset of that many training samples (for
    ``toy``: generates that many); ``seed`` picks the subset and the toy mixture.
    """
    device = check_device(device)
    name = str(name_or_path)
    if name == "toy":
        dataset = load_toy(TOY_TRAIN if sample_size is None else _check_size(sample_size), seed)
        return dataset.to(device)
    if name == "digits":
        dataset = load_digits()
    elif name == "cifar10":
        dataset = load_cifar10(resolve_data_dir(data_dir))
    elif name == "cifar10-sample":
        dataset = load_cifar10_sample(data_dir)
    elif isinstance(name_or_path, os.PathLike) or os.sep in name or Path(name).exists():
        dataset = load_image_folder(name)
    else:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, or the path "
                         "of an image folder ROOT/{train,test}/<class>/*.jpg")
    if sample_size is not None:
        dataset = subsample_train(dataset, sample_size, seed)
    return dataset.to(device)


def _check_size(sample_size: int, limit: int | None = None) -> int:
    if isinstance(sample_size, bool) or not isinstance(sample_size, numbers.Integral) or sample_size < 1:
        raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")
    if limit is not None and sample_size > limit:
        raise ValueError(f"sample_size={sample_size} is larger than the training set ({limit})")
    return int(sample_size)


def subsample_train(dataset: Dataset, sample_size: int, seed: int = 0) -> Dataset:
    """Keep a random subset of ``sample_size`` training samples (the test set is unchanged)."""
    _check_size(sample_size, len(dataset.train))
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset.train), generator=generator)[:sample_size].sort().values
    keep = keep.to(dataset.train.device)
    labels = None if dataset.train_labels is None else dataset.train_labels[keep]
    return dataclasses.replace(dataset, train=dataset.train[keep], train_labels=labels)   # same fingerprint


# ---------------------------------------------------------------- toy mixture on the sphere

def make_toy_sphere(n: int, dim: int = 3, components: int = 8, spread: float = 0.25,
                    seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` points of a mixture on the unit sphere: the model of eq. (1)/(6).

    Each component has a unit mean direction ``w_k``; a point is ``w_k + spread·ε``
    (``ε ~ N(0, I)``) projected back onto the sphere, a von Mises-Fisher-like cluster.
    Components are equally likely. Returns ``(points (n, dim), labels (n,), means (K, dim))``.
    """
    if dim < 2 or components < 1 or n < 1 or not spread >= 0:
        raise ValueError(f"need n >= 1, dim >= 2, components >= 1, spread >= 0; got n={n}, "
                         f"dim={dim}, components={components}, spread={spread}")
    generator = torch.Generator().manual_seed(seed)
    means = _spread_directions(dim, components, generator)
    labels = torch.arange(n) % components
    labels = labels[torch.randperm(n, generator=generator)]
    noise = torch.randn(n, dim, generator=generator)
    points = torch.nn.functional.normalize(means[labels] + spread * noise, dim=1)
    return points, labels, means


def _spread_directions(dim: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` well-separated unit vectors: farthest-point picks among random candidates."""
    candidates = torch.nn.functional.normalize(torch.randn(64 * count, dim, generator=generator), dim=1)
    chosen = [0]
    for _ in range(count - 1):
        closest = (candidates @ candidates[chosen].T).max(dim=1).values  # cosine to nearest pick
        chosen.append(int(closest.argmin()))
    return candidates[chosen]


def load_toy(train_size: int = TOY_TRAIN, seed: int = 0, test_size: int = TOY_TEST) -> Dataset:
    """The default toy dataset: 8 clusters on the 3-d sphere (so it can be drawn)."""
    points, labels, _ = make_toy_sphere(train_size + test_size, seed=seed)
    classes = [f"cluster {k}" for k in range(int(labels.max()) + 1)]
    source = f"toy: make_toy_sphere, {train_size} train + {test_size} test points, seed {seed}"
    return Dataset("toy", points[:train_size], labels[:train_size], points[train_size:],
                   labels[train_size:], classes, "vectors", identity_fingerprint(source))


# ---------------------------------------------------------------- digits

def load_digits() -> Dataset:
    """scikit-learn's 1797 digits as ``uint8 (N, 1, 8, 8)`` in ``0..255``; fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
        random_state=SPLIT_SEED)
    train, test = torch.from_numpy(train_x), torch.from_numpy(test_x)
    train_labels, test_labels = torch.from_numpy(train_y).long(), torch.from_numpy(test_y).long()
    return Dataset("digits", train, train_labels, test, test_labels, [str(d) for d in range(10)], "images",
                   tensor_fingerprint("digits (scikit-learn)", [train, train_labels, test, test_labels], files=1))


# ---------------------------------------------------------------- image folders, the sample, CIFAR-10

def load_image_folder(root: str | os.PathLike) -> Dataset:
    """Images from ``ROOT/{train,test}/<class>/`` (see :mod:`klteach.imagefolder` for what is skipped)."""
    tree = scan_image_folder(Path(root))
    return _dataset_from_tree(str(root), tree, decode_tree(tree), "image folder")


def _dataset_from_tree(name: str, tree: ImageTree, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                       source: str) -> Dataset:
    tensors = {split: (torch.from_numpy(x), torch.from_numpy(y)) for split, (x, y) in splits.items()}
    return Dataset(name, *tensors["train"], *tensors["test"], list(tree.classes), "images",
                   names_fingerprint(source, tree.relative_paths()))


def load_cifar10_sample(data_dir: str | os.PathLike | None = None) -> Dataset:
    """The shipped 12,000-image CIFAR-10 sample (1000 train + 200 test per class, real images).

    Read from ``data_dir/cifar10-sample.tar.xz`` when present, else the repository's ``data/``
    (a clone or an editable install), else ``<prefix>/share/klteach/data`` (``pip install .``).
    Its fingerprint is that of the image folder it holds, so the extracted folder has the same one.
    """
    candidates = [Path(data_dir)] if data_dir is not None else []
    candidates += [REPO_DATA_DIR, INSTALLED_DATA_DIR]
    for folder in candidates:
        archive = folder / SAMPLE_ARCHIVE
        if archive.is_file():
            stat = archive.stat()
            return _read_sample_archive(str(archive.resolve()), stat.st_mtime_ns, stat.st_size).to("cpu", copy=True)
    raise FileNotFoundError(f"{SAMPLE_ARCHIVE} not found in {', '.join(map(str, candidates))}; "
                            "rebuild it with data/make_cifar10_sample.py")


@functools.lru_cache(maxsize=1)
def _read_sample_archive(path: str, mtime_ns: int, size: int) -> Dataset:
    """Decode the sample once per process (cached by path, time and size; callers get copies)."""
    tree = read_sample_archive(Path(path))
    try:
        splits = decode_tree(tree, where=f"{path}:")
    except ValueError as error:
        raise ValueError(f"{error}; {SAMPLE_REPAIR}") from None
    return _dataset_from_tree("cifar10-sample", tree, splits, "cifar10-sample")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$KLTEACH_DATA``, else the repository's ``data/`` folder."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("KLTEACH_DATA") or REPO_DATA_DIR)


def load_cifar10(data_dir: Path) -> Dataset:
    """CIFAR-10 from the official archive in ``data_dir`` (see :func:`klteach.cifar10.read_cifar10`)."""
    splits, classes, sha256 = read_cifar10(data_dir)
    (train, train_labels), (test, test_labels) = splits["train"], splits["test"]
    return Dataset("cifar10", torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(test),
                   torch.from_numpy(test_labels), classes, "images",
                   {"source": "cifar10", "files": len(CIFAR10_FILES), "sha256": sha256})


# ---------------------------------------------------------------- fingerprints (what a checkpoint was trained on)

def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def names_fingerprint(source: str, paths: list[str]) -> dict[str, Any]:
    """An image folder's fingerprint: the number of files, a hash of their sorted relative paths
    and the number in each folder (so that a change can be told in words)."""
    paths = sorted(paths)
    folders = Counter(path.rsplit("/", 1)[0] for path in paths)
    return {"source": source, "files": len(paths), "sha256": _sha256("\n".join(paths).encode()),
            "folders": dict(sorted(folders.items()))}


def identity_fingerprint(source: str) -> dict[str, Any]:
    """Generated data: no files; the hash of a description that fixes the data (generator and seed)."""
    return {"source": source, "files": 0, "sha256": _sha256(source.encode())}


def tensor_fingerprint(source: str, tensors: Sequence[Tensor | None], files: int = 0) -> dict[str, Any]:
    """Data held in memory: a hash of the tensors' shapes, dtypes and bytes."""
    parts = []
    for tensor in tensors:
        if tensor is not None:
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            parts += [f"{tuple(tensor.shape)} {tensor.dtype}".encode(), flat.view(torch.uint8).numpy().tobytes()]
    return {"source": source, "files": files, "sha256": _sha256(*parts)}


def fingerprint_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """What changed between the dataset fingerprints ``old`` and ``new``, in words; None when equal.

    An empty or missing ``old`` (a checkpoint from before fingerprints) counts as equal.
    """
    if not old or (old["files"], old["sha256"]) == (new["files"], new["sha256"]):
        return None
    count = f"({old['files']} → {new['files']} files)"
    if "folders" in old and "folders" in new:
        changes = []
        for folder in sorted(set(old["folders"]) | set(new["folders"])):
            before, after = old["folders"].get(folder, 0), new["folders"].get(folder, 0)
            if after != before:
                changes.append(f"{abs(after - before)} {'added in' if after > before else 'removed from'} {folder}")
        if not changes:
            return f"the file list differs: same count ({new['files']} files), different names"
        added = new["files"] - old["files"]
        total = f"{abs(added)} file(s) {'added' if added > 0 else 'removed'}" if added else "files moved"
        return f"{total} {count}: {', '.join(changes[:5])}{' ...' if len(changes) > 5 else ''}"
    if old.get("source") != new.get("source"):
        return f"a different dataset: {old.get('source')} → {new.get('source')}"
    if old["files"] != new["files"]:
        added = new["files"] - old["files"]
        return f"{abs(added)} file(s) {'added' if added > 0 else 'removed'} {count}"
    return f"the data differ: same number of files ({new['files']}), different contents"
