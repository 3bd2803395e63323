"""The course as a whole: every equation is taught, notebooks use the library, not copies of it, and
constraints.txt pins the environment the course is tested in.

``python tests/test_course.py > constraints.txt`` rewrites the constraints from the environment
this runs in (after the whole suite has passed there)."""
import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import nbformat
import pytest

import klteach

REPO = Path(__file__).parent.parent
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]-*.ipynb"))
CHAPTERS = [nb for nb in NOTEBOOKS if not nb.name.startswith("00-")]


def cells(notebook: Path, kind: str) -> list[str]:
    return [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == kind]


def code_tree(notebook: Path) -> ast.Module:
    source = "\n".join(line for cell in cells(notebook, "code") for line in cell.splitlines()
                       if not line.lstrip().startswith(("%", "!")))
    return ast.parse(source)


def library_functions() -> dict[str, str]:
    """Public functions and classes defined in klteach, by name -> module."""
    found = {}
    for info in pkgutil.walk_packages(klteach.__path__, "klteach."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == info.name \
                    and not name.startswith("_"):
                found[name] = info.name
    return found


def test_there_are_seven_chapters():
    assert [nb.name[:2] for nb in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"], NOTEBOOKS


@pytest.mark.parametrize("number", range(1, 24))
def test_every_equation_is_referenced_in_the_chapters(number):
    pattern = re.compile(rf"\({number}\)|eq(uation)?s?\.?\s*\(?{number}\b")
    assert any(pattern.search(text) for nb in CHAPTERS for text in cells(nb, "markdown") + cells(nb, "code")), \
        f"equation ({number}) is not referenced in any chapter"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_klteach_name_a_notebook_uses_exists(notebook):
    aliases: dict[str, object] = {}
    for node in ast.walk(code_tree(notebook)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("klteach"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*":
                    continue
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")   # a submodule, or it fails
                aliases[alias.asname or alias.name] = getattr(module, alias.name, None)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("klteach"):
                    module = importlib.import_module(alias.name)
                    aliases[alias.asname or alias.name.split(".")[0]] = \
                        module if alias.asname else importlib.import_module("klteach")
    for node in ast.walk(code_tree(notebook)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = aliases.get(node.value.id)
            if inspect.ismodule(owner) and owner.__name__.startswith("klteach"):
                assert hasattr(owner, node.attr) or importlib.util.find_spec(f"{owner.__name__}.{node.attr}"), \
                    f"{notebook.name} uses {owner.__name__}.{node.attr}, which does not exist"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_do_not_redefine_library_functions(notebook):
    library = library_functions()
    defined = {node.name for node in ast.walk(code_tree(notebook))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    copies = {name: library[name] for name in defined & set(library)}
    assert not copies, f"{notebook.name} re-defines library code: {copies}; import it instead"


# ---------------------------------------------------------------- the course's environment (constraints.txt)

CONSTRAINTS = REPO / "constraints.txt"
CONSTRAINTS_HEADER = """\
# The course's CPU environment, pinned: every package klteach and its tests (the dev extra) need, at the
# versions installed where the suite and the chapters pass (CPython 3.11, Linux x86-64, no GPU).
#   pip install torch==2.13.0   (the CPU build, first)
#   pip install -c constraints.txt -e ".[dev]"
# Regenerate from an environment where everything passes: python tests/test_course.py > constraints.txt
"""


def project_requirements() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def installed_closure(requirements: list[str]) -> dict[str, str]:
    """Canonical name -> installed version of every distribution ``requirements`` pull in here
    (markers evaluated for this interpreter, extras followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo = [(Requirement(r), {""}) for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, extras_of_parent = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras_of_parent):
            continue
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in done:
            continue
        done.add(key)
        distribution = importlib.metadata.distribution(requirement.name)
        found[key[0]] = distribution.version
        todo += [(Requirement(r), set(requirement.extras) | {""}) for r in distribution.requires or []]
    return found


def pinned() -> dict[str, str]:
    from packaging.utils import canonicalize_name
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def public(version: str) -> str:
    """``2.13.0`` for ``2.13.0+cpu``: the constraint names the release, pip's index picks the build."""
    return version.split("+")[0]


def test_constraints_pin_every_package_the_course_needs_as_installed():
    needed = {name: public(version) for name, version in installed_closure(project_requirements()).items()}
    pins = pinned()
    assert not set(needed) - set(pins), f"not pinned in constraints.txt: {sorted(set(needed) - set(pins))}"
    assert not set(pins) - set(needed), f"pinned but not needed: {sorted(set(pins) - set(needed))}"
    differ = {name: (pins[name], needed[name]) for name in pins if pins[name] != needed[name]}
    assert not differ, f"constraints.txt (pinned, installed) differ from this environment: {differ}"
    assert pins["torch"] == "2.13.0"


def test_pyproject_bounds_admit_the_pinned_versions():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins = pinned()
    for text in project_requirements():
        requirement = Requirement(text)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)]), \
            f"pyproject says {text}, constraints.txt pins {pins[canonicalize_name(requirement.name)]}"


if __name__ == "__main__":
    closure = installed_closure(project_requirements())
    sys.stdout.write(CONSTRAINTS_HEADER + "".join(f"{name}=={public(closure[name])}\n" for name in sorted(closure)))
