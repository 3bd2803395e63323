"""klteach.data: toy sphere, digits, image folders, the shipped sample, the CIFAR-10 archive."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from klteach import cifar10, data
from klteach.data import Dataset, DataWarning, fingerprint_change, load_dataset, make_toy_sphere, to_float

REPO = Path(__file__).resolve().parent.parent
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


# ---------------------------------------------------------------- toy

def test_toy_is_deterministic_unit_norm_and_labelled():
    a, b, c = load_dataset("toy"), load_dataset("toy"), load_dataset("toy", seed=1)
    assert a.kind == "vectors" and a.train.dtype == torch.float32 and a.train.shape == (2000, 3)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.allclose(a.train, c.train)
    for x in (a.train, a.test):
        assert torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-6)
    assert sorted(a.train_labels.unique().tolist()) == list(range(8)) and len(a.classes) == 8


def test_toy_points_lie_nearest_their_own_mean_direction():
    points, labels, means = make_toy_sphere(4000, dim=5, components=6, spread=0.25, seed=3)
    assert means.shape == (6, 5) and torch.allclose(means.norm(dim=1), torch.ones(6), atol=1e-6)
    nearest = (points @ means.T).argmax(dim=1)
    assert (nearest == labels).float().mean() > 0.95
    assert labels.bincount().tolist() == [4000 // 6 + (k < 4000 % 6) for k in range(6)]


def test_toy_sample_size_and_bad_arguments():
    assert load_dataset("toy", sample_size=300).train.shape == (300, 3)
    with pytest.raises(ValueError, match="sample_size"):
        load_dataset("toy", sample_size=0)
    with pytest.raises(ValueError, match="dim >= 2"):
        make_toy_sphere(10, dim=1)


# ---------------------------------------------------------------- digits

def test_digits_shapes_dtype_and_stratified_split():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    assert d.kind == "images" and d.train.dtype == torch.uint8
    assert d.train.shape == (1437, 1, 8, 8) and d.test.shape == (360, 1, 8, 8)
    assert int(d.train.max()) == 255 and int(d.train.min()) == 0
    assert d.classes == [str(k) for k in range(10)]
    counts = load_digits().target
    for k in range(10):  # 20% of every class is in the test set (stratified)
        assert abs(int((d.test_labels == k).sum()) - 0.2 * (counts == k).sum()) <= 1
    assert torch.equal(d.train, load_dataset("digits").train)  # same split every time
    assert to_float(d.train).max() == 1.0


def test_sample_size_subsets_the_training_set_only():
    full, part = load_dataset("digits"), load_dataset("digits", sample_size=100, seed=4)
    assert part.train.shape == (100, 1, 8, 8) and torch.equal(part.test, full.test)
    with pytest.raises(ValueError, match="larger than the training set"):
        load_dataset("digits", sample_size=10**6)


def test_unknown_name_and_device_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar100'.*toy.*path"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        load_dataset("toy", device="gpu0")


def test_to_float_rejects_integer_images_other_than_uint8():
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------- image folders

def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_folder(root: Path, size: int = 6, seed: int = 0) -> dict:
    """ROOT/{train,test}/{cat,dog}/ with lossless PNGs; returns the pixels written."""
    rng, written = np.random.default_rng(seed), {}
    for split, count in [("train", 3), ("test", 2)]:
        for name in ("dog", "cat"):
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                write_image(root / split / name / f"{i}.png", pixels)
                written[split, name, i] = pixels
    return written


def test_image_folder_loads_sorted_classes_and_exact_pixels(tmp_path):
    written = make_folder(tmp_path)
    gray = np.full((6, 6), 77, dtype=np.uint8)
    write_image(tmp_path / "train" / "dog" / "3.png", gray)  # grayscale becomes RGB
    d = load_dataset(tmp_path)
    assert d.classes == ["cat", "dog"] and d.kind == "images"
    assert d.train.shape == (7, 3, 6, 6) and d.train.dtype == torch.uint8 and d.test.shape == (4, 3, 6, 6)
    assert d.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert np.array_equal(d.train[0].permute(1, 2, 0).numpy(), written["train", "cat", 0])
    assert np.array_equal(d.test[3].permute(1, 2, 0).numpy(), written["test", "dog", 1])
    assert (d.train[6] == 77).all()
    assert load_dataset(str(tmp_path)).train.shape == (7, 3, 6, 6)  # str path works too


def test_image_folder_reads_jpeg(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "train" / "cat" / "x.JPG", np.full((6, 6, 3), 200, dtype=np.uint8))
    d = load_dataset(tmp_path)
    assert d.train.shape[0] == 7 and abs(int(d.train[3].float().mean()) - 200) <= 2


def test_missing_folder_and_missing_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="no train/ sub-folder"):
        load_dataset(tmp_path)


def test_folder_without_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_dataset(tmp_path)


def test_non_images_hidden_files_and_readmes_are_skipped_with_one_note(tmp_path):
    """torchvision's ImageFolder convention: only image extensions count, the rest is skipped."""
    make_folder(tmp_path / "clean", seed=0)
    clean = load_dataset(tmp_path / "clean")
    root = tmp_path / "messy"
    make_folder(root, seed=0)
    junk = ["train/cat/.DS_Store", "train/cat/Thumbs.db", "train/dog/notes.txt", "train/README.md",
            "test/dog/._0.png", "test/desktop.ini", "train/cat/.ipynb_checkpoints/0-checkpoint.png"]
    for name in junk:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")
    with pytest.warns(DataWarning) as notes:
        d = load_dataset(root)
    (note,) = [str(w.message) for w in notes]
    assert "skipped 7 entries that are not images" in note and "\n" not in note
    assert "(1 in test, 1 in test/dog, 1 in train, 3 in train/cat, 1 in train/dog)" in note
    assert "Thumbs.db" in note and "README.md" in note
    assert d.classes == clean.classes and torch.equal(d.train, clean.train) and torch.equal(d.test, clean.test)
    assert fingerprint_change(clean.fingerprint, d.fingerprint) is None


