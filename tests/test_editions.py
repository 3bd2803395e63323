"""The two editions (klteach.coursework): the student edition holds no solution and still runs;
the notebooks follow nbgrader's conventions; `python -m klteach course` writes a course safely; a
wheel carries the course."""
import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from klteach import coursework
from klteach.course import recordings_dir
from klteach.coursework import (
    INSTRUCTOR_ONLY,
    SOLUTION_BEGIN,
    SOLUTION_END,
    answer_metadata,
    course_files,
    solution_metadata,
    source_of,
    student_notebook,
    write_course,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHAPTERS = [nb for nb in NOTEBOOKS if not nb.name.startswith("00-")]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def exercise_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"]
            if c["cell_type"] == "code" and "from klteach.exercises import" in source_of(c)]


def solution_lines(source: str) -> list[str]:
    """The stripped lines between the solution markers."""
    inside, found = False, []
    for line in source.split("\n"):
        if SOLUTION_BEGIN in line or SOLUTION_END in line:
            inside = SOLUTION_BEGIN in line
        elif inside and line.strip():
            found.append(line.strip())
    return found


def run_cell(source: str) -> str:
    """Execute one exercise cell with only the imports every chapter makes; return what it printed."""
    import math

    import torch

    from klteach import metrics, theory
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "<exercise cell>", "exec"), {"math": math, "torch": torch, "theory": theory,
                                                          "metrics": metrics})
    return printed.getvalue()


# ---------------------------------------------------------------- the instructor edition follows the conventions

# nbgrader's cell metadata schema, version 3 (nbgrader/nbgraderformat/v3.json), for a CI without nbgrader
NBGRADER_KEYS = {"schema_version", "grade", "locked", "solution", "task", "grade_id", "points", "checksum", "cell_type"}


def check_nbgrader_metadata(cell: dict) -> None:
    meta = cell["metadata"]["nbgrader"]
    assert set(meta) <= NBGRADER_KEYS, f"keys nbgrader does not know: {set(meta) - NBGRADER_KEYS}"
    assert {"schema_version", "grade", "locked", "solution"} <= set(meta), meta
    assert meta["schema_version"] == 3 and all(isinstance(meta[k], bool) for k in ("grade", "locked", "solution"))
    if meta["grade"] or meta["solution"] or meta["locked"]:
        assert re.fullmatch(r"[a-zA-Z0-9_\-]+", meta.get("grade_id", "")), meta
    if meta["grade"]:
        assert isinstance(meta.get("points"), (int, float)) and meta["points"] >= 0, meta
    if cell["cell_type"] == "markdown":   # a written answer is graded by hand: grade AND solution
        assert meta["grade"] == meta["solution"], meta


def test_metadata_helpers_follow_nbgrader_schema_3():
    check_nbgrader_metadata({"cell_type": "code", "metadata": {"nbgrader": solution_metadata("ex1-1-posterior")}})
    check_nbgrader_metadata({"cell_type": "markdown", "metadata": {"nbgrader": answer_metadata("q2-1", 2)}})


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_is_an_nbgrader_solution_cell_that_runs_as_a_stub(path):
    notebook = load(path)
    exercises = exercise_cells(notebook)
    assert exercises, f"{path.name} has no exercise"
    for cell in exercises:
        source = source_of(cell)
        assert cell["metadata"].get("nbgrader", {}).get("solution"), f"{cell['id']}: not an nbgrader solution cell"
        assert solution_lines(source), f"{cell['id']}: no solution between the markers"
        assert not re.search(r"^assert\s+check_", source, re.M), f"{cell['id']}: a stub would stop Run All"
        tree = ast.parse(source)
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        begin = next(i for i, line in enumerate(source.split("\n"), 1) if SOLUTION_BEGIN in line)
        assert any(f.lineno < begin <= f.end_lineno for f in functions), \
            f"{cell['id']}: the solution must sit inside the student's function"


def test_grade_ids_are_unique_and_every_nbgrader_cell_is_valid():
    seen = set()
    for path in NOTEBOOKS:
        for cell in load(path)["cells"]:
            if "nbgrader" in cell["metadata"]:
                check_nbgrader_metadata(cell)
                grade_id = cell["metadata"]["nbgrader"]["grade_id"]
                assert grade_id not in seen, f"{path.name}: grade_id {grade_id} used twice"
                seen.add(grade_id)
            elif SOLUTION_BEGIN in source_of(cell):
                pytest.fail(f"{path.name}, cell {cell['id']}: solution markers in a cell without nbgrader metadata")
    assert len(seen) >= 19


