"""Static pictures of the course's figures, so that a saved chapter shows them without a kernel.

GitHub, nbviewer and the course site (``python -m klteach site``) run no kernel, and GitHub and
nbviewer run no plotly.js either: a figure saved as plotly JSON alone is blank there. When
chapters are *recorded* for the repository, every plotly output therefore also carries a PNG
drawn from the very same figure JSON, by kaleido in Debian's Chromium. JupyterLab still shows the
interactive figure (its plotly renderer ranks above ``image/png``); GitHub and nbviewer show the
PNG. A student's own run needs none of this: without kaleido or a browser, :func:`figure_png`
quietly returns None.

Developer commands (``python -m klteach.static --help``)::

    python -m klteach.static record notebooks/03-inverse-priors.ipynb   # execute in full mode, add images
    python -m klteach.static images notebooks/*.ipynb                    # add images to the saved outputs
    python -m klteach.static check notebooks/*.ipynb                     # list outputs without an image
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import io
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

RECORD_ENV = "KLTEACH_RECORD"
CHROMIUM = "/usr/bin/chromium"          # Debian's chromium package; BROWSER_PATH overrides it
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/svg+xml")
DEFAULT_WIDTH = 800                     # figures without a layout width fill JupyterLab's column
DEFAULT_HEIGHT = 450                    # plotly's own default
START_TIMEOUT_S = 60
DRAW_TIMEOUT_S = 60


def recording() -> bool:
    """True when ``KLTEACH_RECORD=1`` is set: chapters are being recorded for the repository, so
    figures and dashboards should also save a static image of themselves."""
    return os.environ.get(RECORD_ENV, "0") == "1"


class StaticImageError(RuntimeError):
    """A figure could not be drawn to a static image (no kaleido, no browser, or the browser failed)."""


def browser_path() -> str | None:
    """The Chromium that draws the images: ``$BROWSER_PATH`` (kaleido's own setting), else Debian's
    ``/usr/bin/chromium``, else one on ``PATH``; None if there is none."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Chromium:
    """One headless Chromium for the whole process (starting one takes seconds), driven by kaleido on
    a private event loop in a daemon thread, so that code already inside an event loop (a Jupyter
    kernel) and several threads (a training dashboard) can all wait on it."""

    def __init__(self, browser: str) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="klteach-kaleido", daemon=True).start()
        try:
            self._kaleido = self._wait(self._open(browser), START_TIMEOUT_S)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        atexit.register(self.close)

    @staticmethod
    async def _open(browser: str) -> Any:
        import kaleido

        # mathjax=False: no figure here uses LaTeX, and kaleido would fetch MathJax from a CDN
        drawer = kaleido.Kaleido(path=browser, n=1, timeout=DRAW_TIMEOUT_S, mathjax=False)
        await drawer.open()
        return drawer

    def _wait(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def png(self, figure: dict, width: int, height: int) -> bytes:
        options = {"format": "png", "width": width, "height": height, "scale": 1}
        return self._wait(self._kaleido.calc_fig(figure, opts=options), DRAW_TIMEOUT_S + 10)

    def close(self) -> None:
        try:
            self._wait(self._kaleido.close(), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


_chromium: _Chromium | None = None
_unavailable: str | None = None         # why drawing is impossible in this process, once known
_lock = threading.Lock()


def _drawer() -> _Chromium:
    global _chromium, _unavailable
    with _lock:
        if _unavailable:
            raise StaticImageError(_unavailable)
        if _chromium is None:
            browser = browser_path()
            try:
                import kaleido  # noqa: F401
            except ImportError:
                _unavailable = "kaleido is not installed (pip install kaleido)"
            else:
                if browser is None:
                    _unavailable = f"no Chromium found (install Debian's chromium at {CHROMIUM} or set BROWSER_PATH)"
                else:
                    try:
                        _chromium = _Chromium(browser)
                    except Exception as error:
                        _unavailable = f"kaleido could not start {browser}: {type(error).__name__}: {error}"
            if _unavailable:
                raise StaticImageError(_unavailable)
        assert _chromium is not None
        return _chromium


def figure_dict(fig: Any) -> dict:
    """A plotly figure (``go.Figure``, ``go.FigureWidget``) or its dict, as a dict with ``data``."""
    figure = fig.to_dict() if hasattr(fig, "to_dict") else fig
    if not isinstance(figure, dict) or "data" not in figure:
        raise TypeError(f"expected a plotly figure or its dict (with a 'data' key), got {type(fig).__name__}")
    return figure


def png_of(fig: Any, width: int | None = None, height: int | None = None) -> bytes:
    """The figure as a compact PNG: ``width`` × ``height`` pixels, else the figure's own layout size,
    else 800 × 450. Raises :class:`StaticImageError` when it cannot be drawn."""
    figure = figure_dict(fig)
    layout = figure.get("layout") or {}
    width = int(width or layout.get("width") or DEFAULT_WIDTH)
    height = int(height or layout.get("height") or DEFAULT_HEIGHT)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    drawer = _drawer()
    try:
        return compact_png(drawer.png(figure, width, height))
    except Exception as error:
        raise StaticImageError(f"kaleido could not draw the figure: {type(error).__name__}: {error}") from error


def figure_png(fig: Any, width: int | None = None, height: int | None = None) -> bytes | None:
    """The figure as PNG bytes (see :func:`png_of`), or None when kaleido or a browser is unavailable
    or fails: a student's own run never needs a static image."""
    try:
        return png_of(fig, width, height)
    except StaticImageError:
        return None


def compact_png(png: bytes) -> bytes:
    """The same picture in at most 256 colours, which is all a plot uses: about a third of the bytes
    in the saved notebook. Transparency is kept where there is any."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGBA")
    opaque = image.getchannel("A").getextrema() == (255, 255)
    if opaque:
        image = image.convert("RGB")
    method = Image.Quantize.MEDIANCUT if image.mode == "RGB" else Image.Quantize.FASTOCTREE
    out = io.BytesIO()
    image.quantize(256, method=method, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return min(out.getvalue(), png, key=len)


# --- notebooks -------------------------------------------------------------------------------


def rich_outputs(notebook: Any) -> Iterator[tuple[int, Any]]:
    """``(cell number, output)`` for every display output of every code cell (numbers from 1)."""
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if "data" in output:
                yield number, output


def has_image(output: Any) -> bool:
    return any(mime in output["data"] for mime in IMAGE_MIMES)


def missing_images(notebook: Any, kinds: Sequence[str] = ("plotly",)) -> list[str]:
    """Outputs a reader without a kernel would see blank: ``"cell 12: plotly figure"`` for each
    plotly figure (kind ``"plotly"``) or widget (kind ``"widget"``) without a PNG or SVG."""
    names = {"plotly": (PLOTLY_MIME, "plotly figure"), "widget": (WIDGET_MIME, "widget")}
    unknown = set(kinds) - set(names)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; allowed: {sorted(names)}")
    return [f"cell {number}: {names[kind][1]}" for number, output in rich_outputs(notebook)
            for kind in kinds if names[kind][0] in output["data"] and not has_image(output)]


def add_images(notebook: Any, redraw: bool = False) -> tuple[int, int]:
    """Give every plotly output an ``image/png`` drawn from its saved figure JSON (all of them when
    ``redraw``, else only those without one). Returns (images drawn, PNG bytes added)."""
    drawn = size = 0
    for number, output in rich_outputs(notebook):
        data = output["data"]
        if PLOTLY_MIME not in data or (has_image(output) and not redraw):
            continue
        try:
            png = png_of(data[PLOTLY_MIME])
        except StaticImageError as error:
            raise StaticImageError(f"cell {number}: {error}") from error
        data["image/png"] = base64.b64encode(png).decode("ascii")
        drawn, size = drawn + 1, size + len(png)
    return drawn, size


def write_notebook(notebook: Any, path: Path) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half a notebook."""
    import nbformat

    temporary = path.with_name(f".{path.name}.tmp")
    nbformat.write(notebook, temporary)
    os.replace(temporary, path)


def execute(notebook: Any, folder: Path, timeout: int) -> None:
    """Run every cell in a fresh kernel as a recording: full-size runs (``KLTEACH_QUICK=0``),
    ``KLTEACH_RECORD=1``, one torch thread, the notebook's own folder as working directory.
    Widget state is not stored: without a kernel a dashboard shows its static image instead."""
    from nbclient import NotebookClient

    env = {**os.environ, RECORD_ENV: "1", "KLTEACH_QUICK": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    client = NotebookClient(notebook, timeout=timeout, store_widget_state=False,
                            resources={"metadata": {"path": str(folder)}})
    client.execute(env=env)


def _read(path: Path) -> Any:
    import nbformat

    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"{path}: not a notebook file (expected an existing .ipynb)")
    return nbformat.read(path, as_version=4)


def _report(path: Path, notebook: Any, drawn: int, size: int, seconds: float) -> None:
    blank = missing_images(notebook, kinds=("widget",))
    print(f"{path}: {drawn} figure image(s) drawn, {size / 1024:.0f} KiB of PNG, {seconds:.1f} s")
    if blank:
        print(f"  note: {len(blank)} widget output(s) without a static image ({', '.join(blank)})")


def cmd_images(args: argparse.Namespace) -> int:
    for path in args.notebooks:
        started = time.perf_counter()
        notebook = _read(path)
        drawn, size = add_images(notebook, redraw=args.redraw)
        if drawn:
            write_notebook(notebook, path)
        _report(path, notebook, drawn, size, time.perf_counter() - started)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from nbclient.exceptions import CellExecutionError

    png_of({"data": [], "layout": {}}, 10, 10)        # fail now, not after minutes of training
    for path in args.notebooks:
        started = time.perf_counter()
        notebook = _read(path)
        try:
            execute(notebook, path.resolve().parent, args.timeout)
        except CellExecutionError as error:
            print(f"{path}: a cell failed; the notebook is left as it was\n{error}", file=sys.stderr)
            return 1
        drawn, size = add_images(notebook, redraw=True)
        write_notebook(notebook, path)
        _report(path, notebook, drawn, size, time.perf_counter() - started)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    kinds = ("plotly", "widget") if args.widgets else ("plotly",)
    blank = [f"{path}: {where}" for path in args.notebooks for where in missing_images(_read(path), kinds)]
    print("\n".join(blank) or f"every {' and '.join(kinds)} output has a static image")
    return 1 if blank else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m klteach.static", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    record = sub.add_parser("record", help="execute notebooks in full mode (KLTEACH_RECORD=1) and save them "
                                           "with a static image beside every plotly figure")
    record.add_argument("notebooks", nargs="+", type=Path)
    record.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run (default 3600)")
    record.set_defaults(handler=cmd_record)
    images = sub.add_parser("images", help="add static images to the saved plotly outputs, without executing")
    images.add_argument("notebooks", nargs="+", type=Path)
    images.add_argument("--redraw", action="store_true", help="redraw images that are already there")
    images.set_defaults(handler=cmd_images)
    check = sub.add_parser("check", help="list plotly outputs (and with --widgets, widgets) without an image")
    check.add_argument("notebooks", nargs="+", type=Path)
    check.add_argument("--widgets", action="store_true", help="also list widget outputs without an image")
    check.set_defaults(handler=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, StaticImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
