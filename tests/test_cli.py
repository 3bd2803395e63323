"""``python -m klteach train`` as users run it: resume, stops and signals, full disks, bad input
(issues 10 and 11). Each test runs the real command in a subprocess on the toy data, or calls
``klteach.__main__.main`` in this process where a subprocess would only add start-up time."""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from klteach import __main__ as cli
from klteach import checkpoint
from klteach.checkpoint import read_checkpoint, read_metrics
from klteach.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread_float32")   # tests/conftest.py

TOY = ["--dataset", "toy", "-K", "8", "--batch-size", "64", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "klteach", *args], capture_output=True, text=True,
                          timeout=300, env=ENV, **kwargs)


def toy_run(out, steps, **kw):
    """A toy run of ``steps`` planned steps, written to ``out`` (in this process)."""
    settings = dict(dataset="toy", clusters=8, batch_size=64, device="cpu", steps=steps, eval_every=3, out=str(out))
    return Trainer(TrainConfig(**{**settings, **kw}))


def checkpoint_step(out):
    return read_checkpoint(out / "checkpoint.pt")["step"]


# ---------------------------------------------------------------- resume compares what was typed

def test_resume_refuses_a_typed_value_that_contradicts_the_checkpoint_even_if_it_is_the_default(tmp_path):
    toy_run(tmp_path, 6, normaliser="centering").run(3)
    done = run_cli("train", "--out", str(tmp_path), "--resume", "--normaliser", "inverse-prior")
    assert done.returncode == 2, done.stdout
    assert "--normaliser='inverse-prior' (the checkpoint has 'centering')" in done.stderr
    assert checkpoint_step(tmp_path) == 3


def test_resume_without_steps_continues_to_the_planned_total_and_may_change_neutral_settings(tmp_path):
    toy_run(tmp_path, 6).run(3)
    done = run_cli("train", "--out", str(tmp_path), "--resume", "--device", "cpu", "--eval-every", "1",
                   "--eval-size", "500")
    assert done.returncode == 0, done.stderr
    assert f"resuming {tmp_path} at step 3 of 6" in done.stdout and "done: 6 steps" in done.stdout
    evaluations, _ = read_metrics(tmp_path)
    assert [row["step"] for row in evaluations] == [3, 4, 5, 6]
    again = run_cli("train", "--out", str(tmp_path), "--resume")
    assert again.returncode == 2 and "already at step 6 of 6; ask for more with --steps" in again.stderr


def test_an_image_folder_may_move_between_a_stop_and_a_resume(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    for split in ("train", "test"):
        for index, name in enumerate(("cat", "dog")):
            (folder / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * index + i, 20, 30)).save(folder / split / name / f"{i}.png")
    run = Trainer(TrainConfig(dataset=str(folder), clusters=2, batch_size=4, device="cpu", steps=4, eval_every=2,
                              eval_size=8, out=str(tmp_path / "run")))
    run.run(2)
    moved = folder.rename(tmp_path / "moved")
    done = run_cli("train", "--out", str(tmp_path / "run"), "--resume", "--dataset", str(moved))
    assert done.returncode == 0, done.stderr
    assert checkpoint_step(tmp_path / "run") == 4
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["dataset"] == str(moved)


# ---------------------------------------------------------------- stopping with a signal

