"""The course as a static website: ``python -m klteach site OUT``.

Every chapter in ``notebooks/`` becomes ``OUT/NN-name.html`` with the outputs saved in it (nothing
is executed, no kernel is needed). By default it is the student edition, exercises without their
solutions, as ``python -m klteach course`` writes it; ``--edition instructor`` keeps them. Every
Markdown page there becomes a page too (``equations.md`` -> ``OUT/equations.html``), and
``OUT/index.html`` lists them all; every page links to its neighbours.
Links between chapters (``02-distillation-kl.ipynb#...``) and to ``equations.md`` are rewritten to
the pages. Figures stay interactive: plotly.js is copied once into ``OUT/static/`` and each page
draws its saved figure JSON with it. MathJax 3 is copied there too, from the ``django-static-mathjax``
package (MathJax's own files; Django is not needed), so the site needs no network at all and also
works opened straight from the folder (``file://``).
Dashboards and explorers need a kernel, so their place shows the picture saved when the chapter
was recorded (``python -m klteach.static record``), or a note saying where to run them.

The pages are made by nbconvert, which JupyterLab already brings: they look like the chapter in
JupyterLab, the one place students then run it.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import coursework
from .static import PLOTLY_MIME, WIDGET_MIME

MARKER = ".klteach-site"      # a folder holding this file was built here and may be rebuilt
MATHJAX_PARTS = ("tex-svg.js", "input/tex", "ui", "a11y", "sre")
"""What of MathJax 3 (``es5/`` of the django-static-mathjax package) the pages use: TeX in, SVG out
(no web fonts, so pages opened from the folder work too), the extensions TeX loads on demand, the menu
and its accessibility tools."""

TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block html_head_js_requirejs %}<script src="static/plotly.min.js"></script>{% endblock %}
{% block jupyter_widgets %}{% endblock %}
{% block html_head_js_mermaidjs %}{% endblock %}
{% block notebook_css %}<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/jupyterlab.css">
<link rel="stylesheet" href="static/site.css">{% endblock %}
{% block html_head_js_mathjax %}{{ resources.site.mathjax }}{% endblock %}
{% block body_header %}{{ super() }}{{ resources.site.nav }}{% endblock %}
{% block body_footer %}{{ resources.site.nav }}{{ super() }}{% endblock %}
"""
"""nbconvert's JupyterLab page without anything fetched from a CDN (require.js, widget manager,
mermaid, MathJax), with the course's navigation above and below."""

MATHJAX = """<script>
window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
        processEscapes: true, processEnvironments: true, tags: "ams"},
  svg: {fontCache: "global"}
};
</script>
<script src="static/mathjax/tex-svg.js"></script>"""

SITE_CSS = """
a.anchor-link { display: none; }
.jp-Collapser { display: none; }
.jp-InputArea, .jp-InputArea-editor { overflow: hidden; }
.jp-OutputArea-output pre, .cm-editor .highlight pre { line-height: inherit; font-family: inherit; margin: 0; }
body.jp-Notebook { max-width: 1100px; margin: 0 auto; padding: 0 16px; }
.klteach-nav { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; padding: 10px 0;
               margin: 8px 0; border-top: 1px solid #ccc; border-bottom: 1px solid #ccc;
               font-family: var(--jp-ui-font-family, sans-serif); font-size: 15px; }
.klteach-nav a { text-decoration: none; }
.klteach-nav .klteach-here { font-weight: bold; }
.klteach-nav .klteach-step { margin-left: auto; display: flex; gap: 16px; }
.klteach-plot { width: 100%; }
.klteach-widget { margin: 4px 0; }
.klteach-widget img { max-width: 100%; border: 1px solid #ddd; }
.klteach-widget figcaption, .klteach-widget-missing { font-size: 13px; color: #555; font-style: italic; }
.klteach-widget-missing { padding: 10px; border: 1px dashed #aaa; }
"""


@dataclass(frozen=True)
class Page:
    """One page of the site: its source in the notebooks folder, its file name and its title."""
    source: Path
    name: str
    title: str


def pages_of(folder: Path, edition: str = "student") -> list[Page]:
    """The chapters (``*.ipynb``) then the Markdown pages (``*.md``; the student edition leaves out
    the lecturer's guide) of ``folder``, in name order."""
    import nbformat

    pages = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        text = next((c.source for c in cells if c.cell_type == "markdown"), "")
        pages.append(Page(path, f"{path.stem}.html", _first_heading(text) or path.stem))
    for path in sorted(folder.glob("*.md")):
        if edition == "student" and path.name in coursework.INSTRUCTOR_FILES:
            continue
        pages.append(Page(path, f"{path.stem}.html", _first_heading(path.read_text()) or path.stem))
    return pages


