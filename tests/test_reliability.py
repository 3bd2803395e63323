"""Reliability of the training loop: exact resume, atomic checkpoints, stopping at step
boundaries, numerical safety and clear errors for bad input (issue 6)."""
import io
import json
import math
import os
import re
import signal

import pytest
import torch

from klteach import __main__ as cli
from klteach import data
from klteach import train as train_module
from klteach.checkpoint import read_metrics
from klteach.normalisers import NORMALISERS
from klteach.train import TrainConfig, Trainer, TrainingError

pytestmark = pytest.mark.usefixtures("one_thread_float32")   # tests/conftest.py


@pytest.fixture(autouse=True)
def python_default_ctrl_c():
    """Each test starts with Python's own Ctrl-C handler (KeyboardInterrupt), as a user's process
    does: a test run in the same worker before (a notebook kernel manager, say) may have left
    SIGINT ignored, and then no Ctrl-C could ever reach the trainer."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def toy(**kw):
    # 2000 toy samples in batches of 256: an epoch ends after 7 steps, so the runs below cross one
    settings = dict(dataset="toy", clusters=8, batch_size=256, eval_every=3, device="cpu", steps=12)
    return Trainer(TrainConfig(**{**settings, **kw}))


def same(a, b, where="state"):
    """Recursively: tensors torch.equal (bit for bit), floats equal (NaN equals NaN), the rest ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def same_training_state(a: Trainer, b: Trainer, history=True):
    """Everything a checkpoint holds, apart from where files go."""
    sa, sb = a.state(), b.state()
    for s in (sa, sb):
        s["config"].pop("out")
        if not history:
            s.pop("history")
    same(sa, sb)


# ---------------------------------------------------------------- exact resume

RESUME_CASES = {
    "inverse-prior, running prior": dict(normaliser="inverse-prior", prior="running"),
    "inverse-prior, whole-set prior": dict(normaliser="inverse-prior", prior="full", prior_every=4),
    "centering": dict(normaliser="centering"),
    "sinkhorn, copied teacher": dict(normaliser="sinkhorn", copy_every=5),
    "batchnorm, cosine schedule": dict(normaliser="batchnorm", centred_prototypes=True,
                                       lr_schedule="cosine", warmup_steps=2),
}


def change_settings_at(trainer: Trainer, step: int):
    """A ``should_stop`` that queues a live change when the run reaches ``step`` (never stops)."""
    def poll():
        if trainer.step_count == step and not trainer.events and not trainer._pending:
            trainer.set(tau_teacher=0.05, lam=0.5, momentum=0.8)
        return False
    return poll


@pytest.mark.parametrize("settings", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_a_run_stopped_and_resumed_ends_bit_identical_to_one_uninterrupted(tmp_path, settings):
    uninterrupted = toy(**settings)
    uninterrupted.run(should_stop=change_settings_at(uninterrupted, 7))

    stopped = toy(**settings, out=str(tmp_path))
    queue_change = change_settings_at(stopped, 7)
    stopped.run(should_stop=lambda: queue_change() or stopped.step_count == 7)   # mid-epoch, change pending
    assert stopped.step_count == 7 and stopped._pending                          # saved with the checkpoint
    resumed = Trainer.resume(tmp_path / "checkpoint.pt")
    assert resumed.step_count == 7 and resumed._pending == stopped._pending
    resumed.run()

    assert resumed.step_count == uninterrupted.step_count == 12
    assert resumed.events == uninterrupted.events and resumed.events[0]["step"] == 7
    # the stopped run evaluated once more, when it stopped (step 7); otherwise the histories match
    assert [h["step"] for h in resumed.history] == [3, 6, 7, 9, 12]
    resumed.history = [h for h in resumed.history if h["step"] != 7]
    same_training_state(resumed, uninterrupted)


def test_resuming_from_state_between_single_steps_gives_the_same_losses():
    reference = toy(normaliser="centering")
    losses = [reference.step() for _ in range(10)]
    first = toy(normaliser="centering")
    head = [first.step() for _ in range(4)]
    state = first.state()
    first.step()                                  # state() is a copy: later steps do not change it
    second = toy(normaliser="centering")
    second.step()                                 # whatever it did before is replaced by the state
    second.load_state(state)
    assert head + [second.step() for _ in range(6)] == losses
    same_training_state(second, reference)


def test_checkpoint_holds_every_piece_of_state(tmp_path):
    trainer = toy(normaliser="inverse-prior", prior="full", out=str(tmp_path))
    trainer.run(5)
    trainer.set(lam=0.3)
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)       # plain data only
    for key in ("student", "teacher", "optimiser", "normaliser", "generator", "epoch_order", "checksum",
                "step", "config", "history", "events", "pending", "last_loss", "dataset_fingerprint"):
        assert key in state, key
    assert set(state["normaliser"]) == {"running_prior", "full_prior"}
    assert torch.equal(state["normaliser"]["full_prior"], trainer.normaliser.full_prior)
    assert state["pending"] == {"lam": 0.3} and state["step"] == 5
    assert state["epoch_order"].numel() == 2000 - 5 * 256 and state["epoch_order"].device.type == "cpu"


