"""Fixtures for the end-to-end reversible-DROP tests (through the proxy).

- drop_template (session): a database loaded from softguard/demo/rental.sql plus a few
  extra objects (an inheritance parent/child, a function, a procedure, a standalone
  sequence, an unused type and domain, a quoted mixed-case table with a view, a table
  ``big``). Unlike the ledger tests' template it has NO softguard ledger: the proxy must
  install it on the first DROP, and the direct twin never has it.
- twins: factory; twins(n=2) -> n fresh copies (CREATE DATABASE ... TEMPLATE), dropped
  after the test.
- sg: a `DropKit` (superuser helpers: ledger rows, schema dump, data checksums, undo).

The rental template helpers of tests/ledger/conftest.py (Ledger.schema_dump / data, the
dump filter) are reused by loading that file as a plain module (its fixtures are not
registered here; nothing in it is modified).
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.modules import load_module
from support.pg import TestServer

_LEDGER_CONFTEST = Path(__file__).resolve().parents[1] / "ledger" / "conftest.py"


_ledger_helpers = load_module("_sg_proxy_drop_ledger_helpers", _LEDGER_CONFTEST)
Ledger = _ledger_helpers.Ledger
FIXTURE: Path = _ledger_helpers.FIXTURE

# Objects the rental fixture lacks, needed by the DROP forms under test.
EXTRAS = r"""
CREATE TABLE vehicle_notes (id int PRIMARY KEY, note text NOT NULL);
CREATE TABLE damage_notes (severity int NOT NULL DEFAULT 1) INHERITS (vehicle_notes);
INSERT INTO vehicle_notes VALUES (1, 'scratch'), (2, 'dent');
INSERT INTO damage_notes VALUES (3, 'broken mirror', 3);
COMMENT ON TABLE damage_notes IS 'inherits vehicle_notes';

CREATE FUNCTION add_tax(amount numeric) RETURNS numeric
    LANGUAGE sql IMMUTABLE AS $$ SELECT amount * 1.19 $$;
COMMENT ON FUNCTION add_tax(numeric) IS 'gross from net';
CREATE PROCEDURE cancel_stale(days int) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE reservations SET status = 'cancelled'
   WHERE status = 'pending' AND starts_on < current_date - days;
END $$;

CREATE SEQUENCE invoice_no START 1000 INCREMENT 7;
SELECT setval('invoice_no', 1077);
GRANT USAGE ON SEQUENCE invoice_no TO rental_app;

CREATE TYPE fuel AS ENUM ('petrol', 'diesel', 'electric');
CREATE TYPE money_range AS (lo numeric, hi numeric);
CREATE DOMAIN plate_code AS text CHECK (VALUE ~ '^[A-Z]{2}-[0-9]+$');

CREATE TABLE "Fleet Audit" (id serial PRIMARY KEY, "Checked By" text, "OK" boolean);
INSERT INTO "Fleet Audit" ("Checked By", "OK") VALUES ('Ann', true), ('Bob', false);
CREATE VIEW "Fleet Audit Failures" AS SELECT id, "Checked By" FROM "Fleet Audit" WHERE NOT "OK";

CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL);
INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 3000) g;
CREATE VIEW big_summary AS SELECT count(*) AS n FROM big;
CREATE TABLE big_refs (id int PRIMARY KEY, big_id bigint REFERENCES big (id));
INSERT INTO big_refs SELECT g, g FROM generate_series(1, 100) g;
ANALYZE;
"""


class DropKit:
    """Superuser-side helpers (direct to PostgreSQL, never through the proxy)."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.ledger = Ledger(server)

    def dsn(self, db: str) -> str:
        return self.server.superuser_dsn(db)

    def connect(self, db: str, **kw: Any) -> psycopg.Connection[Any]:
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(db), **kw)

    def execute(self, db: str, *stmts: str) -> None:
        with self.connect(db) as c:
            for s in stmts:
                c.execute(s.encode())

    def has_ledger(self, db: str) -> bool:
        with self.connect(db) as c:
            row = c.execute("SELECT to_regclass('softguard.operations')").fetchone()
        return row is not None and row[0] is not None

    def operations(self, db: str) -> list[dict[str, Any]]:
        """Rows of softguard.operations (none when the ledger is not installed)."""
        if not self.has_ledger(db):
            return []
        with self.connect(db) as c:
            cur = c.cursor(row_factory=psycopg.rows.dict_row)
            return cur.execute(
                "SELECT id, kind, statement, state, db_role, objects FROM softguard.operations"
                " ORDER BY id"
            ).fetchall()

    def active_ops(self, db: str) -> list[int]:
        """Active reversible operations (not the records of undos)."""
        return [
            o["id"] for o in self.operations(db) if o["state"] == "active" and o["kind"] != "UNDO"
        ]

    def undo(self, db: str, op: int) -> list[str]:
        with self.connect(db) as c:
            rows = c.execute("SELECT softguard.undo_op(%s)", [op]).fetchall()
        return [r[0] for r in rows]

    def schema_dump(self, db: str) -> str:
        """pg_dump --schema-only without softguard's schemas / event triggers, db name
        normalised."""
        out = subprocess.run(
            [
                str(self.server.bin("pg_dump")),
                "--schema-only",
                "-N",
                "softguard",
                "-N",
                "softguard_quarantine",
                "-N",
                "softguard_q*",
                "-d",
                self.dsn(db),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        # The softguard event triggers are removed with their blocks; any other line
        # naming softguard (a live default pointing into quarantine...) stays: it would
        # be a difference from the direct twin.
        text = _ledger_helpers._dump_blocks(out)
        # _dump_blocks drops pg_dump's trailer with the last (event trigger) block
        text = text.replace("--\n-- PostgreSQL database dump complete\n--", "").rstrip()
        return re.sub(re.escape(db), "<db>", text)

    def data(self, db: str) -> dict[str, Any]:
        return self.ledger.data(db)

    def extras(self, db: str) -> dict[str, Any]:
        """Comments, grants, RLS policies, triggers of the live schemas."""
        q = {
            "comments": """
                SELECT 'rel', format('%I.%I', n.nspname, c.relname), d.objsubid, d.description
                  FROM pg_description d JOIN pg_class c ON c.oid = d.objoid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE d.classoid = 'pg_class'::regclass AND n.nspname NOT LIKE 'softguard%'
                   AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                UNION ALL
                SELECT 'proc', p.oid::regprocedure::text, d.objsubid, d.description
                  FROM pg_description d JOIN pg_proc p ON p.oid = d.objoid
                  JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE d.classoid = 'pg_proc'::regclass AND n.nspname NOT LIKE 'softguard%'
                   AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                 ORDER BY 1, 2, 3""",
            "grants": """
                SELECT format('%I.%I', n.nspname, c.relname), c.relacl::text FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                   AND n.nspname NOT LIKE 'softguard%' AND c.relacl IS NOT NULL
                 ORDER BY 1""",
            "policies": """
                SELECT schemaname, tablename, policyname, roles::text, qual FROM pg_policies
                 WHERE schemaname NOT LIKE 'softguard%' ORDER BY 1, 2, 3""",
            "rls": """
                SELECT format('%I.%I', n.nspname, c.relname), c.relrowsecurity FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relrowsecurity AND n.nspname NOT LIKE 'softguard%' ORDER BY 1""",
            "triggers": """
                SELECT format('%I.%I', n.nspname, c.relname), t.tgname, pg_get_triggerdef(t.oid)
                  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  JOIN pg_proc p ON p.oid = t.tgfoid
                 WHERE NOT t.tgisinternal AND n.nspname NOT LIKE 'softguard%'
                   -- softguard's own capture triggers are part of the ledger, not the schema
                   AND p.pronamespace <> ALL (ARRAY(
                         SELECT oid FROM pg_namespace WHERE nspname LIKE 'softguard%'))
                 ORDER BY 1, 2""",
        }
        with self.connect(db) as c:
            return {k: c.execute(v).fetchall() for k, v in q.items()}

    def snapshot(self, db: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return self.schema_dump(db), self.data(db), self.extras(db)


@pytest.fixture(scope="session")
def drop_template(pg_server: TestServer) -> Iterator[str]:
    name = pg_server.create_database()
    try:
        pg_server.run_sql_file(name, FIXTURE)
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            c.execute(EXTRAS.encode())
        yield name
    finally:
        pg_server.drop_database(name)


class DatabasePool:
    """Copies of the template made ahead of time by a background thread (the server copies
    files while the tests do client-side work); ``take()`` hands out a fresh one."""

    def __init__(
        self, server: TestServer, template: str, ahead: int = 3, strategy: str = "FILE_COPY"
    ) -> None:
        self.server = server
        self.template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._slots = threading.Semaphore(ahead)
        self._stop = threading.Event()
        # CREATE DATABASE ... STRATEGY (PostgreSQL 15+). FILE_COPY copies the template's
        # files instead of WAL-logging them; it checkpoints before and after each copy,
        # which costs more than WAL_LOG once other databases have dirtied many buffers.
        self._strategy = f" STRATEGY {strategy}" if server.version_num >= 150000 else ""
        self._thread = threading.Thread(target=self._fill, name="sg-db-pool", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            with psycopg.connect(self.server.superuser_dsn(), autocommit=True) as c:
                while not self._stop.is_set():
                    if not self._slots.acquire(timeout=0.2):
                        continue
                    if self._stop.is_set():
                        break
                    name = "sg_pd_" + uuid.uuid4().hex[:12]
                    c.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}" + self._strategy).format(
                            sql.Identifier(name), sql.Identifier(self.template)
                        )
                    )
                    self._ready.put(name)
        except BaseException as exc:  # handed to the next take()
            self._ready.put(exc)

    def take(self) -> str:
        item = self._ready.get(timeout=120)
        if isinstance(item, BaseException):
            raise RuntimeError("could not copy the template database") from item
        self._slots.release()
        return item

    def drop(self, names: list[str]) -> None:
        if not names:
            return
        with psycopg.connect(self.server.superuser_dsn(), autocommit=True) as c:
            for name in names:
                c.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        left = []
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, str):
                left.append(item)
        self.drop(left)


@pytest.fixture(scope="session")
def db_pool(pg_server: TestServer, drop_template: str) -> Iterator[DatabasePool]:
    pool = DatabasePool(pg_server, drop_template)
    try:
        yield pool
    finally:
        pool.close()


def make_twins(pool: DatabasePool) -> Iterator[Callable[..., list[str]]]:
    """The body of a ``twins`` fixture over ``pool``: twins(n) -> n fresh copies, dropped
    after the test."""
    made: list[str] = []

    def make(n: int = 2) -> list[str]:
        names = [pool.take() for _ in range(n)]
        made.extend(names)
        return names

    yield make
    pool.drop(made)


@pytest.fixture
def twins(db_pool: DatabasePool) -> Iterator[Callable[..., list[str]]]:
    yield from make_twins(db_pool)


@pytest.fixture
def sg(pg_server: TestServer) -> DropKit:
    return DropKit(pg_server)


@pytest.fixture(scope="session")
def pristine(
    db_pool: DatabasePool, pg_server: TestServer
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Schema dump, data checksums and extras of an untouched copy of the template."""
    name = db_pool.take()
    try:
        return DropKit(pg_server).snapshot(name)
    finally:
        db_pool.drop([name])