def _first_heading(markdown: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return match.group(1) if match else None


# --- what a page shows in place of the outputs that need a kernel --------------------------------


def plotly_html(figure: dict, div_id: str) -> str:
    """The saved figure JSON drawn by the site's plotly.js: interactive, exactly as recorded."""
    layout = figure.get("layout") or {}
    payload = {"data": figure.get("data", []), "layout": layout, "frames": figure.get("frames", []),
               "config": {"responsive": True, "displaylogo": False}}
    script = json.dumps(payload).replace("</", "<\\/")       # no "</script>" inside the script
    return (f'<div id="{div_id}" class="klteach-plot" style="height: {int(layout.get("height") or 450)}px"></div>\n'
            f'<script>Plotly.newPlot("{div_id}", {script});</script>')


WIDGET_NOTE = "A live widget: open this chapter in JupyterLab to use it."


def widget_figure_html(figure: dict, div_id: str) -> str:
    """A live widget saved with its figure's JSON (the dashboards and explorers save one,
    :class:`klteach.display.StaticCopy`): that figure, interactive, with the note."""
    return (f'<figure class="klteach-widget">{plotly_html(figure, div_id)}'
            f'<figcaption>{WIDGET_NOTE} Above: its figure as the chapter was recorded.</figcaption></figure>')


def widget_html(data: dict) -> str:
    """A live widget's saved picture (``image/png`` or ``image/svg+xml`` in its output), or a note."""
    note = WIDGET_NOTE
    if "image/png" in data:
        source = "data:image/png;base64," + "".join(str(data["image/png"]).split())
    elif "image/svg+xml" in data:
        source = "data:image/svg+xml;base64," + base64.b64encode(str(data["image/svg+xml"]).encode()).decode()
    else:
        return f'<div class="klteach-widget klteach-widget-missing">{note} (No picture of it was saved.)</div>'
    return (f'<figure class="klteach-widget"><img src="{source}" alt="the widget as recorded">'
            f'<figcaption>{note} Above: the picture saved when the chapter was recorded.</figcaption></figure>')


def static_outputs(notebook: Any) -> Any:
    """A copy of ``notebook`` whose plotly figures are HTML for plotly.js and whose widgets are their
    saved pictures: what a page can show without a kernel."""
    import copy

    notebook = copy.deepcopy(notebook)
    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data")
            if not data:
                continue
            if WIDGET_MIME in data and PLOTLY_MIME in data:
                count += 1
                output["data"] = {"text/html": widget_figure_html(data[PLOTLY_MIME], f"klteach-plot-{count}")}
            elif PLOTLY_MIME in data:
                count += 1
                output["data"] = {"text/html": plotly_html(data[PLOTLY_MIME], f"klteach-plot-{count}")}
            elif WIDGET_MIME in data:
                output["data"] = {"text/html": widget_html(data)}
    return notebook


# --- links -----------------------------------------------------------------------------------------


def relink(page_html: str, names: set[str]) -> str:
    """Point links at ``NN-name.ipynb`` and ``equations.md`` (with any ``#anchor``) to their pages."""
    def to_page(match: re.Match) -> str:
        target = f"{match.group(2)}.html"
        return f'href="{target}{match.group(4) or ""}"' if target in names else match.group(0)
    return re.sub(r'href="((?:\./)?([\w.-]+?))\.(ipynb|md)(#[^"]*)?"', to_page, page_html)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading (``"Eq. (14): the prior"`` -> ``"eq-14-the-prior"``), so links
    written for GitHub's view of ``equations.md`` also land in the site."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def add_github_anchors(page_html: str) -> str:
    """Give each heading GitHub's anchor too, beside nbconvert's own id."""
    used: dict[str, int] = {}

    def anchor(match: re.Match) -> str:
        text = html.unescape(re.sub(r"<[^>]+>", "", match.group(3).replace("¶", "")))
        slug = github_slug(text)
        seen = used.get(slug, 0)
        used[slug] = seen + 1
        slug = f"{slug}-{seen}" if seen else slug
        if not slug or html.unescape(match.group(2)) == slug:
            return match.group(0)
        return f'{match.group(1)}<a id="{html.escape(slug)}" class="klteach-anchor"></a>{match.group(3)}'
    return re.sub(r'(<h[1-6] id="([^"]*)">)(.*?)(?=</h[1-6]>)', anchor, page_html, flags=re.DOTALL)


def _links(page_html: str) -> list[str]:
    return [html.unescape(link) for link in re.findall(r'(?:href|src)="([^"]*)"', page_html)]


def _ids(page_html: str) -> set[str]:
    return {html.unescape(name) for name in re.findall(r'\b(?:id|name)="([^"]*)"', page_html)}


def broken_links(site: Path) -> list[str]:
    """Every local link (or image) in the site's pages whose file or ``#anchor`` does not exist, as
    ``"page.html -> target"``. External ``http(s)``, ``mailto`` and ``data`` links are not followed."""
    broken = []
    ids = {page.name: _ids(page.read_text()) for page in site.glob("*.html")}
    for page in sorted(site.glob("*.html")):
        for link in _links(page.read_text()):
            if re.match(r"(https?|mailto|data|javascript):", link) or not link:
                continue
            path, _, anchor = link.partition("#")
            path = path.split("?")[0]
            target = (page.parent / path).resolve() if path else page
            if not target.is_file():
                broken.append(f"{page.name} -> {link}")
            elif anchor and target.suffix == ".html":
                known = ids.get(target.name, set()) if target.parent == site.resolve() else _ids(target.read_text())
                if anchor not in known and unquote(anchor) not in known:
                    broken.append(f"{page.name} -> {link}")
    return broken


# --- building ----------------------------------------------------------------------------------------


def navigation(pages: list[Page], here: str) -> str:
    """Contents, the chapters by number, the equations page, and the previous and next chapter."""
    chapters = [p for p in pages if p.source.suffix == ".ipynb"]
    links = ['<a href="index.html"' + (' class="klteach-here"' if here == "index.html" else "") + ">Contents</a>"]
    for page in pages:
        label = page.name.split("-")[0] if page.source.suffix == ".ipynb" else page.source.stem.capitalize()
        mark = ' class="klteach-here"' if page.name == here else ""
        links.append(f'<a href="{page.name}" title="{html.escape(page.title)}"{mark}>{html.escape(label)}</a>')
    names = [p.name for p in chapters]
    step = []
    if here in names:
        at = names.index(here)
        if at > 0:
            step.append(f'<a rel="prev" href="{names[at - 1]}">← {html.escape(chapters[at - 1].title)}</a>')
        if at + 1 < len(names):
            step.append(f'<a rel="next" href="{names[at + 1]}">{html.escape(chapters[at + 1].title)} →</a>')
    return (f'<nav class="klteach-nav">{" ".join(links)}'
            f'<span class="klteach-step">{" ".join(step)}</span></nav>')


def index_markdown(pages: list[Page]) -> str:
    items = "\n".join(f"- [{page.title}]({page.name})" for page in pages)
    return ("# klteach — self-supervised learning by clustering\n\n"
            "A static copy of the course: every chapter with the outputs saved when it was recorded. "
            "The figures are interactive (zoom, hover); the live widgets, which need a running kernel, show "
            "a picture. To run the code, do the exercises and train with the dashboards, open the notebooks "
            "in JupyterLab (`jupyter lab notebooks/00-index.ipynb`).\n\n" + items + "\n")


def _exporter() -> Any:
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="klteach-site.html.j2",
                        extra_loaders=[jinja2.DictLoader({"klteach-site.html.j2": TEMPLATE})])


