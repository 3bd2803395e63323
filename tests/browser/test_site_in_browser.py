"""The static course site in a real browser: ``python -m klteach site`` output opened in headless
Chromium (served over HTTP as a host would serve it, and straight from the folder): every saved
plotly figure is drawn with its traces, the math is typeset, the navigation works, nothing is
fetched from outside and the console stays free of errors. Screenshots go to ``test-artifacts/``;
with ``KLTEACH_UPDATE_SCREENSHOTS=1`` the README's ``docs/screenshots/site.png`` is redrawn too.

Needs Debian's ``/usr/bin/chromium`` (Playwright drives it; no browser download); skipped with the
reason when it is missing.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab_driver as lab_ui  # noqa: E402

from klteach import coursework, site, static  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = lab_ui.REPO / "test-artifacts"
README_SHOT = lab_ui.REPO / "docs" / "screenshots" / "site.png"
CHAPTER = "03-inverse-priors"

if not Path(lab_ui.CHROMIUM).is_file():
    pytest.skip(f"{lab_ui.CHROMIUM} is missing (install Debian's chromium package to run the browser test)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api")

FIGURES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
    traces: (gd.data || []).length,
    drawn: gd.querySelectorAll('.main-svg').length,
    marks: gd.querySelectorAll('.overplot .trace, .overplot .hm, .overplot image, .gl-container canvas, '
                               + '.pielayer .trace').length,
    toolbar: !!gd.querySelector('.modebar-container')}))"""
"""For each figure on the page: its traces, its drawn SVG layers, drawn marks and plotly's toolbar."""

MATH = """async () => { await MathJax.startup.promise;
    return {typeset: document.querySelectorAll('mjx-container').length,
            errors: document.querySelectorAll('mjx-merror').length}; }"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """The folder served on 127.0.0.1, as any static host would serve the site."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    site.build_site(out)
    return out


@pytest.fixture(scope="module")
def browser():
    with lab_ui.chromium() as chromium:
        yield chromium


class Watched:
    """A page whose console errors, page errors, failed requests and requests to other hosts are kept
    (requests to other hosts are also refused: the site must not need them)."""

    def __init__(self, browser, viewport=None):
        self.page = browser.new_page(viewport=viewport or {"width": 1200, "height": 900})
        self.page.set_default_timeout(60_000)
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} ({r.failure})"))
        self.page.route("**/*", self._local_only)

    def _local_only(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "file://", "data:")):
            route.continue_()
        else:
            self.problems.append(f"outside request: {url}")
            route.abort()

    def open(self, url: str | None = None) -> dict:
        """Go to ``url`` (else stay on the page a click opened); wait for the math and the figures."""
        if url:
            self.page.goto(url)
        self.page.wait_for_load_state("load")
        math = self.page.evaluate(MATH)
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.js-plotly-plot')].every(gd => gd.querySelector('.main-svg'))")
        return math


def saved_figure_count(name: str, edition: str = "student") -> int:
    notebook = nbformat.read(lab_ui.REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    if edition == "student":
        notebook = nbformat.reads(coursework.notebook_text(coursework.student_notebook(notebook)), as_version=4)
    return sum(static.PLOTLY_MIME in output["data"] for _, output in static.rich_outputs(notebook))


def assert_figures_drawn(page, name: str) -> None:
    figures = page.evaluate(FIGURES)
    assert len(figures) == saved_figure_count(name), f"{name}: {len(figures)} figures on the page"
    for number, figure in enumerate(figures, start=1):
        assert figure["traces"] > 0 and figure["drawn"] > 0 and figure["marks"] > 0, f"{name} figure {number}: {figure}"
        assert figure["toolbar"], f"{name} figure {number} is not interactive (no plotly toolbar)"


def test_a_chapter_page_draws_its_figures_and_math_offline(built_site, browser):
    with http_server(built_site) as url:
        watched = Watched(browser)
        page = watched.page
        try:
            math = watched.open(f"{url}/{CHAPTER}.html")
            assert math["typeset"] > 50 and math["errors"] == 0, math
            assert_figures_drawn(page, CHAPTER)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "site-chapter-3.png"))
            page.locator(".klteach-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "site-chapter-3-figure.png"))
            if os.environ.get("KLTEACH_UPDATE_SCREENSHOTS") == "1":    # the README's picture, small
                page.set_viewport_size({"width": 1000, "height": 620})
                page.locator(".klteach-plot").first.scroll_into_view_if_needed()
                README_SHOT.parent.mkdir(parents=True, exist_ok=True)
                README_SHOT.write_bytes(static.compact_png(page.screenshot(scale="css")))
                page.set_viewport_size({"width": 1200, "height": 900})

            page.locator(".klteach-nav a[rel=next]").first.click()          # on to the next chapter
            page.wait_for_url("**/04-centering.html")
            watched.open()
            assert_figures_drawn(page, "04-centering")
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "failed-site.png"))
            raise
        finally:
            page.close()
        assert watched.problems == []


def test_the_site_opened_from_its_folder_works_too(built_site, browser):
    watched = Watched(browser)
    page = watched.page
    try:
        watched.open((built_site / "index.html").as_uri())
        page.locator("main a[href='02-distillation-kl.html']").first.click()
        page.wait_for_url("**/02-distillation-kl.html")
        math = watched.open()
        assert math["typeset"] > 0 and math["errors"] == 0, math
        assert_figures_drawn(page, "02-distillation-kl")
    finally:
        page.close()
    assert watched.problems == []


@pytest.mark.slow
def test_jupyterlab_still_shows_the_interactive_figures_of_a_recorded_chapter(browser, tmp_path):
    """A saved plotly output now carries a PNG too; JupyterLab must keep drawing the figure with
    plotly (its renderer ranks above ``image/png``), not show the picture. Nothing is executed."""
    import shutil

    shutil.copy(lab_ui.REPO / "notebooks" / f"{CHAPTER}.ipynb", tmp_path / f"{CHAPTER}.ipynb")
    with lab_ui.jupyter_lab(tmp_path, env={"KLTEACH_QUICK": "1"}) as url:
        page = browser.new_page(viewport=lab_ui.VIEWPORT)
        page.set_default_timeout(120_000)
        try:
            page.goto(f"{url}/lab/workspaces/recorded/tree/{CHAPTER}.ipynb?reset&token={lab_ui.TOKEN}")
            page.locator(".jp-Notebook").first.wait_for()
            counts = """() => { const root = window.jupyterapp.shell.currentWidget.node;
                const model = window.jupyterapp.shell.currentWidget.content.model;
                let saved = 0;
                for (const cell of model.cells) if (cell.type === 'code')
                    for (let i = 0; i < cell.outputs.length; i++)
                        if (cell.outputs.get(i).data['application/vnd.plotly.v1+json']) saved++;
                return {saved, plotly: root.querySelectorAll('.jp-RenderedPlotly').length,
                        pictures: root.querySelectorAll('.jp-RenderedImage').length}; }"""
            page.wait_for_function(f"() => {{ const c = ({counts})(); return c.saved > 0 && c.plotly === c.saved; }}",
                                   polling=500)
            seen = page.evaluate(counts)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "failed-site-jupyterlab.png"))
            raise
        finally:
            page.close()
    assert seen["saved"] == saved_figure_count(CHAPTER, edition="instructor")
    assert seen["pictures"] == 0, seen
