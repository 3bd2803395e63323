"""images/s of the library's step against the same step as a minimal PyTorch loop, repeated.

``python -m klteach bench`` measures the ratio once per thread count. On a machine shared with
other jobs one measurement is noise, so this script repeats it: each round measures every thread
count (library and plain loop alternating step by step, :func:`klteach.bench.compare_with_plain_loop`),
the order of the thread counts alternates between rounds, and the summary gives the median and
the range of the ratio per thread count, with the load average and CPU time beside wall time.
The JSON is rewritten after every round, so an interrupted run keeps what it measured.

    python benchmarks/plain_ratio.py                    # SmallCNN, cifar10-sample, batch 256, 1 and 2 threads
    python benchmarks/plain_ratio.py --dataset digits --arch mlp --rounds 2 --steps 2 --out /tmp/ratio.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from klteach.bench import busy_note, compare_with_plain_loop, environment, load_average
from klteach.checkpoint import write_json_atomic
from klteach.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def summarise(rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Median and range of the ratios (wall and CPU time) and speeds for one thread count."""
    mine = [row for row in rows if row["threads"] == threads]
    summary: dict[str, Any] = {"threads": threads, "rounds": len(mine)}
    for key in ("ratio", "cpu_ratio", "library_images_per_s", "plain_images_per_s"):
        values = [row[key] for row in mine]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10-sample")
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each loop per round and thread count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each loop before them")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/plain_ratio_cpu_<dataset>_<arch>_b<batch>.json")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"plain_ratio_cpu_{args.dataset}_{args.arch}_b{args.batch_size}.json"
    steps_per_round = len(args.threads) * (args.warmup + args.steps)
    trainer = Trainer(TrainConfig(dataset=args.dataset, arch=args.arch, batch_size=args.batch_size, device="cpu",
                                  eval_every=0, steps=args.rounds * steps_per_round))
    record: dict[str, Any] = {"benchmark": "plain_ratio", **environment(trainer.device),
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                              "dataset": args.dataset, "config": trainer.config.to_dict(),
                              "rounds": args.rounds, "timed_steps": args.steps, "warmup_steps": args.warmup,
                              "rows": []}
    wall, cpu = time.perf_counter(), time.process_time()
    for round_index in range(args.rounds):
        order = args.threads if round_index % 2 == 0 else list(reversed(args.threads))
        for threads in order:
            [row] = compare_with_plain_loop(trainer, args.steps, args.warmup, [threads])
            record["rows"].append({"round": round_index, **row})
            print(f"round {round_index}, {threads} thread(s): library {row['library_images_per_s']:.1f} / plain "
                  f"{row['plain_images_per_s']:.1f} images/s = {row['ratio']:.3f} (CPU time {row['cpu_ratio']:.3f}), "
                  f"load {row['load_average_1min_before']} -> {row['load_average_1min_after']}", flush=True)
        record.update(summary=[summarise(record["rows"], n) for n in args.threads],
                      wall_seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu,
                      load_average_1min_at_end=load_average(), rounds_done=round_index + 1)
        write_json_atomic(out, record)
    note = busy_note(record.get("load_average_1min"), record["nproc"])
    if note:
        record["note"] = note
        write_json_atomic(out, record)
    for summary in record["summary"]:
        ratio = summary["ratio"]
        print(f"{summary['threads']} thread(s): ratio median {ratio['median']:.3f} "
              f"(range {ratio['min']:.3f}-{ratio['max']:.3f} over {summary['rounds']} rounds)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
