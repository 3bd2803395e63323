"""Plot kNN accuracy against training wall-clock time, one line per normaliser, from real results.

Reads every ``benchmarks/results/*.json`` and keeps the curves it finds: lists of points that
each have ``knn_accuracy`` and a time (``train_seconds``, or ``seconds``/``wall_seconds``/...),
as written by ``gpu_full.py``; or points with only a ``step`` inside a run that records its
measured ``steps_per_s`` (``cifar_sample_cpu.py``), placed at ``step / steps_per_s`` (the
run's mean training speed; the legend says so). GPU results are plotted when there are any;
otherwise CPU results on CIFAR-10 data (the shipped sample), else any CPU results, titled with
their hardware.
Nothing is plotted that no run produced.

Writes ``knn_vs_time.html`` (plotly; loads plotly.js from its CDN to stay small) and
``knn_vs_time.png`` (rendered by headless Chromium when it is installed).

    python benchmarks/plot_knn_vs_time.py [--results DIR] [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TIME_KEYS = ("train_seconds", "seconds", "wall_seconds", "elapsed_seconds", "elapsed_s", "time_s")
TARGETS = ((10, 0.81), (40, 0.85))
"""The issue's targets: (minutes, kNN accuracy)."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@dataclass
class Curve:
    label: str
    hardware: str
    dataset: str
    on_gpu: bool
    minutes: list[float]
    knn: list[float]
    source: str
    time_from_mean_rate: bool = False
    shared_machine: bool = False


def describe_hardware(info: dict) -> str:
    """A one-line name for a ``{"gpu": ..., "cpu": ..., "nproc": ...}`` hardware record."""
    if info.get("gpu"):
        return str(info["gpu"])
    threads = f", {info['torch_threads']} torch thread(s)" if info.get("torch_threads") else ""
    return f"{info.get('cpu', 'CPU')} ({info.get('nproc', '?')} cores{threads})"


def _time_key(point: dict) -> str | None:
    return next((k for k in TIME_KEYS if isinstance(point.get(k), (int, float))), None)


def find_curves(obj, source: str, context: dict | None = None, label: str = "") -> list[Curve]:
    """Every list of ``{knn_accuracy, <time>}`` points inside a JSON value, with its labels."""
    context = dict(context or {})
    if isinstance(obj, dict):
        if isinstance(obj.get("device_name"), str):
            context["hardware"] = obj["device_name"]
        if isinstance(obj.get("hardware"), dict):
            context["hardware"] = describe_hardware(obj["hardware"])
        if isinstance(obj.get("note"), str) and "shared" in obj["note"]:
            context["shared"] = True
        config = obj.get("config")
        if isinstance(config, dict) and isinstance(config.get("dataset"), str):   # cifar_sample_cpu.py
            context["dataset"] = config["dataset"]
        for key in ("hardware", "dataset", "device", "normaliser"):
            if isinstance(obj.get(key), str):
                context[key] = obj[key]
        if isinstance(obj.get("steps_per_s"), (int, float)) and obj["steps_per_s"] > 0:
            context["steps_per_s"] = obj["steps_per_s"]
        return [curve for key, value in obj.items()
                for curve in find_curves(value, source, context, context.get("normaliser", key))]
    if isinstance(obj, list) and obj and all(isinstance(p, dict) for p in obj):
        rate = context.get("steps_per_s")
        timed = all(isinstance(p.get("knn_accuracy"), (int, float)) and _time_key(p) for p in obj)
        stepped = rate and all(isinstance(p.get("knn_accuracy"), (int, float))
                               and isinstance(p.get("step"), int) for p in obj)
        if timed or stepped:
            seconds = [p[_time_key(p)] if timed else p["step"] / rate for p in obj]
            order = sorted(range(len(obj)), key=seconds.__getitem__)
            return [Curve(label=str(obj[0].get("normaliser", label)),
                          hardware=str(context.get("hardware", "unknown hardware")),
                          dataset=str(context.get("dataset", "?")),
                          on_gpu=str(context.get("device", "")).startswith("cuda"),
                          minutes=[seconds[i] / 60 for i in order],
                          knn=[float(obj[i]["knn_accuracy"]) for i in order], source=source,
                          time_from_mean_rate=not timed, shared_machine=bool(context.get("shared")))]
        return [c for item in obj for c in find_curves(item, source, context, label)]
    return []