# ---------------------------------------------------------------- atomic checkpoints

def test_a_crash_while_writing_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    trainer = toy(out=str(tmp_path), eval_every=3)
    trainer.run(3)
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match=f"^cannot write checkpoint to {tmp_path}: no space left on device$"):
        trainer.run(3)                                   # the step-6 checkpoint fails half-way
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert Trainer.resume(path).step_count == 3
    assert trainer.step_count == 6                       # the trainer itself is fine and can save again
    trainer.save_checkpoint(path)
    assert Trainer.resume(path).step_count == 6


def test_metrics_file_always_matches_the_checkpoint_history(tmp_path):
    trainer = toy(out=str(tmp_path), steps=9)
    trainer.run(should_stop=lambda: trainer.step_count == 4)
    resumed = Trainer.resume(tmp_path / "checkpoint.pt")
    resumed.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [3, 4, 6, 9]
    assert rows == json.loads(json.dumps(resumed.history))


# ---------------------------------------------------------------- stopping at a step boundary

def clean(steps, **kw):
    trainer = toy(**kw)
    trainer.run(steps)
    return trainer


def test_keyboard_interrupt_from_a_callback_stops_at_that_step():
    def interrupt(result):
        if result["step"] == 6:
            raise KeyboardInterrupt

    trainer = toy()
    trainer.run(callback=interrupt)
    assert trainer.step_count == 6
    same_training_state(trainer, clean(6))


def sigint_during_the_nth_augmentation(trainer: Trainer, n: int) -> None:
    """Send a real Ctrl-C to this process in the middle of a step (while making the views)."""
    augment, calls = trainer.augment, [0]

    def augment_then_interrupt(x, generator):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return augment(x, generator)

    trainer.augment = augment_then_interrupt


def test_ctrl_c_in_the_middle_of_a_step_lets_the_step_finish_then_the_run_stops(capsys):
    handler = signal.getsignal(signal.SIGINT)
    trainer = toy()
    sigint_during_the_nth_augmentation(trainer, 2 * 4 + 1)        # during step 5 (2 views per step)
    trainer.run()
    assert trainer.step_count == 5 and trainer.history[-1]["step"] == 5
    assert "stopping after this step" in capsys.readouterr().err
    trainer.augment = toy().augment
    same_training_state(trainer, clean(5))
    assert signal.getsignal(signal.SIGINT) is handler                      # handlers put back


def test_ctrl_c_in_the_middle_of_a_bare_step_applies_the_whole_step_then_raises():
    trainer = toy()
    for _ in range(2):
        trainer.step()
    sigint_during_the_nth_augmentation(trainer, 1)
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    assert trainer.step_count == 3
    trainer.augment = toy().augment
    reference = toy()
    for _ in range(3):
        reference.step()
    same_training_state(trainer, reference)


