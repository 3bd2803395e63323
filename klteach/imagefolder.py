"""Image folders as torchvision's ``ImageFolder`` reads them, and the shipped CIFAR-10 sample.

A folder ``ROOT/{train,test}/<class>/...`` holds one sub-folder per class; every file in it (at
any depth) whose extension is in :data:`IMAGE_SUFFIXES` is an image of that class. Everything
else is skipped with one note (a :class:`DataWarning`) saying how many and where: hidden files
such as ``.DS_Store``, thumbnail databases such as ``Thumbs.db``, READMEs. A class folder
without images is skipped with a note, not made a class. A file with an image extension that
cannot be decoded is an error that names it.

The shipped sample ``cifar10-sample.tar.xz`` is such a folder packed in a tar archive.
:func:`klteach.data.load_dataset` turns what these functions read into a ``Dataset``.
"""
from __future__ import annotations

import io
import lzma
import os
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""What counts as an image: torchvision's ``IMG_EXTENSIONS`` (case does not matter)."""
LAYOUT = "expected ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (or .png and other image types)"
SPLITS = ("train", "test")
SAMPLE_REPAIR = ("get a good copy: in a clone, `git checkout -- data/cifar10-sample.tar.xz`; after pip install, "
                 "reinstall klteach; or rebuild it with data/make_cifar10_sample.py")


class DataWarning(UserWarning):
    """A note about the data that does not stop loading (files skipped, empty class folders)."""


@dataclass
class ImageTree:
    """What a folder (or the sample archive) holds, before decoding.

    ``items[split]`` lists ``(class, relative path, file or its bytes)``, sorted by path;
    ``classes`` are the train classes that have images, sorted.
    """

    classes: list[str]
    items: dict[str, list[tuple[str, str, Path | bytes]]] = field(default_factory=dict)

    def relative_paths(self) -> list[str]:
        """Every image's path relative to the root, e.g. ``train/cat/0001.jpg``."""
        return [path for split in SPLITS for _, path, _ in self.items[split]]


def is_hidden(name: str) -> bool:
    """Hidden entries (``.DS_Store``, ``._photo.jpg``, ``.ipynb_checkpoints``) and macOS zip leftovers."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension is an image extension (:data:`IMAGE_SUFFIXES`)."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_SUFFIXES)


def _images_in(class_folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``class_folder`` (recursively, as ImageFolder does) and what was skipped."""
    images: list[Path] = []
    skipped: list[Path] = []
    for folder, subfolders, files in os.walk(class_folder, followlinks=True):
        skipped += [Path(folder, name) for name in subfolders if is_hidden(name)]
        subfolders[:] = [name for name in subfolders if not is_hidden(name)]
        for name in files:
            (images if is_image_name(name) else skipped).append(Path(folder, name))
    return sorted(images), skipped


def scan_image_folder(root: Path) -> ImageTree:
    """List the images of ``ROOT/{train,test}/<class>/``; warn once about what was skipped."""
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist ({LAYOUT})")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory ({LAYOUT})")
    tree = ImageTree(classes=[])
    skipped: list[Path] = []
    empty: list[str] = []
    empty_train: set[str] = set()
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ sub-folder ({LAYOUT})")
        items: list[tuple[str, str, Path | bytes]] = []
        for entry in sorted(folder.iterdir()):
            if is_hidden(entry.name) or not entry.is_dir():
                skipped.append(entry)
                continue
            images, skipped_here = _images_in(entry)
            skipped += skipped_here
            if not images:
                empty.append(f"{split}/{entry.name}")
                if split == "train":
                    empty_train.add(entry.name)
                continue
            if split == "train":
                tree.classes.append(entry.name)
            elif entry.name not in tree.classes:
                why = "has no images" if entry.name in empty_train else "does not exist"
                raise ValueError(f"test class folder {entry} has images but {root / 'train' / entry.name} {why}: "
                                 "every test class must also be a train class")
            items += [(entry.name, path.relative_to(root).as_posix(), path) for path in images]
        if not items:
            raise ValueError(f"no images found in {folder} ({LAYOUT})")
        tree.items[split] = items
    if skipped:
        warnings.warn(_skipped_note(root, skipped), DataWarning, stacklevel=2)
    if empty:
        warnings.warn(f"{root}: skipped {len(empty)} class folder(s) without images, not made classes: "
                      f"{_first(empty)}", DataWarning, stacklevel=2)
    return tree


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" and {len(names) - count} more" if len(names) > count else "")


