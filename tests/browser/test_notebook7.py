"""The training dashboard in Jupyter Notebook 7, driven in headless Chromium like JupyterLab.

Notebook 7 is built from JupyterLab's components, so the same driver works: Run → Run All
Cells, press **Start**, switch the normaliser mid-run, check the trainer and the plots follow,
then replay a recording. Skipped when the ``notebook`` package (7.x) or Chromium is missing.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab_driver as lab_ui  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = lab_ui.REPO / "test-artifacts"

if not Path(lab_ui.CHROMIUM).is_file():
    pytest.skip(f"{lab_ui.CHROMIUM} is missing (install Debian's chromium package to run the browser test)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api")
notebook = pytest.importorskip("notebook", reason="Jupyter Notebook 7 is not installed (pip install 'notebook>=7')")
if int(notebook.__version__.split(".")[0]) < 7:
    pytest.skip(f"notebook {notebook.__version__} is not Notebook 7", allow_module_level=True)

CELLS = [
    "from klteach.course import setup_notebook\nsetup_notebook()",
    "from klteach.widgets import TrainingDashboard\n"
    "dash = TrainingDashboard(dataset='toy', normaliser='inverse-prior')\n"
    "dash.run(steps=20)\n"
    "dash",
]


def test_dashboard_switches_normaliser_mid_run_in_notebook_7(tmp_path):
    started = time.monotonic()
    lab_ui.write_notebook(tmp_path / "dashboard.ipynb", CELLS)
    with lab_ui.jupyter_lab(tmp_path, env={"KLTEACH_QUICK": "1"}, app="notebook") as url, \
            lab_ui.chromium() as browser:
        page, dashboard = lab_ui.open_and_run_all(browser, url, "dashboard.ipynb", timeout_s=240,
                                                  failure_shot=ARTIFACTS / "failed-notebook7-open.png",
                                                  app="notebook")
        assert "/notebooks/dashboard.ipynb" in page.url and page.locator("#jp-NotebookPanel, .jp-NotebookPanel").count()
        try:
            lab_ui.switch_normaliser_while_running(page, dashboard, "inverse-prior", "none", "notebook7-dashboard",
                                                   ARTIFACTS)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "failed-notebook7.png"))
            raise
        page.close()
    print(f"Notebook 7 browser test took {time.monotonic() - started:.1f} s")
