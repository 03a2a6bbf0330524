"""`softguard ops` sizes and total, max_quarantine_bytes warnings, progress bars.

Operations are made as the proxy would (CALL softguard.drop_op) in a fresh copy of the
rental database; the CLI runs in-process (typer's CliRunner, so stdout is not a terminal
unless a test pretends it is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from softguard.cli import ops_cmds, purge_cmd
from softguard.cli.main import app

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


@pytest.fixture
def dsn(ledger: Ledger, db: str) -> str:
    return str(ledger.dsn(db))


def drop(ledger: Ledger, db: str, stmt: str) -> int:
    result = ledger.drop(db, stmt)
    assert result.error is None, result
    return int(ledger.last_op(db))


def sizes(ledger: Ledger, db: str) -> dict[int, int]:
    with ledger.connect(db) as c:
        rows = c.execute("SELECT id, softguard.op_size(id) FROM softguard.operations").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def test_ops_shows_sizes(ledger: Ledger, db: str, dsn: str) -> None:
    big = drop(ledger, db, "DROP TABLE reservations CASCADE")
    small = drop(ledger, db, "DROP TABLE billing.refunds")
    expected = sizes(ledger, db)
    assert expected[big] > 0

    r = cli("ops", "--dsn", dsn, "--json")
    assert r.exit_code == 0, r.output
    doc = {o["id"]: o for o in json.loads(r.stdout)}
    assert doc[big]["size_bytes"] == expected[big]
    assert doc[small]["size_bytes"] == expected[small]

    r = cli("ops", "--dsn", dsn)  # not a terminal: tab-separated, size in bytes, last column
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split("\t")[-1] == "size"
    assert {int(x[0]): int(x[-1]) for x in (line.split("\t") for line in lines[1:])} == {
        big: expected[big],
        small: expected[small],
    }


def test_ops_rich_table_has_size_and_total(
    ledger: Ledger, db: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(ledger, db, "DROP TABLE reservations CASCADE")
    monkeypatch.setattr(ops_cmds, "_stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "220")
    r = cli("ops", "--dsn", dsn)
    assert r.exit_code == 0, r.output
    assert "size" in r.output
    assert re.search(r"│ [0-9.]+ (bytes|kB|MB|GB)\n", r.output), r.output
    assert "total in quarantine: " in r.output.splitlines()[-1]


def test_cap_warns_loudly_in_ops_and_space(
    ledger: Ledger, db: str, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = drop(ledger, db, "DROP TABLE reservations CASCADE")
    # under the cap (or no cap): no warning
    r = cli("ops", "--dsn", dsn, "--json")
    assert r.exit_code == 0 and "WARNING" not in r.output
    config = tmp_path / "softguard.toml"
    config.write_text("max_quarantine_bytes = 1000000000\n")
    r = cli("space", "--dsn", dsn, "--config", str(config))
    assert r.exit_code == 0 and "WARNING" not in r.output

    config.write_text("max_quarantine_bytes = 1\n")
    r = cli("ops", "--dsn", dsn, "--config", str(config))
    assert r.exit_code == 0, r.output
    assert "softguard: WARNING: the quarantine holds " in r.output
    assert "more than max_quarantine_bytes 1: nothing is evicted" in r.output
    r = cli("space", "--dsn", dsn, "--config", str(config))
    assert r.exit_code == 3, r.output  # docs/runbook.md: over the cap, `space` exits 3
    assert "more than max_quarantine_bytes 1: nothing is evicted" in r.output
    # --max-bytes beats the setting; the environment works too
    r = cli("space", "--dsn", dsn, "--config", str(config), "--max-bytes", "1000000000")
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("SOFTGUARD_MAX_QUARANTINE_BYTES", "1")
    r = cli("ops", "--dsn", dsn, "--json")
    assert r.exit_code == 0 and "WARNING" in r.output
    # nothing was evicted
    assert {o["id"]: o["state"] for o in ledger.operations(db)}[op] == "active"


def test_progress_bars_on_a_terminal(
    ledger: Ledger, db: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = drop(ledger, db, "DROP TABLE billing.refunds")
    second = drop(ledger, db, "DROP TABLE events")
    monkeypatch.setattr(ops_cmds, "_stdout_is_terminal", lambda: True)
    monkeypatch.setattr(purge_cmd, "_stdout_is_terminal", lambda: True)
    r = cli("undo", "--dsn", dsn, str(second), "--yes")
    assert r.exit_code == 0, r.output
    assert f"undone: {second}" in r.output

    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes")
    assert r.exit_code == 0, r.output
    assert "purging operations" in r.output  # the bar (rendered once: not a real terminal)
    assert f"operation {first}" in r.output
    assert "purged 1 operation(s)" in r.output
    assert {o["id"]: o["state"] for o in ledger.operations(db)}[first] == "purged"


def test_no_bars_off_a_terminal_or_with_json(ledger: Ledger, db: str, dsn: str) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes")
    assert r.exit_code == 0, r.output
    assert "purging operations" not in r.output and "\x1b" not in r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("1 operation(s) past their expiry or created more than 0s ago")
    assert lines[-1].startswith("purged 1 operation(s)")
    assert any(line.startswith(f"operation {op}") for line in lines)

    op2 = drop(ledger, db, "DROP TABLE events")
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert [p["id"] for p in json.loads(r.stdout)["purged"]] == [op2]
