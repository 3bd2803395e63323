"""Command line: ``python -m klteach {train,demo,bench,course,site} ...``.

``train`` runs one configuration and writes ``DIR/config.json``, ``DIR/metrics.jsonl`` and
``DIR/checkpoint.pt`` (``train --out DIR --resume`` continues it from that checkpoint; Ctrl-C or
SIGTERM stops it at a step boundary with its checkpoint written); ``demo`` trains on digits with
every normaliser and prints which collapse; ``bench`` measures training throughput and memory.
The flags of ``train`` and ``bench`` are generated from :class:`klteach.config.TrainConfig`.
On several GPUs (or CPU processes): ``torchrun --nproc-per-node N -m klteach train ...``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import checkpoint, config, coursework, metrics, site
from .config import TrainConfig, setting_info, setting_names, with_changes
from .dist import is_main
from .train import Trainer, TrainingError

DEMO_STEPS = 1000
EXIT_ERROR = 2


# ---------------------------------------------------------------------- flags from the settings

def add_setting_flags(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """One flag per :class:`TrainConfig` setting, spelt as in :class:`klteach.config.SettingInfo`
    (``--tau-student``, ``-K``); a boolean flag sets the opposite of its default. A flag that is
    not typed leaves no value behind, so :func:`typed_settings` sees only what the user typed."""
    for name in setting_names():
        info = setting_info(name)
        flags = info.flags or (f"--{name.replace('_', '-')}",)
        default = getattr(defaults, name)
        allowed = config.describe_allowed(name)
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=name, action="store_const", const=not default,
                                default=argparse.SUPPRESS, help=f"{info.help} (sets {name}={not default})")
        else:
            allowed = "" if allowed == "a string" else f"; {allowed}"
            default_text = "" if default is None else f" (default: {default})"
            parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                                help=f"{info.help}{allowed}{default_text}")


def typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed, as strings (converted and checked by :class:`TrainConfig`)."""
    return {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}


def _flag(name: str) -> str:
    return setting_info(name).flags[0] if setting_info(name).flags else f"--{name.replace('_', '-')}"


# ---------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    typed = typed_settings(args)
    if args.resume:
        trainer = resumed_trainer(typed)
        print(f"resuming {typed['out']} at step {trainer.step_count} of {trainer.config.steps}")
    else:
        settings = with_changes(TrainConfig(), typed)
        if settings.out:
            check_out_folder(settings.out, args.overwrite)
        trainer = Trainer(settings)
        if settings.out and args.overwrite and is_main():    # only once the new run could be built
            checkpoint.clear_run(settings.out)
    start = time.perf_counter()
    try:
        trainer.run(progress=True)
    except KeyboardInterrupt:        # a second Ctrl-C or SIGTERM: stopped without the final evaluation
        return report_stop(trainer)
    if trainer.interrupted is not None:
        return report_stop(trainer)
    if not is_main():                # under torchrun only rank 0 reports
        return 0
    last = {key: value for key, value in trainer.history[-1].items() if not isinstance(value, list)}
    print(f"done: {trainer.step_count} steps in {time.perf_counter() - start:.1f} s; " +
          ", ".join(f"{k}={_fmt(v)}" for k, v in last.items() if k != "step"))
    if trainer.config.out:
        print(f"wrote {trainer.config.out}/config.json, metrics.jsonl, checkpoint.pt")
    return 0


def check_out_folder(out: str, overwrite: bool) -> None:
    """Refuse an ``--out`` folder that holds a previous run unless ``--overwrite``."""
    files = checkpoint.run_files_in(out)
    if files and not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(files)}); continue it with --resume "
                         "or start again with --overwrite")


