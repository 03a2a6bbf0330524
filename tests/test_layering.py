"""The import graph: dependencies point one way, proxy/ and sql/ have no cycles, the core
is pure.

Every ``import`` counts, including those under TYPE_CHECKING and inside functions: a
cycle that only typing sees is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "softguard"

# Lower layers never import higher ones; a package imports its own layer only where
# listed in SAME_LAYER. (cli -> proxy/ledger -> policy -> sql, wire; STYLE.md)
LAYERS: list[set[str]] = [
    {"contract", "_hotpath"},  # names shared with the database; the compiled module (C)
    {"speedups"},  # which base classes: the compiled ones or plain Python
    {"wire", "sql"},  # pure: the codec, the SQL seam
    {"policy", "soft_delete_config", "embedded", "auth"},
    {"config"},
    {"proxy", "ledger"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
SAME_LAYER = {("proxy", "ledger")}
# The per-connection state machine and the planner: no I/O, no event loop.
PURE_MODULES = ("softguard.proxy.core", "softguard.proxy.statements")
IO_MODULES = ("asyncio", "socket", "ssl", "selectors", "psycopg", "uvloop")


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("softguard", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


GRAPH = {name: _imports(path) for name, path in _modules()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"softguard.{package} is in no layer: add it to LAYERS")


def test_dependencies_point_one_way() -> None:
    wrong = []
    for module, imports in GRAPH.items():
        here = _top(module)
        if not here:
            continue
        for imported in imports:
            there = _top(imported) if imported.startswith("softguard.") else None
            if there is None or there == here:
                continue
            if _layer(there) > _layer(here) or (
                _layer(there) == _layer(here) and (here, there) not in SAME_LAYER
            ):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("package", ["proxy", "sql"])
def test_no_import_cycles_inside(package: str) -> None:
    modules = {m for m in GRAPH if m.startswith(f"softguard.{package}.")}
    edges = {m: {i for i in GRAPH[m] if i in modules and i != m} for m in modules}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_core_and_planner_do_no_io() -> None:
    for module in PURE_MODULES:
        direct = {i.split(".")[0] for i in GRAPH[module]} & set(IO_MODULES)
        assert not direct, f"{module} imports {direct}"
    # Nor anything they import: no event loop, no database driver behind them.
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE_MODULES)
        + "print(' '.join(m for m in ('asyncio', 'psycopg', 'uvloop') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing the core loads {out}"
