"""`softguard purge` / `softguard space` and softguard.purge_op against a real server.

Each test gets a fresh copy of the rental database with the ledger installed, makes
operations exactly as the proxy would (CALL softguard.drop_op / truncate_op, a DELETE in a
session with softguard.capture=delete), and runs the CLI in-process (typer's CliRunner).
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import TestServer
from typer.testing import CliRunner, Result

from softguard.cli.main import app

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)

runner = CliRunner()

CAPTURE = "-c softguard.capture=delete -c softguard.retention=604800"


def cli(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


@pytest.fixture
def dsn(ledger: Ledger, db: str) -> str:
    return str(ledger.dsn(db))


# -- making operations -----------------------------------------------------------------


def drop(ledger: Ledger, db: str, stmt: str) -> int:
    result = ledger.drop(db, stmt)
    assert result.error is None, result
    assert result.softguard_notice(), result
    return int(ledger.last_op(db))


def delete(ledger: Ledger, db: str, stmt: str) -> int:
    """Run a DELETE in a session the proxy would capture; returns its operation."""
    with psycopg.connect(ledger.dsn(db), options=CAPTURE, autocommit=True) as c:
        before = c.execute("SELECT coalesce(max(id), 0) FROM softguard.operations").fetchone()
        c.execute(stmt)
    op = int(ledger.last_op(db))
    assert before is not None and op > before[0]
    return op


def truncate(ledger: Ledger, db: str, stmt: str) -> int:
    ctx = {"action": "TRUNCATE TABLE", "offset": 0, "retention_seconds": 604800}
    with ledger.connect(db) as c:
        c.execute("CALL softguard.truncate_op(%s, %s)", [stmt, json.dumps(ctx)])
    return int(ledger.last_op(db))


def four_operations(ledger: Ledger, db: str) -> dict[str, int]:
    """A DROP TABLE, a DROP SCHEMA, a DELETE and a TRUNCATE operation."""
    return {
        "drop_table": drop(ledger, db, "DROP TABLE reservations CASCADE"),
        "drop_schema": drop(ledger, db, "DROP SCHEMA billing CASCADE"),
        "delete": delete(ledger, db, "DELETE FROM customers WHERE id <= 50"),
        "truncate": truncate(ledger, db, "TRUNCATE TABLE locations CASCADE"),
    }


# -- looking at the database -----------------------------------------------------------


def quarantine(ledger: Ledger, db: str) -> dict[str, Any]:
    """Everything that makes up the quarantine, and each operation's state and size."""
    with ledger.connect(db) as c:
        objects = c.execute(
            "SELECT c.relname FROM pg_class c"
            " WHERE c.relnamespace = 'softguard_quarantine'::regnamespace"
            " UNION ALL SELECT p.proname FROM pg_proc p"
            " WHERE p.pronamespace = 'softguard_quarantine'::regnamespace"
            " UNION ALL SELECT t.typname FROM pg_type t"
            " WHERE t.typnamespace = 'softguard_quarantine'::regnamespace"
            " UNION ALL SELECT n.nspname FROM pg_namespace n WHERE n.nspname ~ '^softguard_q[0-9]'"
            " ORDER BY 1"
        ).fetchall()
        ops = c.execute(
            "SELECT id, state, purged_at, purged_by, purge_archive, softguard.op_size(id)"
            " FROM softguard.operations ORDER BY id"
        ).fetchall()
        counts = c.execute(
            "SELECT (SELECT count(*) FROM softguard.captures),"
            " (SELECT count(*) FROM softguard.captured_rows)"
        ).fetchone()
    return {"objects": [r[0] for r in objects], "ops": ops, "captures": counts}


def by_id(ledger: Ledger, db: str) -> dict[int, dict[str, Any]]:
    return {o["id"]: o for o in ledger.operations(db)}


def quarantined_table(ledger: Ledger, db: str, op: int, name: str) -> str:
    for obj in by_id(ledger, db)[op]["objects"]:
        if obj.get("original") and obj.get("name") == name:
            return str(obj["quarantined_as"])
    raise AssertionError(f"{name} not in operation {op}")


