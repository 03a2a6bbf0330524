"""Fixtures for the ledger tests: rental databases with the ledger, and ways to compare them.

- rental_template (session): a database loaded from softguard/demo/rental.sql with the
  ledger applied, used as TEMPLATE (CREATE DATABASE ... TEMPLATE is a file copy: fast).
- rental_db: a factory; rental_db() -> name of a fresh copy, dropped after the test.
- ledger: a `Ledger` helper (drop through softguard.drop_op, run statements directly,
  snapshot a database's live state, undo).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.pg import TestServer

from softguard.ledger import apply_migrations

# The one copy of ../shared/fixtures/rental.sql in the repository ships with the demo.
FIXTURE = Path(__file__).resolve().parents[2] / "softguard" / "demo" / "rental.sql"
NONOWNER = "sg_ledger_nonowner"
NONOWNER_PW = "nonowner-pw"
PRIVATE_NOTICES = {"SGBEG", "SGEND"}


@dataclass
class Result:
    """What a client saw: the error (SQLSTATE, message) if any, and the notices."""

    error: tuple[str | None, str | None] | None = None
    hint: str | None = None
    notices: list[tuple[str | None, str | None]] = field(default_factory=list)

    @property
    def sqlstate(self) -> str | None:
        return self.error[0] if self.error else None

    def public_notices(self) -> list[tuple[str | None, str | None]]:
        """Notices a client sees through the proxy (markers and the softguard line removed)."""
        return [
            n
            for n in self.notices
            if n[0] not in PRIVATE_NOTICES and not (n[1] or "").startswith("softguard: ")
        ]

    def softguard_notice(self) -> str | None:
        found = [n[1] for n in self.notices if (n[1] or "").startswith("softguard: ")]
        assert len(found) <= 1, self.notices
        return found[0] if found else None


def _dump_blocks(text: str) -> str:
    """A schema dump without the softguard event triggers and pg_dump's volatile lines."""
    blocks = re.split(r"\n(?=--\n-- Name: )", text)
    kept = [b for b in blocks if "softguard_capture" not in b and "softguard._capture" not in b]
    lines = [
        line
        for line in "\n".join(kept).splitlines()
        if not line.startswith("-- Dumped ")
        and not line.startswith("\\restrict")
        and not line.startswith("\\unrestrict")
    ]
    return "\n".join(lines)


