"""`softguard ops`, `softguard show OP`, `softguard undo OP...` against a real server.

Each test gets a fresh copy of the rental database with the ledger installed (the
tests/ledger fixtures), drops through `CALL softguard.drop_op(...)` exactly as the proxy
rewrites a DROP, and runs the CLI in-process (typer's CliRunner) or as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from support.pg import TestServer
from typer.testing import CliRunner, Result

from softguard.cli import ops_cmds
from softguard.cli.main import app
from softguard.cli.ops_cmds import parse_since

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)

runner = CliRunner()


def cli(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


def count(ledger: Ledger, db: str, table: str) -> int | None:
    """Rows in `table`, or None when there is no such table."""
    with ledger.connect(db) as c:
        if c.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
            return None
        row = c.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def drop(ledger: Ledger, db: str, stmt: str, **kw: Any) -> int:
    result = ledger.drop(db, stmt, **kw)
    assert result.error is None, result
    assert result.softguard_notice(), result
    return int(ledger.last_op(db))


def state(ledger: Ledger, db: str, op: int) -> str:
    return {o["id"]: o["state"] for o in ledger.operations(db)}[op]


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


@pytest.fixture
def dsn(ledger: Ledger, db: str) -> str:
    return str(ledger.dsn(db))


# -- ops -------------------------------------------------------------------------------


def test_ops_plain_table_and_json(ledger: Ledger, db: str, dsn: str) -> None:
    first = drop(ledger, db, "DROP TABLE reservations CASCADE", application_name="cli-test")
    second = drop(ledger, db, "DROP TABLE billing.refunds")

    r = cli("ops", "--dsn", dsn)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split("\t") == list(ops_cmds.PLAIN_COLUMNS)
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(row[0]) for row in rows] == [second, first]  # newest first
    by_id = {int(row[0]): row for row in rows}
    assert by_id[first][3] == "cli-test"
    assert by_id[first][4] == "DROP TABLE reservations CASCADE"
    assert by_id[first][5].startswith("table public.reservations (+2 by cascade)")
    assert by_id[second][5] == "table billing.refunds"
    assert by_id[first][6] == by_id[second][6] == "active"

    r = cli("ops", "--dsn", dsn, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [o["id"] for o in doc] == [second, first]
    op = doc[1]
    for key in (
        "id",
        "created_at",
        "kind",
        "statement",
        "objects",
        "state",
        "expires_at",
        "role",
        "application_name",
        "client_addr",
        "undone_at",
        "undo_of",
    ):
        assert key in op, key
    assert op["kind"] == "DROP TABLE"
    assert op["statement"] == "DROP TABLE reservations CASCADE"
    assert op["objects"] == ["table public.reservations"]
    assert set(op["cascaded"]) == {
        "view public.active_reservations",
        "table constraint payments_reservation_id_fkey on billing.payments",
    }
    assert op["state"] == "active" and op["reversible"] is True
    assert op["application_name"] == "cli-test"
    assert op["role"] == ledger.server.superuser
    assert op["undone_at"] is None and op["undo_of"] is None
    created = datetime.fromisoformat(op["created_at"])
    expires = datetime.fromisoformat(op["expires_at"])
    assert created.tzinfo is not None
    assert timedelta(days=6, hours=23) < expires - created <= timedelta(days=7)


def test_ops_rich_table_on_a_terminal(
    ledger: Ledger, db: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    monkeypatch.setattr(ops_cmds, "_stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    r = cli("ops", "--dsn", dsn)
    assert r.exit_code == 0, r.output
    assert "statement" in r.output and "expires" in r.output
    assert "billing.refunds" in r.output and str(op) in r.output
    assert "\t" not in r.output


def test_ops_filters(ledger: Ledger, db: str, dsn: str) -> None:
    old = drop(ledger, db, "DROP TABLE billing.refunds")
    undone = drop(ledger, db, "DROP VIEW active_reservations")
    recent = drop(ledger, db, "DROP TABLE events")
    ledger.as_maintenance(
        db,
        "UPDATE softguard.operations SET created_at = now() - interval '3 hours' WHERE id = %s",
        [old],
    )
    assert cli("undo", "--dsn", dsn, str(undone), "--yes").exit_code == 0

    def ids(*args: str) -> list[int]:
        r = cli("ops", "--dsn", dsn, "--json", *args)
        assert r.exit_code == 0, r.output
        return [o["id"] for o in json.loads(r.stdout)]

    everything = ids()
    assert len(everything) == 4  # three drops and the undo record
    undo_record = everything[0]
    assert ids("--since", "2h") == [undo_record, recent, undone]
    assert ids("--since", "1h30m") == [undo_record, recent, undone]
    assert ids("--since", "4h") == everything
    assert ids("--since", "90s") == [undo_record, recent, undone]
    cutoff = (datetime.now().astimezone() - timedelta(hours=1)).isoformat()
    assert ids("--since", cutoff) == [undo_record, recent, undone]
    assert ids("--state", "active") == [recent, old]  # the undo record is not reversible
    assert ids("--state", "undone") == [undone]
    assert ids("--state", "purged") == []
    assert ids("--limit", "1") == [undo_record]
    assert ids("--state", "active", "--since", "2h") == [recent]

    r = cli("ops", "--dsn", dsn)
    record_line = r.output.splitlines()[1].split("\t")
    assert record_line[0] == str(undo_record)
    assert record_line[6] == f"undo of {undone}"

    for bad in (["--since", "yesterday"], ["--since", "5x"], ["--state", "gone"]):
        r = cli("ops", "--dsn", dsn, *bad)
        assert r.exit_code == 2, (bad, r.output)
        assert r.output.startswith(f"softguard: {bad[0]}:"), r.output
    r = cli("ops", "--dsn", dsn, "--limit", "0")
    assert r.exit_code == 2, r.output

    r = cli("ops", "--dsn", dsn, "--since", "1s", "--state", "purged")
    assert r.exit_code == 0 and r.output == "no operations\n"


def test_parse_since() -> None:
    assert parse_since("90s") == timedelta(seconds=90)
    assert parse_since("30m") == timedelta(minutes=30)
    assert parse_since("2h") == timedelta(hours=2)
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("1w") == timedelta(weeks=1)
    assert parse_since("1h30m") == timedelta(minutes=90)
    when = parse_since("2026-01-31T12:00:00+00:00")
    assert isinstance(when, datetime) and when.utcoffset() == timedelta(0)
    naive = parse_since("2026-01-31 12:00")
    assert isinstance(naive, datetime) and naive.tzinfo is not None
    for bad in ("", "h", "2 hours", "-3h", "1.5h", "soon"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


# -- show ------------------------------------------------------------------------------


def test_show(ledger: Ledger, db: str, dsn: str) -> None:
    op = drop(ledger, db, "DROP TABLE reservations CASCADE")

    # --details: every column, object and restore step (the default view is for a person:
    # tests/cli/test_operator_cli.py)
    r = cli("show", "--dsn", dsn, str(op), "--details")
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith(f"operation {op}\n")
    assert "DROP TABLE reservations CASCADE" in out
    assert "table public.reservations [named]: kept as softguard_quarantine.op" in out
    assert "view public.active_reservations [cascade]: kept as softguard_quarantine." in out
    assert "restore plan (" in out and '"step": "move"' in out
    assert "reversible        yes" in out

    r = cli("show", "--dsn", dsn, str(op), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    with ledger.connect(db) as c:
        columns = {
            row[0]
            for row in c.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'softguard' AND table_name = 'operations'"
            )
        }
    assert columns <= set(doc)
    assert doc["id"] == op and doc["state"] == "active"
    assert {o["identity"] for o in doc["objects"] if o["original"]} == {"public.reservations"}
    assert isinstance(doc["restore"], list) and doc["restore"]
    assert doc["targets"] == ["table public.reservations"]
    datetime.fromisoformat(doc["created_at"])

    r = cli("show", "--dsn", dsn, "999999")
    assert r.exit_code == 1
    assert r.output == "softguard: operation 999999 does not exist\n"
    assert cli("show", "--dsn", dsn, "abc").exit_code == 2


# -- undo ------------------------------------------------------------------------------


def test_undo_restores_then_second_undo_fails(ledger: Ledger, db: str, dsn: str) -> None:
    before = count(ledger, db, "billing.refunds")
    assert before
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    assert count(ledger, db, "billing.refunds") is None

    r = cli("undo", "--dsn", dsn, str(op), "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"operation {op}: restored table billing.refunds",
        f"operation {op}: re-added constraint refunds_payment_id_fkey on billing.refunds",
        f"undone: {op}",
    ]
    assert count(ledger, db, "billing.refunds") == before
    assert state(ledger, db, op) == "undone"

    r = cli("undo", "--dsn", dsn, str(op), "--yes")
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == (
        f"softguard: undo of operation {op} failed (SQLSTATE 55000); nothing was changed"
    )
    assert lines[1].startswith(f"ERROR:  operation {op} is already undone (at ")
    assert count(ledger, db, "billing.refunds") == before


def test_dry_run_changes_nothing(ledger: Ledger, db: str, dsn: str) -> None:
    op = drop(ledger, db, "DROP TABLE reservations CASCADE")
    ops_before = ledger.operations(db)

    r = cli("undo", "--dsn", dsn, str(op), "--dry-run")  # no --yes needed, no tty needed
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert f"operation {op}: restored table public.reservations" in lines
    assert f"operation {op}: restored view public.active_reservations" in lines
    assert lines[-2:] == [f"would undo: {op}", "dry run: nothing was changed"]

    assert count(ledger, db, "public.reservations") is None
    assert count(ledger, db, "public.active_reservations") is None
    assert ledger.operations(db) == ops_before


def test_conflict_then_rename_to(ledger: Ledger, db: str, dsn: str) -> None:
    before = count(ledger, db, "billing.refunds")
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    ledger.execute(db, "CREATE TABLE billing.refunds (note text)")
    ledger.execute(db, "INSERT INTO billing.refunds VALUES ('new')")

    for extra in ([], ["--dry-run"]):
        r = cli("undo", "--dsn", dsn, str(op), "--yes", *extra)
        assert r.exit_code == 1, r.output
        lines = r.output.splitlines()
        assert "failed (SQLSTATE 42P07); nothing was changed" in lines[0]
        assert lines[1] == (
            f"ERROR:  cannot undo operation {op}: table billing.refunds already exists"
            " (created after the DROP)"
        )
        assert lines[2] == "HINT:  use --rename-to NEW_NAME"
        assert state(ledger, db, op) == "active"

    r = cli("undo", "--dsn", dsn, str(op), "--rename-to", "refunds_old", "--yes")
    assert r.exit_code == 0, r.output
    assert f"operation {op}: restored table billing.refunds_old" in r.output.splitlines()
    assert count(ledger, db, "billing.refunds_old") == before
    assert count(ledger, db, "billing.refunds") == 1
    assert state(ledger, db, op) == "undone"


def test_later_operation_conflict_and_cascade(ledger: Ledger, db: str, dsn: str) -> None:
    reservations = count(ledger, db, "public.reservations")
    first = drop(ledger, db, "DROP TABLE reservations CASCADE")
    second = drop(ledger, db, "DROP TABLE vehicles")

    r = cli("undo", "--dsn", dsn, str(first), "--yes")
    assert r.exit_code == 1, r.output
    assert f"held by operation {second} (DROP TABLE vehicles)" in r.output
    assert f"HINT:  Undo operation {second} first, or use --cascade." in r.output
    assert state(ledger, db, first) == state(ledger, db, second) == "active"

    r = cli("undo", "--dsn", dsn, str(first), "--cascade", "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"undone: {second}, {first}"
    assert count(ledger, db, "public.reservations") == reservations
    assert state(ledger, db, first) == state(ledger, db, second) == "undone"


def test_multi_op_undo_is_all_or_nothing(ledger: Ledger, db: str, dsn: str) -> None:
    older = drop(ledger, db, "DROP TABLE billing.refunds")
    newer = drop(ledger, db, "DROP VIEW active_reservations")
    ledger.execute(db, "CREATE TABLE billing.refunds (note text)")  # older cannot come back

    # newest first: the view comes back, then billing.refunds fails: nothing is kept
    r = cli("undo", "--dsn", dsn, str(older), str(newer), "--yes")
    assert r.exit_code == 1, r.output
    assert r.output.splitlines()[0] == (
        f"softguard: undo of operation {older} failed (SQLSTATE 42P07); nothing was changed"
    )
    assert state(ledger, db, newer) == state(ledger, db, older) == "active"
    assert count(ledger, db, "public.active_reservations") is None
    assert not [o for o in ledger.operations(db) if o["kind"] == "UNDO"]

    ledger.execute(db, "DROP TABLE billing.refunds")  # for real, directly
    r = cli("undo", "--dsn", dsn, str(older), str(newer), str(newer), "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"undone: {newer}, {older}"
    assert count(ledger, db, "public.active_reservations") is not None
    assert state(ledger, db, newer) == state(ledger, db, older) == "undone"


def test_confirmation(ledger: Ledger, db: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")

    # no terminal and no --yes: refuse rather than wait for an answer
    r = cli("undo", "--dsn", dsn, str(op))
    assert r.exit_code == 2
    assert r.output.startswith("softguard: undo changes the database and stdin is not")
    assert "--yes" in r.output
    assert state(ledger, db, op) == "active"

    monkeypatch.setattr(ops_cmds, "_stdin_is_terminal", lambda: True)
    r = cli("undo", "--dsn", dsn, str(op), input="n\n")
    assert r.exit_code == 1
    assert f"  {op}  DROP TABLE billing.refunds  [table billing.refunds]" in r.output
    assert "softguard: not confirmed; nothing was changed" in r.output
    assert state(ledger, db, op) == "active"

    r = cli("undo", "--dsn", dsn, str(op), input="y\n")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"undone: {op}"
    assert state(ledger, db, op) == "undone"


def test_undo_usage_and_unknown(ledger: Ledger, db: str, dsn: str) -> None:
    a = drop(ledger, db, "DROP TABLE billing.refunds")
    b = drop(ledger, db, "DROP VIEW active_reservations")
    r = cli("undo", "--dsn", dsn, str(a), str(b), "--rename-to", "x", "--yes")
    assert r.exit_code == 2
    assert r.output == "softguard: --rename-to works with a single OP only\n"
    assert cli("undo", "--dsn", dsn, "--yes").exit_code == 2  # no OP

    r = cli("undo", "--dsn", dsn, str(a), "424242", "--yes")
    assert r.exit_code == 1
    assert r.output == "softguard: operation 424242 does not exist; nothing was changed\n"
    assert state(ledger, db, a) == "active"


# -- no ledger, subprocess --------------------------------------------------------------


def test_ledger_not_installed(pg_server: TestServer) -> None:
    with pg_server.scratch_database() as name:
        dsn = pg_server.superuser_dsn(name)
        for args in (["ops"], ["ops", "--json"], ["show", "1"], ["undo", "1", "--yes"]):
            r = cli(*args, "--dsn", dsn)
            assert r.exit_code == 1, (args, r.output)
            assert r.output.startswith(
                "softguard: softguard ledger is not installed in this database:"
                " run softguard init --dsn"
            ), r.output
    r = cli("ops", "--dsn", pg_server.dsn("sg_no_such_database_here"))
    assert r.exit_code == 1
    assert r.output.startswith("softguard: cannot connect: ")


def test_subprocess(ledger: Ledger, db: str, dsn: str) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    env = {**os.environ, "SOFTGUARD_DSN": dsn}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "softguard", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = run("ops", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [(o["id"], o["objects"], o["state"]) for o in doc] == [
        (op, ["table billing.refunds"], "active")
    ]

    p = run("undo", str(op))
    assert p.returncode == 2
    assert "--yes" in p.stderr and p.stdout == ""

    p = run("undo", str(op), "--yes")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == f"undone: {op}"
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT to_regclass('billing.refunds')").fetchone() != (None,)


def test_drop_through_the_proxy_then_undo(ledger: Ledger, db: str, dsn: str, proxy: Any) -> None:
    before = count(ledger, db, "billing.refunds")
    notices: list[str] = []
    with psycopg.connect(proxy.dsn(db), autocommit=True, application_name="agent-x") as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("DROP TABLE billing.refunds")
    assert count(ledger, db, "billing.refunds") is None
    op = int(ledger.last_op(db))
    assert any(f"reversible as operation {op} " in n for n in notices), notices

    r = cli("ops", "--dsn", dsn, "--json")
    assert r.exit_code == 0, r.output
    [summary] = json.loads(r.stdout)
    assert summary["id"] == op and summary["statement"] == "DROP TABLE billing.refunds"
    assert summary["application_name"] == "agent-x"
    assert summary["objects"] == ["table billing.refunds"]

    r = cli("undo", "--dsn", dsn, str(op), "--yes")
    assert r.exit_code == 0, r.output
    with psycopg.connect(proxy.dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM billing.refunds").fetchone() == (before,)


def test_role_with_execute_on_undo_op_only(ledger: Ledger, db: str) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    role = ledger.nonowner["user"]
    role_dsn = str(ledger.dsn(db, role, ledger.nonowner["password"]))

    r = cli("undo", "--dsn", role_dsn, str(op), "--yes")
    assert r.exit_code == 1
    assert r.output.startswith(f"softguard: role {role} may not run softguard.undo_op: "), r.output
    r = cli("ops", "--dsn", role_dsn)
    assert r.exit_code == 1
    assert r.output.startswith(f"softguard: role {role} cannot read softguard.operations: ")

    ledger.execute(
        db, f"GRANT EXECUTE ON FUNCTION softguard.undo_op(bigint, text, boolean) TO {role}"
    )
    r = cli("undo", "--dsn", role_dsn, str(op), "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-2:] == [f"would undo: {op}", "dry run: nothing was changed"]
    r = cli("undo", "--dsn", role_dsn, str(op), "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"undone: {op}"
    [record] = [o for o in ledger.operations(db) if o["kind"] == "UNDO"]
    assert record["undo_of"] == op and record["db_role"] == role
    assert state(ledger, db, op) == "undone"
