"""Every widget output (dashboards, explorers) saved in a committed notebook carries a static image,
so a reader without a kernel (GitHub, nbviewer, the course site) sees a picture instead of
"VBox(children=...)". The widgets record their image when ``KLTEACH_RECORD=1``
(``klteach.static.recording()``); the chapters are recorded with
``python -m klteach.static record notebooks/NN-name.ipynb``."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from klteach import static

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_widget_output_in_a_committed_notebook_has_a_static_image(path):
    missing = static.missing_images(nbformat.read(path, as_version=4), kinds=("widget",))
    assert not missing, (f"{path.name}: {', '.join(missing)} would show as text without a kernel; "
                         f"re-record it: python -m klteach.static record {path.relative_to(REPO)}")
