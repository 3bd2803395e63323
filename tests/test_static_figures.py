"""Static images beside the saved figures (``klteach.static``): every committed chapter shows its
figures without a kernel (GitHub, nbviewer), and the recorder that puts them there works."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from klteach import static

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def can_draw() -> None:
    """Skip a test that draws when kaleido or a Chromium is missing (a student's machine)."""
    if static.figure_png({"data": []}, 10, 10) is None:
        pytest.skip("kaleido or a Chromium is missing: no static image can be drawn here")

RED_BARS = {"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2], "marker": {"color": "#ff0000"}}],
            "layout": {"height": 300, "title": {"text": "two red bars"}}}


def plotly_output(figure: dict) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={static.PLOTLY_MIME: figure})


def png_image(output: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_plotly_output_in_a_committed_notebook_has_a_static_image(path):
    missing = static.missing_images(nbformat.read(path, as_version=4))
    assert not missing, (f"{path.name}: {', '.join(missing)} would be blank on GitHub and nbviewer; "
                         f"run: python -m klteach.static images {path.relative_to(REPO)}")


def test_the_chapters_are_checked():
    assert len(NOTEBOOKS) >= 7


def test_recording_follows_the_environment(monkeypatch):
    monkeypatch.delenv(static.RECORD_ENV, raising=False)
    assert not static.recording()
    monkeypatch.setenv(static.RECORD_ENV, "1")
    assert static.recording()
    monkeypatch.setenv(static.RECORD_ENV, "0")
    assert not static.recording()


def red_share(png: bytes) -> float:
    """The fraction of pixels that are pure red (the bars of RED_BARS)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return image.tobytes().count(b"\xff\x00\x00") / (image.width * image.height)


def test_figure_png_draws_the_figure_at_its_size(can_draw):
    png = static.figure_png(RED_BARS)
    assert Image.open(io.BytesIO(png)).size == (static.DEFAULT_WIDTH, 300)    # layout height, default width
    assert red_share(png) > 0.05                                  # the bars really are drawn
    assert static.figure_png(RED_BARS) == png                     # redrawing changes no byte of a notebook
    assert red_share(static.figure_png({"data": [], "layout": {"height": 300}})) == 0
    assert Image.open(io.BytesIO(static.figure_png(RED_BARS, width=320, height=200))).size == (320, 200)


def test_figure_png_takes_a_plotly_figure_object(can_draw):
    go = pytest.importorskip("plotly.graph_objects")
    png = static.figure_png(go.Figure(RED_BARS))
    assert Image.open(io.BytesIO(png)).size == (static.DEFAULT_WIDTH, 300) and red_share(png) > 0.05


def test_figure_png_is_none_without_a_browser(monkeypatch):
    monkeypatch.setattr(static, "_chromium", None)
    monkeypatch.setattr(static, "_unavailable", None)
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    assert static.figure_png(RED_BARS) is None
    with pytest.raises(static.StaticImageError, match="nonexistent"):
        static.png_of(RED_BARS)


def test_figure_png_refuses_what_is_not_a_figure():
    with pytest.raises(TypeError, match="plotly figure"):
        static.figure_png([1, 2, 3])
    with pytest.raises(ValueError, match="width=-5"):
        static.png_of(RED_BARS, width=-5)


def test_compact_png_keeps_the_picture_and_its_transparency():
    opaque = Image.new("RGB", (60, 40), "white")
    opaque.paste((255, 0, 0), (10, 10, 30, 30))
    raw = io.BytesIO()
    opaque.save(raw, "PNG")
    small = Image.open(io.BytesIO(static.compact_png(raw.getvalue()))).convert("RGB")
    assert small.size == (60, 40) and small.tobytes() == opaque.tobytes()

    clear = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    clear.paste((0, 0, 255, 255), (0, 0, 10, 10))
    raw = io.BytesIO()
    clear.save(raw, "PNG")
    kept = Image.open(io.BytesIO(static.compact_png(raw.getvalue()))).convert("RGBA")
    assert kept.getpixel((15, 15))[3] == 0 and kept.getpixel((5, 5)) == (0, 0, 255, 255)


def test_missing_images_names_cells_and_kinds():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("fig", outputs=[plotly_output(RED_BARS)]),
        nbformat.v4.new_code_cell("dash", outputs=[nbformat.v4.new_output(
            "display_data", data={static.WIDGET_MIME: {"model_id": "x", "version_major": 2, "version_minor": 0},
                                  "text/plain": "VBox()"})]),
    ])
    assert static.missing_images(notebook) == ["cell 2: plotly figure"]
    assert static.missing_images(notebook, kinds=("widget",)) == ["cell 3: widget"]
    with pytest.raises(ValueError, match="allowed"):
        static.missing_images(notebook, kinds=("movie",))


def test_images_command_adds_a_png_of_each_saved_figure_and_keeps_the_rest(tmp_path, can_draw):
    other = {"data": [{"type": "scatter", "x": [0, 1], "y": [1, 0]}], "layout": {"width": 400, "height": 250}}
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("fig", outputs=[plotly_output(RED_BARS), plotly_output(other)]),
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")]),
    ])
    path = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, path)
    assert static.main(["check", str(path)]) == 1

    assert static.main(["images", str(path)]) == 0
    saved = nbformat.read(path, as_version=4)
    bars, line = saved.cells[0].outputs
    assert bars["data"][static.PLOTLY_MIME] == RED_BARS          # the JSON is untouched
    assert png_image(bars).size == (static.DEFAULT_WIDTH, 300)
    assert png_image(line).size == (400, 250)
    assert saved.cells[1].outputs == notebook.cells[1].outputs
    assert static.main(["check", str(path)]) == 0

    before = path.read_text()
    assert static.main(["images", str(path)]) == 0                 # nothing to add: file unchanged
    assert path.read_text() == before


def test_commands_refuse_what_is_not_a_notebook(tmp_path, capsys):
    assert static.main(["images", str(tmp_path / "missing.ipynb")]) == 2
    assert "missing.ipynb: not a notebook file" in capsys.readouterr().err


@pytest.mark.slow
def test_record_executes_as_a_recording_in_the_notebooks_folder(tmp_path, can_draw):
    """The recorder runs a fresh kernel in full mode with KLTEACH_RECORD=1, one thread, the
    notebook's folder as working directory, and saves every figure with its image."""
    folder = tmp_path / "chapter"
    folder.mkdir()
    (folder / "beside.txt").write_text("found")
    probe = ("import os, json, pathlib\n"
             "print(json.dumps({'record': os.environ.get('KLTEACH_RECORD'), 'quick': os.environ.get('KLTEACH_QUICK'),"
             " 'threads': os.environ.get('OMP_NUM_THREADS'), 'beside': pathlib.Path('beside.txt').read_text()}))")
    figure = ("import plotly.io as pio, plotly.graph_objects as go\npio.renderers.default = 'plotly_mimetype'\n"
              "go.Figure(go.Bar(x=['a', 'b'], y=[1, 2]), layout=dict(height=300))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe), nbformat.v4.new_code_cell(figure)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "probe.ipynb"
    nbformat.write(notebook, path)

    assert static.main(["record", str(path)]) == 0
    saved = nbformat.read(path, as_version=4)
    seen = json.loads(saved.cells[0].outputs[0]["text"])
    assert seen == {"record": "1", "quick": "0", "threads": "1", "beside": "found"}
    (output,) = saved.cells[1].outputs
    assert static.PLOTLY_MIME in output["data"] and png_image(output).size == (static.DEFAULT_WIDTH, 300)
    assert "widgets" not in saved.metadata


@pytest.mark.slow
def test_record_leaves_the_notebook_as_it_was_when_a_cell_fails(tmp_path, capsys, can_draw):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('broken chapter')")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "broken.ipynb"
    nbformat.write(notebook, path)
    before = path.read_bytes()
    assert static.main(["record", str(path)]) == 1
    assert path.read_bytes() == before
    assert "broken chapter" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["broken.ipynb"]
