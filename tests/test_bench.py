"""``python -m klteach bench`` and the benchmark scripts, on the CPU with fast settings."""
import ast
import dataclasses
import datetime
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from klteach import bench, cifar10, data
from klteach.__main__ import main
from klteach.loss import cross_view_loss
from klteach.models import build_model
from klteach.train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
"""Scripts in subprocesses run on one thread: two processes x two threads on two cores thrash."""


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` (a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_bench(tmp_path, *flags):
    out = tmp_path / "result" / "bench.json"
    code = main(["bench", "--device", "cpu", "--json", str(out), *flags])
    return code, out


def test_bench_cli_prints_and_writes_positive_figures(tmp_path, capsys):
    code, out = run_bench(tmp_path, "--dataset", "digits", "--arch", "mlp", "--batch-size", "32",
                          "--bench-steps", "3", "--warmup", "1")
    assert code == 0
    printed = capsys.readouterr().out
    for words in ("images/s", "views/s", "s/epoch", "peak memory", str(out)):
        assert words in printed
    record = json.loads(out.read_text())
    for key in ("images_per_s", "views_per_s", "seconds_per_step", "seconds_per_epoch",
                "seconds_per_cifar10_epoch", "peak_memory_bytes", "timed_seconds"):
        assert record[key] > 0, key
    assert record["views_per_s"] == pytest.approx(2 * record["images_per_s"])
    assert record["seconds_per_epoch"] == pytest.approx(record["train_images"] / record["images_per_s"])
    assert record["seconds_per_cifar10_epoch"] == pytest.approx(50_000 / record["images_per_s"])
    assert record["images_per_s"] == pytest.approx(32 * 3 / record["timed_seconds"])
    assert record["train_images"] == len(data.load_digits().train)
    assert record["device"] == "cpu" and record["device_name"] and record["nproc"] >= 1
    assert record["torch"] == torch.__version__
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(record["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=10)
    assert record["config"]["batch_size"] == 32 and record["config"]["dataset"] == "digits"
    threads = [row["threads"] for row in record["plain_loop"]]
    assert threads == sorted(set(threads)) and 1 in threads
    assert record["config"]["steps"] == 5 + 4 * len(threads)   # every library step: the LR schedule's span
    assert record["flops_per_image"] > 0
    assert record["achieved_tflops"] == pytest.approx(record["images_per_s"] * record["flops_per_image"] / 1e12)
    assert record["model"]["backbone"] == "MLP" and record["model"]["parameters"] > 0
    assert record["warmup_steps"] == 1 and record["timed_steps"] == 3
    for row in record["plain_loop"]:
        assert row["library_images_per_s"] > 0 and row["plain_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["library_images_per_s"] / row["plain_images_per_s"])
        assert row["library_cpu_seconds"] > 0 and row["plain_cpu_seconds"] > 0
    assert "vs plain loop" in printed and record["cpu_seconds"] > 0


def test_defaults_fit_the_device():
    cpu = bench.default_config("cpu")
    assert (cpu.dataset, cpu.arch, cpu.device) == ("cifar10-sample", "cnn", "cpu") and cpu.eval_every == 0
    assert cpu.batch_size <= 256                                   # about a minute on two cores
    if torch.cuda.is_available():
        gpu = bench.default_config("cuda")
        assert (gpu.dataset, gpu.arch, gpu.batch_size) == ("cifar10", "resnet18", 512)
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Trainer(bench.default_config("cuda"))


def test_datasheet_peaks_by_gpu_name():
    assert bench.datasheet_tflops("NVIDIA H200") == 989 and bench.datasheet_tflops("NVIDIA H100 PCIe") == 756
    assert bench.datasheet_tflops("NVIDIA A100-SXM4-80GB") == 312 and bench.datasheet_tflops("Tesla T4") is None


BENCH_MODULES = sorted((REPO / "klteach").glob("bench*.py"))


def test_bench_modules_are_short_and_do_not_import_the_command_line():
    assert len(BENCH_MODULES) >= 2
    for module in BENCH_MODULES:
        source = module.read_text()
        assert "__main__" not in source, module.name
        assert len(source.splitlines()) <= 400, module.name         # readable in one sitting


def test_every_name_the_benchmark_scripts_import_from_bench_is_there():
    """The split into bench_* modules keeps ``from klteach.bench import ...`` of the scripts working."""
    imported = {alias.name for script in BENCHMARKS.glob("*.py") for node in ast.walk(ast.parse(script.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module == "klteach.bench" for alias in node.names}
    assert {"environment", "busy_note", "measure_throughput", "cpu_model", "git_commit"} <= imported
    assert [name for name in sorted(imported) if not hasattr(bench, name)] == []


def test_typed_flags_override_the_device_defaults_and_nothing_else(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "run_benchmark", lambda config, **kw: seen.update(config=config, **kw) or {})
    assert main(["bench", "--device", "cpu", "--batch-size", "16", "--lr", "0.002"]) == 0
    expected = dataclasses.replace(bench.default_config("cpu"), batch_size=16, lr=0.002)
    assert seen["config"] == expected
    assert seen["bench_steps"] is None and seen["warmup"] is None and seen["json_path"] is None


def library_loss(trainer: Trainer, views: list[torch.Tensor]) -> float:
    """Steps 2-4 of :meth:`Trainer.train_step` on given views, with the trainer's own parts."""
    cfg, x = trainer.config, torch.cat(views)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with trainer.autocast():
        z_teacher = trainer.teacher.embed(x)
    q = trainer.normaliser(z_teacher.float(), trainer.teacher.prototypes.unit_weights.float(), cfg.tau_teacher)
    log_p = trainer.student_log_p(x, cfg.tau_student, cfg.student_batchnorm)
    return float(cross_view_loss(list(q.chunk(2)), list(log_p.chunk(2))))


def test_plain_loop_computes_the_library_loss():
    """Same model, views and loss: from equal weights on the same views the two losses agree
    (so the timing compares like with like)."""
    trainer = Trainer(TrainConfig(dataset="digits", clusters=10, batch_size=32, device="cpu", eval_every=0,
                                  normaliser="centering"))
    plain = bench.PlainLoop(trainer)
    batch = trainer.dataset.train[:32]
    generator = torch.Generator().manual_seed(3)
    views = [trainer.augment(batch, generator), trainer.augment(batch, generator)]
    with torch.no_grad():
        assert float(plain.loss(torch.cat(views))) == pytest.approx(library_loss(trainer, views), rel=1e-5)
    plain.step()                                                     # and it trains
    assert not torch.equal(plain.student.prototypes.weight, trainer.student.prototypes.weight)


def random_images(count: int = 16, side: int = 16) -> data.Dataset:
    """A dataset of random uint8 images (for speed and shape tests, not learning)."""
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return data.Dataset("random", images, None, images[:4], None, [], "images")


def test_plain_loop_runs_in_the_trainers_precision_and_memory_format():
    """With bfloat16 networks (``precision``, as on a GPU) the plain loop uses the trainer's
    autocast and channels_last too, so the comparison is still like with like."""
    trainer = Trainer(TrainConfig(dataset="random", arch="cnn", batch_size=8, device="cpu", eval_every=0,
                                  precision="bfloat16"), data=random_images())
    plain = bench.PlainLoop(trainer)
    generator = torch.Generator().manual_seed(3)
    batch = trainer.dataset.train[:8]
    views = [trainer.augment(batch, generator).float(), trainer.augment(batch, generator).float()]
    with torch.no_grad():
        x = torch.cat(views).contiguous(memory_format=torch.channels_last)
        assert float(plain.loss(x)) == pytest.approx(library_loss(trainer, views), rel=1e-5)
    plain.step()
    model = bench.describe_model(trainer)
    assert model["bf16_autocast"] and model["channels_last"]


def test_the_step_estimate_does_not_time_the_first_forward_pass(monkeypatch):
    """The first pass pays for set-up once; timing it made the printed estimate far too long."""
    trainer = Trainer(TrainConfig(dataset="random", arch="cnn", batch_size=8, device="cpu", eval_every=0),
                      data=random_images())
    now = [0.0]

    def embed(x):                    # a simulated clock: the first pass takes 100 s, later ones 1 s
        now[0] += 100.0 if now[0] == 0 else 1.0

    monkeypatch.setattr(trainer.student, "embed", embed)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    assert bench.estimate_step_seconds(trainer, images=8) == pytest.approx(1.0 / 8 * bench.FORWARDS_PER_IMAGE * 8)


def test_measure_throughput_times_exactly_the_asked_steps():
    trainer = Trainer(TrainConfig(dataset="toy", clusters=8, batch_size=64, device="cpu", eval_every=0))
    result = bench.measure_throughput(trainer, steps=3, warmup=2)
    assert trainer.step_count == 5
    assert result["seconds_per_step"] * 3 == pytest.approx(result["timed_seconds"])
    with pytest.raises(ValueError, match="bench_steps must be an integer >= 1"):
        bench.measure_throughput(trainer, steps=0, warmup=0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS window needs Linux /proc")
def test_cpu_peak_memory_sees_an_allocation_made_after_the_reset():
    device = torch.device("cpu")
    method = bench.reset_peak_memory(device)
    before = bench.peak_memory_bytes(device)
    block = torch.ones(64 * 2**20)                              # 256 MiB, touched
    during = bench.peak_memory_bytes(device)
    del block
    assert during - before >= 200 * 2**20
    assert bench.peak_memory_bytes(device) >= during - 4 * 2**20  # a high-water mark (the kernel's
    #                                                  RSS counters are per-CPU, so exact to ~MiB)
    if "VmHWM" in method:
        bench.reset_peak_memory(device)
        assert bench.peak_memory_bytes(device) < during            # the window really restarts


def test_bad_step_counts_are_refused_before_any_work(tmp_path, capsys):
    code, out = run_bench(tmp_path, "--dataset", "digits", "--bench-steps", "0")
    assert code == 2 and not out.exists()
    assert "--bench-steps must be an integer >= 1, got 0" in capsys.readouterr().err
    code, _ = run_bench(tmp_path, "--dataset", "digits", "--warmup", "-1")
    assert code == 2 and "--warmup must be an integer >= 0, got -1" in capsys.readouterr().err


def test_missing_cifar10_archive_names_the_folder_and_the_alternatives(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cifar10, "CIFAR10_URL", (tmp_path / "no-such-archive.tar.gz").as_uri())
    folder = tmp_path / "data"
    code, out = run_bench(tmp_path, "--dataset", "cifar10", "--data-dir", str(folder))
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for words in ("CIFAR-10 is not in", str(folder), "cifar-10-python.tar.gz", "cifar10-sample",
                  "image folder"):
        assert words in err, words
    assert list(folder.iterdir()) == []                          # no half-written download left


def conv_flops(c_in: int, c_out: int, kernel: int, side: int) -> int:
    """2 x multiply-adds of a convolution producing a ``side x side`` map."""
    return 2 * c_in * c_out * kernel * kernel * side * side


def test_resnet18_forward_flops_match_a_count_by_hand():
    expected = conv_flops(3, 64, 3, 32) + 4 * conv_flops(64, 64, 3, 32)          # stem, stage 1
    for c_in, c_out, side in ((64, 128, 16), (128, 256, 8), (256, 512, 4)):      # stages 2-4
        expected += (conv_flops(c_in, c_out, 3, side) + 3 * conv_flops(c_out, c_out, 3, side)
                     + conv_flops(c_in, c_out, 1, side))                          # + 1x1 shortcut
    expected += 2 * (512 * 512 + 512 * 64)                                        # head 512-512-64
    model = build_model("resnet18", (3, 32, 32), 10, dim=64, hidden=512)
    assert bench.forward_flops_per_image(model, (3, 32, 32)) == expected
    assert expected == pytest.approx(1.11e9, rel=0.01)


def test_a_step_costs_about_eight_forward_passes_per_image():
    """Two views, each: teacher forward (1) + student forward (1) + backward (~2)."""
    trainer = Trainer(TrainConfig(dataset="random", arch="cnn", batch_size=4, device="cpu", eval_every=0),
                      data=random_images())
    forward = bench.forward_flops_per_image(trainer.student, (3, 16, 16))
    step = bench.step_flops_per_image(trainer)
    assert trainer.step_count == 1
    assert step == pytest.approx(8 * forward, rel=0.03)


def gpu_full_like(normaliser: str, times: list[float], accuracies: list[float]) -> dict:
    """A record shaped like gpu_full.py's output (synthetic: for testing the plot only)."""
    return {"benchmark": "gpu_full", "device": "cuda", "device_name": "Test GPU", "dataset": "cifar10",
            "normaliser": normaliser,
            "curve": [{"train_seconds": t, "knn_accuracy": a, "normaliser": normaliser, "step": i}
                      for i, (t, a) in enumerate(zip(times, accuracies))]}


def test_plot_finds_the_curves_and_ignores_other_results(tmp_path):
    plot = load_script("plot_knn_vs_time")
    (tmp_path / "gpu_test_centering.json").write_text(json.dumps(gpu_full_like("centering", [120, 60], [0.5, 0.3])))
    (tmp_path / "gpu_test_inverse-prior.json").write_text(json.dumps(gpu_full_like("inverse-prior", [60], [0.4])))
    (tmp_path / "bench.json").write_text(json.dumps({"images_per_s": 10.0, "device": "cpu"}))
    curves = {c.label: c for c in plot.load_curves(tmp_path)}
    assert set(curves) == {"centering", "inverse-prior"}
    assert curves["centering"].minutes == [1.0, 2.0] and curves["centering"].knn == [0.3, 0.5]
    assert curves["centering"].on_gpu and curves["centering"].hardware == "Test GPU"
    assert not curves["centering"].time_from_mean_rate
    figure = plot.make_figure(list(curves.values()))
    assert "Test GPU" in figure.layout.title.text
    assert sorted(trace.name.split()[0] for trace in figure.data) == ["centering", "inverse-prior"]


def test_plot_places_step_only_points_at_the_runs_mean_speed(tmp_path):
    plot = load_script("plot_knn_vs_time")
    runs = {"hardware": {"cpu": "Test CPU", "nproc": 2, "torch_threads": 1}, "dataset": "cifar10-sample",
            "note": "the machine was shared with other jobs", "runs": [
                {"normaliser": "none", "steps_per_s": 0.5, "evaluations": [
                    {"step": 0, "knn_accuracy": 0.2}, {"step": 30, "knn_accuracy": 0.25}]}]}
    (tmp_path / "cifar_sample_cpu.json").write_text(json.dumps(runs))
    [curve] = plot.load_curves(tmp_path)
    assert curve.minutes == [0.0, 1.0] and curve.time_from_mean_rate and not curve.on_gpu
    assert curve.label == "none" and curve.hardware == "Test CPU (2 cores, 1 torch thread(s))"
    assert "shared" in plot.make_figure([curve]).layout.title.text


def test_plot_script_refuses_to_draw_without_results(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "plot_knn_vs_time.py"), "--results", str(tmp_path),
                           "--no-png"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and "nothing to plot" in done.stderr
    assert not (tmp_path / "knn_vs_time.html").exists()


@pytest.mark.slow
def test_bench_on_the_shipped_cifar_sample_with_the_small_cnn(tmp_path):
    code, out = run_bench(tmp_path, "--dataset", "cifar10-sample", "--arch", "cnn", "--batch-size", "16",
                          "--bench-steps", "2", "--warmup", "1")
    assert code == 0
    record = json.loads(out.read_text())
    assert record["model"]["backbone"] == "SmallCNN" and record["train_images"] == 10_000
    assert record["images_per_s"] > 0 and record["peak_memory_bytes"] > 0


@pytest.mark.slow
def test_quality_script_records_a_curve_within_its_budget(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_full.py"), "--dataset", "digits", "--arch", "mlp",
                           "--batch-size", "64", "--clusters", "10", "--dim", "16", "--minutes", "0.04",
                           "--evals", "2", "--calibrate-steps", "4", "--warmup-steps", "5",
                           "--normalisers", "centering", "--device", "cpu", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "cpu_digits_centering.json").read_text())
    curve = record["curve"]
    assert len(curve) >= 2 and curve[-1]["step"] == record["total_steps"] == record["config"]["steps"]
    times = [p["train_seconds"] for p in curve]
    assert times == sorted(times) and all(0 <= p["knn_accuracy"] <= 1 for p in curve)
    assert record["config"]["lr_schedule"] == "cosine"
    assert all(p["eval_seconds"] > 0 for p in curve)


@pytest.mark.slow
def test_memory_script_measures_each_batch_size_in_its_own_process(tmp_path):
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "memory_vs_batch.py"), "--dataset", "digits",
                           "--arch", "mlp", "--batch-sizes", "32", "64", "--steps", "1", "--warmup", "0",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [32, 64]
    assert all(r["peak_memory_bytes"] > 0 and r["images_per_s"] > 0 for r in rows)