def test_a_second_ctrl_c_aborts_at_once_but_still_at_a_step_boundary():
    trainer = toy()
    augment, calls = trainer.augment, [0]

    def interrupt_twice(x, generator):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return augment(x, generator)

    trainer.augment = interrupt_twice
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert trainer.step_count == 3 and trainer.history == []     # step 3 done; no evaluation after it
    trainer.augment = toy().augment
    same_training_state(trainer, clean(3), history=False)


def test_a_step_that_fails_half_way_is_undone_completely():
    trainer = toy(normaliser="centering")
    for _ in range(4):
        trainer.step()
    forward = trainer.normaliser.forward

    def fail_after_the_forward_pass(*args):
        forward(*args)                       # the centre and the batch-norm statistics have moved ...
        raise KeyboardInterrupt              # ... then the step is interrupted

    trainer.normaliser.forward = fail_after_the_forward_pass
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    del trainer.normaliser.forward
    reference = toy(normaliser="centering")
    for _ in range(4):
        reference.step()
    same_training_state(trainer, reference)        # as if the failed step never started
    assert [trainer.step() for _ in range(3)] == [reference.step() for _ in range(3)]


def test_should_stop_is_polled_between_steps_and_the_stop_is_checkpointed(tmp_path):
    trainer = toy(out=str(tmp_path))
    trainer.run(should_stop=lambda: trainer.step_count >= 5)
    assert trainer.step_count == 5 and Trainer.resume(tmp_path / "checkpoint.pt").step_count == 5


# ---------------------------------------------------------------- numerical safety

@pytest.mark.parametrize("normaliser, prior", [(n, "running") for n in NORMALISERS] + [("inverse-prior", "full")])
def test_teacher_temperature_001_trains_and_stays_finite(normaliser, prior):
    trainer = toy(normaliser=normaliser, prior=prior, prior_every=2, tau_teacher=0.01, steps=6, eval_every=0)
    losses = [trainer.step() for _ in range(6)]
    assert all(math.isfinite(loss) for loss in losses)
    assert all(bool(torch.isfinite(p).all()) for p in trainer.student.parameters())
    result = trainer.evaluate()
    assert math.isfinite(result["kl_teacher_student"]) and result["effective_clusters"] >= 1
    z = torch.nn.functional.normalize(torch.randn(64, trainer.config.dim), dim=1) * 1e4   # logits ~1e4
    trainer.normaliser.eval()
    q = trainer.normaliser(z, trainer.teacher.prototypes.unit_weights.detach(), 0.01)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)


def test_an_empty_cluster_in_the_whole_set_prior_is_floored():
    trainer = toy(normaliser="inverse-prior", prior="full", eval_every=0)
    trainer.step()
    trainer.normaliser.set_full_prior(torch.tensor([1.0] + [0.0] * 7))     # seven empty clusters
    assert math.isfinite(trainer.step())


def loss_becomes(value):
    """A patch for ``klteach.train.cross_view_loss`` whose loss is ``value``."""
    return lambda q_views, log_p_views: torch.full((), value, requires_grad=True)


@pytest.mark.parametrize("make_it_fail, cause", [
    (lambda t, patch: t.student.prototypes.weight.data.fill_(float("nan")), "weights are already NaN"),
    (lambda t, patch: t.dataset.train.fill_(float("nan")), "training data contains NaN"),
    (lambda t, patch: (patch.setattr(train_module, "cross_view_loss", loss_becomes(float("inf"))),
                       t.set(tau_teacher=0.01)), r"temperatures too low \(tau_student=0.1, tau_teacher=0.01\)"),
    (lambda t, patch: patch.setattr(train_module, "cross_view_loss", loss_becomes(float("nan"))),
     r"learning rate too high \(lr=0.001\)"),
], ids=["nan-weights", "nan-data", "low-temperature", "otherwise-lr"])
def test_a_non_finite_loss_names_the_step_and_the_likely_cause(make_it_fail, cause, monkeypatch):
    trainer = toy(eval_every=0)
    for _ in range(3):
        trainer.step()
    reference = trainer.state()
    make_it_fail(trainer, monkeypatch)
    with pytest.raises(TrainingError, match=f"at step 3; likely cause: [^.]*{cause}"):
        trainer.step()
    assert trainer.step_count == 3
    after = trainer.state()
    for key in ("generator", "epoch_order", "optimiser"):      # the failed step was undone
        same(after[key], reference[key], key)
    assert all(bool(torch.isfinite(b).all()) for b in trainer.student.buffers())   # no NaN statistics


