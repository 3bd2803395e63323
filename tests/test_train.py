"""The training loop: settings, live changes, reproducibility, NaN safety, the command line."""
import json
import subprocess
import sys

import pytest
import torch

from klteach.train import TrainConfig, Trainer, TrainingError


def toy(**kw):
    settings = dict(dataset="toy", clusters=8, batch_size=64, eval_every=0, device="cpu", steps=20)
    return Trainer(TrainConfig(**{**settings, **kw}))


@pytest.mark.parametrize("setting, value, message", [
    ("tau_student", 0.0, "tau_student must be a finite number > 0"),
    ("tau_teacher", -0.1, "tau_teacher must be a finite number > 0"),
    ("clusters", 1, r"clusters \(K\) must be an integer in \[2, 100000\]"),
    ("normaliser", "zca", "unknown normaliser 'zca'"),
    ("momentum", 1.0, r"momentum must be a finite number in \[0, 1\)"),
    ("momentum", -0.1, r"momentum must be a finite number in \[0, 1\)"),
    ("lam", -1.0, "lam must be a finite number >= 0"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("prior", "epoch", "unknown prior 'epoch'; choose one of batch, running, full"),
])
def test_bad_settings_are_refused_with_the_value_and_what_is_allowed(setting, value, message):
    with pytest.raises(ValueError, match=message):
        toy(**{setting: value})


def test_unknown_dataset_and_oversized_batch_are_clear_errors():
    with pytest.raises(ValueError, match="imagenet"):
        Trainer(TrainConfig(dataset="imagenet"))
    with pytest.raises(ValueError, match="batch_size 5000 is larger than the dataset"):
        Trainer(TrainConfig(dataset="digits", batch_size=5000))


def test_same_seed_same_run_on_cpu():
    a, b = toy(seed=3), toy(seed=3)
    assert [a.step() for _ in range(10)] == [b.step() for _ in range(10)]
    assert not torch.equal(toy(seed=4).student.prototypes.weight, toy(seed=3).student.prototypes.weight)


def test_live_settings_apply_at_the_next_step_without_restart():
    trainer = toy()
    for _ in range(5):
        trainer.step()
    weights = trainer.student.prototypes.weight.detach().clone()
    trainer.set(normaliser="none", tau_teacher=0.02, lam=0.5)
    assert trainer.config.normaliser == "inverse-prior"          # not yet: between steps only
    trainer.step()
    assert trainer.config.normaliser == "none" and trainer.config.tau_teacher == 0.02
    assert type(trainer.normaliser).__name__ == "NoNormaliser"
    assert trainer.step_count == 6                                 # no restart
    assert not torch.equal(weights, trainer.student.prototypes.weight)
    assert trainer.events[-1]["step"] == 5 and trainer.events[-1]["restart"] is False


def test_changing_k_restarts_the_run():
    trainer = toy()
    trainer.step()
    trainer.set(clusters=5)
    trainer.step()
    assert trainer.step_count == 1 and trainer.student.prototypes.weight.shape[0] == 5


def test_a_bad_live_setting_changes_nothing():
    trainer = toy()
    with pytest.raises(ValueError, match="tau_teacher"):
        trainer.set(normaliser="none", tau_teacher=0)
    with pytest.raises(ValueError, match="unknown setting"):
        trainer.set(temperature=0.1)
    trainer.step()
    assert trainer.config.normaliser == "inverse-prior" and not trainer.events


def test_copy_every_makes_the_teacher_a_copy_eq7():
    trainer = toy(copy_every=3)
    for _ in range(2):
        trainer.step()
    assert not torch.equal(trainer.teacher.prototypes.weight, trainer.student.prototypes.weight)
    trainer.step()
    assert torch.equal(trainer.teacher.prototypes.weight, trainer.student.prototypes.weight)


def test_a_nan_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = toy(out=str(tmp_path), eval_every=5, steps=5)
    trainer.run()
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.student.prototypes.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 5; likely cause"):
        trainer.step()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert Trainer.resume(tmp_path / "checkpoint.pt").step_count == 5


def test_metrics_have_the_documented_fields():
    trainer = toy(steps=10)
    trainer.run()
    result = trainer.history[-1]
    for key in ("step", "loss", "effective_clusters", "clusters_used", "mean_entropy", "knn_accuracy",
                "nmi", "ari", "kl_teacher_student", "embedding_std"):
        assert key in result
    assert 1 <= result["effective_clusters"] <= 8


def test_switching_to_the_whole_set_prior_mid_run_estimates_it_at_once():
    trainer = toy(normaliser="none", steps=50)
    for _ in range(5):
        trainer.step()
    trainer.set(normaliser="inverse-prior", prior="full")
    trainer.step()                          # step 6: not a re-estimation step (every 2000 // 64 = 31)
    assert not trainer._prior_due()
    uniform = torch.full((8,), 1 / 8)
    assert not torch.allclose(trainer.normaliser.full_prior, uniform, atol=1e-3), trainer.normaliser.full_prior
    torch.testing.assert_close(trainer.normaliser.full_prior.sum(), torch.tensor(1.0))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "klteach", *args], capture_output=True, text=True, timeout=300)


