"""softguard.sql is a pure seam: it imports nothing but itself, softguard.contract (the
names shared with the database), the standard library, pglast and orjson. Its import
cycles are checked with the other packages' in tests/test_layering.py."""

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


def test_softguard_sql_imports_only_itself_contract_stdlib_pglast_and_orjson() -> None:
    for path in PACKAGE.glob("*.py"):
        for module in imports_of(path):
            top = module.split(".")[0]
            inside = module in ("softguard.sql", "softguard.contract") or module.startswith(
                "softguard.sql."
            )
            allowed = inside or top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
            assert allowed, f"{path.name} imports {module}"
