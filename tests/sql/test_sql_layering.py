"""softguard.sql is a pure seam: no import cycles inside it, and it imports nothing but
itself, softguard.contract (the names shared with the database), the standard library,
pglast and orjson."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import softguard.sql

PACKAGE = Path(softguard.sql.__file__).parent
ALLOWED_THIRD_PARTY = {"pglast", "orjson"}


def imports_of(path: Path) -> set[str]:
    """Every module *path* imports, at any level of the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "softguard.sql":
                found.update(f"softguard.sql.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {f"softguard.sql.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_softguard_sql_imports_only_itself_contract_stdlib_pglast_and_orjson() -> None:
    for path in PACKAGE.glob("*.py"):
        for module in imports_of(path):
            top = module.split(".")[0]
            inside = module in ("softguard.sql", "softguard.contract") or module.startswith(
                "softguard.sql."
            )
            allowed = inside or top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
            assert allowed, f"{path.name} imports {module}"


def test_softguard_sql_has_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, target])
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_graph_is_not_trivially_empty() -> None:
    edges = graph()
    assert "softguard.sql.model" in edges["softguard.sql.analyze"]
    assert "softguard.sql.analyze" in edges["softguard.sql.classify"]
