"""The training dashboard in the real JupyterLab, driven in headless Chromium.

Starts ``jupyter lab`` on 127.0.0.1 in a temporary folder, opens a notebook holding a
:class:`klteach.widgets.TrainingDashboard`, runs all cells from the Run menu, presses
**Start**, switches the normaliser in the page *while it trains*, and checks that the running
trainer took the change (the status line, written by the kernel from ``trainer.config``,
shows it while the step count keeps growing) and that the plots follow (a new vertical marker
labelled with the change, and more points). A replay of a recorded run is played, sped up and
shown in the lecture looks; a notebook saved by a kernel that no page watched is opened without
running it, as a student opens a chapter fresh from the repository. Screenshots are kept in
``test-artifacts/``; those the README shows are written to ``docs/screenshots/``.

Needs Debian's ``/usr/bin/chromium`` (Playwright drives it; no browser download); skipped
with the reason when it is missing.
"""
from __future__ import annotations

import re
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
SCREENSHOTS = lab_ui.REPO / "docs" / "screenshots"
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
REPLAY_NOTEBOOK = [
    "from klteach.widgets import TrainingDashboard\n"
    "replay = TrainingDashboard.replay('digits-collapse-rescue', steps_per_second=40)\n"
    "replay",
]
SAVED_NOTEBOOK = [
    "from klteach.course import setup_notebook\nsetup_notebook()",
    "from klteach.widgets import TrainingDashboard\n"
    "dash = TrainingDashboard(dataset='toy', eval_batch=64, evaluate_every=0)\n"
    "dash.run(20)\n"
    "dash",
    "dash.run(10)      # after this, the saved output shows step 30 (updated through its display id)",
    "from klteach.widgets import posterior_explorer\nposterior_explorer()",
]


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    lab_ui.write_notebook(root / "dashboard.ipynb", DASHBOARD_NOTEBOOK)
    lab_ui.write_notebook(root / "replay.ipynb", REPLAY_NOTEBOOK)
    if CHAPTER.is_file():
        shutil.copy(CHAPTER, root / CHAPTER.name)
    return root


@pytest.fixture(scope="module")
def lab(lab_root):
    """A JupyterLab server (KLTEACH_QUICK=1 for its kernels) in a temporary folder."""
    with lab_ui.jupyter_lab(lab_root, env={"KLTEACH_QUICK": "1"}) as url:
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


def test_dashboard_switches_normaliser_mid_run_in_jupyterlab(lab, browser):
    started = time.monotonic()
    page, dashboard = lab_ui.open_and_run_all(browser, lab, "dashboard.ipynb", timeout_s=240,
                                              failure_shot=ARTIFACTS / "failed-dashboard-open.png")
    assert page.locator(".js-plotly-plot").count() >= 2          # the dashboard and the explorer
    with screenshot_on_failure(page, "dashboard"):
        lab_ui.switch_normaliser_while_running(page, dashboard, "inverse-prior", "none", "jupyterlab-dashboard",
                                              ARTIFACTS)
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
        lab_ui.switch_normaliser_while_running(page, dashboard, "none", "centering", "jupyterlab-chapter-2",
                                              ARTIFACTS)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()
    page.close()
    print(f"chapter 2 browser test took {time.monotonic() - started:.1f} s")