def _lab_css(exporter: Any) -> str:
    """JupyterLab's own stylesheet and light theme, as nbconvert's lab template ships them."""
    for folder in exporter.template_paths:
        index = Path(folder) / "static" / "index.css"
        if index.is_file() and (index.parent / "theme-light.css").is_file():
            return index.read_text() + "\n" + (index.parent / "theme-light.css").read_text()
    raise FileNotFoundError("nbconvert's lab template (static/index.css) was not found")


def _copy_mathjax(static_dir: Path) -> bool:
    """Copy the parts of MathJax the pages use; False when ``django-static-mathjax`` is missing."""
    try:
        import mathjax
    except ImportError:
        return False
    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (source / "tex-svg.js").is_file():
        return False
    for part in MATHJAX_PARTS:
        (static_dir / "mathjax" / part).parent.mkdir(parents=True, exist_ok=True)
        if (source / part).is_dir():
            shutil.copytree(source / part, static_dir / "mathjax" / part)
        else:
            shutil.copy2(source / part, static_dir / "mathjax" / part)
    return True


def _copy_local_images(page_html: str, notebooks: Path, staging: Path) -> None:
    """Images a Markdown cell shows from the notebooks folder (``![](figures/x.png)``) go along."""
    for link in _links(page_html):
        if re.match(r"(https?|data|mailto):|static/", link) or not link:
            continue
        source = (notebooks / link.split("#")[0]).resolve()
        if source.is_file() and source.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif", ".svg"} \
                and notebooks.resolve() in source.parents:
            target = staging / source.relative_to(notebooks.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _render(exporter: Any, notebook: Any, title: str, nav: str, mathjax: str) -> str:
    notebook.metadata["title"] = title
    body, _ = exporter.from_notebook_node(notebook, resources={"site": {"nav": nav, "mathjax": mathjax}})
    return body


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the site needs a folder (a new one, or one built here before)")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is a folder with other files in it (no {MARKER}); choose a new or empty folder, "
                         "so that nothing else is overwritten")


