"""softguard.undo_op: conflicts, --cascade, --rename-to, concurrency, a whole session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)


def _undo_error(ledger: Ledger, db: str, op: int, **kw: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        ledger.undo(db, op, **kw)
    return info.value


def test_undo_states(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    assert _undo_error(ledger, db, 99).diag.sqlstate == "42704"
    ledger.drop(db, "DROP VIEW active_reservations")
    op = ledger.last_op(db)
    ledger.undo(db, op)
    err = _undo_error(ledger, db, op)
    assert err.diag.sqlstate == "55000"
    assert "already undone" in (err.diag.message_primary or "")
    undo_row = ledger.operations(db)[-1]
    assert undo_row["kind"] == "UNDO" and undo_row["undo_of"] == op
    assert ledger.operations(db)[0]["state"] == "undone"
    assert _undo_error(ledger, db, undo_row["id"]).diag.sqlstate == "55000"


def test_name_taken_since(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    ledger.drop(db, "DROP TABLE reservations CASCADE")
    op = ledger.last_op(db)
    ledger.execute(db, "CREATE TABLE reservations (id bigserial PRIMARY KEY, note text)")
    err = _undo_error(ledger, db, op)
    assert err.diag.sqlstate == "42P07"
    assert "public.reservations already exists" in (err.diag.message_primary or "")
    assert err.diag.message_hint == "use --rename-to NEW_NAME"
    lines = ledger.undo(db, op, rename_to="reservations_restored")
    assert any("public.reservations_restored" in line for line in lines)
    data = ledger.data(db)
    assert data["public.reservations_restored"][0] == 10000
    assert data["public.reservations"][0] == 0
    # the sub-objects followed the new name where the old one was taken
    dump = ledger.schema_dump(db)
    assert "reservations_restored_pkey" in dump
    assert "reservations_restored_id_seq" in dump


def test_later_operation_holds_what_undo_needs(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    original = ledger.snapshot(db)
    ledger.drop(db, "DROP VIEW active_reservations")
    first = ledger.last_op(db)
    r = ledger.drop(db, "DROP TABLE reservations CASCADE")  # the view is in quarantine
    assert r.error is None
    second = ledger.last_op(db)
    held = [o for o in ledger.operations(db)[-1]["objects"] if o["held_by"] is not None]
    assert [o["held_by"] for o in held if o["type"] == "view"] == [first]
    err = _undo_error(ledger, db, first)
    assert err.diag.sqlstate == "55006"
    msg = err.diag.message_primary or ""
    assert f"held by operation {second} (DROP TABLE reservations CASCADE)" in msg, msg
    assert err.diag.message_hint == f"Undo operation {second} first, or use --cascade."
    lines = ledger.undo(db, first, cascade=True)
    assert lines[0].startswith(f"operation {second}: ")
    assert ledger.snapshot(db) == original
    assert [o["state"] for o in ledger.operations(db) if o["kind"] != "UNDO"] == [
        "undone",
        "undone",
    ]


def test_trigger_function_held_by_later_drop(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    original = ledger.snapshot(db)
    ledger.drop(db, "DROP TABLE reservations CASCADE")
    first = ledger.last_op(db)
    assert ledger.drop(db, "DROP FUNCTION touch_updated_at()").error is None
    second = ledger.last_op(db)
    err = _undo_error(ledger, db, first)
    assert err.diag.sqlstate == "55006"
    assert "function public.touch_updated_at()" in (err.diag.message_primary or "")
    assert ledger.snapshot(db)[0] != original[0]  # nothing was half-applied ...
    ledger.undo(db, second)
    ledger.undo(db, first)
    assert ledger.snapshot(db) == original  # ... and both undo cleanly in order


def test_foreign_key_target_held_by_later_drop(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    original = ledger.snapshot(db)
    ledger.drop(db, "DROP TABLE billing.payments CASCADE")
    first = ledger.last_op(db)
    ledger.drop(db, "DROP TABLE reservations CASCADE")
    second = ledger.last_op(db)
    err = _undo_error(ledger, db, first)
    assert err.diag.sqlstate == "55006"
    assert f"held by operation {second}" in (err.diag.message_primary or "")
    ledger.undo(db, first, cascade=True)
    assert ledger.snapshot(db) == original


def test_concurrent_drop_and_recreate(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    """B's DROP waits for A's DROP + CREATE of the same name, then takes A's new table."""
    db = rental_db()
    ledger.execute(db, "CREATE TABLE hot (n int)")
    ledger.execute(db, "INSERT INTO hot VALUES (0)")
    results: list[Any] = []
    with ledger.connect(db, autocommit=False) as a, ledger.connect(db, autocommit=False) as b:
        assert ledger.drop_via_softguard(a, "DROP TABLE hot").error is None
        a.execute("CREATE TABLE hot (n int)")
        a.execute("INSERT INTO hot VALUES (1)")

        def second() -> None:
            results.append(ledger.drop_via_softguard(b, "DROP TABLE hot"))
            b.execute("CREATE TABLE hot (n int)")
            b.execute("INSERT INTO hot VALUES (2)")
            b.commit()

        t = threading.Thread(target=second)
        t.start()
        t.join(1.0)
        assert t.is_alive(), "B waits for A's lock"
        a.commit()
        t.join(30)
        assert not t.is_alive()
    assert results[0].error is None, results
    ops = ledger.operations(db)
    assert len(ops) == 2
    names = [o["objects"][0]["quarantined_as"] for o in ops]
    assert len(set(names)) == 2
    assert ledger.data(db)["public.hot"][0] == 1  # B's table
    ledger.undo(db, ops[1]["id"], rename_to="hot_a")  # A's table, dropped by B
    ledger.undo(db, ops[0]["id"], rename_to="hot_0")  # the first one, dropped by A
    data = ledger.data(db)
    assert [data[f"public.{t}"][0] for t in ("hot", "hot_a", "hot_0")] == [1, 1, 1]
    with ledger.connect(db) as c:
        rows = c.execute(
            "SELECT (SELECT n FROM hot), (SELECT n FROM hot_a), (SELECT n FROM hot_0)"
        ).fetchone()
    assert rows == (2, 1, 0)


def test_session_then_undo_newest_first(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    """The issue's done-when: five DROPs, a write, five undos -> original plus the write."""
    db, twin = rental_db(), rental_db()
    insert = (
        "INSERT INTO customers (email, full_name, created_at)"
        " VALUES ('new@example.com', 'New Customer', '2026-01-01')"
    )
    statements = [
        "DROP VIEW active_reservations",  # first: the CASCADE below would drop it
        "DROP TABLE reservations CASCADE",
        "DROP FUNCTION touch_updated_at()",
        "DROP SCHEMA billing CASCADE",
        "DROP INDEX customers_lower_name_idx",
    ]
    ops = []
    for stmt in statements:
        r = ledger.drop(db, stmt)
        assert r.error is None, (stmt, r)
        ops.append(ledger.last_op(db))
    assert ledger.execute(db, insert).error is None
    assert ledger.execute(twin, insert).error is None
    for op in reversed(ops):
        assert ledger.undo(db, op)
    assert ledger.snapshot(db) == ledger.snapshot(twin)