def resumed_trainer(typed: dict[str, Any]) -> Trainer:
    """The run saved in ``--out DIR``, continued to ``--steps`` (or ``--epochs``) in all, by
    default to the total it was started with. Only how far it goes and result-neutral settings
    (``--device``, ``--eval-every``, ...) may differ from the checkpoint's; typed values are
    compared even when they equal the defaults."""
    if not typed.get("out"):
        raise ValueError("--resume needs --out DIR, the folder that holds checkpoint.pt")
    path = Path(typed["out"]) / checkpoint.CHECKPOINT
    state = checkpoint.read_checkpoint(path)
    saved = config.config_from_dict(state["config"]).to_dict()
    conflicts = config.resume_conflicts(saved, typed)
    if conflicts:
        changes = ", ".join(f"{_flag(name)}={typed[name]!r} (the checkpoint has {saved[name]!r})"
                            for name in conflicts)
        raise ValueError("--resume continues the saved run with its own settings; only --steps, --epochs "
                         f"and result-neutral settings may change, but these differ from it: {changes}")
    trainer = Trainer.resume(path, state=state, **typed)
    if trainer.step_count >= trainer.config.steps:
        raise ValueError(f"--resume: the checkpoint is already at step {trainer.step_count} of "
                         f"{trainer.config.steps}; ask for more with --steps or --epochs")
    return trainer


def report_stop(trainer: Trainer) -> int:
    """Say where a stopped run stands and how to continue it; the exit status is 128 + the signal
    (130 for Ctrl-C, 143 for SIGTERM)."""
    signum = trainer.interrupted or signal.SIGINT
    if is_main():
        where = f"stopped at step {trainer.step_count} of {trainer.config.steps}"
        out = trainer.config.out
        print(f"\n{where}; continue with: python -m klteach train --out {out} --resume" if out else
              f"\n{where} (no --out, so nothing was saved)", file=sys.stderr)
    return 128 + signum


# ---------------------------------------------------------------------- demo, bench

def cmd_demo(args: argparse.Namespace) -> int:
    from .normalisers import NORMALISERS
    print(f"digits, K={args.clusters}, {args.steps} steps per normaliser, seed {args.seed}")
    header = (f"{'normaliser':<14}{'eff. clusters':>14}{'used':>6}{'entropy':>9}{'kNN':>7}{'NMI':>7}"
              f"{'time s':>8}  verdict")
    print(header)
    print("-" * len(header))
    for name in NORMALISERS:
        start = time.perf_counter()
        trainer = Trainer(dataset="digits", normaliser=name, clusters=args.clusters, steps=args.steps,
                          seed=args.seed, device=args.device, eval_every=0)
        trainer.run()
        r = trainer.history[-1]
        print(f"{name:<14}{r['effective_clusters']:>14.1f}{r['clusters_used']:>6}{r['mean_entropy']:>9.2f}"
              f"{r['knn_accuracy']:>7.3f}{r['nmi']:>7.3f}{time.perf_counter() - start:>8.1f}  "
              f"{metrics.describe_collapse(r['collapse'])}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    typed = typed_settings(args)
    settings = with_changes(bench.default_config(typed.get("device", "auto")), typed)
    bench.run_benchmark(settings, bench_steps=args.bench_steps, warmup=args.warmup, json_path=args.json)
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m klteach", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one configuration")
    add_setting_flags(train, TrainConfig())
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out DIR (to --steps/--epochs in all, by default to "
                            "its planned total); a stopped run continues bit for bit")
    again.add_argument("--overwrite", action="store_true", help="start again in an --out DIR that holds a run")
    train.set_defaults(handler=cmd_train)
    demo = sub.add_parser("demo", help="digits with every normaliser: which collapse?")
    demo.add_argument("--clusters", "-K", type=int, default=20)
    demo.add_argument("--steps", type=int, default=DEMO_STEPS)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(handler=cmd_demo)
    bench = sub.add_parser("bench", help="images/s, s/epoch and peak memory of one configuration")
    add_setting_flags(bench, _bench_defaults())
    bench.add_argument("--bench-steps", type=int, default=None, help="timed steps (default: per device)")
    bench.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: per device)")
    bench.add_argument("--json", default=None, help="write the result here")
    bench.set_defaults(handler=cmd_bench)
    for module in (coursework, site):      # each adds its own subcommand and handler
        module.add_subcommand(sub)
    return parser


def _bench_defaults() -> TrainConfig:
    from . import bench
    return bench.default_config("auto")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValueError, OSError, TrainingError) as error:   # OSError: missing, unreadable or not a folder
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:                                # before or after a run: nothing to save
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
