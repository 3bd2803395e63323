"""Two gloo processes on the CPU against one process with the same global batch (issue 6).

The workers are started once for the module (starting processes that import torch is the
slow part) and save what they computed; each test then compares one thing with what a
single process computes over the combined batch.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from klteach import dist
from klteach.normalisers import NORMALISERS, batch_standardise, make_normaliser
from klteach.train import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_float32")]

WORLD = 2
STEPS = 4
TAU = 0.1
TRAINER = dict(dataset="toy", clusters=8, batch_size=64, eval_every=0, device="cpu", steps=STEPS)
TRAINER_CASES = {
    "centering": dict(normaliser="centering"),
    "inverse-prior": dict(normaliser="inverse-prior", prior="running"),
    "inverse-prior-full": dict(normaliser="inverse-prior", prior="full", prior_every=2),
    "sinkhorn": dict(normaliser="sinkhorn"),
    "batchnorm": dict(normaliser="batchnorm", centred_prototypes=True),
    "student-batchnorm": dict(normaliser="centering", student_batchnorm=True),
}
FIRST_LOSS_TOLERANCE = 1e-6
"""|2-process - 1-process| loss at the first step, before any update: float32 sums taken in another
order (measured: up to 2.4e-7 on losses of about 2)."""
LOSS_TOLERANCE = 2e-4
"""The same at every later step. Adam divides each gradient by its own running size, so gradient
components that are zero in exact arithmetic but differ by rounding become full ``lr``-sized
updates that differ: measured up to 4.3e-5 (``batchnorm``); one process on 1 vs 2 threads already
differs by 5e-6."""
WEIGHT_TOLERANCE = 5e-3
"""Relative difference ``|a - b| / |b|`` of every weight and normaliser buffer after STEPS steps
(measured: up to 7.5e-4)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    z = nn.functional.normalize(torch.randn(16, 8, generator=g) + torch.tensor([2.0] + [0.0] * 7), dim=-1)
    w = nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    features = torch.randn(16, 5, generator=g) * 3 + 1          # for batch norm, (B, C)
    images = torch.randn(16, 3, 4, 4, generator=g) * 2 - 1      # for batch norm, (B, C, H, W)
    return z, w, features, images


def normaliser_outputs(z, w):
    """Each teacher on ``z`` twice (so the running prior and the centre are used after an update)."""
    out = {}
    for name in NORMALISERS:
        for prior in (("batch", "running") if name == "inverse-prior" else (None,)):
            teacher = make_normaliser(name, clusters=6, prior=prior or "running", prior_momentum=0.5,
                                      centre_momentum=0.5)
            teacher(z, w, TAU)
            key = name + (f"-{prior}" if prior else "")
            out[key] = {"q": teacher(z, w, TAU), **{k: v.clone() for k, v in teacher.state_dict().items()}}
    return out


def batchnorm_pass(layer: nn.Module, x: torch.Tensor, weights: torch.Tensor):
    """Forward and backward of ``sum(weights * layer(x))``: output, gradients, running statistics."""
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * weights).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad.clone(),
            "bias_grad": layer.bias.grad.clone(), "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone()}


def make_batchnorms():
    torch.manual_seed(1)
    one_d, two_d = nn.BatchNorm1d(5), nn.BatchNorm2d(3)
    for layer in (one_d, two_d):
        nn.init.uniform_(layer.weight, 0.5, 1.5)
        nn.init.uniform_(layer.bias, -0.5, 0.5)
    return one_d, two_d


def standardise_pass(z: torch.Tensor, weights: torch.Tensor):
    z = z.clone().requires_grad_(True)
    out = batch_standardise(z)
    (out * weights).sum().backward()
    return {"out": out.detach(), "grad": z.grad}


def trainer_run(settings: dict):
    trainer = Trainer(**TRAINER, **settings)
    inputs = []      # what the student network is given: both views of this process's samples
    hook = trainer.student.backbone.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].detach().clone()) if module.training else None)
    losses = [trainer.step() for _ in range(STEPS)]
    hook.remove()
    return {"losses": losses, "state": trainer.state(), "first_input": inputs[0]}


def worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    results = {}
    # the Trainer starts the process group from the environment, as under torchrun
    results["trainer"] = {name: trainer_run(settings) for name, settings in TRAINER_CASES.items()}
    assert dist.is_distributed() and dist.world_size() == WORLD and dist.rank() == rank

    z, w, features, images = fixed_batch()
    results["normalisers"] = normaliser_outputs(dist.shard(z), w)
    one_d, two_d = make_batchnorms()
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(features.shape, generator=g), torch.randn(images.shape, generator=g)
    results["batchnorm1d"] = batchnorm_pass(dist.convert_to_global_batchnorm(one_d), dist.shard(features),
                                            dist.shard(w1))
    results["batchnorm2d"] = batchnorm_pass(dist.convert_to_global_batchnorm(two_d), dist.shard(images),
                                            dist.shard(w2))
    results["standardise"] = standardise_pass(dist.shard(features), dist.shard(w1))

    # rank 0 alone asks to stop: both must stop at the same step (else the next collective hangs);
    # only rank 0 writes files, every rank gets the same evaluations
    trainer = Trainer(**{**TRAINER, "eval_every": 2}, out=os.path.join(folder, f"run-written-by-rank{rank}"))
    trainer.run(steps=10, should_stop=lambda: rank == 0 and trainer.step_count == 3)
    results["stopped_at"] = trainer.step_count
    results["history"] = trainer.history
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-processes")
    context = mp.start_processes(worker, args=(free_port(), str(folder)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish within 300 s (a collective hung?)")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], folder


def close(a, b, atol=1e-6):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), float((a - b).abs().max())


def test_centres_and_priors_equal_one_process_over_the_combined_batch(ranks):
    results, _ = ranks
    z, w, _, _ = fixed_batch()
    single = normaliser_outputs(z, w)
    for name, expected in single.items():
        for key in expected:
            if key == "q":   # each process holds the teacher of its half of the batch
                close(torch.cat([r["normalisers"][name]["q"] for r in results]), expected["q"])
            else:            # centre / running prior: the same on every process, that of the whole batch
                for r in results:
                    close(r["normalisers"][name][key], expected[key])
    assert set(single["centering"]) == {"q", "centre"}
    assert set(single["inverse-prior-running"]) == {"q", "running_prior", "full_prior"}


def test_global_batchnorm_equals_batchnorm_over_the_combined_batch(ranks):
    results, _ = ranks
    _, _, features, images = fixed_batch()
    one_d, two_d = make_batchnorms()
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(features.shape, generator=g), torch.randn(images.shape, generator=g)
    for key, layer, x, weights in (("batchnorm1d", one_d, features, w1), ("batchnorm2d", two_d, images, w2)):
        expected = batchnorm_pass(layer, x, weights)
        close(torch.cat([r[key]["y"] for r in results]), expected["y"], atol=1e-5)
        close(torch.cat([r[key]["x_grad"] for r in results]), expected["x_grad"], atol=1e-5)
        for name in ("weight_grad", "bias_grad"):     # each process holds its share; DDP adds them up
            close(sum(r[key][name] for r in results), expected[name], atol=1e-5)
        for name in ("running_mean", "running_var"):
            for r in results:
                close(r[key][name], expected[name], atol=1e-6)
    expected = standardise_pass(features, w1)          # gradients flow through the all-reduce
    close(torch.cat([r["standardise"]["out"] for r in results]), expected["out"], atol=1e-5)
    close(torch.cat([r["standardise"]["grad"] for r in results]), expected["grad"], atol=1e-5)


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_two_processes_match_one_process_with_the_same_global_batch(ranks, case):
    results, _ = ranks
    single = trainer_run(TRAINER_CASES[case])
    two = [r["trainer"][case] for r in results]
    assert two[0]["losses"] == two[1]["losses"]                 # the loss is the mean over processes
    assert abs(two[0]["losses"][0] - single["losses"][0]) <= FIRST_LOSS_TOLERANCE
    for step, (a, b) in enumerate(zip(two[0]["losses"], single["losses"])):
        assert abs(a - b) <= LOSS_TOLERANCE, (step, a, b)
    for part in ("student", "teacher", "normaliser"):
        for key, expected in single["state"][part].items():
            got = two[0]["state"][part][key]
            if expected.is_floating_point():
                assert float((got - expected).norm()) <= WEIGHT_TOLERANCE * float(expected.norm()), key
            else:
                assert torch.equal(got, expected), key
            assert torch.equal(got, two[1]["state"][part][key]), key   # the processes agree exactly
    for key in ("generator", "epoch_order"):              # the same random stream on every process
        assert torch.equal(two[0]["state"][key], single["state"][key])
    # each process saw its own half of the same two views: disjoint shards of one global batch
    half = TRAINER["batch_size"] // WORLD
    view_a, view_b = single["first_input"].chunk(2)
    for rank, r in enumerate(two):
        shard = slice(rank * half, (rank + 1) * half)
        assert torch.equal(r["first_input"], torch.cat([view_a[shard], view_b[shard]]))


def test_ranks_stop_together_and_only_rank_0_writes(ranks):
    results, folder = ranks
    assert [r["stopped_at"] for r in results] == [3, 3]
    assert [h["step"] for h in results[0]["history"]] == [2, 3]
    assert results[0]["history"] == results[1]["history"]
    assert (folder / "run-written-by-rank0" / "checkpoint.pt").is_file()
    assert not (folder / "run-written-by-rank1").exists()
    resumed = Trainer.resume(folder / "run-written-by-rank0" / "checkpoint.pt", out=None)
    assert resumed.step_count == 3 and resumed.step() > 0   # a 2-process checkpoint resumes in one


def test_torchrun_runs_the_command_line_on_two_processes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
         "-m", "klteach", "train", "--dataset", "toy", "--clusters", "8", "--batch-size", "64",
         "--steps", "4", "--eval-every", "2", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 4 steps") == 1                  # rank 0 reports, rank 1 does not
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    single = Trainer(**{**TRAINER, "eval_every": 2})
    single.run()
    for row, expected in zip(rows, single.history):
        assert abs(row["loss"] - expected["loss"]) <= LOSS_TOLERANCE
