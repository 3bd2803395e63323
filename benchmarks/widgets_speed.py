"""Lecture-speed figures of the live dashboard (issue 4), recorded with the hardware they came from.

Targets: toy sphere >= 20 training steps/s with the plots live; digits: the collapse alarm fires
within 5 s of switching to ``none``, and after switching back to ``inverse-prior`` the effective
clusters recover within 30 s.

Measured:

* ``toy_in_process``: the dashboard's background thread (steps, cheap metrics, evaluate(), the
  figure redrawn 4 times a second) without a browser;
* ``toy_in_browser``: the same notebook in JupyterLab driven by headless Chromium on this
  machine (the browser's drawing competes for the same cores), steps/s read from the status line
  over ``--browser-seconds`` (skipped without /usr/bin/chromium);
* ``digits``: wall-clock seconds (and steps) until the alarm fires and until recovery, polled
  from the kernel side every 50 ms, in four situations: a fresh run with ``none`` (Reset with
  ``none`` selected), a run switched to ``none`` two steps after Start, a healthy run (10 s of
  training) switched to ``none``, and a collapsed run switched to ``inverse-prior`` (with λ = 1
  and λ = 2) or ``sinkhorn``.

    python benchmarks/widgets_speed.py [--threads 1 2] [--no-browser]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from klteach import metrics  # noqa: E402
from klteach.train import write_json_atomic  # noqa: E402
from klteach.widgets import DATASET_DEFAULTS, MONITOR_DEFAULTS, TrainingDashboard  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "widgets_speed.json"


def hardware(threads: int) -> dict[str, Any]:
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), model)
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": threads, "gpu": torch.cuda.is_available(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> float | None:
    """Seconds until ``condition()`` holds, or None after ``timeout``."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if condition():
            return time.perf_counter() - start
        time.sleep(poll)
    return None


def steps_per_second_in_process(seconds: float) -> dict[str, Any]:
    dash = TrainingDashboard("toy")
    dash.start()
    time.sleep(2.0)                                   # warm-up
    s0, t0 = dash.trainer.step_count, time.perf_counter()
    time.sleep(seconds)
    s1, t1 = dash.trainer.step_count, time.perf_counter()
    dash.pause()
    assert dash.error is None, dash.error
    return {"steps_per_second": round((s1 - s0) / (t1 - t0), 1), "seconds": round(t1 - t0, 1),
            "figure_redraws": dash.draws}


