"""Datasets as tensors: toy mixtures on the sphere, digits, CIFAR-10 and image folders.

``load_dataset(name_or_path)`` returns a :class:`Dataset` whose images are ``uint8``
``(N, C, H, W)`` tensors (vectors: ``float32`` ``(N, D)`` of unit norm) on the chosen device.
Convert images to floats in ``[0, 1]`` with :func:`to_float`, the one place that does it.

Names: ``"toy"`` (a Gaussian mixture on the unit sphere, the model of eq. 1 and 6),
``"digits"`` (scikit-learn's 8×8 digits), ``"cifar10"`` (the official python-format archive,
downloaded when online and checked against its MD5), ``"cifar10-sample"`` (a small real
CIFAR-10 sample shipped in ``data/``), or the path of an image folder
``ROOT/{train,test}/<class>/*.{jpg,jpeg,png}``.
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import io
import numbers
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("toy", "digits", "cifar10", "cifar10-sample")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
INSTALLED_DATA_DIR = Path(sys.prefix) / "share" / "klteach" / "data"
"""Where ``pip install .`` (not editable) puts the shipped sample (pyproject's data-files)."""
SAMPLE_ARCHIVE = "cifar10-sample.tar.xz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(3, 32, 32)`` or ``(3,)``."""
        return tuple(self.train.shape[1:])

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with every tensor on ``device``."""
        device = check_device(device)
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.train), move(self.train_labels), move(self.test),
                       move(self.test_labels), list(self.classes), self.kind)

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
    labels = None if dataset.train_labels is None else dataset.train_labels[keep.to(dataset.train.device)]
    return Dataset(dataset.name, dataset.train[keep.to(dataset.train.device)], labels, dataset.test,
                   dataset.test_labels, dataset.classes, dataset.kind)


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
    return Dataset("toy", points[:train_size], labels[:train_size], points[train_size:],
                   labels[train_size:], classes, "vectors")


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
    return Dataset("digits", torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
                   torch.from_numpy(test_x), torch.from_numpy(test_y).long(),
                   [str(d) for d in range(10)], "images")


# ---------------------------------------------------------------- image folders and the sample

def decode_images(sources: list[tuple[str, Path | bytes]]) -> np.ndarray:
    """Decode ``(name, path or bytes)`` images to one ``uint8 (N, 3, H, W)`` RGB array.

    All images must have the same size. Unreadable files are listed by name in the error.
    (A thread pool does not help: Pillow parses the headers of small JPEGs in Python.)
    """
    from PIL import Image

    arrays, bad = [], []
    for name, source in sources:
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source,
                            formats=("JPEG", "PNG")) as image:
                arrays.append(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as error:
            bad.append(f"{name} ({type(error).__name__}: {error})")
    if bad:
        raise ValueError(f"{len(bad)} file(s) could not be read as JPEG/PNG images: "
                         + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    for (name, _), array in zip(sources, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(f"images must all have the same size: {sources[0][0]} is "
                             f"{arrays[0].shape[1]}x{arrays[0].shape[0]} but {name} is "
                             f"{array.shape[1]}x{array.shape[0]} (resize them first)")
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def _dataset_from_tree(name: str, tree: dict[str, list[tuple[str, str, Path | bytes]]],
                       classes: list[str]) -> Dataset:
    """Build a Dataset from ``{split: [(class, file name, path or bytes), ...]}``."""
    splits = {}
    for split, items in tree.items():
        images = decode_images([(file, source) for _, file, source in items])
        labels = torch.tensor([classes.index(c) for c, _, _ in items], dtype=torch.long)
        splits[split] = (torch.from_numpy(images), labels)
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise ValueError(f"train images are {tuple(splits['train'][0].shape[2:])} but test images "
                         f"are {tuple(splits['test'][0].shape[2:])}: all images must be the same size")
    return Dataset(name, *splits["train"], *splits["test"], classes, "images")


def _sorted_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` sorted by name."""
    return [folder / name for name in sorted(os.listdir(folder))]


def load_image_folder(root: str | os.PathLike) -> Dataset:
    """Images from ``ROOT/{train,test}/<class>/*.{jpg,jpeg,png}``; classes are the train sub-folders."""
    root = Path(root)
    layout = "expected ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (or .jpeg/.png)"
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist ({layout})")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory ({layout})")
    classes: list[str] = []
    tree = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ sub-folder ({layout})")
        items, strays = [], []
        for entry in _sorted_entries(folder):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                strays.append(entry)
                continue
            if split == "train":
                classes.append(entry.name)
            elif entry.name not in classes:
                raise ValueError(f"test class folder {entry} has no counterpart in {root / 'train'}")
            for file in _sorted_entries(entry):
                if file.name.startswith("."):
                    continue
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    items.append((entry.name, str(file), file))
                else:
                    strays.append(file)
        if strays:
            raise ValueError(f"{len(strays)} non-image entr{'y' if len(strays) == 1 else 'ies'} in "
                             f"{folder}: {', '.join(map(str, strays[:5]))}"
                             f"{' ...' if len(strays) > 5 else ''} ({layout})")
        if not items:
            raise ValueError(f"no images found in {folder} ({layout})")
        tree[split] = items
    return _dataset_from_tree(str(root), tree, classes)


