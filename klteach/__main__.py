"""Command line: ``python -m klteach {train,demo,bench} ...``.

``train`` runs one configuration and writes ``DIR/config.json``, ``DIR/metrics.jsonl`` and
``DIR/checkpoint.pt`` (``train --out DIR --resume`` continues it from that checkpoint);
``demo`` trains on digits with every normaliser and prints which collapse; ``bench`` measures
training throughput and memory for a named configuration.
On several GPUs (or CPU processes): ``torchrun --nproc-per-node N -m klteach train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

from .dist import is_main
from .train import TrainConfig, Trainer, TrainingError, read_checkpoint

DEMO_STEPS = 1000


def _add_train_flags(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="toy, digits, cifar10, cifar10-sample, or a PATH to ROOT/{train,test}/<class>/*.jpg")
    parser.add_argument("--normaliser", default=defaults.normaliser,
                        help="none, inverse-prior, centering, batchnorm or sinkhorn")
    parser.add_argument("--clusters", "-K", type=int, default=defaults.clusters, help="number of clusters K")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--epochs", type=float, default=None, help="overrides --steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--tau-student", type=float, default=defaults.tau_student)
    parser.add_argument("--tau-teacher", type=float, default=defaults.tau_teacher)
    parser.add_argument("--momentum", type=float, default=defaults.momentum, help="teacher EMA momentum in [0, 1)")
    parser.add_argument("--copy-every", type=int, default=defaults.copy_every,
                        help="copy the student into the teacher every T steps (eq. 7) instead of EMA; 0 = EMA")
    parser.add_argument("--prior", default=defaults.prior, help="batch, running or full (eq. 15)")
    parser.add_argument("--prior-every", type=int, default=defaults.prior_every,
                        help="steps between whole-set prior estimates (--prior full); 0 = once per epoch")
    parser.add_argument("--lam", type=float, default=defaults.lam, help="λ of eq. (14), >= 0")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-schedule", default=defaults.lr_schedule, help="constant or cosine")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--eval-size", type=int, default=defaults.eval_size)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--arch", default=defaults.arch, help="auto, mlp, cnn or resnet18")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="embedding dimension")
    parser.add_argument("--width", type=int, default=defaults.width, help="channels of the small CNN's first stage")
    parser.add_argument("--fixed-prototypes", action="store_true", help="do not learn the weight vectors")
    parser.add_argument("--centred-prototypes", action="store_true", help="centre the weight vectors (eq. 20)")
    parser.add_argument("--student-batchnorm", action="store_true",
                        help="batch-normalise the student's features too (section 5 warns against it)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Map parsed flags onto a :class:`TrainConfig`."""
    names = {f for f in TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["learnable_prototypes"] = not args.fixed_prototypes
    values["centred_prototypes"] = args.centred_prototypes
    return TrainConfig(**values)


RESUME_SETTINGS = ("steps", "epochs", "out")
"""What ``train --resume`` may change; every other setting comes from the checkpoint."""


def resumed_trainer(args: argparse.Namespace) -> Trainer:
    """The run saved in ``args.out/checkpoint.pt``, continued to ``--steps`` (or ``--epochs``).

    Flags other than ``--steps``/``--epochs``/``--out`` that differ from the checkpoint's
    settings are refused: a resumed run with, say, another normaliser would not be the same run."""
    if not args.out:
        raise ValueError("--resume needs --out DIR, the folder that holds checkpoint.pt")
    path = Path(args.out) / "checkpoint.pt"
    saved = read_checkpoint(path)["config"]
    asked = config_from_args(args)
    defaults = config_from_args(build_parser().parse_args(["train"]))
    conflicts = [f"--{field.name.replace('_', '-')}={getattr(asked, field.name)!r} (the checkpoint has "
                 f"{saved.get(field.name)!r})" for field in dataclasses.fields(TrainConfig)
                 if field.name not in RESUME_SETTINGS and field.name in saved
                 and getattr(asked, field.name) != getattr(defaults, field.name)
                 and getattr(asked, field.name) != saved[field.name]]
    if conflicts:
        raise ValueError("--resume continues the saved run with its own settings; only --steps, "
                         f"--epochs and --out may change, but these differ from it: {', '.join(conflicts)}")
    trainer = Trainer.resume(path, steps=args.steps, epochs=args.epochs, out=args.out)
    if trainer.step_count >= trainer.config.steps:
        raise ValueError(f"--resume: the checkpoint is already at step {trainer.step_count}; ask for "
                         f"more with --steps or --epochs (that makes {trainer.config.steps} steps)")
    return trainer


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        trainer = resumed_trainer(args)
        print(f"resuming {args.out} at step {trainer.step_count} of {trainer.config.steps}")
    else:
        config = config_from_args(args)
        config.out = args.out
        trainer = Trainer(config)
    start = time.perf_counter()
    trainer.run(progress=True)
    last = trainer.history[-1]
    if not is_main():   # under torchrun only rank 0 reports
        return 0
    print(f"done: {trainer.step_count} steps in {time.perf_counter() - start:.1f} s; " +
          ", ".join(f"{k}={_fmt(v)}" for k, v in last.items() if k != "step"))
    if args.out:
        print(f"wrote {args.out}/config.json, metrics.jsonl, checkpoint.pt")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .normalisers import NORMALISERS
    print(f"digits, K={args.clusters}, {args.steps} steps per normaliser, seed {args.seed}")
    header = f"{'normaliser':<14}{'eff. clusters':>14}{'used':>6}{'entropy':>9}{'kNN':>7}{'NMI':>7}{'time s':>8}  verdict"
    print(header)
    print("-" * len(header))
    for name in NORMALISERS:
        start = time.perf_counter()
        trainer = Trainer(TrainConfig(dataset="digits", normaliser=name, clusters=args.clusters,
                                      steps=args.steps, seed=args.seed, device=args.device,
                                      eval_every=0))
        trainer.run()
        r = trainer.history[-1]
        verdict = {"one-cluster": "COLLAPSED to one cluster", "uniform": "COLLAPSED to uniform output"}
        print(f"{name:<14}{r['effective_clusters']:>14.1f}{r['clusters_used']:>6}{r['mean_entropy']:>9.2f}"
              f"{r['knn_accuracy']:>7.3f}{r['nmi']:>7.3f}{time.perf_counter() - start:>8.1f}  "
              f"{verdict.get(r['collapse'], 'ok')}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The bench parser's defaults are suppressed, so ``args`` holds only the flags typed; they
    override :func:`klteach.bench.default_config` for the device asked for."""
    from .bench import default_config, run_benchmark
    typed = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if getattr(args, "fixed_prototypes", False):
        typed["learnable_prototypes"] = False
    if getattr(args, "centred_prototypes", False):
        typed["centred_prototypes"] = True
    config = dataclasses.replace(default_config(typed.get("device", "auto")), **typed)
    run_benchmark(config, bench_steps=getattr(args, "bench_steps", None), warmup=getattr(args, "warmup", None),
                  json_path=getattr(args, "json", None))
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m klteach", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one configuration")
    _add_train_flags(train, TrainConfig())
    train.add_argument("--out", default=None, help="directory for config.json, metrics.jsonl, checkpoint.pt")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out DIR up to --steps (or --epochs) in all; "
                            "a stopped run continues bit for bit")
    demo = sub.add_parser("demo", help="digits with every normaliser: which collapse?")
    demo.add_argument("--clusters", "-K", type=int, default=20)
    demo.add_argument("--steps", type=int, default=DEMO_STEPS)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    bench = sub.add_parser("bench", help="images/s, s/epoch and peak memory of one configuration")
    _add_train_flags(bench, TrainConfig())
    bench.add_argument("--bench-steps", type=int, help="timed steps (default: 50 on a GPU, 3 on a CPU)")
    bench.add_argument("--warmup", type=int, help="untimed steps first (default: 10 on a GPU, 1 on a CPU)")
    bench.add_argument("--json", help="write the result here")
    for action in bench._actions:      # only typed flags reach cmd_bench: the rest is default_config's
        action.default = argparse.SUPPRESS
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "demo": cmd_demo, "bench": cmd_bench}
    try:
        return commands[args.command](args)
    except (ValueError, OSError, TrainingError) as error:   # OSError: missing, unreadable or not a folder
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