def bound_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def used_names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def parse(source: str) -> ast.Module:
    return ast.parse("\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!"))))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_later_cell_uses_what_a_student_writes(path):
    """A student's function may be wrong or a stub: nothing outside the exercise cells may use it."""
    notebook = load(path)
    exercises = exercise_cells(notebook)
    student_names = set().union(*(bound_names(parse(source_of(c))) for c in exercises))
    others = [parse(source_of(c)) for c in notebook["cells"] if c["cell_type"] == "code" and c not in exercises]
    bound_elsewhere = set().union(*(bound_names(t) for t in others))
    leaks = {name for tree in others for name in used_names(tree)} & (student_names - bound_elsewhere)
    assert not leaks, f"{path.name}: cells outside the exercises use {sorted(leaks)}, which a student writes"


# ---------------------------------------------------------------- the student edition

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_holds_no_solution_and_keeps_every_other_cell(path):
    instructor = load(path)
    student = student_notebook(instructor, path.name)
    text = json.dumps(student, ensure_ascii=False)
    removed = [c for c in instructor["cells"] if INSTRUCTOR_ONLY in c["metadata"].get("tags", [])
               or (c["cell_type"] == "markdown" and c["metadata"].get("nbgrader", {}).get("solution"))]
    by_id = {c["id"]: c for c in student["cells"]}
    for cell in instructor["cells"]:
        solution = solution_lines(source_of(cell))
        if solution:   # no line of it left in its cell, and the whole solution nowhere in the notebook
            kept_lines = set(solution) & {line.strip() for line in source_of(by_id.get(cell["id"], {})).split("\n")}
            assert not kept_lines, f"{path.name}: solution lines {kept_lines} kept"
            assert json.dumps("\n".join(solution), ensure_ascii=False)[1:-1] not in text
    for cell in removed:
        assert cell["id"] not in {c["id"] for c in student["cells"]}
    def plain(cells):
        return [c for c in cells if c not in removed and not c["metadata"].get("nbgrader", {}).get("solution")]
    assert plain(instructor["cells"]) == plain(student["cells"])
    for cell in student["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("solution"):
            assert cell["outputs"] == [] and cell["execution_count"] is None
            assert "NBVAL_CHECK_OUTPUT" not in source_of(cell), "no stored output is left to compare with"
            assert "raise NotImplementedError()" in source_of(cell)
    assert student["metadata"] == instructor["metadata"]


def test_exercise_2_4_answer_is_instructor_only():
    instructor = load(REPO / "notebooks" / "02-distillation-kl.ipynb")
    answer = [c for c in instructor["cells"] if "closes 90 % of the gap" in source_of(c)]
    assert len(answer) == 1 and INSTRUCTOR_ONLY in answer[0]["metadata"].get("tags", [])
    assert "closes 90 %" not in json.dumps(student_notebook(instructor), ensure_ascii=False)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_student_exercise_says_not_yet_without_a_traceback(path, one_thread_float32):
    for cell in exercise_cells(student_notebook(load(path), path.name)):
        printed = run_cell(source_of(cell))
        assert re.fullmatch(r"✘ Not yet: replace the `raise NotImplementedError\(\)` in \w+ with your answer\n",
                            printed), printed


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_instructor_exercises_pass(path, one_thread_float32):
    for cell in exercise_cells(load(path)):
        printed = run_cell(source_of(cell))
        assert printed.startswith("✔ Correct"), printed
        stored = "".join("".join(o.get("text", "")) for o in cell["outputs"])
        assert printed == stored, "the stored output (checked by nbval) has changed"


@pytest.mark.parametrize("source, problem", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "top level"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside another"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without"),
])
def test_malformed_solution_regions_are_refused_with_the_cell_named(source, problem):
    notebook = {"cells": [{"cell_type": "code", "id": "abc123", "source": source, "outputs": [],
                           "execution_count": None, "metadata": {"nbgrader": solution_metadata("x")}}],
                "metadata": {}}
    with pytest.raises(ValueError, match=f"ch9.ipynb, cell abc123: .*{problem}"):
        student_notebook(notebook, "ch9.ipynb")


def test_markers_outside_a_solution_cell_are_refused():
    notebook = {"cells": [{"cell_type": "code", "id": "abc123", "source": "def f():\n    ### BEGIN SOLUTION\n",
                           "outputs": [], "execution_count": None, "metadata": {}}], "metadata": {}}
    with pytest.raises(ValueError, match="not a solution cell"):
        student_notebook(notebook, "ch9.ipynb")