def test_images_in_nested_folders_belong_to_their_class(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "train" / "dog" / "more" / "9.png", np.zeros((6, 6, 3), dtype=np.uint8))
    d = load_dataset(tmp_path)
    assert d.train.shape[0] == 7 and d.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_an_empty_class_folder_is_skipped_with_a_note(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / ".DS_Store").write_bytes(b"")
    (tmp_path / "test" / "cat" / "0.png").rename(tmp_path / "test" / "cat" / "0.txt")
    (tmp_path / "test" / "cat" / "1.png").unlink()
    with pytest.warns(DataWarning) as notes:
        d = load_dataset(tmp_path)
    skipped_files, empty_classes = (str(w.message) for w in notes)
    assert "skipped 2 entries that are not images" in skipped_files
    assert "skipped 2 class folder(s) without images, not made classes: train/bird, test/cat" in empty_classes
    assert d.classes == ["cat", "dog"] and d.test_labels.tolist() == [1, 1]
    write_image(tmp_path / "test" / "bird" / "0.png", np.zeros((6, 6, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"test/bird has images but .*train/bird has no images"):
        load_dataset(tmp_path)


def test_a_file_with_an_image_extension_that_cannot_be_decoded_is_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"could not be read.*broken\.jpg"):
        load_dataset(tmp_path)


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    make_folder(tmp_path)
    levels = np.random.default_rng(1).integers(0, 65536, (6, 6), dtype=np.uint16)
    write_image(tmp_path / "train" / "cat" / "deep.png", levels)             # a 16-bit greyscale PNG
    with Image.open(tmp_path / "train" / "cat" / "deep.png") as image:
        assert image.mode.startswith("I")
    d = load_dataset(tmp_path)
    expected = np.rint(levels / 257.0).astype(np.uint8)
    for channel in d.train[3]:                                               # cat: 0, 1, 2, deep
        assert np.array_equal(channel.numpy(), expected)


def test_mixed_sizes_are_named(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "train" / "dog" / "big.png", np.zeros((9, 9, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"same size.*big\.png.*9x9"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- the shipped CIFAR-10 sample

def test_sample_is_balanced_real_and_small():
    archive = REPO / "data" / data.SAMPLE_ARCHIVE
    assert archive.stat().st_size <= 5 * 1024 * 1024
    assert sum(f.stat().st_size for f in (REPO / "data").rglob("*") if f.is_file()
               and "cifar-10-batches-py" not in f.parts and f.name != data.CIFAR10_ARCHIVE) <= 5 * 1024 * 1024
    d = load_dataset("cifar10-sample")
    assert d.train.shape == (10000, 3, 32, 32) and d.test.shape == (2000, 3, 32, 32)
    assert d.train.dtype == torch.uint8 and len(d.classes) == 10 and d.classes[0] == "airplane"
    assert d.train_labels.bincount().tolist() == [1000] * 10
    assert d.test_labels.bincount().tolist() == [200] * 10
    assert 80 < d.train.float().mean() < 160 and d.train.float().std() > 40  # natural images
    d.train.zero_()  # the cached copy must not change
    assert load_dataset("cifar10-sample").train.float().mean() > 80


@pytest.mark.parametrize("damage", ["truncated", "bit flipped", "not xz"])
def test_a_corrupt_sample_archive_is_one_line_naming_it_and_the_repair(tmp_path, damage):
    good = (REPO / "data" / data.SAMPLE_ARCHIVE).read_bytes()
    bad = {"truncated": good[:len(good) // 2],
           "bit flipped": good[:len(good) // 3] + bytes([good[len(good) // 3] ^ 0x10]) + good[len(good) // 3 + 1:],
           "not xz": b"version https://git-lfs.github.com/spec/v1\n"}[damage]
    (tmp_path / data.SAMPLE_ARCHIVE).write_bytes(bad)
    with pytest.raises(ValueError) as error:
        load_dataset("cifar10-sample", data_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path / data.SAMPLE_ARCHIVE) in message and "\n" not in message
    assert "git checkout -- data/cifar10-sample.tar.xz" in message and "make_cifar10_sample.py" in message


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TARBALL.exists(), reason="needs ../shared/data/cifar10-jpg.tar.gz")
def test_sample_rebuilds_byte_for_byte(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample", REPO / "data" / "make_cifar10_sample.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build(SHARED_TARBALL, tmp_path / "sample.tar.xz")
    assert (tmp_path / "sample.tar.xz").read_bytes() == (REPO / "data" / data.SAMPLE_ARCHIVE).read_bytes()


# ---------------------------------------------------------------- the official CIFAR-10 archive

def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_corrupt_archive_fails_checksum_and_leaves_nothing(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    archive.write_bytes(b"\x1f\x8b truncated download")
    actual = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=f"{data.CIFAR10_ARCHIVE}.*{actual}.*{cifar10.CIFAR10_MD5}"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert leftovers(tmp_path) == [data.CIFAR10_ARCHIVE]  # nothing extracted, nothing half-written


def test_offline_download_is_a_clear_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"offline.*image folder.*cifar10-sample"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert leftovers(tmp_path) == []


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"an error page"))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert leftovers(tmp_path) == []


def official_format_archive(images: np.ndarray, labels: list[int]) -> bytes:
    """A small archive in the official python format (same layout and pickles, fewer images)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name: str, obj: dict) -> None:
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name in data.CIFAR10_FILES[:6]:
            add(name, {b"data": images.reshape(len(images), -1), b"labels": labels})
        add("batches.meta", {b"label_names": [f"class{k}".encode() for k in range(10)]})
    return buffer.getvalue()


def test_download_extract_and_parse_the_official_format(tmp_path, monkeypatch):
    real = load_dataset("cifar10-sample").test[::400]  # 5 real images
    payload = official_format_archive(real.numpy(), [0, 1, 2, 3, 4])
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload))
    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.train.shape == (25, 3, 32, 32) and d.test.shape == (5, 3, 32, 32)
    assert torch.equal(d.test, real) and d.train_labels.tolist() == [0, 1, 2, 3, 4] * 5
    assert d.classes[3] == "class3"
    assert leftovers(tmp_path) == [data.CIFAR10_FOLDER, data.CIFAR10_ARCHIVE]
    monkeypatch.setattr(urllib.request, "urlopen", None)  # extracted: no second download
    assert torch.equal(load_dataset("cifar10", data_dir=tmp_path).test, real)


def official_format_folder(folder: Path, images: np.ndarray, labels: list[int]) -> None:
    """An extracted ``cifar-10-batches-py`` with the official pickles (fewer images)."""
    with tarfile.open(fileobj=io.BytesIO(official_format_archive(images, labels))) as tar:
        tar.extractall(folder, filter="data")


@pytest.mark.parametrize("damage, detail", [
    (lambda raw: raw[:len(raw) // 2], "truncated"),
    (lambda raw: pickle.dumps({b"data": np.zeros((5, 10), np.uint8), b"labels": [0] * 5}, protocol=2), "N x 3072"),
    (lambda raw: pickle.dumps({"x": print}), "refusing"),
])
def test_a_corrupt_cifar_batch_file_is_one_line_naming_it(tmp_path, damage, detail):
    official_format_folder(tmp_path, load_dataset("cifar10-sample").test[:5].numpy(), [0, 1, 2, 3, 4])
    batch = tmp_path / data.CIFAR10_FOLDER / "data_batch_3"
    batch.write_bytes(damage(batch.read_bytes()))
    with pytest.raises(ValueError) as error:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(error.value)
    assert str(batch) in message and "corrupt or truncated" in message and "load 'cifar10' again" in message
    assert detail in message or detail == "truncated"


def test_batches_that_would_run_code_are_refused():
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        cifar10.unpickle_batch(pickle.dumps({"x": print}))


def test_dataset_repr_is_short():
    text = repr(load_dataset("toy"))
    assert "toy" in text and "(2000, 3)" in text and len(text) < 200
    assert isinstance(load_dataset("toy").to("cpu"), Dataset)


def test_a_plain_pip_install_ships_the_cifar_sample_where_the_loader_looks(tmp_path):
    """``pip install .`` (not editable) has no repository ``data/``: the wheel must carry the
    sample to ``<prefix>/share/klteach/data``, the loader's last candidate."""
    pytest.importorskip("setuptools")
    import shutil
    import subprocess
    import sys
    import zipfile

    from klteach.data import INSTALLED_DATA_DIR, SAMPLE_ARCHIVE

    repo, source = Path(__file__).resolve().parents[1], tmp_path / "source"    # build a copy: no build/ in the repo
    shutil.copytree(repo / "klteach", source / "klteach", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("notebooks", "benchmarks/results"):        # pyproject ships the course inside the package
        shutil.copytree(repo / folder, source / folder)
    (source / "data").mkdir()
    for name in ("pyproject.toml", "README.md", f"data/{SAMPLE_ARCHIVE}"):
        shutil.copy(repo / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("klteach-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [n for n in names if n.endswith(f"share/klteach/data/{SAMPLE_ARCHIVE}")]
    assert shipped, names
    assert INSTALLED_DATA_DIR.parts[-3:] == ("share", "klteach", "data")


# ---------------------------------------------------------------- fingerprints (contract 4)

def test_every_loader_gives_a_json_fingerprint_that_is_stable(tmp_path):
    import json

    make_folder(tmp_path)
    for name in ("toy", "digits", "cifar10-sample", tmp_path):
        first, second = load_dataset(name), load_dataset(name)
        fingerprint = first.fingerprint
        assert isinstance(fingerprint["files"], int) and len(fingerprint["sha256"]) == 64
        assert json.loads(json.dumps(fingerprint)) == fingerprint
        assert fingerprint == second.fingerprint and fingerprint_change(fingerprint, second.fingerprint) is None
        assert first.to("cpu").fingerprint == fingerprint
    assert load_dataset("toy").fingerprint["files"] == 0 and load_dataset("digits").fingerprint["files"] == 1
    assert load_dataset("cifar10-sample").fingerprint["files"] == 12000
    assert load_dataset(tmp_path).fingerprint["files"] == 10
    assert load_dataset("digits", sample_size=100).fingerprint == load_dataset("digits").fingerprint


def test_fingerprint_change_names_what_changed_in_an_image_folder(tmp_path):
    make_folder(tmp_path)
    before = load_dataset(tmp_path).fingerprint
    for i in range(3, 6):
        write_image(tmp_path / "train" / "cat" / f"{i}.png", np.zeros((6, 6, 3), dtype=np.uint8))
    (tmp_path / "test" / "dog" / "1.png").unlink()
    change = fingerprint_change(before, load_dataset(tmp_path).fingerprint)
    assert change == "2 file(s) added (10 → 12 files): 1 removed from test/dog, 3 added in train/cat"
    (tmp_path / "test" / "dog" / "0.png").rename(tmp_path / "test" / "dog" / "renamed.png")
    for i in range(3, 6):
        (tmp_path / "train" / "cat" / f"{i}.png").unlink()
    write_image(tmp_path / "test" / "dog" / "1.png", np.zeros((6, 6, 3), dtype=np.uint8))
    assert fingerprint_change(before, load_dataset(tmp_path).fingerprint) == \
        "the file list differs: same count (10 files), different names"
    (tmp_path / "test" / "dog" / "renamed.png").rename(tmp_path / "test" / "dog" / "0.png")
    import shutil
    shutil.copytree(tmp_path / "train", tmp_path / "moved" / "train")
    shutil.copytree(tmp_path / "test", tmp_path / "moved" / "test")
    assert fingerprint_change(before, load_dataset(tmp_path / "moved").fingerprint) is None   # same data elsewhere


def test_fingerprint_change_for_generated_data_archives_and_old_checkpoints(tmp_path, monkeypatch):
    toy = load_dataset("toy").fingerprint
    assert fingerprint_change(toy, load_dataset("toy", seed=1).fingerprint) == (
        "a different dataset: toy: make_toy_sphere, 2000 train + 1000 test points, seed 0 → "
        "toy: make_toy_sphere, 2000 train + 1000 test points, seed 1")
    assert fingerprint_change(toy, load_dataset("digits").fingerprint).startswith("a different dataset: toy")
    assert fingerprint_change({}, toy) is None and fingerprint_change(None, toy) is None
    # the official archive: a hash of the seven batch files as read
    official_format_folder(tmp_path, load_dataset("cifar10-sample").test[:5].numpy(), [0, 1, 2, 3, 4])
    before = load_dataset("cifar10", data_dir=tmp_path).fingerprint
    assert before["files"] == 7 and before == load_dataset("cifar10", data_dir=tmp_path).fingerprint
    official_format_folder(tmp_path, load_dataset("cifar10-sample").test[5:10].numpy(), [0, 1, 2, 3, 4])
    assert fingerprint_change(before, load_dataset("cifar10", data_dir=tmp_path).fingerprint) == \
        "the data differ: same number of files (7), different contents"


def test_the_sample_has_the_fingerprint_of_the_folder_it_holds():
    with tarfile.open(REPO / "data" / data.SAMPLE_ARCHIVE) as tar:
        names = [m.name.split("/", 1)[1] for m in tar if m.isfile()]
    sample = load_dataset("cifar10-sample").fingerprint
    assert sample == data.names_fingerprint("cifar10-sample", names)
    assert fingerprint_change(sample, data.names_fingerprint("image folder", names)) is None
    assert sample["folders"]["train/airplane"] == 1000 and sample["folders"]["test/truck"] == 200


def test_a_dataset_built_by_hand_is_fingerprinted_by_its_tensors():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    a = Dataset("mine", images, None, images[:1], None, [], "images")
    b = Dataset("mine", images + 1, None, images[:1], None, [], "images")
    assert a.fingerprint["files"] == 0 and a.fingerprint != b.fingerprint
    assert fingerprint_change(a.fingerprint, b.fingerprint) == \
        "the data differ: same number of files (0), different contents"
