"""The course as a whole: every equation is taught, and notebooks use the library, not copies of it."""
import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import nbformat
import pytest

import klteach

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
