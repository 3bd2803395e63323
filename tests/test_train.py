"""The training loop: settings, live changes, reproducibility, NaN safety, the command line."""
import json
import math
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


# ---------------------------------------------------------------- Trainer.set: validated and atomic (issue 10)

def test_set_converts_values_exactly_as_the_constructor_does():
    trainer = toy()
    trainer.set(momentum="0.5", copy_every="0")
    trainer.step()
    assert trainer.config.momentum == 0.5 and type(trainer.config.momentum) is float
    assert trainer.config == TrainConfig(**{**trainer.config.to_dict(), "momentum": 0.5})
    with pytest.raises(ValueError, match="momentum must be a finite number in"):
        trainer.set(momentum="fast")


def test_set_refuses_settings_fixed_at_construction_naming_the_kinds():
    trainer = toy()
    with pytest.raises(ValueError, match=r"precision cannot change during a run \(fixed when the trainer is built\); "
                                         r"live settings: normaliser, .*; settings that restart the run: dataset, "):
        trainer.set(precision="bfloat16")
    assert not trainer.pending_changes()


def test_a_bogus_arch_is_refused_at_once_and_the_run_goes_on():
    trainer = toy(eval_every=2)
    trainer.run(2)
    with pytest.raises(ValueError, match="unknown arch 'bogus'; choose one of auto, mlp, cnn, resnet18"):
        trainer.set(arch="bogus")
    trainer.step()
    assert trainer.config.arch == "auto" and trainer.step_count == 3 and len(trainer.history) == 1


def test_a_restart_that_cannot_be_built_leaves_the_trainer_exactly_as_it_was(tmp_path):
    trainer = toy(eval_every=2, out=str(tmp_path))
    trainer.run(2)
    before, files = trainer.state(), {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    trainer.set(arch="cnn", clusters=5)          # valid settings, but the toy data are vectors
    with pytest.raises(ValueError, match="needs image input"):
        trainer.step()
    after = trainer.state()
    assert after["config"] == before["config"] and after["history"] == before["history"] == trainer.history
    for part in ("student", "teacher", "optimiser", "normaliser"):
        assert str(after[part]) == str(before[part]), part
    assert torch.equal(after["generator"], before["generator"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert not trainer.pending_changes() and trainer.step_count == 2
    trainer.step()                                # the dropped change is gone; training goes on
    assert trainer.step_count == 3 and trainer.student.prototypes.weight.shape[0] == 8


def test_weight_decay_set_during_a_run_takes_effect():
    changed, built = toy(weight_decay=1e-4), toy(weight_decay=0.5)
    changed.set(weight_decay=0.5)
    for _ in range(3):
        changed.step()
        built.step()
    assert torch.equal(changed.student.prototypes.weight, built.student.prototypes.weight)
    assert changed.optimiser.param_groups[0]["weight_decay"] == 0.5


def test_building_and_resuming_a_trainer_leave_the_process_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer = toy(out=str(tmp_path), eval_every=2)
    trainer.run(2)
    Trainer.resume(tmp_path / "checkpoint.pt")
    assert torch.equal(torch.rand(3), expected)


def test_last_loss_is_a_number_after_every_step_without_run():
    trainer = toy()
    assert math.isnan(trainer.last_loss)
    trainer.train_step()
    first = trainer.last_loss
    assert isinstance(first, float) and math.isfinite(first)
    assert trainer.step() == trainer.last_loss != first


# ---------------------------------------------------------------- the GPU code path, checked on a CPU (issue 10)

def test_bfloat16_autocast_and_channels_last_give_float32_logits_q_and_loss():
    """precision="bfloat16" runs the networks as on a GPU (bf16 autocast, channels_last images);
    the logits, the teacher's q and the loss must still be float32, computed outside autocast."""
    from klteach import theory
    from klteach.data import load_dataset

    digits = load_dataset("digits")
    settings = dict(dataset="digits", arch="cnn", normaliser="none", clusters=10, batch_size=32, device="cpu",
                    eval_every=0, tau_teacher=0.04)
    mixed, full = (Trainer(TrainConfig(**settings, precision=p), data=digits) for p in ("bfloat16", "float32"))
    assert mixed.autocast_dtype == torch.bfloat16 and mixed.channels_last and full.autocast_dtype is None
    seen = {}

    def keep(name, what=lambda args, out: out):
        def hook(module, args, out=None):
            seen.setdefault(name, what(args, out))      # the first call only; returns None: no change
        return hook

    mixed.student.backbone.register_forward_pre_hook(keep("input", lambda args, out: args[0]))
    mixed.student.head.register_forward_hook(keep("z_student"))
    mixed.teacher.head.register_forward_hook(keep("z_teacher"))
    mixed.normaliser.register_forward_hook(keep("q", lambda args, out: (args, out)))
    mixed.student_log_p.register_forward_hook(keep("log_p"))
    full.normaliser.register_forward_hook(keep("q_full"))
    w_student = mixed.student.prototypes.unit_weights.detach().double()     # before the step moves it
    loss_mixed, loss_full = mixed.step(), full.step()
    (z_teacher, w_teacher, tau), q = seen["q"]

    assert seen["input"].is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in mixed.student.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the networks ran in bf16 (the student's embedding differs from float32's) ...
    assert z_teacher.dtype == w_teacher.dtype == q.dtype == seen["log_p"].dtype == torch.float32
    assert torch.equal(z_teacher, seen["z_teacher"])
    # ... but q and log p are the float32 functions of those embeddings (bf16 logits at tau = 0.04
    # would be off by ~1e-2)
    q_reference = theory.sphere_posterior(z_teacher.double(), w_teacher.double(), tau)
    torch.testing.assert_close(q.double(), q_reference, atol=2e-6, rtol=0)
    log_p_reference = (seen["z_student"].double() @ w_student.T / 0.1).log_softmax(-1)
    torch.testing.assert_close(seen["log_p"].double(), log_p_reference, atol=2e-5, rtol=0)
    # and against a float32 run from the same start: close, as bf16 networks allow
    assert abs(loss_mixed - loss_full) < 0.02 * abs(loss_full)
    assert float((q - seen["q_full"]).abs().max()) < 0.1


def test_the_planned_total_may_change_during_a_run_and_replaces_epochs(tmp_path):
    trainer = toy(epochs=1.0, out=str(tmp_path), eval_every=2)          # 2000 samples / 64 per step
    assert trainer.config.steps == 32
    trainer.run(2)
    trainer.set(steps=4)
    trainer.run()                                   # to the new total, read as the run goes
    assert trainer.step_count == 4 and trainer.config.epochs is None and trainer.config.steps == 4
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", steps=6)
    resumed.run()
    assert resumed.step_count == 6
    other = toy(epochs=1.0, out=str(tmp_path / "b"), eval_every=2)
    other.run(2)
    assert Trainer.resume(tmp_path / "b" / "checkpoint.pt", steps=5).config.steps == 5
