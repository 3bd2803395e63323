"""Two editions of the course from one source, and ``python -m klteach course DIR``.

The notebooks in the repository are the **instructor edition**: every exercise holds its worked
solution, and the answers to the questions are written out. The **student edition** is made from
them by removing what gives an answer away. A lecturer who uses nbgrader can instead run
``nbgrader generate_assignment`` on the instructor notebooks unchanged: the markers below are
nbgrader's.

Conventions for whoever writes or edits a chapter
-------------------------------------------------
**Exercise cell** (a code cell whose function the student writes, checked by
``klteach.exercises``)::

    # NBVAL_CHECK_OUTPUT
    from klteach.exercises import check_posterior

    def my_posterior(z, w, tau, prior):
        ### BEGIN SOLUTION
        ...the worked solution...
        ### END SOLUTION

    passed = check_posterior(my_posterior)

- the solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, *inside* the
  function, so that the student edition's stub raises only when the checker calls it;
- the checker is called outside the markers and is never ``assert``-ed (``passed = ...``): a stub
  then prints "✘ Not yet: replace the `raise NotImplementedError()` ..." and Run All goes on;
- the cell's metadata is ``{"nbgrader": solution_metadata("ex1-1-posterior")}``: nbgrader's
  solution cell, with a ``grade_id`` unique in the course (``ex<chapter>-<number>-<checker>``);
- no other cell may use a name the exercise cell defines (the student's function, ``passed``):
  later cells must run whatever the student wrote; use the library's function there instead.

**Written answer** to a question (e.g. a derivation at the end of a chapter): a markdown cell right
after the question, metadata ``{"nbgrader": answer_metadata("q2-1-derive-5", points=2)}``
(nbgrader's manually graded answer). The student edition drops it; nbgrader replaces it by
"YOUR ANSWER HERE".

**Instructor-only cell**: the cell tag ``instructor-only`` (any cell type; in JupyterLab, the
property inspector's tags). The student edition drops it. If it gives an answer away, also make
it a solution cell with its whole source between the markers, so that nbgrader hides it too
(exercise 2.4's printed answer is the example).

**Files**: a course folder holds every ``*.ipynb`` and ``*.md`` of ``notebooks/`` (the chapters
and the equations page ``equations.md``); the student edition leaves out
:data:`INSTRUCTOR_FILES` (the lecturer's guide ``LECTURER.md``).

What the student edition does, cell by cell: instructor-only cells and written answers are
removed; in every solution cell each region between the markers becomes nbgrader's stub
(``# YOUR CODE HERE`` / ``raise NotImplementedError()``, at the marker's indentation), the
``# NBVAL_CHECK_OUTPUT`` line goes (there is no stored output left to compare with) and the
outputs are cleared; every other cell is kept as it is, outputs included. Notebooks are read and
written as plain JSON in nbformat's own layout, so the instructor edition is a byte-for-byte copy.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import klteach

EDITIONS = ("student", "instructor")
COURSE_FILES = ("*.ipynb", "*.md")
"""What a course folder holds: the chapters and the equations page (``pyproject.toml`` ships the same)."""
INSTRUCTOR_FILES = ("LECTURER.md",)
"""Course files the student edition leaves out (the lecturer's guide)."""

SOLUTION_BEGIN = "### BEGIN SOLUTION"
SOLUTION_END = "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
"""nbgrader's stub for Python, line by line."""
INSTRUCTOR_ONLY = "instructor-only"
NBVAL_CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"

Notebook = dict[str, Any]
Cell = dict[str, Any]


def solution_metadata(grade_id: str) -> dict[str, Any]:
    """nbgrader's metadata for an exercise cell (schema 3): a solution cell, not graded by itself."""
    return {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3, "solution": True}


def answer_metadata(grade_id: str, points: float = 1) -> dict[str, Any]:
    """nbgrader's metadata for a written answer (a manually graded markdown solution cell)."""
    return {"grade": True, "grade_id": grade_id, "locked": False, "points": points,
            "schema_version": 3, "solution": True}


def source_of(cell: Cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def is_solution(cell: Cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def is_instructor_only(cell: Cell) -> bool:
    return INSTRUCTOR_ONLY in cell.get("metadata", {}).get("tags", [])


def stub_solutions(source: str, where: str) -> str:
    """``source`` with each region between the solution markers replaced by nbgrader's stub.

    Raises ``ValueError`` (naming ``where``) for an unclosed or nested region, or one at the top
    level of a cell, whose stub would stop Run All."""
    lines, inside = [], False
    for line in source.split("\n"):
        if SOLUTION_BEGIN in line:
            if inside:
                raise ValueError(f"{where}: '{SOLUTION_BEGIN}' inside another solution region")
            indent = line[:len(line) - len(line.lstrip())]
            if not indent:
                raise ValueError(f"{where}: a solution region at the top level of a cell would raise "
                                 "NotImplementedError at Run All; put it inside the student's function, "
                                 f"or tag the cell {INSTRUCTOR_ONLY!r}")
            lines += [indent + stub for stub in CODE_STUB]
            inside = True
        elif SOLUTION_END in line:
            if not inside:
                raise ValueError(f"{where}: '{SOLUTION_END}' without '{SOLUTION_BEGIN}'")
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{where}: '{SOLUTION_BEGIN}' is never closed by '{SOLUTION_END}'")
    return "\n".join(lines)


def student_cell(cell: Cell, where: str) -> Cell | None:
    """The student edition of one cell, or None when the student edition drops it."""
    if is_instructor_only(cell) or (is_solution(cell) and cell["cell_type"] == "markdown"):
        return None
    source = source_of(cell)
    if not is_solution(cell):
        if SOLUTION_BEGIN in source:
            raise ValueError(f"{where}: '{SOLUTION_BEGIN}' in a cell that is not a solution cell; "
                             "give it nbgrader solution metadata (klteach.coursework.solution_metadata)")
        return cell
    if SOLUTION_BEGIN not in source:
        raise ValueError(f"{where}: a solution cell without '{SOLUTION_BEGIN}': nbgrader would replace "
                         "the whole cell; mark the solution inside the student's function")
    stubbed = stub_solutions(source, where)
    stubbed = "\n".join(line for line in stubbed.split("\n") if line.strip() != NBVAL_CHECK_OUTPUT)
    student = copy.deepcopy(cell)
    student["source"] = stubbed.splitlines(keepends=True)
    student["outputs"], student["execution_count"] = [], None
    student["metadata"].pop("execution", None)      # the instructor run's timings
    return student


def student_notebook(notebook: Notebook, name: str = "notebook") -> Notebook:
    """The student edition of a notebook (the input is not changed)."""
    student = copy.deepcopy(notebook)
    cells = [student_cell(cell, f"{name}, cell {cell.get('id', index)}")
             for index, cell in enumerate(student["cells"])]
    student["cells"] = [cell for cell in cells if cell is not None]
    return student


def notebook_text(notebook: Notebook) -> str:
    """A notebook as nbformat writes it (one-space indent, sorted keys), so diffs stay small."""
    return json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def course_source() -> Path:
    """The folder that holds the instructor edition: ``notebooks/`` of a clone (or an editable
    install), else the copy a plain ``pip install`` puts inside the package."""
    clone = Path(klteach.__file__).resolve().parent.parent / "notebooks"
    if (clone / "00-index.ipynb").is_file():
        return clone
    return Path(klteach.__file__).resolve().parent / "notebooks"


def course_files(source: Path | None = None) -> list[Path]:
    """The files of the course, sorted: every chapter and the equations page."""
    source = course_source() if source is None else source
    files = sorted({path for pattern in COURSE_FILES for path in source.glob(pattern) if path.is_file()})
    if not any(path.suffix == ".ipynb" for path in files):
        raise FileNotFoundError(f"no course notebooks in {source}; reinstall klteach (pip install klteach)")
    return files


def edition_text(path: Path, edition: str) -> str:
    """The text of one course file in ``edition``."""
    text = path.read_text(encoding="utf-8")
    if edition == "student" and path.suffix == ".ipynb":
        return notebook_text(student_notebook(json.loads(text), path.name))
    return text


def write_course(folder: str | os.PathLike, edition: str = "student", force: bool = False,
                 source: Path | None = None) -> list[Path]:
    """Write the course in ``edition`` to ``folder`` and return the paths written.

    A file already in ``folder`` that differs from the edition (perhaps a student's work) is
    not overwritten unless ``force``: then nothing at all is written. Each file is written whole
    or not at all (a temporary file, then a rename)."""
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {', '.join(EDITIONS)}, got {edition!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    texts = {folder / path.name: edition_text(path, edition) for path in course_files(source)
             if edition == "instructor" or path.name not in INSTRUCTOR_FILES}
    changed = {path: text for path, text in texts.items()
               if not path.is_file() or path.read_text(encoding="utf-8") != text}
    kept = [path for path in changed if path.exists()]
    if kept and not force:
        more = f" (and {len(kept) - 1} more)" if len(kept) > 1 else ""
        raise FileExistsError(f"{kept[0]} already exists and differs from the {edition} edition{more}; "
                              "it may hold your work: pass --force to overwrite, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in changed.items():
        _write_atomic(path, text)
    return list(texts)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text, encoding="utf-8", newline="")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- python -m klteach course

def run(args: argparse.Namespace) -> int:
    """``python -m klteach course DIR [--edition student|instructor] [--force]``."""
    try:
        written = write_course(args.dir, args.edition, args.force)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the {args.edition} edition ({len(written)} files) to {args.dir}; "
          f"start with: jupyter lab {Path(args.dir) / '00-index.ipynb'}")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Add ``course`` to ``python -m klteach``'s subcommands."""
    parser = subparsers.add_parser(
        "course", help="write the chapters to a folder: the student edition (exercises to do) or the "
                       "instructor edition (with solutions and answers)",
        description="Write the course's chapters and equations page to DIR.")
    parser.add_argument("dir", help="the folder to write to (created if needed)")
    parser.add_argument("--edition", choices=EDITIONS, default="student",
                        help="student: solutions replaced by stubs, answers removed (default); "
                             "instructor: the notebooks as they are")
    parser.add_argument("--force", action="store_true",
                        help="overwrite files in DIR that differ from the edition (work in them is lost)")
    parser.set_defaults(handler=run)
