"""Build ``data/cifar10-sample.tar.xz``: a small, balanced sample of the real CIFAR-10.

Source: a JPEG re-encoding of CIFAR-10 as a ``.tar.gz`` laid out as
``cifar10-jpg/{train,test}/<class>/NNNN.jpg`` (5000 train and 1000 test images per class,
NNNN the image's index in the official batches). From every class we take
``TRAIN_PER_CLASS`` training and ``TEST_PER_CLASS`` test images, chosen by a seeded random
draw (numpy ``default_rng(SEED)``, per split and class, in sorted class order). The JPEG
bytes are copied unchanged, under the same names, into
``cifar10-sample/{train,test}/<class>/NNNN.jpg``: the file names *are* the source indices.

The output is byte-for-byte reproducible (fixed member order and metadata, xz preset 9).
Run from the repository root:

    python data/make_cifar10_sample.py --source cifar10-jpg.tar.gz [--out PATH]
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
SOURCE_TRAIN_PER_CLASS = 5000
SOURCE_TEST_PER_CLASS = 1000
SEED = 0
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "cifar10-sample.tar.xz"


def chosen_indices(classes: list[str]) -> dict[tuple[str, str], list[int]]:
    """The source indices taken for each ``(split, class)``, sorted."""
    rng = np.random.default_rng(SEED)
    chosen = {}
    for split, take, total in [("train", TRAIN_PER_CLASS, SOURCE_TRAIN_PER_CLASS),
                               ("test", TEST_PER_CLASS, SOURCE_TEST_PER_CLASS)]:
        for name in sorted(classes):
            chosen[split, name] = sorted(rng.choice(total, size=take, replace=False).tolist())
    return chosen


def read_source(source: Path) -> dict[tuple[str, str, int], bytes]:
    """All JPEGs of the source tarball, keyed by ``(split, class, index)``."""
    images = {}
    with tarfile.open(source, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 4 and parts[3].endswith(".jpg"):
                _, split, name, filename = parts
                images[split, name, int(filename[:-4])] = tar.extractfile(member).read()
    return images


def build(source: Path, out: Path) -> None:
    """Write the sample archive to ``out`` atomically (temporary file, then rename)."""
    images = read_source(source)
    classes = sorted({name for _, name, _ in images})
    if len(classes) != 10:
        raise ValueError(f"expected 10 classes in {source}, found {classes}")
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:xz", preset=9,
                                                      format=tarfile.USTAR_FORMAT) as tar:
            for (split, name), indices in chosen_indices(classes).items():
                for index in indices:
                    data = images[split, name, index]
                    info = tarfile.TarInfo(f"cifar10-sample/{split}/{name}/{index:04d}.jpg")
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, "
          f"{10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)} images)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the JPEG re-encoding of CIFAR-10 (.tar.gz)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    build(args.source, args.out)