def test_a_nan_during_a_run_keeps_the_last_good_checkpoint(tmp_path):
    trainer = toy(out=str(tmp_path))
    trainer.run(3)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.student.prototypes.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="at step 3"):
        trainer.run(3)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("setting, value, message", [
    ("tau_student", float("nan"), "tau_student must be a finite number > 0, got nan"),
    ("tau_teacher", float("inf"), "tau_teacher must be a finite number > 0, got inf"),
    ("tau_teacher", "cold", "tau_teacher must be a finite number > 0, got 'cold'"),
    ("prior_momentum", 1.5, r"prior_momentum must be a finite number in \[0, 1\), got 1.5"),
    ("centre_momentum", -0.1, r"centre_momentum must be a finite number in \[0, 1\), got -0.1"),
    ("lam", float("inf"), "lam must be a finite number >= 0, got inf"),
    ("clusters", 2.5, r"clusters \(K\) must be an integer in \[2, 100000\], got 2.5"),
    ("batch_size", 1, "batch_size must be an integer >= 2, got 1"),
    ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
    ("lr_schedule", "step", "unknown lr_schedule 'step'; choose one of constant, cosine"),
    ("epochs", 0, "epochs must be a finite number > 0, got 0"),
    ("device", "cuda:0", "unknown device 'cuda:0'; choose one of auto, cpu, cuda"),
])
def test_more_bad_settings_are_refused_naming_the_value_and_what_is_allowed(setting, value, message):
    with pytest.raises(ValueError, match=message):
        toy(**{setting: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available; use cpu or auto"):
        toy(device="cuda")


def test_a_live_batch_size_larger_than_the_dataset_is_refused_at_once():
    trainer = toy()
    with pytest.raises(ValueError, match="batch_size 4096 is larger than the dataset 'toy' "
                                         r"\(2000 training samples\)"):
        trainer.set(batch_size=4096)
    assert not trainer._pending


def test_missing_dataset_folders_and_empty_image_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"image folder {tmp_path / 'nowhere'} does not exist")):
        toy(dataset=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(ValueError, match="no images found in .*train"):
        toy(dataset=str(tmp_path / "empty"))


def run_main(capsys, *args):
    code = cli.main(["train", "--steps", "1", "--device", "cpu", *args])
    return code, capsys.readouterr().err


def test_cli_names_unreadable_and_non_image_files(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / name / "0.png")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err = run_main(capsys, "--dataset", str(tmp_path))
    assert code == 2 and "broken.png" in err and "could not be read" in err
    (tmp_path / "train" / "cat" / "broken.png").unlink()
    (tmp_path / "train" / "dog" / "labels.csv").write_text("0,cat")   # skipped with a note, as ImageFolder does
    with pytest.warns(data.DataWarning, match=r"skipped 1 entry that is not an image.*labels\.csv"):
        code, err = run_main(capsys, "--dataset", str(tmp_path), "--batch-size", "2", "--eval-every", "0")
    assert code == 0, err


def test_cli_dataset_path_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "images.zip").write_bytes(b"PK")
    code, err = run_main(capsys, "--dataset", str(tmp_path / "images.zip"))
    assert code == 2 and "images.zip is not a directory" in err


def test_cli_corrupt_cifar_archive_is_a_clear_error_and_nothing_is_extracted(tmp_path, capsys):
    (tmp_path / data.CIFAR10_ARCHIVE).write_bytes(b"\x1f\x8b\x08 cut off in the middle")
    code, err = run_main(capsys, "--dataset", "cifar10", "--data-dir", str(tmp_path))
    assert code == 2 and "corrupt or truncated" in err and data.CIFAR10_ARCHIVE in err and "MD5" in err
    assert [p.name for p in tmp_path.iterdir()] == [data.CIFAR10_ARCHIVE]