def test_written_answers_and_instructor_only_cells_are_removed():
    cells = [{"cell_type": "markdown", "id": "q", "source": "Derive (14).", "metadata": {}},
             {"cell_type": "markdown", "id": "a", "source": "Set (12) to zero ...",
              "metadata": {"nbgrader": answer_metadata("q3-1-derive-14")}},
             {"cell_type": "markdown", "id": "t", "source": "Ask the room first.",
              "metadata": {"tags": [INSTRUCTOR_ONLY]}}]
    student = student_notebook({"cells": cells, "metadata": {}})
    assert [c["id"] for c in student["cells"]] == ["q"]


# ---------------------------------------------------------------- python -m klteach course

def course_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "klteach", "course", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_course_command_writes_both_editions_and_refuses_to_overwrite_work(tmp_path):
    student = tmp_path / "my course"
    done = course_command(str(student))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in student.iterdir())
    assert names == sorted(p.name for p in course_files() if p.name not in coursework.INSTRUCTOR_FILES), names
    assert "LECTURER.md" in {p.name for p in course_files()} and "LECTURER.md" not in names   # the lecturer's only
    assert "raise NotImplementedError()" in (student / "01-mixture-model.ipynb").read_text()
    assert course_command(str(student)).returncode == 0           # unchanged files: nothing to refuse

    work = student / "02-distillation-kl.ipynb"
    work.write_text(work.read_text().replace("raise NotImplementedError()", "return q * (q / p).log()", 1))
    refused = course_command(str(student), "--edition", "instructor")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert re.match(r"error: .*my course/01-mixture-model.ipynb already exists and differs from the instructor "
                    r"edition \(and \d+ more\); .* pass --force", refused.stderr), refused.stderr
    assert "return q * (q / p).log()" in work.read_text()
    assert "raise NotImplementedError()" in (student / "01-mixture-model.ipynb").read_text(), "nothing written"

    forced = course_command(str(student), "--edition", "instructor", "--force")
    assert forced.returncode == 0, forced.stderr
    for path in course_files():
        assert (student / path.name).read_bytes() == path.read_bytes()    # the instructor edition is the source
    assert not list(student.glob(".*.partial"))


def test_course_command_bad_input(tmp_path):
    wrong = course_command(str(tmp_path / "c"), "--edition", "teacher")
    assert wrong.returncode == 2 and "invalid choice: 'teacher' (choose from 'student', 'instructor')" in wrong.stderr
    (tmp_path / "file").write_text("x")
    not_a_folder = course_command(str(tmp_path / "file"))
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr


def test_the_lecturers_guide_stays_out_of_the_student_edition(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "notebooks" / "00-index.ipynb", source)
    (source / "equations.md").write_text("# (1) ...\n")
    (source / "LECTURER.md").write_text("# Chapter 2: before pressing Start, ask ...\n")
    written = write_course(tmp_path / "s", "student", source=source)
    assert [p.name for p in written] == ["00-index.ipynb", "equations.md"]
    assert len(write_course(tmp_path / "i", "instructor", source=source)) == 3


# ---------------------------------------------------------------- the course ships with the package

def test_recordings_are_found_in_a_clone():
    assert recordings_dir() == REPO / "benchmarks" / "results"
    assert coursework.course_source() == REPO / "notebooks"


def test_a_wheel_carries_the_course(tmp_path):
    """``pip install .`` (not editable) has no repository: the package itself must carry the
    chapters (and chapter 5's recordings), where klteach.coursework and klteach.course look."""
    source = tmp_path / "source"     # build from a copy: no build/ in the repository
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("klteach", "notebooks", "benchmarks/results", "data"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("klteach-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"klteach/notebooks/{p.name}" for p in course_files()} <= names, sorted(names)
    assert {f"klteach/recordings/{p.name}" for p in recordings_dir().glob("*.json")} <= names
    assert "klteach/coursework.py" in names


def test_nbgrader_generates_a_release_from_the_notebooks_unchanged(tmp_path):
    """Where nbgrader is installed (it pins its own dependencies: keep it in a separate venv),
    ``nbgrader generate_assignment`` accepts the instructor notebooks and hides every solution."""
    pytest.importorskip("nbgrader")
    import os
    source = tmp_path / "source" / "klteach"
    source.mkdir(parents=True)
    for path in NOTEBOOKS:
        shutil.copy(path, source)
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.CourseDirectory.course_id = 'klteach'\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")   # its alembic
    done = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "klteach"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in NOTEBOOKS:
        released = json.loads((tmp_path / "release" / "klteach" / path.name).read_text())
        stubs = [source_of(c) for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("solution")]
        assert all("raise NotImplementedError()" in s or s == "YOUR ANSWER HERE" for s in stubs)
        for cell in load(path)["cells"]:
            assert not set(solution_lines(source_of(cell))) & {s.strip() for t in stubs for s in t.split("\n")}
