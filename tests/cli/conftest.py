"""Fixtures for the CLI tests: the ledger fixtures of tests/ledger, reused.

tests/ledger/conftest.py is loaded under its own module name (conftest files of
non-package directories are not importable by name; nothing in it is modified) and its
`rental_db` and `ledger` fixtures are re-exported here:
- rental_template (session): the rental database with the ledger applied (see below);
- rental_db: factory; rental_db() -> a fresh copy (CREATE DATABASE ... TEMPLATE);
- ledger: the `Ledger` helper (drop through softguard.drop_op, run statements, undo).

rental_template is re-implemented (same steps as tests/ledger's) because the original
cannot be made twice in one session: its role check `if not c.execute("SELECT FROM
pg_roles ...").fetchone()` is always true (a zero-column row is an empty, falsy tuple), so a
second instance, after tests/ledger's, fails with "role ... already exists".
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.pg import TestServer

from softguard.ledger import apply_migrations

_PATH = Path(__file__).resolve().parents[1] / "ledger" / "conftest.py"
_NAME = "_softguard_tests_ledger_conftest"


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


_ledger_conftest = _load()
rental_db = _ledger_conftest.rental_db
ledger = _ledger_conftest.ledger
Ledger = _ledger_conftest.Ledger


@pytest.fixture(scope="session")
def rental_template(pg_server: TestServer) -> Iterator[str]:
    role, password = _ledger_conftest.NONOWNER, _ledger_conftest.NONOWNER_PW
    name = pg_server.create_database()
    try:
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
                c.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
        subprocess.run(
            [
                str(pg_server.bin("psql")),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(_ledger_conftest.FIXTURE),
                "-d",
                pg_server.superuser_dsn(name),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            apply_migrations(c)
            c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        yield name
    finally:
        pg_server.drop_database(name)


__all__ = ["Ledger", "ledger", "rental_db", "rental_template"]
