"""The package's import graph: every module imports, and no two modules import each other (directly or around a loop).

Imports are read from the source with `ast`, function-level ones included: a deferred import only hides a cycle from
the interpreter at load time, it still ties the two modules together (neither can move or be tested without the
other), which is what issue 15 asked to remove. A package `__init__` is counted only when it is imported itself.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = "jean_nerfstudio"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_names() -> Dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package modules that `name` imports anywhere in its source (top level, functions, type-checking blocks)."""
    is_package = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in known:  # `import a.b.c` of a non-module attribute path
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if not source.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:  # `from package import module`
                    found.add(submodule)
                elif source in known:  # `from module import attribute`
                    found.add(source)
    found.discard(name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    names = module_names()
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_sees_function_level_imports():
    """The checker itself: a loop closed only by a deferred import is still a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from jean_nerfstudio.models import sources\n"
    tree_names = {"jean_nerfstudio.models", "jean_nerfstudio.models.sources", "jean_nerfstudio.x"}
    path = Path(__file__).with_name("_import_graph_probe.py")
    try:
        path.write_text(source, encoding="utf-8")
        assert imported_modules("jean_nerfstudio.x", path, tree_names) == {"jean_nerfstudio.models.sources"}
    finally:
        path.unlink(missing_ok=True)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles among jean_nerfstudio modules:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports(name):
    """Every module imports on its own (optional heavy dependencies are deferred to where they are used)."""
    if name.endswith("fields.triton_grid"):
        pytest.importorskip("triton")
    importlib.import_module(name)


DRIVING_SIDE = ("jean_nerfstudio.render", "jean_nerfstudio.eval", "jean_nerfstudio.metrics", "jean_nerfstudio.models")
"""Layers that use a processed clip but never make one: they read it through `contract.ProcessedClip` only."""


def test_driving_side_never_imports_processing():
    """render, eval, metrics and models read a dataset through the contract; the landmarker, the video probe and
    the image metrics they share with `jean-process` live outside `process/` (issue 15, the data/model seam)."""
    graph = import_graph()
    reaching = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith(DRIVING_SIDE)
        for target in targets
        if target.startswith("jean_nerfstudio.process")
    )
    assert not reaching, "driving-side modules import process/:\n" + "\n".join(reaching)