def test_replay_plays_a_recorded_collapse_and_rescue_in_jupyterlab_and_lecture_looks(lab, browser):
    started = time.monotonic()
    page, dashboard = lab_ui.open_and_run_all(browser, lab, "replay.ipynb", timeout_s=240,
                                              failure_shot=ARTIFACTS / "failed-replay-open.png")
    status, alarm = lab_ui.status_text, lambda: dashboard.locator(".klteach-alarm").inner_text()
    with screenshot_on_failure(page, "replay"):
        assert "step 0 of 600" in status(dashboard) and "40 steps/s" in status(dashboard)
        assert page.evaluate(lab_ui.COLLAPSE_PANEL)["points"] == 0
        lab_ui.click(dashboard, "Play")
        lab_ui.wait_until(lambda: lab_ui.step_of(status(dashboard)) >= 100, 60, "the replay to reach step 100",
                          dashboard)
        lab_ui.wait_until(lambda: "One-cluster collapse" in alarm(), 30, "the recorded collapse's alarm", dashboard)
        early = page.evaluate(lab_ui.COLLAPSE_PANEL)
        assert 0 < early["points"] < 60 and "normaliser=inverse-prior" not in early["labels"]
        handle = dashboard.locator(".widget-slider", has_text="speed").locator(".noUi-handle")
        handle.focus()
        for _ in range(10):
            handle.press("ArrowRight")                  # 10 steps of 0.05 in log10: about 3x faster
        lab_ui.wait_until(lambda: speed_of(status(dashboard)) > 100, 30, "the replay to speed up", dashboard)
        lab_ui.wait_until(lambda: "Ended" in status(dashboard), 60, "the replay to end", dashboard)
        lab_ui.wait_until(lambda: "No collapse" in alarm(), 30, "the recorded rescue", dashboard)
        end = lab_ui.wait_until(lambda: (s := page.evaluate(lab_ui.COLLAPSE_PANEL)) and s["points"] == 60 and s,
                                30, "all 60 recorded evaluations to be drawn", dashboard)
        assert end["labels"][-1] == "normaliser=inverse-prior" and end["markers"] == [150]
        dashboard.scroll_into_view_if_needed()
        lab_ui.compact_screenshot(dashboard, SCREENSHOTS / "replay-collapse-rescue.png")

        lab_ui.click(dashboard, "Rewind")
        lab_ui.wait_until(lambda: "step 0 of 600" in status(dashboard), 30, "the replay to rewind", dashboard)
        lab_ui.click(dashboard, "Play")
        lab_ui.wait_until(lambda: lab_ui.step_of(status(dashboard)) >= 200, 60, "the replay to play again",
                          dashboard)
        lab_ui.click(dashboard, "Pause")
        paused = lab_ui.wait_until(lambda: "Paused" in (text := status(dashboard)) and text, 30,
                                   "the replay to pause", dashboard)
        time.sleep(1.0)
        assert lab_ui.step_of(status(dashboard)) == lab_ui.step_of(paused) < 600

        normal = page.evaluate(lab_ui.DASHBOARD_LOOK)
        assert normal["figure_min_px"] < 18
        for look, name in (("lecture", "lecture-mode.png"), ("dark lecture", "lecture-mode-dark.png")):
            dark = look == "dark lecture"
            dashboard.get_by_role("button", name=look, exact=True).click()
            shown = lab_ui.wait_until(lambda dark=dark: shown_look(page, dark), 60, f"the {look} look", dashboard)
            assert shown["controls_min_px"] >= 18, shown
            time.sleep(1.0)                              # the figure's transitions settle
            dashboard.scroll_into_view_if_needed()
            lab_ui.compact_screenshot(dashboard, SCREENSHOTS / name)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()
    page.close()
    print(f"replay browser test took {time.monotonic() - started:.1f} s")


def test_a_saved_notebook_opened_without_running_shows_the_figures(lab, lab_root, browser):
    # executed by a kernel no page watched (as nbval or a recording does), then opened as a student
    # opens a chapter fresh from the repository: not trusted, so JupyterLab draws the saved plotly
    # figure of each dashboard and explorer instead of "Error displaying widget: model not found"
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in SAVED_NOTEBOOK])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(lab_root)}}).execute(
        env={**lab_ui.os.environ, "PYTHONPATH": str(lab_ui.REPO), "KLTEACH_QUICK": "1"})
    nbformat.write(notebook, lab_root / "saved.ipynb")
    page = browser.new_page(viewport=lab_ui.VIEWPORT)
    page.set_default_timeout(120_000)
    with screenshot_on_failure(page, "saved-notebook"):
        page.goto(lab_ui.notebook_url(lab, "saved.ipynb"))
        page.locator(".jp-Notebook").first.wait_for()
        drawn = lab_ui.wait_until(lambda: page.evaluate(SAVED_FIGURES), 60, "the saved figures to be drawn")
        assert drawn == {"figures": 2, "collapse_last_step": 30}, drawn
        text = page.locator(".jp-Notebook").inner_text()
        assert "Error displaying widget" not in text and "VBox(" not in text and "Loading widget" not in text
        assert page.locator(".klteach-dashboard").count() == 0          # no live widget without a kernel
        page.screenshot(path=str(ARTIFACTS / "saved-notebook.png"))
    page.close()


def speed_of(text: str) -> float:
    """The replay's speed in its status line (recorded steps per second)."""
    return float(re.search(r"(\d+) steps/s", text).group(1))


def shown_look(page, dark: bool) -> dict | None:
    """The dashboard's look once it is a lecture look (dark or not), else None."""
    look = page.evaluate(lab_ui.DASHBOARD_LOOK)
    drawn_dark = look["paper"].replace(" ", "") == "rgb(17,17,17)"
    return look if look["figure_min_px"] >= 18 and ("klteach-dark" in look["classes"]) == dark == drawn_dark else None


SAVED_FIGURES = """() => {
    const plots = [...document.querySelectorAll('.jp-Notebook .js-plotly-plot')];
    if (plots.length < 2 || !plots.every(gd => gd._fullData && gd._fullData.length > 0)) return null;
    const steps = plots[0]._fullData[0].x;
    return {figures: plots.length, collapse_last_step: steps[steps.length - 1]};
}"""
"""The saved plotly figures drawn in the page, and the last step of the dashboard's collapse curve
(``_fullData``: the arrays plotly.js decoded from the saved JSON)."""
