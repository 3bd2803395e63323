"""The static course site (``python -m klteach site OUT``, ``klteach.site``): built from the committed
chapters, every page is there, every local link and anchor resolves, every saved figure is drawn by
the site's one copy of plotly.js, nothing is fetched from a CDN, and an interrupted or misdirected
build loses nothing."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from klteach import coursework, site, static
from klteach.__main__ import main as klteach_main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CDN_HOSTS = ("cdnjs", "unpkg", "jsdelivr", "cdn.plot.ly", "cloudflare", "googleapis", "mathjax.org")


@pytest.fixture(scope="module")
def course_site(tmp_path_factory) -> Path:
    """The site built from the committed notebooks, through the command line."""
    out = tmp_path_factory.mktemp("course") / "site"
    assert klteach_main(["site", str(out)]) == 0
    return out


def student_edition(path: Path) -> nbformat.NotebookNode:
    """The chapter as the (default) student site shows it."""
    student = coursework.student_notebook(nbformat.read(path, as_version=4))
    return nbformat.reads(coursework.notebook_text(student), as_version=4)


def saved_figures(path: Path) -> list[dict]:
    notebook = student_edition(path)
    return [output["data"][static.PLOTLY_MIME] for _, output in static.rich_outputs(notebook)
            if static.PLOTLY_MIME in output["data"]]


def drawn_figures(page: str) -> list[dict]:
    """The figures a page hands to plotly.js (``Plotly.newPlot("id", {...})``)."""
    return [json.loads(payload) for payload in re.findall(r'Plotly\.newPlot\("[^"]+", (.*?)\);</script>', page)]


def test_every_chapter_has_a_page_with_its_title_and_the_index_lists_them(course_site):
    chapters = sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in chapters:
        page = (course_site / f"{path.stem}.html").read_text()
        title = site.pages_of(NOTEBOOKS)[chapters.index(path)].title
        assert f"<title>{title}</title>" in page
        assert 'class="klteach-nav"' in page
    index = (course_site / "index.html").read_text()
    assert all(f'href="{path.stem}.html"' in index for path in chapters)
    assert (course_site / site.MARKER).is_file()


def test_every_local_link_and_anchor_in_the_site_resolves(course_site):
    assert site.broken_links(course_site) == []
    for page in course_site.glob("*.html"):
        assert not re.findall(r'href="[^":]*\.(?:ipynb|md)\b', page.read_text()), f"{page.name} links a source file"


def test_every_saved_figure_is_drawn_from_its_own_json_by_one_copy_of_plotly_js(course_site):
    plotly_js = course_site / "static" / "plotly.min.js"
    assert plotly_js.stat().st_size > 1_000_000
    total = 0
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        page = (course_site / f"{path.stem}.html").read_text()
        figures = [{"data": f.get("data", []), "layout": f.get("layout", {})} for f in saved_figures(path)]
        drawn = [{"data": f["data"], "layout": f["layout"]} for f in drawn_figures(page)]
        assert drawn == figures, f"{path.name}: the page does not draw the saved figures"
        assert page.count('<script src="static/plotly.min.js"></script>') == 1
        pictures = sum("image/png" in output["data"] and static.WIDGET_MIME in output["data"]
                       and static.PLOTLY_MIME not in output["data"]       # saved with its figure: that is drawn
                       for _, output in static.rich_outputs(student_edition(path)))
        outside_figures = re.sub(r'Plotly\.newPlot\(.*?\);</script>', "", page)   # a figure may hold an image
        assert outside_figures.count("data:image/png") == pictures       # figures are drawn, not pictures
        assert len(page) < 2_000_000, f"{path.name}: {len(page)} bytes, plotly.js or CSS inlined?"
        total += len(figures)
    assert total >= 30


def test_widgets_show_their_note_instead_of_a_widget_repr(course_site):
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = student_edition(path)
        widgets = sum(static.WIDGET_MIME in output["data"] for _, output in static.rich_outputs(notebook))
        page = (course_site / f"{path.stem}.html").read_text()
        assert page.count('class="klteach-widget') == widgets, path.name
        assert "VBox(children" not in page and "application/vnd.jupyter.widget-view+json" not in page


def test_the_course_site_is_the_student_edition(course_site):
    solutions = 0
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        solutions += nbformat.read(path, as_version=4).cells.__repr__().count(coursework.SOLUTION_BEGIN)
        page = (course_site / f"{path.stem}.html").read_text()
        assert coursework.SOLUTION_BEGIN not in page and coursework.SOLUTION_END not in page, path.name
    if solutions:
        assert "NotImplementedError" in (course_site / "01-mixture-model.html").read_text()


def test_nothing_is_fetched_from_the_network(course_site):
    for path in sorted(course_site.glob("*.html")) + [course_site / "static" / "site.css",
                                                      course_site / "static" / "jupyterlab.css"]:
        text = path.read_text()
        remote = re.findall(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="(?:https?:)?//[^"]*"', text)
        remote += re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)|import\(\s*['\"]https?://[^)]*\)", text)
        assert not remote, f"{path.name} loads {remote[:3]}"
        if path.suffix == ".html":
            assert not [host for host in CDN_HOSTS if host in text], path.name
            assert "require.min.js" not in text


def test_math_is_typeset_by_the_sites_own_mathjax(course_site):
    mathjax = course_site / "static" / "mathjax" / "tex-svg.js"
    assert mathjax.stat().st_size > 1_000_000, "django-static-mathjax (MathJax 3) is not installed"
    page = (course_site / "03-inverse-priors.html").read_text()
    assert '<script src="static/mathjax/tex-svg.js"></script>' in page
    assert "$$" in page or "\\[" in page                      # the TeX is there for MathJax to typeset


# --- a small course in tmp: links, equations page, widget pictures, rebuilds -------------------


def small_course(folder: Path, equations: bool = True) -> Path:
    """Two chapters that link to each other and to ``equations.md``; a figure; a widget with a saved
    picture and one without."""
    folder.mkdir(parents=True)
    figure = {"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2]}], "layout": {"height": 300}}
    widget = {"model_id": "m1", "version_major": 2, "version_minor": 0}
    first = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Chapter A — first\n\nSee [the next chapter](b-second.ipynb#Section-two), "
                                      "[eq. (14)](equations.md#eq-14), [the prior](equations.md#the-inverse-prior-14) "
                                      "and [the page](equations.md). Math: $p_k(x)$."),
        nbformat.v4.new_code_cell("fig", outputs=[
            nbformat.v4.new_output("display_data", data={static.PLOTLY_MIME: figure})]),
        nbformat.v4.new_code_cell("dash", outputs=[
            nbformat.v4.new_output("display_data", data={static.WIDGET_MIME: widget, "text/plain": "VBox()",
                                                          "image/png": "iVBORw0KGgo="}),
            nbformat.v4.new_output("display_data", data={static.WIDGET_MIME: {**widget, "model_id": "m2"},
                                                          "text/plain": "VBox()"})]),
    ])
    second = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Chapter B — second\n\n## Section two\n\nBack to [A](./a-first.ipynb)."),
    ])
    nbformat.write(first, folder / "a-first.ipynb")
    nbformat.write(second, folder / "b-second.ipynb")
    if equations:
        (folder / "equations.md").write_text("# Equations\n\n## The inverse prior (14)\n\n"
                                             '<a id="eq-14"></a>\n\n$$q_k(x) \\propto p_k(x) / \\pi_k \\tag{14}$$\n')
    return folder


def test_the_instructor_edition_keeps_solutions_and_the_lecturers_guide(tmp_path):
    notebooks = small_course(tmp_path / "notebooks")
    exercise = nbformat.v4.new_code_cell("def my_prior(p):\n    ### BEGIN SOLUTION\n    return p.mean(0)\n"
                                         "    ### END SOLUTION\n\npassed = check(my_prior)")
    exercise.metadata["nbgrader"] = coursework.solution_metadata("ex1-1-prior")
    chapter = nbformat.read(notebooks / "b-second.ipynb", as_version=4)
    chapter.cells.append(exercise)
    nbformat.write(chapter, notebooks / "b-second.ipynb")
    (notebooks / "LECTURER.md").write_text("# Lecturer's guide\n\nThe answers.\n")

    site.build_site(tmp_path / "student", notebooks)
    page = (tmp_path / "student" / "b-second.html").read_text()
    assert coursework.SOLUTION_BEGIN not in page and "NotImplementedError" in page
    assert not (tmp_path / "student" / "LECTURER.html").exists()

    site.build_site(tmp_path / "instructor", notebooks, edition="instructor")
    page = (tmp_path / "instructor" / "b-second.html").read_text()
    assert coursework.SOLUTION_BEGIN in page and "NotImplementedError" not in page
    assert (tmp_path / "instructor" / "LECTURER.html").is_file()
    with pytest.raises(ValueError, match="'teacher' is not one of student, instructor"):
        site.build_site(tmp_path / "x", notebooks, edition="teacher")


def test_links_to_chapters_and_to_the_equations_page_land_on_their_pages(tmp_path):
    notebooks = small_course(tmp_path / "notebooks")
    pages = site.build_site(tmp_path / "out", notebooks)
    assert sorted(p.name for p in pages) == ["a-first.html", "b-second.html", "equations.html", "index.html"]
    first = (tmp_path / "out" / "a-first.html").read_text()
    for link in ('href="b-second.html#Section-two"', 'href="equations.html#eq-14"',
                 'href="equations.html#the-inverse-prior-14"', 'href="equations.html"'):
        assert link in first
    assert 'href="a-first.html"' in (tmp_path / "out" / "b-second.html").read_text()
    equations = (tmp_path / "out" / "equations.html").read_text()
    assert "<title>Equations</title>" in equations and "\\tag{14}" in equations
    assert 'href="equations.html"' in (tmp_path / "out" / "index.html").read_text()
    assert site.broken_links(tmp_path / "out") == []


def test_a_link_to_a_missing_page_or_anchor_is_reported(tmp_path):
    notebooks = small_course(tmp_path / "notebooks", equations=False)
    site.build_site(tmp_path / "out", notebooks)
    broken = site.broken_links(tmp_path / "out")
    assert "a-first.html -> equations.md#eq-14" in broken and "a-first.html -> equations.md" in broken
    (notebooks / "equations.md").write_text("# Equations\n\nnothing here yet\n")
    site.build_site(tmp_path / "out", notebooks)
    assert site.broken_links(tmp_path / "out") == ["a-first.html -> equations.html#eq-14",
                                                   "a-first.html -> equations.html#the-inverse-prior-14"]
    assert klteach_main(["site", str(tmp_path / "out"), "--notebooks", str(notebooks)]) == 1


def test_a_widget_shows_its_saved_picture_or_a_note(tmp_path):
    site.build_site(tmp_path / "out", small_course(tmp_path / "notebooks"))
    page = (tmp_path / "out" / "a-first.html").read_text()
    assert re.search(r'<img [^>]*src="data:image/png;base64,iVBORw0KGgo="', page)
    assert "No picture of it was saved" in page
    assert "VBox()" not in page
    assert len(drawn_figures(page)) == 1


def test_a_widget_saved_with_its_figure_shows_the_figure_interactive_with_the_note(tmp_path):
    notebooks = small_course(tmp_path / "notebooks")
    chapter = nbformat.read(notebooks / "b-second.ipynb", as_version=4)
    figure = {"data": [{"type": "scatter", "x": [0, 1], "y": [1, 0]}], "layout": {"height": 320}}
    chapter.cells.append(nbformat.v4.new_code_cell("posterior_explorer()", outputs=[nbformat.v4.new_output(
        "display_data", data={static.WIDGET_MIME: {"model_id": "m3", "version_major": 2, "version_minor": 0},
                              static.PLOTLY_MIME: figure, "image/png": "iVBORw0KGgo=", "text/plain": "τ = 0.1"})]))
    nbformat.write(chapter, notebooks / "b-second.ipynb")
    site.build_site(tmp_path / "out", notebooks)
    page = (tmp_path / "out" / "b-second.html").read_text()
    assert [f["data"] for f in drawn_figures(page)] == [figure["data"]]
    assert page.count('class="klteach-widget') == 1 and site.WIDGET_NOTE in page
    assert "data:image/png" not in page and "application/vnd.jupyter.widget-view+json" not in page


def test_headings_get_githubs_anchors_too():
    page = '<h2 id="The-inverse-prior-(14)">The inverse prior (14)<a class="anchor-link" href="#x">¶</a></h2>'
    assert '<a id="the-inverse-prior-14" class="klteach-anchor"></a>' in site.add_github_anchors(page)
    assert site.github_slug("Eq. (14): the prior — Ünïcode") == "eq-14-the-prior--ünïcode"


def test_a_rebuild_replaces_the_site_and_a_foreign_folder_is_refused(tmp_path):
    notebooks = small_course(tmp_path / "notebooks")
    out = tmp_path / "out"
    site.build_site(out, notebooks)
    (out / "stale.html").write_text("from an old build")
    site.build_site(out, notebooks)
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no staging left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="other files in it"):
        site.build_site(foreign, notebooks)
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert klteach_main(["site", str(foreign / "thesis.tex"), "--notebooks", str(notebooks)]) == 2
    assert klteach_main(["site", str(tmp_path / "x"), "--notebooks", str(tmp_path / "nowhere")]) == 2


def test_a_failed_build_leaves_the_previous_site(tmp_path, monkeypatch):
    notebooks = small_course(tmp_path / "notebooks")
    out = tmp_path / "out"
    site.build_site(out, notebooks)
    before = sorted(p.name for p in out.iterdir())

    def broken_render(*args, **kwargs):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(site, "_render", broken_render)
    with pytest.raises(RuntimeError, match="interrupted"):
        site.build_site(out, notebooks)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

