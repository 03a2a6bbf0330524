"""softguard's own connections (softguard/ledger/db.py) and the CLI's shared helpers
(softguard/cli/common.py): the options every connection gets, the errors callers see, and
the one line an error becomes."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.pg import TestServer
from support.ports import free_port
from typer.testing import CliRunner

from softguard.cli.common import parse_since, short
from softguard.cli.main import app
from softguard.ledger.db import (
    CLI_APPLICATION_NAME,
    PURGE_APPLICATION_NAME,
    CannotConnect,
    InvalidDsn,
    LedgerError,
    connect,
    error_line,
    milliseconds,
)
from softguard.ledger.scheduler import connector
from softguard.soft_delete_config import SoftDeleteRule


def _settings(conn: psycopg.Connection[object]) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT current_setting('application_name'), current_setting('lock_timeout')"
    ).fetchone()
    assert row is not None
    return (*row, conn.autocommit, conn.info.get_parameters().get("connect_timeout"))


def test_connect_sets_softguard_options(pg_server: TestServer) -> None:
    dsn = pg_server.superuser_dsn()
    with connect(dsn) as conn:
        assert _settings(conn) == (CLI_APPLICATION_NAME, "0", True, "10")
    with connect(dsn, lock_timeout=1.5, connect_timeout=3) as conn:
        assert _settings(conn) == (CLI_APPLICATION_NAME, "1500ms", True, "3")
    # what the DSN says wins over softguard's defaults
    own = make_conninfo(dsn, application_name="operator", connect_timeout=7)
    with connect(own) as conn:
        assert _settings(conn) == ("operator", "0", True, "7")


def test_scheduled_purge_connects_to_each_database(pg_server: TestServer) -> None:
    connect_to = connector(pg_server.superuser_dsn("postgres"), 4)
    with connect_to("template1") as conn:
        assert conn.info.dbname == "template1"
        assert _settings(conn) == (PURGE_APPLICATION_NAME, "0", True, "4")


def test_connection_errors_are_ledger_errors() -> None:
    with pytest.raises(CannotConnect) as refused:
        connect(f"host=127.0.0.1 port={free_port()} dbname=x user=x", connect_timeout=2)
    assert isinstance(refused.value, LedgerError)
    assert "\n" not in str(refused.value) and str(refused.value)
    with pytest.raises(InvalidDsn) as invalid:
        connect("this is not a dsn")
    assert isinstance(invalid.value, CannotConnect)
    assert "\n" not in str(invalid.value)


def test_error_line(pg_server: TestServer) -> None:
    with (
        psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.Error) as server,
    ):
        conn.execute("SELECT 1/0")
    assert error_line(server.value) == "division by zero"
    wrapped = LedgerError.from_psycopg(server.value, "while testing: ")
    assert (str(wrapped), wrapped.sqlstate) == ("while testing: division by zero", "22012")
    assert error_line(RuntimeError("first\nsecond")) == "first"
    assert error_line(RuntimeError("")) == "RuntimeError"


def test_milliseconds_never_zero() -> None:
    assert (milliseconds(2.0), milliseconds(0.0001)) == ("2000ms", "1ms")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ops", "--dsn", "this is not a dsn"], 2, "softguard: invalid --dsn: "),
        (["space", "--dsn", "this is not a dsn"], 2, "softguard: invalid --dsn: "),
        (
            ["purge", "--dsn", "host=127.0.0.1 port={port}", "--dry-run"],
            1,
            "softguard: cannot connect: ",
        ),
        (["init", "--dsn", "host=127.0.0.1 port={port}"], 1, "softguard: "),
    ],
)
def test_commands_say_why_they_cannot_connect(args: list[str], code: int, message: str) -> None:
    port = free_port()
    r = CliRunner().invoke(app, [a.format(port=port) for a in args])
    assert r.exit_code == code, r.output
    assert r.output.startswith(message), r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize(
    ("schema", "table", "database", "expected"),
    [
        ("public", "users", "app", True),
        (None, "users", "app", True),  # unqualified: any schema
        ("audit", "users", "app", False),
        ("public", "orders", "app", False),
        ("public", "users", "other", False),
    ],
)
def test_soft_delete_entry_matching(
    schema: str | None, table: str, database: str, expected: bool
) -> None:
    rule = SoftDeleteRule(table="public.us*", column="deleted_at", database="app")
    assert rule.matches(database, schema, table) is expected


def test_shared_formats() -> None:
    assert short("DELETE   FROM t\nWHERE x", 12) == "DELETE FROM…"
    assert parse_since("1h30m").total_seconds() == 5400  # type: ignore[union-attr]
