"""The training dashboard in the real JupyterLab, driven in headless Chromium.

Starts ``jupyter lab`` on 127.0.0.1 in a temporary folder, opens a notebook holding a
:class:`klteach.widgets.TrainingDashboard`, runs all cells from the Run menu, presses
**Start**, switches the normaliser in the page *while it trains*, and checks that the running
trainer took the change (the status line, written by the kernel from ``trainer.config``,
shows it while the step count keeps growing) and that the plots follow (a new vertical marker
labelled with the change, and more points). Screenshots are kept in ``test-artifacts/``.

Needs Debian's ``/usr/bin/chromium`` (Playwright drives it; no browser download); skipped
with the reason when it is missing.
"""
from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab_driver as lab_ui  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = lab_ui.REPO / "test-artifacts"
CHAPTER = lab_ui.REPO / "notebooks" / "02-distillation-kl.ipynb"

if not Path(lab_ui.CHROMIUM).is_file():
    pytest.skip(f"{lab_ui.CHROMIUM} is missing (install Debian's chromium package to run the browser test)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api")

DASHBOARD_NOTEBOOK = [
    "from klteach.course import setup_notebook\nsetup_notebook()",
    "from klteach.widgets import TrainingDashboard\n"
    "dash = TrainingDashboard(dataset='toy', normaliser='inverse-prior')\n"
    "dash.run(steps=20)\n"
    "dash",
    "from klteach.widgets import posterior_explorer\nposterior_explorer()",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server (KLTEACH_QUICK=1 for its kernels) in a temporary folder."""
    root = tmp_path_factory.mktemp("lab")
    lab_ui.write_notebook(root / "dashboard.ipynb", DASHBOARD_NOTEBOOK)
    if CHAPTER.is_file():
        shutil.copy(CHAPTER, root / CHAPTER.name)
    with lab_ui.jupyter_lab(root, env={"KLTEACH_QUICK": "1"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with lab_ui.chromium() as chromium:
        yield chromium


@contextmanager
def screenshot_on_failure(page, name: str):
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"failed-{name}.png"))
        raise


def switch_normaliser_while_running(page, dashboard, start: str, new: str, name: str) -> dict:
    """Start training, change the normaliser menu mid-run, check the trainer and plots follow."""
    status = lab_ui.status_text
    assert f"normaliser={start}" in status(dashboard)
    lab_ui.click(dashboard, "Start")
    lab_ui.wait_until(lambda: "Running" in status(dashboard), 30, "the status line to say Running", dashboard)
    first = lab_ui.step_of(status(dashboard))
    lab_ui.wait_until(lambda: lab_ui.step_of(status(dashboard)) >= first + 5, 60,
                      "training steps to advance", dashboard)
    before = page.evaluate(lab_ui.COLLAPSE_PANEL)

    lab_ui.select_normaliser(dashboard, new)
    switched = lab_ui.wait_until(lambda: status(dashboard) if f"normaliser={new}" in status(dashboard) else "",
                                 60, f"the running trainer to switch to normaliser={new}", dashboard)
    assert "Running" in switched, switched
    switched_at = lab_ui.step_of(switched)
    lab_ui.wait_until(lambda: lab_ui.step_of(status(dashboard)) >= switched_at + 10, 60,
                      "training to go on after the switch", dashboard)
    label = f"normaliser={new}"
    after = lab_ui.wait_until(lambda: (s := page.evaluate(lab_ui.COLLAPSE_PANEL)) and label in s["labels"] and s,
                              30, "the collapse monitor to mark the switch", dashboard)
    assert after["points"] > before["points"]
    assert label not in before["labels"]
    assert after["markers"][-1] > first             # marked mid-run, not at a restart
    assert "Running" in status(dashboard)

    ARTIFACTS.mkdir(exist_ok=True)
    dashboard.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    dashboard.screenshot(path=str(ARTIFACTS / f"{name}-dashboard.png"))
    lab_ui.click(dashboard, "Pause")
    paused = lab_ui.wait_until(lambda: status(dashboard) if "Paused" in status(dashboard) else "", 30,
                               "the dashboard to pause", dashboard)
    time.sleep(1.0)
    assert lab_ui.step_of(status(dashboard)) == lab_ui.step_of(paused)   # it really stopped
    return after


def test_dashboard_switches_normaliser_mid_run_in_jupyterlab(lab, browser):
    started = time.monotonic()
    page, dashboard = lab_ui.open_and_run_all(browser, lab, "dashboard.ipynb", timeout_s=120,
                                              failure_shot=ARTIFACTS / "failed-dashboard-open.png")
    assert page.locator(".js-plotly-plot").count() >= 2          # the dashboard and the explorer
    with screenshot_on_failure(page, "dashboard"):
        switch_normaliser_while_running(page, dashboard, "inverse-prior", "none", "jupyterlab-dashboard")
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()
    page.close()
    print(f"browser test took {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(not CHAPTER.is_file(), reason=f"{CHAPTER.name} is not written yet")
def test_chapter_2_dashboard_takes_a_normaliser_switch_mid_run(lab, browser):
    started = time.monotonic()
    page, dashboard = lab_ui.open_and_run_all(browser, lab, CHAPTER.name, timeout_s=400,
                                              failure_shot=ARTIFACTS / "failed-chapter-2-open.png")
    with screenshot_on_failure(page, "chapter-2"):
        # the chapter leaves its dashboard on `none` after a switch to inverse-prior: switch to a new one
        switch_normaliser_while_running(page, dashboard, "none", "centering", "jupyterlab-chapter-2")
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()
    page.close()
    print(f"chapter 2 browser test took {time.monotonic() - started:.1f} s")
