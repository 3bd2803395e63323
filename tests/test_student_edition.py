"""The student edition runs: Run All on every chapter, with each solution a stub, reaches the end.

Each chapter is written as ``python -m klteach course DIR --edition student`` writes it, into a
folder of its own, and executed top to bottom in a fresh kernel in quick mode, as a student would
with Run All. A cell that needs a student's answer, or a checker that raises on a stub, fails it;
every exercise must answer "Not yet", since a stub is not an answer (issue 12).
"""
from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

from klteach import coursework

CHAPTERS = sorted(coursework.course_source().glob("[0-9][0-9]-*.ipynb"))


def run_all(path: Path) -> nbformat.NotebookNode:
    """Execute ``path`` in a fresh kernel in its own folder, as Run All does; raise on a failing cell."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


def printed(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("output_type") == "stream")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_the_student_edition_of_each_chapter_runs_to_the_end(chapter: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLTEACH_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    student = tmp_path / chapter.name
    student.write_text(coursework.edition_text(chapter, "student"))
    notebook = run_all(student)
    instructor = nbformat.read(chapter, as_version=4)
    exercises = {cell.id for cell in instructor.cells if coursework.is_solution(cell) and cell.cell_type == "code"
                 and "check_" in cell.source}
    ran = [cell for cell in notebook.cells if cell.get("id") in exercises]
    assert len(ran) == len(exercises), "an exercise cell is missing from the student edition"
    for cell in ran:
        assert "✘ Not yet" in printed(cell) and "✔" not in printed(cell), (cell.id, printed(cell))
