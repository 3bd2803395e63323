"""Where, on what and under which load a benchmark figure was measured, and the memory it used.

Every record of :mod:`klteach.bench` and of ``benchmarks/*.py`` carries :func:`environment`
(device, versions, date, commit, load average) so that a number can be read with its hardware.
Memory is the GPU's allocations on a GPU and the process's resident set on a CPU.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall clock read afterwards covers it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU model named in ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS does not report it)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def git_commit() -> str | None:
    """The commit of the klteach checkout (``+dirty`` when tracked files were modified), or None
    outside a git checkout: which code produced a recorded figure."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a GPU; CPU model and core count for a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({usable_cores()} cores)"


def environment(device: torch.device) -> dict[str, Any]:
    """Where and when a figure was measured: device, versions, date, machine load."""
    info: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": usable_cores(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }
    load = load_average()
    if load is not None:
        info["load_average_1min"] = load
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, gpu_memory_bytes=props.total_memory,
                    gpu_multiprocessors=props.multi_processor_count)
    return info


def busy_note(load: float | None, cores: int) -> str | None:
    """A warning for the record when other jobs kept the CPU busy (1-min load above its cores)."""
    if load is None or load <= cores:
        return None
    return (f"shared machine: 1-min load average {load:.1f} on {cores} cores, so CPU "
            "timings are pessimistic")


# ---------------------------------------------------------------- memory

def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``, ``VmRSS``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns how :func:`peak_memory_bytes` will measure it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated since the timed steps began"
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if _proc_status_kib("VmHWM") is not None:
            return "peak resident set size (VmHWM) since the timed steps began"
    except OSError:
        pass
    return "peak resident set size over the whole process (resource.getrusage)"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since :func:`reset_peak_memory` (GPU allocations, or CPU resident set)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    high_water = _proc_status_kib("VmHWM")
    if high_water is not None:
        return high_water * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def current_memory_bytes(device: torch.device) -> int | None:
    """Memory held now: GPU allocations, or the CPU resident set (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    rss = _proc_status_kib("VmRSS")
    return None if rss is None else rss * 1024


__all__ = ["synchronize", "cpu_model", "usable_cores", "load_average", "git_commit", "device_name",
           "environment", "busy_note", "reset_peak_memory", "peak_memory_bytes", "current_memory_bytes"]