def load_curves(results: Path) -> list[Curve]:
    curves = []
    for path in sorted(results.glob("*.json")):
        try:
            curves += find_curves(json.loads(path.read_text()), path.name)
        except (json.JSONDecodeError, OSError) as error:
            print(f"skipping {path.name}: {error}", file=sys.stderr)
    return curves


def choose_curves(curves: list[Curve]) -> list[Curve]:
    """GPU curves if any; else CPU curves on CIFAR-10 data if any; else all curves."""
    gpu = [c for c in curves if c.on_gpu]
    cifar = [c for c in curves if "cifar" in c.dataset.lower()]
    return gpu or cifar or curves


def make_figure(curves: list[Curve]):
    import plotly.graph_objects as go

    figure = go.Figure()
    for curve in curves:
        how = ", time = step / mean steps per s" if curve.time_from_mean_rate else ""
        figure.add_trace(go.Scatter(x=curve.minutes, y=curve.knn, mode="lines+markers",
                                    name=f"{curve.label} ({curve.source}{how})"))
    hardware = sorted({c.hardware for c in curves})
    datasets = sorted({Path(c.dataset).name for c in curves})
    title = f"kNN accuracy vs training time: {', '.join(datasets)} on {'; '.join(hardware)}"
    if any(c.shared_machine for c in curves):
        title += "<br><sup>machine shared with other jobs while measured: times are pessimistic</sup>"
    if any(c.on_gpu for c in curves):
        for minutes, accuracy in TARGETS:
            figure.add_shape(type="line", x0=0, x1=minutes, y0=accuracy, y1=accuracy,
                             line=dict(dash="dot", color="grey"))
            figure.add_annotation(x=minutes, y=accuracy, text=f"target {accuracy} by {minutes} min",
                                  showarrow=False, xanchor="right", yanchor="bottom")
    figure.update_layout(title=title, xaxis_title="training wall-clock time (minutes, evaluation excluded)",
                         yaxis_title="weighted kNN accuracy (k=20, cosine, T=0.07)",
                         template="plotly_white", width=1000, height=600)
    return figure


def write_png(figure, path: Path) -> bool:
    """Render the figure to PNG with headless Chromium (plotly.js inlined, no network)."""
    browser = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if browser is None:
        print("no Chromium found: PNG not written", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "figure.html"
        figure.write_html(page, include_plotlyjs=True, full_html=True, config={"staticPlot": True})
        shot = Path(tmp) / "figure.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--window-size=1000,600", "--virtual-time-budget=5000",
                        f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120, check=False)
        if not shot.is_file():
            print("Chromium did not write a screenshot: PNG not written", file=sys.stderr)
            return False
        tmp_target = path.with_name(path.name + ".tmp")
        shutil.copyfile(shot, tmp_target)
        os.replace(tmp_target, path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the results folder")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args()
    out_dir = args.out_dir or args.results
    curves = load_curves(args.results)
    chosen = choose_curves(curves)
    if not chosen:
        print(f"no kNN-vs-time results in {args.results}: nothing to plot", file=sys.stderr)
        return 1
    figure = make_figure(chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / "knn_vs_time.html"
    tmp = html.with_name(html.name + ".tmp")
    figure.write_html(tmp, include_plotlyjs="cdn", full_html=True)
    os.replace(tmp, html)
    print(f"wrote {html} ({len(chosen)} curves from {', '.join(sorted({c.source for c in chosen}))})")
    if not args.no_png and write_png(figure, out_dir / "knn_vs_time.png"):
        print(f"wrote {out_dir / 'knn_vs_time.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
