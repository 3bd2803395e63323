"""Small helpers the notebooks share: quick mode for CI, and one-line notebook setup.

``KLTEACH_QUICK=1`` (set by the tests and CI) shrinks every run so that all chapters
execute in minutes on two CPU cores; a person gets the full-size runs by default.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def quick() -> bool:
    """True when ``KLTEACH_QUICK=1`` is set (tests and CI)."""
    return os.environ.get("KLTEACH_QUICK", "0") == "1"


def pick(full: int, quick_value: int) -> int:
    """``full`` normally, ``quick_value`` in quick mode: ``steps = pick(1000, 100)``."""
    return quick_value if quick() else full


def setup_notebook(seed: int = 0, threads: int | None = None) -> None:
    """Seed torch, cap CPU threads (a laptop stays responsive) and make plotly figures
    render in JupyterLab while staying small in the saved notebook."""
    import plotly.io as pio

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    pio.renderers.default = "plotly_mimetype"


def recordings_dir() -> Path:
    """The folder of recorded long runs that chapter 5 reads: ``benchmarks/results`` in a clone
    (or an editable install), else the copy a plain ``pip install`` puts inside the package."""
    clone = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    return clone if clone.is_dir() else Path(__file__).resolve().parent / "recordings"


def lecture_mode(dark: bool = False) -> None:
    """Draw every figure made afterwards for a lecture room: text of at least 18 px, the
    colour-blind-safe palette, and a dark background when ``dark`` (see :mod:`klteach.plots.look`;
    ``klteach.plots.use_look()`` goes back to the normal look)."""
    from .plots import use_look

    use_look(lecture=True, dark=dark)