def test_cli_train_writes_config_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--dataset", "toy", "--clusters", "8", "--steps", "30", "--eval-every", "10",
                   "--batch-size", "64", "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert json.loads((out / "config.json").read_text())["clusters"] == 8
    assert (out / "checkpoint.pt").is_file()


def test_cli_resume_continues_a_run_exactly_and_refuses_changed_settings(tmp_path):
    common = ["train", "--dataset", "toy", "--clusters", "8", "--eval-every", "10", "--batch-size", "64",
              "--device", "cpu"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*common, "--steps", "40", "--out", str(straight)).returncode == 0
    assert run_cli(*common, "--steps", "20", "--out", str(resumed)).returncode == 0
    done = run_cli(*common, "--steps", "40", "--out", str(resumed), "--resume")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "at step 20 of 40" in done.stdout
    rows = lambda run: (run / "metrics.jsonl").read_text().splitlines()   # noqa: E731
    assert rows(resumed) == rows(straight)                 # the same four evaluations, bit for bit
    changed = run_cli("train", "--out", str(resumed), "--resume", "--steps", "60", "--normaliser", "centering")
    assert changed.returncode == 2
    assert "--normaliser='centering' (the checkpoint has 'inverse-prior')" in changed.stderr
    assert run_cli("train", "--out", str(resumed), "--resume", "--steps", "40").returncode == 2
    assert "no checkpoint at" in run_cli("train", "--out", str(tmp_path / "none"), "--resume").stderr


@pytest.mark.parametrize("args, message", [
    (["--tau-teacher", "0"], "tau_teacher must be a finite number > 0"),
    (["--clusters", "1"], "clusters (K) must be an integer in [2, 100000]"),
    (["--normaliser", "zca"], "unknown normaliser 'zca'"),
    (["--dataset", "/no/such/folder"], "/no/such/folder"),
])
def test_cli_bad_input_is_one_clear_line_not_a_traceback(args, message):
    done = run_cli("train", "--steps", "1", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_digits_none_collapses_while_inverse_prior_and_centering_beat_kmeans():
    """Issue 2's claim on digits, K = 20, 1000 steps: without a normaliser the teacher collapses;
    inverse priors and centering keep >= 10 effective clusters and an NMI at least k-means'."""
    from sklearn.cluster import KMeans

    from klteach.data import load_dataset
    from klteach.metrics import cluster_scores

    digits = load_dataset("digits")
    flat = lambda x: x.reshape(len(x), -1).float().numpy()                       # noqa: E731
    kmeans = KMeans(20, n_init=10, random_state=0).fit(flat(digits.train))
    kmeans_nmi = cluster_scores(torch.as_tensor(kmeans.predict(flat(digits.test))), digits.test_labels)["nmi"]
    final = {}
    for name in ("none", "inverse-prior", "centering"):
        trainer = Trainer(TrainConfig(dataset="digits", normaliser=name, clusters=20, steps=1000,
                                      eval_every=0, device="cpu", seed=0), data=digits)
        trainer.run()
        final[name] = trainer.history[-1]
    assert final["none"]["effective_clusters"] <= 3, final["none"]
    for name in ("inverse-prior", "centering"):
        assert final[name]["effective_clusters"] >= 10, final[name]
        assert final[name]["nmi"] >= kmeans_nmi, (name, final[name]["nmi"], kmeans_nmi)


def test_knn_reference_set_covers_every_class_even_when_the_data_is_stored_class_by_class():
    trainer = toy(eval_size=500)
    by_class = trainer.dataset.train_labels.argsort(stable=True)          # sorted like an image folder
    trainer.dataset.train = trainer.dataset.train[by_class]
    trainer.dataset.train_labels = trainer.dataset.train_labels[by_class]
    assert trainer.dataset.train_labels[:500].unique().numel() < 8          # the old first-500 bank
    bank = trainer.knn_bank_indices()
    assert bank.numel() == 500 and trainer.dataset.train_labels[bank].unique().numel() == 8
    assert not trainer.assignments().requires_grad
