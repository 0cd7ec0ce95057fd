"""The import structure: no function-level import of gistgym dodges an import cycle.

A function-level import is fine for laziness (torch-free registration, a fast ``gistgym
--help``); one that would close a cycle if moved to the top of its module hides a dependency
knot (``docs/adding-a-task-family.md``: the registries name families by entry points).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
MODULES = {
    (package if p.stem == "__init__" else f"{package}.{p.stem}"): p
    for package, folder in PACKAGE_DIR.items()
    for p in (ROOT / folder).glob("*.py")
}


def _module_of(name: str) -> str | None:
    parts = name.split(".")
    return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in MODULES), None)


def _targets(node: ast.AST) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    return [m for m in map(_module_of, names) if m is not None]


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: list[tuple[str, str, int]] = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            top[name].update(_targets(node))
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                lazy += [(name, t, sub.lineno) for sub in ast.walk(fn) for t in _targets(sub)]
    for name in MODULES:  # importing a.b.c imports the packages a.b and a first
        for m in list(top[name]):
            parts = m.split(".")
            top[name].update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in MODULES)
        top[name].discard(name)
    return top, lazy


def _reaches(top: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for nxt in top[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def test_the_module_graph_is_read() -> None:
    top, lazy = _graph()
    assert "gistgym.agents.backends" in top["gistgym.agents.compare"]
    assert len(MODULES) > 90 and len(lazy) > 50


def test_no_function_level_import_dodges_a_cycle() -> None:
    top, lazy = _graph()
    dodging = sorted({
        f"{MODULES[src].relative_to(ROOT)}:{line} imports {dst}"
        for src, dst, line in lazy
        if src == dst or src in _reaches(top, dst)
    })  # fmt: skip
    assert not dodging, "function-level imports that would close an import cycle:\n" + "\n".join(dodging)