def build_site(out: Path, notebooks: Path | None = None, edition: str = "student") -> list[Path]:
    """Build the site of the course in ``notebooks`` (default: the course's own chapters) into
    ``out``, replacing a site built there before, and return its pages. The ``"student"`` edition
    shows the exercises without their solutions (as ``python -m klteach course`` writes them); the
    ``"instructor"`` edition shows the notebooks as they are.

    The pages are written to a temporary folder beside ``out`` that replaces it only when all are
    done: an interrupted build leaves the previous site as it was."""
    import nbformat
    import plotly

    if edition not in coursework.EDITIONS:
        raise ValueError(f"edition {edition!r} is not one of {', '.join(coursework.EDITIONS)}")
    out = Path(out)
    notebooks = coursework.course_source() if notebooks is None else Path(notebooks)
    if not notebooks.is_dir() or not any(notebooks.glob("*.ipynb")):
        raise ValueError(f"{notebooks}: no notebooks (*.ipynb) there; pass the course's notebooks folder")
    _check_out(out)
    pages = pages_of(notebooks, edition)
    names = {page.name for page in pages} | {"index.html"}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        static_dir = staging / "static"
        static_dir.mkdir()
        exporter = _exporter()
        shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static_dir / "plotly.min.js")
        (static_dir / "jupyterlab.css").write_text(_lab_css(exporter))
        (static_dir / "site.css").write_text(SITE_CSS)
        mathjax = MATHJAX if _copy_mathjax(static_dir) else ""
        if not mathjax:
            print("warning: django-static-mathjax (MathJax 3) is not installed, so the pages show formulas as TeX "
                  "source (pip install django-static-mathjax)")
        index = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(index_markdown(pages))])
        sources: list[tuple[str, Any, str]] = [("index.html", index, "klteach — contents")]
        for page in pages:
            if page.source.suffix == ".ipynb":
                notebook = nbformat.read(page.source, as_version=4)
                if edition == "student":
                    student = coursework.student_notebook(notebook, page.source.name)
                    notebook = nbformat.reads(coursework.notebook_text(student), as_version=4)
                notebook = static_outputs(notebook)
            else:
                notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(page.source.read_text())])
            sources.append((page.name, notebook, page.title))
        for name, notebook, title in sources:
            page_html = add_github_anchors(relink(_render(exporter, notebook, title, navigation(pages, name), mathjax),
                                                  names))
            _copy_local_images(page_html, notebooks, staging)
            (staging / name).write_text(page_html)
        (staging / MARKER).write_text("built by python -m klteach site; the whole folder is replaced on rebuild\n")
        staging.chmod(0o755)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return [out / name for name, _, _ in sources]


def cmd_site(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    written = build_site(Path(args.out), Path(args.notebooks) if args.notebooks else None, args.edition)
    broken = broken_links(Path(args.out))
    print(f"wrote {len(written)} pages to {args.out} in {time.perf_counter() - started:.1f} s; "
          f"open {Path(args.out) / 'index.html'}")
    for link in broken:
        print(f"warning: broken link {link}")
    return 1 if broken else 0


def add_subcommand(subparsers: Any) -> None:
    """Register ``site OUT [--notebooks DIR]`` (contract 7)."""
    parser = subparsers.add_parser("site", help="build the chapters, with their saved outputs, into a static "
                                                "HTML site (no kernel, no network)")
    parser.add_argument("out", help="folder for the site (new, empty, or a site built there before)")
    parser.add_argument("--edition", default="student", choices=coursework.EDITIONS,
                        help="student (default): exercises without their solutions; instructor: as they are")
    parser.add_argument("--notebooks", default=None,
                        help="the chapters' folder (default: the course's own, notebooks/ of a clone)")
    parser.set_defaults(handler=cmd_site)

