"""Drive the real JupyterLab in headless Chromium: start a server, open a notebook, run it, read
and click the training dashboard. Shared by ``test_jupyterlab.py`` and
``benchmarks/widgets_speed.py``; no pytest here.

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (no browser download), with the
flags that keep it quiet on a machine without a network.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "klteach-browser-test"
APPS = {"lab": ("--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.expose_app_in_browser=True"),
        "notebook": ("--JupyterNotebookApp.expose_app_in_browser=True",)}
"""The servers driven, with the flags that expose ``window.jupyterapp`` and keep them quiet."""
REPO = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1400, "height": 1900}

KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const dialog = document.querySelector('.jp-Dialog');
    if (dialog) { const select = [...dialog.querySelectorAll('button')].find(b => b.innerText.trim() === 'Select');
                  if (select) select.click(); }
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
                   && panel.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
"""The notebook's kernel is connected and idle (answering "Select Kernel" if JupyterLab asks)."""

ALL_CELLS_RUN = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(
        c => c.model.type === 'code' && c.model.sharedModel.getSource().trim() !== '');
    return cells.length > 0 && cells.every(c => c.model.executionCount !== null)
           && panel.sessionContext.session.kernel.status === 'idle';
}"""
"""Every (non-empty) code cell of the open notebook has an execution count (read from
JupyterLab's model: the page may not render cells out of view) and the kernel is idle."""

PLOTS_DRAWN = """() => {
    const root = window.jupyterapp.shell.currentWidget.node;
    const plots = [...root.querySelectorAll('.js-plotly-plot')];
    const dashboard = root.querySelector('.klteach-dashboard .js-plotly-plot');
    return !!dashboard && plots.every(gd => gd.data && gd.data.length > 0);
}"""
"""The dashboard's figure exists and every plotly figure on the page drew its traces."""

COLLAPSE_PANEL = """() => {
    const gd = document.querySelector('.klteach-dashboard .js-plotly-plot');
    const mine = items => (items || []).filter(i => i.name === 'collapse');
    return {points: gd.data[0].x.length,
            labels: mine(gd.layout.annotations).map(a => a.text),
            markers: mine(gd.layout.shapes).filter(s => s.type === 'line').map(s => s.x0)};
}"""
"""Points, marker labels and marker steps of the dashboard's collapse monitor, read from plotly."""


DASHBOARD_LOOK = """() => {
    const root = document.querySelector('.klteach-dashboard');
    const gd = root.querySelector('.js-plotly-plot');
    const size = el => parseFloat(getComputedStyle(el).fontSize);
    const texts = [...gd.querySelectorAll('svg text')].filter(t => t.textContent.trim() && t.getBBox().width > 0);
    const labels = [...root.querySelectorAll('.widget-label, .widget-html-content, button')]
        .filter(el => el.innerText.trim());
    return {figure_min_px: Math.min(...texts.map(size)), controls_min_px: Math.min(...labels.map(size)),
            paper: gd._fullLayout.paper_bgcolor, classes: [...root.classList]};
}"""
"""The smallest text in the dashboard's figure and in its controls (px), the figure's background
and the dashboard's CSS classes (plotly.js's ``_fullLayout`` holds what it drew)."""


def compact_screenshot(element: Any, path: Path) -> None:
    """A screenshot of ``element`` saved as a small PNG (at most 256 colours, which is all a plot
    uses): for pictures committed to the repository."""
    from klteach.static import compact_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compact_png(element.screenshot()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells for the python3 kernel."""
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


@contextmanager
def jupyter_lab(root: Path, env: dict[str, str] | None = None, timeout: float = 90,
                app: str = "lab") -> Iterator[str]:
    """``jupyter lab`` (or, with ``app="notebook"``, Jupyter Notebook 7) serving ``root`` on
    127.0.0.1 with a fixed token; yields its URL and kills its whole process group (server and
    kernels) afterwards."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}; one of {', '.join(APPS)}")
    settings = root / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
    labconfig = root / ".config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)          # no "get Jupyter news?" toast over the page
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port = free_port()
    environment = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"),
                   "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings"),
                   "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "PYTHONPATH": str(REPO),
                   **(env or {})}
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.port={port}", "--ip=127.0.0.1",
             f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0", *APPS[app]],
            cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2) as reply:
                        json.load(reply)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        raise RuntimeError(f"jupyter {app} did not start:\n" + log_path.read_text()[-3000:]) from None
                    time.sleep(0.5)
            yield url
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(10)


