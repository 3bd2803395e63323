"""The official CIFAR-10 archive (python format): download, MD5 check, extraction, safe unpickling.

:func:`read_cifar10` returns arrays; :func:`klteach.data.load_dataset` makes them a ``Dataset``.
Every failure is one ``ValueError``/``FileNotFoundError`` line that names the file and says how
to get a good copy; nothing is left half-written (downloads and extraction go through a
temporary name and a rename).
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGE_VALUES = 3 * 32 * 32


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
                    member = None
                if member is None:
                    raise ValueError(f"{archive} has no file {CIFAR10_FOLDER}/{name}")
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

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return self._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def unpickle_batch(raw: bytes) -> dict:
    """One batch file's dictionary, with ``str`` keys (the files store ``bytes`` keys)."""
    batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _images_and_labels(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 (N, 3, 32, 32)`` images and ``int64 (N,)`` labels of one batch, checked."""
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_VALUES or len(labels) != len(data):
        raise ValueError(f"data {data.dtype} {data.shape} and {len(labels)} labels are not "
                         f"N x {IMAGE_VALUES} uint8 values with N labels")
    return data.reshape(-1, 3, 32, 32), labels


@contextlib.contextmanager
def _named_if_damaged(path: Path) -> Iterator[None]:
    """Turn whatever a damaged batch file raises into one line naming it and saying what to do."""
    try:
        yield
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            zlib.error) as error:
        raise ValueError(f"{path} is corrupt or truncated ({type(error).__name__}: {error}); delete the "
                         f"folder {path.parent} and load 'cifar10' again to extract it afresh from "
                         f"{CIFAR10_ARCHIVE} (downloaded again if that is missing)") from None


def read_cifar10(data_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py``, extracted from (or downloaded to) the archive.

    Returns ``({"train": (images, labels), "test": ...}, class names, sha256)``; the hash is of
    the seven batch files as read, the dataset's fingerprint.
    """
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
    digest, batches = hashlib.sha256(), {}
    for name in CIFAR10_FILES:
        raw = (folder / name).read_bytes()
        digest.update(hashlib.sha256(raw).digest())
        with _named_if_damaged(folder / name):
            if name == "batches.meta":
                classes = [c.decode() if isinstance(c, bytes) else str(c) for c in unpickle_batch(raw)["label_names"]]
            else:
                batches[name] = _images_and_labels(unpickle_batch(raw))
    splits = {}
    for split, names in (("train", CIFAR10_FILES[:5]), ("test", ("test_batch",))):
        splits[split] = (np.concatenate([batches[n][0] for n in names]), np.concatenate([batches[n][1] for n in names]))
    return splits, classes, digest.hexdigest()