@dataclass
class Ledger:
    server: TestServer
    nonowner: dict[str, str] = field(
        default_factory=lambda: {"user": NONOWNER, "password": NONOWNER_PW}
    )

    def dsn(self, db: str, user: str | None = None, password: str | None = None) -> str:
        if user is None:
            return self.server.superuser_dsn(db)
        return self.server.dsn(db, user, password)

    def connect(self, db: str, **kw: Any) -> psycopg.Connection[Any]:
        kw.setdefault("autocommit", True)
        user = kw.pop("user", None)
        password = kw.pop("password", None)
        return psycopg.connect(self.dsn(db, user, password), **kw)

    # -- running statements ------------------------------------------------------------

    @staticmethod
    def run(conn: psycopg.Connection[Any], fn: Callable[[psycopg.Connection[Any]], Any]) -> Result:
        out = Result()

        def on_notice(d: psycopg.errors.Diagnostic) -> None:
            out.notices.append((d.sqlstate, d.message_primary))

        conn.add_notice_handler(on_notice)
        try:
            fn(conn)
        except psycopg.Error as e:
            out.error = (e.diag.sqlstate, e.diag.message_primary)
            out.hint = e.diag.message_hint
            if not conn.autocommit:
                conn.rollback()
        finally:
            conn.remove_notice_handler(on_notice)
        return out

    @staticmethod
    def cascade_variant(stmt: str) -> str | None:
        """What the proxy passes as stmt_cascade (None when CASCADE is there already)."""
        if re.search(r"\bcascade\s*;?\s*$", stmt, re.I):
            return None
        return re.sub(r"\s*(\brestrict\b)?\s*;?\s*$", "", stmt, flags=re.I) + " CASCADE"

    @staticmethod
    def action(stmt: str) -> str:
        words = stmt.split()
        n = 3 if words[1].upper() == "MATERIALIZED" else 2
        return " ".join(w.upper() for w in words[:n])

    def drop_via_softguard(self, conn: psycopg.Connection[Any], stmt: str, **ctx: Any) -> Result:
        context = {"action": self.action(stmt), "offset": 0, **ctx}
        return self.run(
            conn,
            lambda c: c.execute(
                "CALL softguard.drop_op(%s, %s, %s)",
                [stmt, self.cascade_variant(stmt), json.dumps(context)],
            ),
        )

    def direct(self, conn: psycopg.Connection[Any], stmt: str) -> Result:
        return self.run(conn, lambda c: c.execute(stmt.encode()))

    def drop(self, db: str, stmt: str, **kw: Any) -> Result:
        with self.connect(db, **kw) as c:
            return self.drop_via_softguard(c, stmt)

    def execute(self, db: str, stmt: str, **kw: Any) -> Result:
        with self.connect(db, **kw) as c:
            return self.direct(c, stmt)

    def undo(
        self, db: str, op: int, rename_to: str | None = None, cascade: bool = False
    ) -> list[str]:
        with self.connect(db) as c:
            rows = c.execute(
                "SELECT * FROM softguard.undo_op(%s, %s, %s)", [op, rename_to, cascade]
            ).fetchall()
        return [r[0] for r in rows]

    def operations(self, db: str) -> list[dict[str, Any]]:
        with self.connect(db) as c:
            cur = c.cursor(row_factory=psycopg.rows.dict_row)
            return cur.execute("SELECT * FROM softguard.operations ORDER BY id").fetchall()

    def last_op(self, db: str) -> int:
        with self.connect(db) as c:
            row = c.execute("SELECT max(id) FROM softguard.operations").fetchone()
        assert row is not None and row[0] is not None
        return int(row[0])

    # -- comparing databases -----------------------------------------------------------

    def schema_dump(self, db: str) -> str:
        out = subprocess.run(
            [
                str(self.server.bin("pg_dump")),
                "--schema-only",
                "--exclude-schema=softguard",
                "--exclude-schema=softguard_quarantine",
                "--exclude-schema=softguard_q*",
                "-d",
                self.dsn(db),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return _dump_blocks(out)

    def data(self, db: str) -> dict[str, Any]:
        """Per-table checksums and row counts, sequence states (live schemas only)."""
        with self.connect(db) as c:
            tables = c.execute(
                """SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'm') AND n.nspname NOT LIKE 'pg\\_%'
                      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'softguard%'
                    ORDER BY 1"""
            ).fetchall()
            out: dict[str, Any] = {}
            for (t,) in tables:
                q = sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                    " FROM {} t"
                ).format(sql.SQL(t))
                out[t] = c.execute(q).fetchone()
            seqs = c.execute(
                """SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind = 'S' AND n.nspname NOT LIKE 'softguard%' ORDER BY 1"""
            ).fetchall()
            for (s,) in seqs:
                q = sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(s))
                out["seq " + s] = c.execute(q).fetchone()
        return out

    def snapshot(self, db: str) -> tuple[str, dict[str, Any]]:
        return self.schema_dump(db), self.data(db)


@pytest.fixture(scope="session")
def rental_template(pg_server: TestServer) -> Iterator[str]:
    name = pg_server.create_database()
    try:
        pg_server.ensure_role(NONOWNER, NONOWNER_PW)
        pg_server.run_sql_file(name, FIXTURE)
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            apply_migrations(c)
            # the non-owner may create its own tables (for the ownership tests)
            c.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(NONOWNER))
            )
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def rental_db(pg_server: TestServer, rental_template: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = "sg_l_" + uuid.uuid4().hex[:12]
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            c.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(rental_template)
                )
            )
        made.append(name)
        return name

    yield make
    for name in made:
        pg_server.drop_database(name)


@pytest.fixture
def ledger(pg_server: TestServer) -> Ledger:
    return Ledger(pg_server)