def notebook_url(url: str, notebook: str, app: str = "lab") -> str:
    """Where ``notebook`` opens: a fresh JupyterLab workspace (no other tabs), or Notebook 7's page."""
    if app == "notebook":
        return f"{url}/notebooks/{notebook}?token={TOKEN}"
    workspace = re.sub(r"\W", "-", Path(notebook).stem)
    return f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={TOKEN}"


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_and_run_all(browser: Any, url: str, notebook: str, timeout_s: float,
                     failure_shot: Path | None = None, app: str = "lab") -> tuple[Any, Any]:
    """Open ``notebook`` (in JupyterLab, or Notebook 7 with ``app="notebook"``), wait for its
    kernel, Run → Run All Cells, and wait until every cell ran and every plot drew its traces.
    Returns ``(page, dashboard locator)``."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(timeout_s * 1000)
    try:
        page.goto(notebook_url(url, notebook, app))
        page.locator(".jp-Notebook").first.wait_for()
        page.wait_for_function(KERNEL_READY, polling=500)   # cells sent before the websocket is
        page.get_by_role("menuitem", name="Run", exact=True).click()      # up can be lost
        page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
        for what, wait in (("the dashboard's figure",
                            lambda: page.wait_for_selector(".klteach-dashboard .js-plotly-plot")),
                           ("every cell to run", lambda: page.wait_for_function(ALL_CELLS_RUN, polling=500)),
                           ("every plot to draw", lambda: page.wait_for_function(PLOTS_DRAWN, polling=500))):
            try:
                wait()
            except Exception as error:
                raise AssertionError(f"{notebook}: timed out waiting for {what}") from error
    except Exception:
        if failure_shot is not None:
            failure_shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(failure_shot))
        raise
    return page, page.locator(".klteach-dashboard").first


def status_text(dashboard: Any) -> str:
    """The dashboard's status line (written by the kernel from ``trainer.config``)."""
    return dashboard.locator(".klteach-status").inner_text()


def step_of(text: str) -> int:
    match = re.search(r"step (\d+)", text)
    if not match:
        raise AssertionError(f"no step count in the status line {text!r}")
    return int(match.group(1))


def wait_until(condition: Callable[[], Any], timeout: float, what: str, dashboard: Any = None) -> Any:
    """Poll ``condition`` until it returns something true; raise ``AssertionError`` naming
    ``what`` (and the status line) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    seen = f"; the status line says {status_text(dashboard)!r}" if dashboard is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


def select_normaliser(dashboard: Any, name: str) -> None:
    """Pick ``name`` in the dashboard's normaliser menu, as a user would."""
    dashboard.locator(".widget-dropdown", has_text="normaliser").locator("select").select_option(name)


def click(dashboard: Any, button: str) -> None:
    dashboard.get_by_role("button", name=button).click()


def switch_normaliser_while_running(page: Any, dashboard: Any, start: str, new: str, name: str,
                                    artifacts: Path) -> dict:
    """Start training, change the normaliser menu mid-run, check the trainer and plots follow;
    screenshots ``name``.png (the page) and ``name``-dashboard.png in ``artifacts``."""
    status = status_text
    assert f"normaliser={start}" in status(dashboard)
    click(dashboard, "Start")
    wait_until(lambda: "Running" in status(dashboard), 30, "the status line to say Running", dashboard)
    first = step_of(status(dashboard))
    wait_until(lambda: step_of(status(dashboard)) >= first + 5, 60, "training steps to advance", dashboard)
    before = page.evaluate(COLLAPSE_PANEL)

    select_normaliser(dashboard, new)
    switched = wait_until(lambda: status(dashboard) if f"normaliser={new}" in status(dashboard) else "",
                          60, f"the running trainer to switch to normaliser={new}", dashboard)
    assert "Running" in switched, switched
    switched_at = step_of(switched)
    wait_until(lambda: step_of(status(dashboard)) >= switched_at + 10, 60, "training to go on after the switch",
               dashboard)
    label = f"normaliser={new}"
    after = wait_until(lambda: (s := page.evaluate(COLLAPSE_PANEL)) and label in s["labels"] and s,
                       30, "the collapse monitor to mark the switch", dashboard)
    assert after["points"] > before["points"]
    assert label not in before["labels"]
    assert after["markers"][-1] > first             # marked mid-run, not at a restart
    assert "Running" in status(dashboard)

    artifacts.mkdir(exist_ok=True)
    dashboard.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / f"{name}.png"))
    dashboard.screenshot(path=str(artifacts / f"{name}-dashboard.png"))
    click(dashboard, "Pause")
    paused = wait_until(lambda: status(dashboard) if "Paused" in status(dashboard) else "", 30,
                        "the dashboard to pause", dashboard)
    time.sleep(1.0)
    assert step_of(status(dashboard)) == step_of(paused)   # it really stopped
    return after
