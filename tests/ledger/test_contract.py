"""softguard/contract.py against the installed database code: every shared name appears in
it, the operation NOTICE the database emits parses with the Python parser for every kind of
operation, and the undo result row and the structured error DETAIL read back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from support.pg import TestServer

from softguard import contract
from softguard.ledger import apply_migrations


@pytest.fixture(scope="module")
def dsn(pg_server: TestServer) -> Iterator[str]:
    with pg_server.scratch_database() as db:
        dsn = pg_server.superuser_dsn(db)
        with psycopg.connect(dsn, autocommit=True) as c:
            apply_migrations(c)
        yield dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET client_min_messages = warning")  # softguard's own notices still show
        yield c


def _installed_code(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT string_agg(pg_get_functiondef(p.oid), E'\\n') FROM pg_proc p"
        " WHERE p.pronamespace = 'softguard'::regnamespace"
    ).fetchone()
    assert row is not None
    return str(row[0])


_SHARED = {
    "BEGIN_CODE": contract.BEGIN_CODE,
    "END_CODE": contract.END_CODE,
    "TAG_CODE": contract.TAG_CODE,
    "PROBE_CODE": contract.PROBE_CODE,
    "TAG_MARKER": contract.TAG_MARKER,
    "NOTICE_MARKER": contract.NOTICE_MARKER,
    "BLOCKED_CODE": contract.BLOCKED_CODE,
    "BLOCKED_BY": contract.BLOCKED_BY,
    "REGISTER_SESSION_FUNCTION": contract.REGISTER_SESSION_FUNCTION,
    "REGISTER_ROLE_FUNCTION": contract.REGISTER_ROLE_FUNCTION,
    **{f"setting {name}": name for name in contract.SETTINGS},
}


@pytest.mark.parametrize("name", list(_SHARED))
def test_constant_appears_in_the_installed_code(conn: psycopg.Connection[Any], name: str) -> None:
    value = _SHARED[name]
    assert value in _installed_code(conn), f"{name} = {value!r} is not in the database code"


def test_undo_step_type_is_the_contract_row(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a"
        " WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = %s::regtype)"
        " AND a.attnum > 0 ORDER BY a.attnum",
        [contract.UNDO_STEP_TYPE],
    ).fetchall()
    assert tuple(r[0] for r in rows) == contract.UNDO_STEP_COLUMNS


def test_one_formatter(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT softguard._op_notice('DROP TABLE', 'public.a, public.b', 42,"
        " '2026-12-04 12:00'::timestamptz)"  # noon in the session's time zone
    ).fetchone()
    assert row is not None
    text = contract.format_operation_notice("DROP TABLE", "public.a, public.b", 42, "2026-12-04")
    assert row[0] == text
    assert contract.parse_operation_notice(text) == contract.OperationNotice(
        42, "DROP TABLE public.a, public.b", "2026-12-04"
    )


def test_blocked_detail_round_trip(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT softguard._blocked_detail(7), softguard._blocked_by(%s)",
        [f"{contract.BLOCKED_BY}=12"],
    ).fetchone()
    assert row is not None
    assert contract.blocking_operation(contract.BLOCKED_CODE, row[0]) == 7
    assert row[1] == 12
    assert contract.blocking_operation("55000", row[0]) is None
    assert contract.parse_detail("held by operation 7") == {}


_CTX = {"client_addr": "127.0.0.1", "retention_seconds": 3600, "offset": 0}
_SETUP = """
DROP TABLE IF EXISTS public.k, public.k2, public.k3, public.k4, public.k5, public.k6;
CREATE TABLE public.k (id int PRIMARY KEY, v text);
CREATE TABLE public.k2 (id int PRIMARY KEY, v text);
CREATE TABLE public.k3 (id int PRIMARY KEY, v text, w int);
CREATE TABLE public.k4 (id int PRIMARY KEY, v int);
CREATE TABLE public.k5 (id int PRIMARY KEY, v text, deleted_at timestamptz);
CREATE TABLE public.k6 (id int PRIMARY KEY, v text);
INSERT INTO public.k SELECT g, 'x' FROM generate_series(1, 3) g;
INSERT INTO public.k2 SELECT g, 'x' FROM generate_series(1, 3) g;
INSERT INTO public.k3 SELECT g, 'x', g FROM generate_series(1, 3) g;
INSERT INTO public.k4 SELECT g, g FROM generate_series(1, 3) g;
INSERT INTO public.k5 SELECT g, 'x' FROM generate_series(1, 3) g;
INSERT INTO public.k6 SELECT g, 'x' FROM generate_series(1, 3) g;
"""

_SOFT_INFO = {
    "column": "deleted_at",
    "mark_kind": "timestamp",
    "by_column": None,
    "by_value": "role",
    "statement": "DELETE FROM k5 WHERE id = 1",
    "verb": "DELETE",
}

# kind in the ledger -> the statement(s) that make one, as the proxy sends them
_OPERATIONS: dict[str, list[tuple[str, list[Any]]]] = {
    "DROP TABLE": [
        (
            "CALL softguard.drop_op(%s, NULL, %s)",
            ["DROP TABLE public.k6", orjson.dumps({**_CTX, "action": "DROP TABLE"}).decode()],
        )
    ],
    "TRUNCATE": [
        (
            "CALL softguard.truncate_op(%s, %s)",
            ["TRUNCATE public.k", orjson.dumps({**_CTX, "action": "TRUNCATE TABLE"}).decode()],
        )
    ],
    "ALTER TABLE DROP COLUMN": [
        (
            "CALL softguard.alter_op(%s, %s)",
            [
                "ALTER TABLE public.k3 DROP COLUMN w",
                orjson.dumps({**_CTX, "action": "ALTER TABLE"}).decode(),
            ],
        )
    ],
    "ALTER TABLE ALTER COLUMN TYPE": [
        (
            "CALL softguard.alter_op(%s, %s)",
            [
                "ALTER TABLE public.k4 ALTER COLUMN v TYPE bigint",
                orjson.dumps(
                    {
                        **_CTX,
                        "action": "ALTER TABLE",
                        "drop_column": False,
                        "columns": [{"schema": "public", "table": "k4", "column": "v"}],
                    }
                ).decode(),
            ],
        )
    ],
    "DELETE": [("DELETE FROM public.k2 WHERE id = 1", [])],
    "UPDATE": [("UPDATE public.k2 SET v = 'y' WHERE id = 2", [])],
    "MERGE": [
        (
            "MERGE INTO public.k2 t USING (SELECT 3 AS id) s ON t.id = s.id"
            " WHEN MATCHED THEN DELETE",
            [],
        )
    ],
    "DELETE (soft delete)": [
        (
            "UPDATE public.k5 SET deleted_at = (SELECT softguard.soft_delete_begin("
            "'public.k5'::regclass, 'public.k5', %s::jsonb, now())) WHERE id = 1"
            " AND deleted_at IS NULL",
            [orjson.dumps(_SOFT_INFO).decode()],
        )
    ],
}


# case -> (the ledger's kind, how the NOTICE starts)
_EXPECTED = {
    "DROP TABLE": ("DROP TABLE", "DROP TABLE public.k6"),
    "TRUNCATE": ("TRUNCATE", "TRUNCATE TABLE public.k"),
    "ALTER TABLE DROP COLUMN": ("ALTER TABLE", "ALTER TABLE DROP COLUMN public.k3.w"),
    "ALTER TABLE ALTER COLUMN TYPE": ("ALTER TABLE", "ALTER TABLE ALTER COLUMN TYPE public.k4"),
    "DELETE": ("DELETE", "DELETE FROM public.k2"),
    "UPDATE": ("UPDATE", "UPDATE public.k2"),
    "MERGE": ("MERGE", "MERGE INTO public.k2"),
    "DELETE (soft delete)": ("DELETE", "DELETE FROM public.k5 (soft delete: deleted_at set)"),
}


@pytest.mark.parametrize("case", list(_OPERATIONS))
def test_emitted_notice_parses(dsn: str, conn: psycopg.Connection[Any], case: str) -> None:
    conn.execute(_SETUP)
    notices: list[str] = []
    with psycopg.connect(
        dsn, autocommit=True, options=f"-c {contract.CAPTURE_SETTING}=delete,update"
    ) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for statement, args in _OPERATIONS[case]:
            c.execute(statement, args or None)
    announced = [n for n in map(contract.parse_operation_notice, notices) if n is not None]
    assert len(announced) == 1, notices
    [notice] = announced
    row = conn.execute(
        "SELECT kind, to_char(expires_at, 'YYYY-MM-DD') FROM softguard.operations WHERE id = %s",
        [notice.op],
    ).fetchone()
    kind, starts = _EXPECTED[case]
    assert row == (kind, notice.expires)
    assert notice.what.startswith(starts), notice.what

    # and undo reports it as rows of the contract's type
    steps = conn.execute(
        "SELECT op, action, object, detail, rows FROM softguard.undo_steps(%s)", [notice.op]
    ).fetchall()
    parsed = [contract.UndoStep(*r) for r in steps]
    assert parsed and all(s.op == notice.op and s.detail for s in parsed), parsed


def test_undo_steps_needs_the_undo_op_grant(conn: psycopg.Connection[Any]) -> None:
    """undo_steps is callable by anyone but undoes only for a role that may EXECUTE
    undo_op(bigint, text, boolean): one grant decides who may undo."""
    conn.execute("SET ROLE sg_trust")  # a login role of the test server, not granted undo_op
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="undo_steps"):
            conn.execute("SELECT * FROM softguard.undo_steps(1)")
    finally:
        conn.execute("RESET ROLE")