def load_cifar10_sample(data_dir: str | os.PathLike | None = None) -> Dataset:
    """The shipped 12,000-image CIFAR-10 sample (1000 train + 200 test per class, real images).

    Read from ``data_dir/cifar10-sample.tar.xz`` when present, else the repository's ``data/``
    (a clone or an editable install), else ``<prefix>/share/klteach/data`` (``pip install .``).
    """
    candidates = [Path(data_dir)] if data_dir is not None else []
    candidates += [REPO_DATA_DIR, INSTALLED_DATA_DIR]
    for folder in candidates:
        archive = folder / SAMPLE_ARCHIVE
        if archive.is_file():
            stat = archive.stat()
            return _copy(_read_sample_archive(str(archive.resolve()), stat.st_mtime_ns, stat.st_size))
    raise FileNotFoundError(f"{SAMPLE_ARCHIVE} not found in {', '.join(map(str, candidates))}; "
                            "rebuild it with data/make_cifar10_sample.py")


@functools.lru_cache(maxsize=1)
def _read_sample_archive(path: str, mtime_ns: int, size: int) -> Dataset:
    """Decode the sample once per process (cached by path, time and size; callers get copies)."""
    tree: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(path, "r:xz") as tar:
        for member in tar:
            parts = Path(member.name).parts  # cifar10-sample/<split>/<class>/NNNN.jpg
            if member.isfile() and len(parts) == 4 and parts[1] in tree:
                tree[parts[1]].append((parts[2], member.name, tar.extractfile(member).read()))
    classes = sorted({c for c, _, _ in tree["train"]})
    return _dataset_from_tree("cifar10-sample", tree, classes)


def _copy(dataset: Dataset) -> Dataset:
    """A copy whose tensors share no memory with ``dataset`` (so the cache cannot be altered)."""
    clone = lambda t: None if t is None else t.clone()  # noqa: E731
    return Dataset(dataset.name, clone(dataset.train), clone(dataset.train_labels),
                   clone(dataset.test), clone(dataset.test_labels), list(dataset.classes),
                   dataset.kind)


# ---------------------------------------------------------------- official CIFAR-10 archive

def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$KLTEACH_DATA``, else the repository's ``data/`` folder."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("KLTEACH_DATA") or REPO_DATA_DIR)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_cifar10_archive(archive: Path) -> None:
    """Raise ``ValueError`` naming the file unless its MD5 is the official one."""
    actual = file_md5(archive)
    if actual != CIFAR10_MD5:
        raise ValueError(f"{archive} is corrupt or truncated: MD5 {actual}, expected {CIFAR10_MD5}. "
                         "Delete it and load 'cifar10' again to re-download it.")


def download_cifar10(archive: Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download the official archive to ``archive`` atomically, verifying its MD5.

    Writes to a temporary file in the same folder and renames it only when the checksum
    matches; on any failure the temporary file is removed.
    """
    url = url or CIFAR10_URL
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=archive.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
            except OSError as error:  # URLError, timeouts and resets are all OSErrors
                raise FileNotFoundError(
                    f"CIFAR-10 is not in {archive.parent} and downloading {url} failed "
                    f"({error}); are you offline? Alternatives: put {CIFAR10_ARCHIVE} there "
                    "yourself, use an image folder path (ROOT/{train,test}/<class>/*.jpg), "
                    "or use the shipped 'cifar10-sample'.") from None
        verify_cifar10_archive(Path(tmp))
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return archive


def extract_cifar10(archive: Path, folder: Path) -> None:
    """Extract the seven batch files of ``archive`` into ``folder`` atomically (temp dir, rename)."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name, suffix=".part"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in CIFAR10_FILES:
                try:
                    member = tar.extractfile(f"{CIFAR10_FOLDER}/{name}")
                except KeyError:
                    raise ValueError(f"{archive} has no {CIFAR10_FOLDER}/{name}") from None
                (tmp / name).write_bytes(member.read())
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            for file in tmp.iterdir():
                file.unlink()
            tmp.rmdir()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain Python data: a pickle cannot run other code."""

    _reconstruct = np.empty(0).__reduce__()[0]

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return self._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _read_batch(path: Path) -> dict:
    with open(path, "rb") as file:
        batch = _ArrayUnpickler(file, encoding="bytes").load()
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def load_cifar10(data_dir: Path) -> Dataset:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py``, extracted from (or downloaded to) the archive."""
    folder = data_dir / CIFAR10_FOLDER
    if not folder.is_dir():
        archive = data_dir / CIFAR10_ARCHIVE
        if not archive.is_file():
            download_cifar10(archive)
        verify_cifar10_archive(archive)
        extract_cifar10(archive, folder)
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is incomplete (missing {', '.join(missing)}); delete it "
                                "and load 'cifar10' again")

    def read(names: list[str]) -> tuple[Tensor, Tensor]:
        batches = [_read_batch(folder / name) for name in names]
        images = np.concatenate([b["data"] for b in batches]).astype(np.uint8).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
        return torch.from_numpy(images), torch.from_numpy(labels).long()

    classes = [c.decode() if isinstance(c, bytes) else c
               for c in _read_batch(folder / "batches.meta")["label_names"]]
    return Dataset("cifar10", *read(list(CIFAR10_FILES[:5])), *read(["test_batch"]), classes, "images")
