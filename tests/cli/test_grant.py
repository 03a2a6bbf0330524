"""`softguard grant ROLE --ops|--undo|--purge`: a fresh non-superuser operator role can do
nothing with the ledger, and after each grant exactly that command works (issue 12,
least privilege). The CLI runs in-process against the test server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.pg import TestServer
from typer.testing import CliRunner, Result

from softguard.cli.grant_cmd import GRANTS
from softguard.cli.main import app

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)
PASSWORD = "operator-pw"

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture
def operator(pg_server: TestServer) -> Iterator[str]:
    role = "sg_operator_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        c.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
    yield role
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        for (db,) in c.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
        ).fetchall():
            with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as d:
                d.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


def _op(ledger: Ledger, db: str, stmt: str) -> int:
    result = ledger.drop(db, stmt)
    assert result.error is None, result
    return int(ledger.last_op(db))


def _state(ledger: Ledger, db: str, op: int) -> str:
    return {o["id"]: o["state"] for o in ledger.operations(db)}[op]


def test_an_operator_role_gets_exactly_what_each_command_needs(
    ledger: Ledger, db: str, operator: str
) -> None:
    admin = ledger.dsn(db)
    mine = ledger.dsn(db, operator, PASSWORD)
    first = _op(ledger, db, "DROP TABLE billing.refunds")
    second = _op(ledger, db, "DROP TABLE events")

    # a fresh role can do nothing
    for args in (["ops"], ["show", str(first)], ["undo", str(first), "--yes"], ["purge", "--yes"]):
        r = cli(*args, "--dsn", mine)
        assert r.exit_code == 1, (args, r.output)
        assert "Traceback" not in r.output

    r = cli("grant", operator, "--ops", "--dsn", admin)
    assert r.exit_code == 0, r.output
    assert f'GRANT SELECT ON TABLE softguard.operations TO "{operator}";' in r.output
    r = cli("ops", "--dsn", mine, "--json")
    assert r.exit_code == 0, r.output
    found = {o["id"]: o for o in json.loads(r.stdout)}
    assert {first, second} <= set(found)
    assert found[first]["size_bytes"] is not None  # op_size granted too
    assert cli("show", "--dsn", mine, str(first)).exit_code == 0
    assert cli("undo", "--dsn", mine, str(first), "--yes").exit_code == 1  # not yet

    r = cli("grant", operator, "--undo", "--dsn", admin)
    assert r.exit_code == 0, r.output
    r = cli("undo", "--dsn", mine, str(first), "--yes")
    assert r.exit_code == 0, r.output
    assert _state(ledger, db, first) == "undone"
    r = cli("undo", "--dsn", mine, str(second), "--yes", "--on-conflict", "skip")
    assert r.exit_code == 0, r.output

    third = _op(ledger, db, "DROP TABLE billing.refunds")
    assert cli("purge", "--dsn", mine, "--older-than", "0s", "--yes").exit_code == 1
    r = cli("grant", operator, "--purge", "--dsn", admin)
    assert r.exit_code == 0, r.output
    r = cli("purge", "--dsn", mine, "--older-than", "0s", "--yes")
    assert r.exit_code == 0, r.output
    assert _state(ledger, db, third) == "purged"

    # the role is still no superuser, and holds nothing on the protected tables
    with psycopg.connect(admin) as c:
        row = c.execute(
            "SELECT rolsuper, has_table_privilege(%s, 'public.reservations', 'SELECT')"
            " FROM pg_roles WHERE rolname = %s",
            [operator, operator],
        ).fetchone()
    assert row == (False, False)

    r = cli("grant", operator, "--ops", "--undo", "--purge", "--revoke", "--dsn", admin)
    assert r.exit_code == 0, r.output
    assert cli("ops", "--dsn", mine).exit_code == 1


def test_undo_of_captured_rows_as_an_operator(
    ledger: Ledger, db: str, operator: str, proxy: Any
) -> None:
    if proxy.is_direct:
        pytest.skip("the proxy captures the DELETE")
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute("DELETE FROM reservations WHERE id <= 5")
    op = int(ledger.last_op(db))
    assert cli("grant", operator, "--ops", "--undo", "--dsn", ledger.dsn(db)).exit_code == 0
    r = cli("undo", "--dsn", ledger.dsn(db, operator, PASSWORD), str(op), "--yes")
    assert r.exit_code == 0, r.output
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM reservations WHERE id <= 5").fetchone() == (5,)


def test_grant_refuses_unknown_roles_and_no_flags(ledger: Ledger, db: str) -> None:
    r = cli("grant", "sg_no_such_role", "--ops", "--dsn", ledger.dsn(db))
    assert r.exit_code == 1 and "does not exist" in r.output
    r = cli("grant", "sg_no_such_role", "--dsn", ledger.dsn(db))
    assert r.exit_code == 2 and "--ops, --undo and/or --purge" in r.output


def test_every_granted_object_exists(ledger: Ledger, db: str) -> None:
    with ledger.connect(db) as c:
        for grants in GRANTS.values():
            for kind, obj, _ in grants:
                check = "to_regclass" if kind == "TABLE" else "to_regprocedure"
                row = c.execute(f"SELECT {check}(%s) IS NOT NULL", [obj]).fetchone()
                assert row == (True,), obj