def _skipped_note(root: Path, skipped: list[Path]) -> str:
    """One line: how many entries were skipped, in which folders, and a few of their names."""
    where = Counter(path.parent.relative_to(root).as_posix() for path in skipped)
    places = _first([f"{count} in {folder}" for folder, count in sorted(where.items())])
    names = _first(sorted({path.name for path in skipped}))
    entries = "entry that is not an image" if len(skipped) == 1 else "entries that are not images"
    return f"{root}: skipped {len(skipped)} {entries} ({places}): {names}"


# ---------------------------------------------------------------- decoding

def rgb_array(image: Image.Image) -> np.ndarray:
    """An opened Pillow image as a ``uint8 (H, W, 3)`` RGB array.

    16-bit grey levels (mode ``I;16``/``I``, e.g. 16-bit PNGs) are scaled by 255/65535:
    Pillow's own ``convert("RGB")`` would clip every value above 255 to white.
    """
    if image.mode.startswith("I"):
        grey = np.asarray(image).astype(np.float64).clip(0, 65535)
        return np.repeat(np.rint(grey * (255 / 65535)).astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def decode_images(sources: list[tuple[str, Path | bytes]]) -> np.ndarray:
    """Decode ``(name, path or bytes)`` images to one ``uint8 (N, 3, H, W)`` RGB array.

    All images must have the same size. Files that cannot be decoded are named in the error.
    (A thread pool does not help: Pillow parses the headers of small JPEGs in Python.)
    """
    arrays, bad = [], []
    for name, source in sources:
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                arrays.append(rgb_array(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            bad.append(f"{name} ({type(error).__name__}: {error})")
    if bad:
        raise ValueError(f"{len(bad)} file(s) could not be read as images: {_first(bad)}")
    for (name, _), array in zip(sources, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(f"images must all have the same size: {sources[0][0]} is "
                             f"{arrays[0].shape[1]}x{arrays[0].shape[0]} but {name} is "
                             f"{array.shape[1]}x{array.shape[0]} (resize them first)")
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def decode_tree(tree: ImageTree, where: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images uint8 (N, 3, H, W), labels int64 (N,))}``; train and test must match in size.

    ``where`` prefixes the names of images held as bytes (an archive's path) in error messages.
    """
    splits = {}
    for split, items in tree.items.items():
        sources = [(str(source) if isinstance(source, Path) else f"{where}{path}", source)
                   for _, path, source in items]
        labels = np.array([tree.classes.index(name) for name, _, _ in items], dtype=np.int64)
        splits[split] = (decode_images(sources), labels)
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise ValueError(f"train images are {splits['train'][0].shape[2:]} but test images are "
                         f"{splits['test'][0].shape[2:]}: all images must be the same size")
    return splits


# ---------------------------------------------------------------- the shipped sample

def read_sample_archive(path: Path) -> ImageTree:
    """The image folder inside ``cifar10-sample.tar.xz`` (``cifar10-sample/<split>/<class>/NNNN.jpg``).

    A corrupt or truncated archive is a ``ValueError`` that names it and says how to get a good copy.
    """
    tree = ImageTree(classes=[], items={split: [] for split in SPLITS})
    try:
        with tarfile.open(path, "r:xz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                file = tar.extractfile(member) if member.isfile() else None
                if file is not None and len(parts) == 4 and parts[1] in SPLITS and is_image_name(parts[3]):
                    tree.items[parts[1]].append((parts[2], "/".join(parts[1:]), file.read()))
    except (tarfile.TarError, EOFError, lzma.LZMAError) as error:
        raise ValueError(f"{path} is corrupt or truncated ({type(error).__name__}: {error}); "
                         f"{SAMPLE_REPAIR}") from None
    for split in SPLITS:
        if not tree.items[split]:
            raise ValueError(f"{path} holds no {split} images, it is not the CIFAR-10 sample; {SAMPLE_REPAIR}")
        tree.items[split].sort(key=lambda item: item[1])
    tree.classes = sorted({name for name, _, _ in tree.items["train"]})
    return tree
