"""The ledger commands as an operator meets them (issue 12): `ops` at 80 columns and
--wide, `show` for a person, `ops --all-databases`, a proxy DSN given to a ledger command,
`explain --help` keeping [[soft_delete]], and README/runbook promises."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import TestServer
from typer.testing import CliRunner, Result

from softguard.cli import ops_cmds
from softguard.cli.main import app

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)
ROOT = Path(__file__).resolve().parents[2]
LONG = "DROP TABLE /* " + " ".join(f"word{i}" for i in range(1, 40)) + " */ events"

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def _drop(ledger: Ledger, db: str, stmt: str) -> int:
    result = ledger.drop(db, stmt)
    assert result.error is None, result
    return int(ledger.last_op(db))


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


def test_ops_fits_80_columns_and_wide_shows_everything(
    ledger: Ledger, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop(ledger, db, "DROP TABLE reservations CASCADE")
    _drop(ledger, db, LONG)
    dsn = ledger.dsn(db)
    monkeypatch.setattr(ops_cmds, "_stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("ops", "--dsn", dsn)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 80, r.output
    assert "statement" in lines[0] and "DROP TABLE reservations" in r.output
    assert "public.reserv" in r.output
    table_rows = [line for line in lines if "│" in line]
    assert len(table_rows) == 2  # two operations: one line each, no wrapping

    r = cli("ops", "--dsn", dsn, "--wide")
    assert r.exit_code == 0, r.output
    text = re.sub(r"[\s│]+", " ", r.output)
    assert "expires" in r.output and "size" in r.output
    assert "word38 word39 */ events" in text


def test_show_is_for_a_person(ledger: Ledger, db: str) -> None:
    op = _drop(ledger, db, "DROP TABLE reservations CASCADE")
    r = cli("show", "--dsn", ledger.dsn(db), str(op))
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith(f"operation {op}: DROP TABLE\n")
    for word in ("state", "statement", "objects", "rows", "kept", "undo will"):
        assert re.search(rf"^  {word}\b", out, re.M), (word, out)
    assert "table public.reservations" in out
    flat = " ".join(out.split())
    assert "view public.active_reservations (by cascade)" in flat
    assert f"softguard undo {op}" in out
    assert "move table public.reservations back" in flat
    assert "re-add constraint payments_reservation_id_fkey on billing.payments" in flat
    for noise in ("{", "toast", "RI_ConstraintTrigger", "zz_softguard_", "_RETURN"):
        assert noise not in out, (noise, out)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    # the whole record stays one flag away
    assert '"step": "move"' in cli("show", "--dsn", ledger.dsn(db), str(op), "--details").output
    doc = json.loads(cli("show", "--dsn", ledger.dsn(db), str(op), "--json").stdout)
    assert doc["id"] == op


def test_show_of_a_delete_says_what_undo_puts_back(ledger: Ledger, db: str, proxy: Any) -> None:
    if proxy.is_direct:
        pytest.skip("the proxy captures the DELETE")
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute("DELETE FROM reservations WHERE id <= 3")
    op = int(ledger.last_op(db))
    out = cli("show", "--dsn", ledger.dsn(db), str(op)).output
    assert "operation" in out and ": DELETE" in out.splitlines()[0]
    assert re.search(r"rows +.*public\.reservations: 3", out), out
    assert "put back 3 row(s) into public.reservations" in out


def test_ops_all_databases(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    first, second = rental_db(), rental_db()
    a = _drop(ledger, first, "DROP TABLE billing.refunds")
    b = _drop(ledger, second, "DROP TABLE events")
    r = cli("ops", "--dsn", ledger.dsn("postgres"), "--all-databases", "--json", "--limit", "500")
    assert r.exit_code == 0, r.output
    found = {(o["database"], o["id"]) for o in json.loads(r.stdout)}
    assert {(first, a), (second, b)} <= found
    plain = cli("ops", "--dsn", ledger.dsn("postgres"), "--all-databases", "--limit", "500")
    assert plain.output.splitlines()[0].startswith("database\tid\t")
    assert f"{second}\t{b}\t" in plain.output


def test_a_proxy_dsn_says_what_to_use_instead(proxy: Any, db: str) -> None:
    if proxy.is_direct:
        pytest.skip("about the proxy itself")
    for args in (["ops"], ["show", "1"], ["undo", "1", "--yes"], ["purge", "--yes"]):
        r = cli(*args, "--dsn", proxy.dsn(db))
        assert r.exit_code == 1, (args, r.output)
        assert "goes through the softguard proxy" in r.output, r.output
        assert "softguard serve" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1


def test_no_ledger_points_at_init_and_all_databases(pg_server: TestServer) -> None:
    with pg_server.scratch_database() as name:
        r = cli("ops", "--dsn", pg_server.superuser_dsn(name))
    assert r.exit_code == 1
    assert "softguard init" in r.output and "--all-databases" in r.output


def test_explain_help_keeps_soft_delete_brackets() -> None:
    r = runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "200"})
    assert "[[soft_delete]]" in r.output, r.output
    r = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "[default: 127.0.0.1:6432]" in r.output, r.output
    assert "--require-tls" in r.output and "--log-file" in r.output


def test_readme_and_runbook_say_what_an_operator_needs() -> None:
    readme = (ROOT / "README.md").read_text()
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "| `--protect-updates` |" in readme  # in the options table
    assert "| `--require-tls` |" in readme and "| `--log-file F` |" in readme
    assert "`pip install softguard`" not in readme
    assert "pip install softguard\n" not in runbook and "pip install softguard`" not in runbook
    for needed in ("softguard grant", "--require-tls", "SIGHUP", "--log-file"):
        assert needed in runbook, needed