def steps_per_second_in_browser(seconds: float, threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests" / "browser"))
    import lab_driver as lab_ui

    if not Path(lab_ui.CHROMIUM).is_file():
        return {"skipped": f"{lab_ui.CHROMIUM} is missing"}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        lab_ui.write_notebook(root / "speed.ipynb", [
            f"from klteach.course import setup_notebook\nsetup_notebook(threads={threads})",
            "from klteach.widgets import TrainingDashboard\ndash = TrainingDashboard('toy')\ndash"])
        with lab_ui.jupyter_lab(root) as url, lab_ui.chromium() as browser:
            page, dashboard = lab_ui.open_and_run_all(browser, url, "speed.ipynb", timeout_s=180)
            lab_ui.click(dashboard, "Start")
            lab_ui.wait_until(lambda: "Running" in lab_ui.status_text(dashboard), 30, "Running", dashboard)
            time.sleep(3.0)
            s0, t0 = lab_ui.step_of(lab_ui.status_text(dashboard)), time.perf_counter()
            time.sleep(seconds)
            s1, t1 = lab_ui.step_of(lab_ui.status_text(dashboard)), time.perf_counter()
            lab_ui.click(dashboard, "Pause")
            lab_ui.wait_until(lambda: "Paused" in lab_ui.status_text(dashboard), 30, "Paused", dashboard)
            page.close()
    return {"steps_per_second": round((s1 - s0) / (t1 - t0), 1), "seconds": round(t1 - t0, 1),
            "note": "steps shown in the page's status line over the interval (kernel and Chromium share the cores)"}


def digits_alarm_and_recovery(timeout: float) -> dict[str, Any]:
    clusters = DATASET_DEFAULTS["digits"]["clusters"]
    recovered = lambda d: d.collapse_state == "healthy" and d.latest["effective_clusters"] >= clusters / 2  # noqa: E731
    result: dict[str, Any] = {"recovered_means": f"no collapse and >= {clusters / 2:g} effective clusters "
                                                 f"of K={clusters}",
                              "alarm_threshold_effective_clusters": metrics.one_cluster_threshold(clusters)}

    fresh = TrainingDashboard("digits", normaliser="none")
    fresh.start()
    fired = wait_for(lambda: fresh.collapse_state == "one-cluster", timeout)
    result["fresh_run_with_none"] = {"alarm_after_s": _round(fired), "alarm_at_step": fresh.trainer.step_count,
                                     "message": fresh.collapse_message}
    fresh.pause()

    early = TrainingDashboard("digits", normaliser="inverse-prior")
    early.start()
    wait_for(lambda: early.trainer.step_count >= 2, timeout)
    step = early.trainer.step_count
    early.set(normaliser="none")
    fired = wait_for(lambda: early.collapse_state == "one-cluster", timeout)
    result["run_switched_to_none_right_after_start"] = {
        "switched_at_step": step, "alarm_after_s": _round(fired),
        "steps_after_switch": early.trainer.step_count - step, "message": early.collapse_message}
    early.pause()

    healthy = TrainingDashboard("digits", normaliser="inverse-prior")
    healthy.start()
    time.sleep(10.0)
    before = healthy.latest["effective_clusters"]
    step = healthy.trainer.step_count
    healthy.set(normaliser="none")
    fired = wait_for(lambda: healthy.collapse_state == "one-cluster", timeout)
    result["healthy_run_switched_to_none"] = {
        "trained_steps": step, "effective_clusters_before": round(before, 2), "alarm_after_s": _round(fired),
        "effective_clusters_after": round(healthy.latest["effective_clusters"], 2),
        "steps_after_switch": healthy.trainer.step_count - step, "waited_s": timeout}
    healthy.pause()

    for name, rescue in (("inverse-prior", {"normaliser": "inverse-prior"}),
                         ("inverse-prior, lam=2", {"normaliser": "inverse-prior", "lam": 2.0}),
                         ("sinkhorn", {"normaliser": "sinkhorn"})):
        dash = TrainingDashboard("digits", normaliser="none")
        dash.start()
        wait_for(lambda dash=dash: dash.collapse_state == "one-cluster", timeout)
        time.sleep(3.0)
        collapsed, step = dash.latest["effective_clusters"], dash.trainer.step_count
        dash.set(**rescue)
        back = wait_for(lambda dash=dash: recovered(dash), timeout)
        result[f"collapsed_run_switched_to_{name}"] = {
            "effective_clusters_collapsed": round(collapsed, 2), "recovered_after_s": _round(back),
            "steps_after_switch": dash.trainer.step_count - step,
            "effective_clusters_after": round(dash.latest["effective_clusters"], 2), "waited_s": timeout}
        dash.pause()
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch CPU threads; the toy speeds are measured for each, digits with the "
                             "first (default: torch's own choice)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each speed measurement")
    parser.add_argument("--browser-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="longest wait for an alarm or a recovery")
    parser.add_argument("--no-browser", action="store_true", help="skip the JupyterLab + Chromium measurement")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    started = time.time()
    record: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware(args.threads[0]),
        "dashboard_defaults": {"toy": {**DATASET_DEFAULTS["toy"], **MONITOR_DEFAULTS["toy"]},
                               "digits": {**DATASET_DEFAULTS["digits"], **MONITOR_DEFAULTS["digits"]},
                               "refresh_per_second": 4.0},
        "targets": {"toy_steps_per_second": 20, "digits_alarm_s": 5, "digits_recovery_s": 30},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        record[f"toy_in_process_threads{threads}"] = steps_per_second_in_process(args.seconds)
        print(f"toy in process, {threads} thread(s):", record[f"toy_in_process_threads{threads}"], flush=True)
        if not args.no_browser:
            record[f"toy_in_browser_threads{threads}"] = steps_per_second_in_browser(args.browser_seconds, threads)
            print(f"toy in JupyterLab + Chromium, {threads} thread(s):",
                  record[f"toy_in_browser_threads{threads}"], flush=True)
    torch.set_num_threads(args.threads[0])
    record["digits"] = digits_alarm_and_recovery(args.timeout)
    record["digits"]["torch_threads"] = args.threads[0]
    print("digits:", json.dumps(record["digits"], indent=1), flush=True)
    record["hardware"]["load_average_at_end"] = os.getloadavg()
    record["wall_seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