def wait_for(path, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_at_a_step_boundary_with_its_checkpoint_and_says_how_to_continue(tmp_path, signum,
                                                                                               status):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "klteach", "train", *TOY, "--steps", "100000",
                                "--eval-every", "5", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(out / "metrics.jsonl", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == status, stderr
    step = checkpoint_step(out)
    assert f"stopped at step {step} of 100000; continue with: python -m klteach train --out {out} --resume" in stderr
    assert "done:" not in stdout and "Traceback" not in stderr
    evaluations, _ = read_metrics(out)
    assert evaluations[-1]["step"] == step >= 5
    resumed = run_cli("train", "--out", str(out), "--resume", "--steps", str(step + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step} of {step + 2}" in resumed.stdout and checkpoint_step(out) == step + 2


def interrupt_evaluations(trainer, signals):
    """Send ``signals`` SIGINTs to this process while the trainer's next evaluation runs."""
    evaluate = trainer.evaluate

    def evaluate_interrupted():
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate()

    trainer.evaluate = evaluate_interrupted


def test_ctrl_c_during_the_final_evaluation_still_writes_the_checkpoint(tmp_path):
    trainer = toy_run(tmp_path, 4, eval_every=0)
    interrupt_evaluations(trainer, 1)
    trainer.run()
    assert trainer.interrupted == signal.SIGINT and checkpoint_step(tmp_path) == 4
    assert [row["step"] for row in read_metrics(tmp_path)[0]] == [4]


def test_a_second_ctrl_c_during_the_final_evaluation_aborts_but_keeps_the_last_step(tmp_path):
    trainer = toy_run(tmp_path, 4, eval_every=0)
    interrupt_evaluations(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert checkpoint_step(tmp_path) == 4 and read_checkpoint(tmp_path / "checkpoint.pt")["history"] == []
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", steps=5)
    resumed.run()
    assert resumed.step_count == 5


# ---------------------------------------------------------------- the --out folder

def test_an_out_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    first = run_cli("train", *TOY, "--steps", "2", "--eval-every", "2", "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    again = run_cli("train", *TOY, "--steps", "3", "--out", str(tmp_path))
    assert again.returncode == 2
    assert (f"--out {tmp_path} already holds a run (config.json, metrics.jsonl, checkpoint.pt); continue it "
            "with --resume or start again with --overwrite") in again.stderr
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    stale = tmp_path / ".checkpoint.pt.4242-1.tmp"          # left by a killed process
    stale.write_bytes(b"half a checkpoint")
    fresh = run_cli("train", *TOY, "--steps", "3", "--eval-every", "3", "--out", str(tmp_path), "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert not stale.exists() and checkpoint_step(tmp_path) == 3
    assert [row["step"] for row in read_metrics(tmp_path)[0]] == [3]
    both = run_cli("train", "--out", str(tmp_path), "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_stale_temporary_files_are_removed_when_a_run_resumes(tmp_path):
    toy_run(tmp_path, 4).run(3)
    stale = tmp_path / ".metrics.jsonl.4242-1.tmp"
    stale.write_bytes(b"{")
    trainer = Trainer.resume(tmp_path / "checkpoint.pt")
    trainer.run()
    assert not stale.exists() and checkpoint_step(tmp_path) == 4


# ---------------------------------------------------------------- full disks

def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(tmp_path, monkeypatch):
    trainer = toy_run(tmp_path, 6)
    trainer.run(3)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def disk_full_for_checkpoints(fd):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_for_checkpoints)
    with pytest.raises(OSError, match=f"^cannot write checkpoint to {tmp_path}: no space left on device$"):
        trainer.run(3)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def test_the_command_line_says_one_line_when_the_disk_refuses_the_checkpoint(tmp_path):
    out = tmp_path / "run"

    def small_files_only():                     # the kernel refuses files over 50 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    done = run_cli("train", *TOY, "--steps", "2", "--eval-every", "2", "--out", str(out),
                   preexec_fn=small_files_only)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"\nerror: cannot write checkpoint to {out}: file too large\n" in "\n" + done.stderr
    assert sorted(path.name for path in out.iterdir()) == ["config.json"]


# ---------------------------------------------------------------- bad input at the start

@pytest.mark.parametrize("flags, message", [
    (["--eval-size", "0"], "eval_size must be an integer >= 1, got '0'"),
    (["--eval-size", "-1"], "eval_size must be an integer >= 1, got '-1'"),
    (["--warmup-steps", "-5"], "warmup_steps must be an integer >= 0, got '-5'"),
    (["--lr", "inf"], "lr must be a finite number > 0, got 'inf'"),
    (["--epochs", "inf"], "epochs must be a finite number > 0, got 'inf'"),
    (["--seed", "123456789012345678901234567890"], "seed must be an integer in [0, 4294967295], got '1234567"),
    (["--clusters", "10000000000"], "clusters (K) must be an integer in [2, 100000], got '10000000000'"),
    (["--normaliser", "zca"], "unknown normaliser 'zca'; choose one of none, inverse-prior, centering"),
])
def test_bad_values_are_refused_at_the_start_in_one_line(tmp_path, capsys, flags, message):
    code = cli.main(["train", *TOY, "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_error_starts_on_its_own_line_not_on_the_progress_bar(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    done = run_cli("train", *TOY, "--steps", "2", "--out", str(tmp_path / "taken"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert lines and all(line.startswith("error: ") for line in lines), done.stderr
    assert f"error: cannot write to --out {tmp_path / 'taken'}: file exists" in done.stderr


# ---------------------------------------------------------------- damaged checkpoints

def test_a_bit_flipped_checkpoint_is_refused_by_name(tmp_path):
    trainer = toy_run(tmp_path, 6)
    trainer.run(3)
    path = tmp_path / "checkpoint.pt"
    blob = bytearray(path.read_bytes())
    weights = trainer.student.prototypes.weight.detach().contiguous().numpy().tobytes()
    where = bytes(blob).find(weights)
    assert where > 0                                         # torch stores tensors uncompressed
    blob[where + 17] ^= 0x04                                 # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"{path} is damaged: its contents do not match the checksum"):
        Trainer.resume(path)
    done = run_cli("train", "--out", str(tmp_path), "--resume")
    assert done.returncode == 2 and f"error: {path} is damaged" in done.stderr


def test_the_checksum_covers_every_tensor_and_setting():
    state = {"config": {"lr": 0.1}, "student": {"w": torch.zeros(3)}, "history": [{"loss": float("nan")}]}
    reference = checkpoint.checksum(state)
    assert checkpoint.checksum(json.loads(json.dumps({"config": {"lr": 0.1}})) | state) == reference
    for changed in ({"config": {"lr": 0.2}}, {"student": {"w": torch.tensor([0.0, 0.0, 1e-30])}},
                    {"student": {"w": torch.zeros(3, dtype=torch.float64)}}, {"history": [{"loss": 1.0}]}):
        assert checkpoint.checksum({**state, **changed}) != reference, changed