def test_cli_batch_size_larger_than_the_dataset_and_unknown_device(capsys):
    code, err = run_main(capsys, "--dataset", "toy", "--batch-size", "4096")
    assert code == 2 and "batch_size 4096 is larger than the dataset 'toy'" in err
    code, err = run_main(capsys, "--dataset", "toy", "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in err


def test_a_checkpoint_from_an_incompatible_run_is_refused(tmp_path):
    eight = toy()
    eight.step()
    with pytest.raises(ValueError, match="incompatible: it has clusters=8, this run has clusters=5"):
        toy(clusters=5).load_state(eight.state())
    with pytest.raises(ValueError, match="incompatible: it has normaliser='inverse-prior', this run has "
                                         "normaliser='centering'"):
        toy(normaliser="centering").load_state(eight.state())
    with pytest.raises(ValueError, match="incompatible: it has dim=64, this run has dim=32"):
        toy(dim=32).load_state(eight.state())


def test_missing_truncated_and_foreign_checkpoint_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        Trainer.resume(tmp_path / "nothing.pt")
    trainer = toy()
    trainer.step()
    path = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ValueError, match="checkpoint.pt is not a readable checkpoint"):
        Trainer.resume(path)
    torch.save({"config": {}, "weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a klteach checkpoint: it lacks step, student"):
        toy().load_state(torch.load(path))
    torch.save({"config": {"clusters": 8, "temperature": 3}}, path)
    with pytest.raises(ValueError, match="settings do not fit this version.*temperature"):
        Trainer.resume(path)


def test_a_checkpoint_from_another_kind_of_device_resumes_with_a_warning():
    trainer = toy(eval_every=0)
    trainer.step()
    state = trainer.state()
    state["generator_device"], state["generator"] = "cuda", torch.zeros(16, dtype=torch.uint8)
    other = toy(eval_every=0)
    with pytest.warns(UserWarning, match="written on cuda, this run is on cpu: the augmentation random stream"):
        other.load_state(state)
    assert other.step_count == 1 and math.isfinite(other.step())


# ---------------------------------------------------------------- run files (contract 2)

def strict_json_lines(path):
    """Parse each line as strict JSON: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_metrics_file_holds_cluster_sizes_and_every_change_as_an_event_row(tmp_path):
    trainer = toy(out=str(tmp_path), eval_every=3)
    trainer.run(6, should_stop=lambda: trainer.step_count == 4 and not trainer.events
                and trainer.set(tau_teacher="0.05"))
    evaluations, events = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in evaluations] == [3, 6]
    assert events == [{"step": 4, "event": "set", "changes": {"tau_teacher": 0.05}, "restart": False}]
    assert [row.get("event") for row in strict_json_lines(tmp_path / "metrics.jsonl")] == [None, "set", None]
    for row in evaluations:
        for key in ("cluster_sizes_student", "cluster_sizes_teacher"):
            assert len(row[key]) == 8 and abs(sum(row[key]) - 1) < 1e-5 and min(row[key]) >= 0, key
    # a restart starts the file again, with the change that restarted it first
    trainer.set(clusters=5)
    trainer.run(3)
    evaluations, events = read_metrics(tmp_path)
    assert [row["step"] for row in evaluations] == [3] and len(evaluations[0]["cluster_sizes_student"]) == 5
    assert events == [{"step": 6, "event": "set", "changes": {"clusters": 5}, "restart": True}]
    assert strict_json_lines(tmp_path / "metrics.jsonl")[0]["event"] == "set"


def test_metrics_file_is_strict_json_with_null_for_non_finite_values(tmp_path):
    trainer = toy(out=str(tmp_path), steps=0)
    trainer.run()                                  # evaluated before any step: the loss is NaN
    rows = strict_json_lines(tmp_path / "metrics.jsonl")
    assert rows[0]["step"] == 0 and rows[0]["loss"] is None
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 0