# -- within the window, dry run --------------------------------------------------------


def test_purge_within_window_changes_nothing(ledger: Ledger, db: str, dsn: str) -> None:
    ops = four_operations(ledger, db)
    before = quarantine(ledger, db)
    assert before["objects"] and before["captures"][1] > 0
    assert all(size > 0 for _, state, *_rest, size in before["ops"] if state == "active")

    r = cli("purge", "--dsn", dsn, "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("nothing to purge (no operation past their expiry)")
    assert quarantine(ledger, db) == before

    # an operation is due once past its expiry (here: pushed back by hand)
    ledger.as_maintenance(
        db,
        "UPDATE softguard.operations SET expires_at = now() - interval '1 minute' WHERE id = %s",
        [ops["drop_table"]],
    )
    r = cli("purge", "--dsn", dsn, "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [d["id"] for d in doc["due"]] == [ops["drop_table"]]
    assert [p["id"] for p in doc["purged"]] == [ops["drop_table"]]
    states = {k: by_id(ledger, db)[v]["state"] for k, v in ops.items()}
    assert states == {
        "drop_table": "purged",
        "drop_schema": "active",
        "delete": "active",
        "truncate": "active",
    }


def test_dry_run_changes_nothing(ledger: Ledger, db: str, dsn: str) -> None:
    ops = four_operations(ledger, db)
    before = quarantine(ledger, db)

    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--dry-run")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("4 operation(s) past their expiry or created more than 0s ago, ")
    listed = [int(line.split("\t")[0]) for line in lines[1:5]]
    assert listed == sorted(ops.values())
    assert "DROP SCHEMA billing CASCADE" in r.output
    assert lines[-1] == "dry run: nothing was changed"

    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["dry_run"] is True and doc["purged"] == []
    assert {d["id"] for d in doc["due"]} == set(ops.values())
    assert all(d["bytes"] > 0 for d in doc["due"])
    assert quarantine(ledger, db) == before


def test_purge_needs_yes_without_a_terminal(ledger: Ledger, db: str, dsn: str) -> None:
    drop(ledger, db, "DROP TABLE billing.refunds")
    before = quarantine(ledger, db)
    r = cli("purge", "--dsn", dsn, "--older-than", "0s")
    assert r.exit_code == 2
    assert "pass --yes" in r.output
    r = cli("purge", "--dsn", dsn, "--older-than", "soon", "--yes")
    assert r.exit_code == 2
    assert "--older-than: expected a duration" in r.output
    assert quarantine(ledger, db) == before


# -- the full purge, with an archive ---------------------------------------------------


def test_purge_all_with_archive(
    ledger: Ledger, db: str, dsn: str, pg_server: TestServer, tmp_path: Path
) -> None:
    ops = four_operations(ledger, db)
    reservations = quarantined_table(ledger, db, ops["drop_table"], "reservations")
    archive = tmp_path / "archive"

    r = cli("space", "--dsn", dsn, "--json")
    assert r.exit_code == 0, r.output
    space = json.loads(r.output)
    assert space["count"] == 4 and space["total_bytes"] > 0
    assert {o["id"] for o in space["operations"]} == set(ops.values())
    assert space["total_bytes"] == sum(o["bytes"] for o in space["operations"])

    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--archive", str(archive), "--yes")
    assert r.exit_code == 0, r.output
    for op in ops.values():
        assert f"operation {op}: archived to {archive / f'op-{op}'}" in r.output
        assert f"operation {op}: purged (" in r.output
    assert r.output.splitlines()[-1].startswith("purged 4 operation(s), ")
    assert r.output.splitlines()[-1].endswith("freed (estimated); skipped 0")

    # destroyed: nothing left in quarantine, no captured rows, every size 0
    after = quarantine(ledger, db)
    assert after["objects"] == []
    assert after["captures"] == (0, 0)
    rows = {row[0]: row for row in after["ops"]}
    with ledger.connect(db) as c:
        superuser = c.execute("SELECT session_user").fetchone()
    assert superuser is not None
    for op in ops.values():
        _, state, purged_at, purged_by, purge_archive, size = rows[op]
        assert state == "purged" and purged_at is not None
        assert purged_by == superuser[0]
        assert purge_archive == str(archive.resolve() / f"op-{op}")
        assert size == 0
    r = cli("space", "--dsn", dsn, "--json")
    space = json.loads(r.output)
    assert (space["count"], space["total_bytes"], space["operations"]) == (0, 0, [])
    assert space["ledger_bytes"] > 0

    # archived: manifests, dumps pg_restore can read, captured rows as CSV
    for op in ops.values():
        manifest = json.loads((archive / f"op-{op}" / "manifest.json").read_text())
        assert manifest["format"] == "softguard-purge-archive"
        assert manifest["operation"]["id"] == op
        assert manifest["operation"]["restore"] == by_id(ledger, db)[op]["restore"]
        for name in manifest["files"]:
            assert (archive / f"op-{op}" / name).is_file()
        assert (archive / f"op-{op}" / "README.txt").is_file()
    pg_restore = str(pg_server.bin("pg_restore"))
    table_dir = archive / f"op-{ops['drop_table']}"
    toc = subprocess.run(
        [pg_restore, "-l", str(table_dir / "tables.dump")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"TABLE DATA softguard_quarantine {reservations.split('.')[1]}" in toc
    schema_dir = archive / f"op-{ops['drop_schema']}"
    toc = subprocess.run(
        [pg_restore, "-l", str(schema_dir / "schemas.dump")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"TABLE DATA softguard_q{ops['drop_schema']}_billing payments" in toc
    assert f"TABLE DATA softguard_q{ops['drop_schema']}_billing refunds" in toc
    delete_dir = archive / f"op-{ops['delete']}"
    manifest = json.loads((delete_dir / "manifest.json").read_text())
    [cap] = [c for c in manifest["captures"] if c["event"] == "delete"]
    with (delete_dir / cap["file"]).open(newline="") as f:
        rows_csv = list(csv.reader(f))
    assert rows_csv[0][:3] == ["id", "email", "full_name"]
    assert sorted(int(x[0]) for x in rows_csv[1:]) == list(range(1, 51))
    truncate_dir = archive / f"op-{ops['truncate']}"
    manifest = json.loads((truncate_dir / "manifest.json").read_text())
    assert {c["table_identity"] for c in manifest["captures"] if c["event"] == "truncate"} == {
        "public.locations",
        "public.vehicles",
    }

    # undo refuses each, pointing at the archive
    for op in ops.values():
        r = cli("undo", "--dsn", dsn, str(op), "--yes")
        assert r.exit_code == 1
        assert f"ERROR:  operation {op} was purged (at " in r.output
        assert f"it was archived first, to {archive.resolve() / f'op-{op}'}" in r.output
        assert "README.txt" in r.output
    with ledger.connect(db) as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        c.execute("SELECT softguard.undo_op(%s, NULL, false, 'skip')", [ops["delete"]])

    # purged ones cannot be purged again; a second run finds nothing
    with ledger.connect(db) as c, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        c.execute("SELECT softguard.purge_op(%s)", [ops["drop_table"]])
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes")
    assert r.exit_code == 0 and r.output.startswith("nothing to purge"), r.output

    # the archive loads: the table with pg_restore, the deleted rows with psql
    subprocess.run(
        [
            pg_restore,
            "-d",
            dsn,
            "-L",
            str(table_dir / "tables.list"),
            str(table_dir / "tables.dump"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    subprocess.run(
        [
            str(pg_server.bin("psql")),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-f",
            "load.sql",
        ],
        cwd=delete_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    with ledger.connect(db) as c:
        n = c.execute(f"SELECT count(*) FROM {reservations}").fetchone()
        assert n is not None and n[0] == 10000
        table = f"softguard_restore.op{ops['delete']}_capture{cap['id']}"
        n = c.execute(f"SELECT count(*), min(id), max(id) FROM {table}").fetchone()
        assert n == (50, 1, 50)


# -- locks, dependencies, undone operations, the cap -----------------------------------


def test_locked_operation_is_skipped_then_purged(ledger: Ledger, db: str, dsn: str) -> None:
    dropped = drop(ledger, db, "DROP TABLE billing.refunds")
    deleted = delete(ledger, db, "DELETE FROM customers WHERE id <= 10")
    table = quarantined_table(ledger, db, dropped, "refunds")

    with ledger.connect(db, autocommit=False) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes", "--lock-timeout", "0.3")
        assert r.exit_code == 1, r.output
        assert (
            f"operation {dropped} skipped: something it holds is locked by another session"
            in r.output
        )
        assert "the next purge will take it" in r.output
        assert f"operation {deleted}: purged (" in r.output
        assert r.output.splitlines()[-1].endswith("skipped 1")
        holder.rollback()
    ops = by_id(ledger, db)
    assert ops[dropped]["state"] == "active" and ops[deleted]["state"] == "purged"

    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes")
    assert r.exit_code == 0, r.output
    assert f"operation {dropped}: purged (" in r.output
    assert by_id(ledger, db)[dropped]["state"] == "purged"
    assert quarantine(ledger, db)["objects"] == []


def test_purge_refuses_what_another_operation_holds(ledger: Ledger, db: str, dsn: str) -> None:
    view = drop(ledger, db, "DROP VIEW active_reservations")
    table = drop(ledger, db, "DROP TABLE reservations CASCADE")  # the kept view depends on it
    before = quarantine(ledger, db)
    with ledger.connect(db) as c, pytest.raises(psycopg.errors.ObjectInUse) as info:
        c.execute("SELECT softguard.purge_op(%s)", [table])
    assert f"cannot purge operation {table}: dropping table " in str(info.value)
    assert f"held by operation {view}" in str(info.value)
    assert quarantine(ledger, db) == before

    # oldest first: the view's operation goes first, then the table's
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes")
    assert r.exit_code == 0, r.output
    assert {by_id(ledger, db)[op]["state"] for op in (view, table)} == {"purged"}
    assert quarantine(ledger, db)["objects"] == []


def test_undone_operation_releases_rows_only(ledger: Ledger, db: str, dsn: str) -> None:
    op = delete(ledger, db, "DELETE FROM customers WHERE id <= 10")
    ledger.undo(db, op)
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes", "--batch-rows", "3")
    assert r.exit_code == 0, r.output
    assert f"operation {op}: undone at " in r.output
    assert by_id(ledger, db)[op]["state"] == "undone"
    assert quarantine(ledger, db)["captures"] == (0, 0)


def test_large_capture_is_deleted_in_batches(ledger: Ledger, db: str, dsn: str) -> None:
    op = delete(ledger, db, "DELETE FROM customers WHERE id <= 500")
    r = cli("purge", "--dsn", dsn, "--older-than", "0s", "--yes", "--batch-rows", "100")
    assert r.exit_code == 0, r.output
    # ON DELETE CASCADE took their reservations and payments too: thousands of rows
    assert f"operation {op}: purged (0 objects dropped, " in r.output
    assert "captured rows released (deleted in batches)" in r.output
    batches = [line for line in r.output.splitlines() if line.endswith("rows so far")]
    assert len(batches) > 10
    assert quarantine(ledger, db)["captures"] == (0, 0)


def test_space_warns_over_the_cap(ledger: Ledger, db: str, dsn: str) -> None:
    op = drop(ledger, db, "DROP TABLE billing.payments CASCADE")
    r = cli("space", "--dsn", dsn)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith(f"  {op}\t")
    assert r.output.splitlines()[-1].startswith("quarantine: 1 operation(s), ")

    r = cli("space", "--dsn", dsn, "--max-bytes", "1")
    assert r.exit_code == 3
    assert "softguard: WARNING: the quarantine holds " in r.output
    assert "more than --max-bytes 1" in r.output
    r = cli("space", "--dsn", dsn, "--max-bytes", str(1 << 40), "--json")
    assert r.exit_code == 0
    assert json.loads(r.output)["over_max"] is False
