"""The library's layout: subpackages by capability, imports that go one way, modules of a readable size."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parent.parent / "vipcli_model"

# Each part of the library and what it may import (besides itself and the shared modules). A part lower in this list
# may import the parts above it that are named; nothing imports upward, so there is no circle between parts.
SHARED = {"errors", "config", "files", "prompts", "device", "batch"}
MAY_IMPORT = {
    "errors": set(),
    "config": {"errors"},
    "files": {"errors"},
    "prompts": set(),
    "device": {"errors"},
    "batch": {"errors"},
    "images": SHARED,
    "cts": SHARED,
    "speed": SHARED | {"cts"},
    "pipelines": SHARED | {"cts", "speed"},
    "models": SHARED | {"cts", "speed", "pipelines"},
    "captioning": SHARED | {"images", "models"},
    "outpainting": SHARED | {"images", "cts", "speed", "pipelines", "models", "captioning"},
    "editing": SHARED | {"images", "models", "captioning", "outpainting"},
    "training": SHARED | {"images", "cts", "speed", "pipelines", "models", "captioning", "outpainting"},
    "evaluation": SHARED | {"images", "cts", "speed", "pipelines", "models", "captioning", "outpainting"},
    "distributed": SHARED | {"images", "captioning", "outpainting", "editing"},
}
MAX_LINES = 540  # about 500 lines; ruff format puts long argument lists one a line


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vipcli_model"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vipcli_model"))
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_part_is_known_and_the_top_level_is_small():
    top = sorted(
        path.stem if path.is_file() else path.name
        for path in LIBRARY.iterdir()
        if path.name != "__pycache__" and path.name != "__init__.py"
    )
    assert set(top) == set(MAY_IMPORT), f"new parts of the library need a place in MAY_IMPORT: {top}"
    assert len(top) <= 17


def test_parts_import_only_what_they_may():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        part = _part(module)
        if not part:
            continue
        for target in _imports(path, modules, top_level_only=False):
            other = _part(target)
            if other and other != part and other not in MAY_IMPORT[part]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    modules = _modules()
    graph = {module: _imports(path, modules, top_level_only=True) & set(modules) for module, path in modules.items()}
    done, stack = set(), []

    def visit(module: str) -> None:
        if module in stack:
            cycle = stack[stack.index(module) :] + [module]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target != module:
                visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_modules_stay_readable():
    long = {
        str(path.relative_to(LIBRARY)): n
        for path in LIBRARY.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_part_says_what_it_is():
    for path in LIBRARY.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} has no docstring"


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+(?!\w)")  # vip's flags; not `accelerate launch --num_processes`


def test_library_messages_name_arguments_not_flags():
    """The library names its own arguments (`steps`); the command line shows its flags instead."""
    found = []
    for path in LIBRARY.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if FLAG.search(node.value):
                    found.append(f"{path.relative_to(LIBRARY)}:{node.lineno}: {node.value[:80]!r}")
    assert not found, "\n".join(found)


def test_public_api_loads_lazily():
    """``import vipcli_model`` is light (``--preview`` needs no torch); every exported name resolves."""
    import subprocess
    import sys

    code = (
        "import sys, vipcli_model; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; "
        "names = vipcli_model.__all__; [getattr(vipcli_model, name) for name in names]; print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 20
