"""Soft delete in the database (migration 0005): the rewritten statement the proxy sends,
run directly in a session opened as the proxy opens it (capture on by session default).

The statements are produced by softguard.sql.soft_delete.rewrite from SoftTargets built
here by hand (the proxy reads them from the catalog; tests/test_soft_delete_config.py
covers that). End-to-end behaviour through the proxy is in tests/proxy_softdelete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest_capture import protected, row_ops, softguard_notices, undo

from softguard.sql.soft_delete import SoftDeleteTables, SoftTarget, rewrite

Ledger = Any

CUSTOMERS = SoftTarget(
    schema="public",
    table="customers",
    column="deleted_at",
    column_type="timestamp with time zone",
    mark="timestamp",
    value="now()",
    key=("id",),
    by_column="deleted_by",
)


class _Cur:
    tag: str | None = None


# vehicles, once the test has added deleted_at to it
VEHICLES = SoftTarget(
    "public", "vehicles", "deleted_at", "timestamp with time zone", "timestamp", "now()", ("id",)
)


def _soft(db: str, ledger: Ledger, *stmts: str) -> None:
    ledger.execute(db, "; ".join(stmts))


def _with_columns(ledger: Ledger, db: str) -> None:
    _soft(db, ledger, "ALTER TABLE customers ADD deleted_at timestamptz, ADD deleted_by text")


def _sent(stmt: str, *targets: SoftTarget) -> str:
    done = rewrite(stmt, SoftDeleteTables({(t.schema, t.table): t for t in targets}))
    assert done is not None
    return done.text


def _marked(
    ledger: Ledger, db: str, table: str = "customers", col: str = "deleted_at"
) -> list[Any]:
    with ledger.connect(db) as c:
        return [
            r[0] for r in c.execute(f"SELECT id FROM {table} WHERE {col} IS NOT NULL ORDER BY id")
        ]


def test_marks_only_unmarked_rows_and_undo_restores_exactly(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    _soft(
        db,
        ledger,
        "UPDATE customers SET deleted_at = '2020-01-01', deleted_by = 'app' WHERE id = 3",
    )
    with protected(ledger, db) as c:
        r = ledger.run(
            c, lambda c: c.execute(_sent("DELETE FROM customers WHERE id <= 5", CUSTOMERS))
        )
        assert r.error is None
    ops = row_ops(ledger, db)
    assert len(ops) == 1
    op = ops[0]
    assert op["kind"] == "DELETE"
    assert op["statement"] == "DELETE FROM customers WHERE id <= 5"
    assert op["row_counts"]["tables"] == {"public.customers": 4}
    assert [o["event"] for o in op["objects"]] == ["soft_delete"]
    assert softguard_notices(r) == [
        f"softguard: DELETE FROM public.customers (soft delete: deleted_at set) is "
        f"reversible as operation {op['id']} until {op['expires_at']:%Y-%m-%d}"
    ]
    assert _marked(ledger, db) == [1, 2, 3, 4, 5]
    assert undo(ledger, db, op["id"]) == [
        f"operation {op['id']}: cleared the soft-delete mark (deleted_at) of 4 rows of "
        "public.customers"
    ]
    with ledger.connect(db) as c:
        rows = c.execute(
            "SELECT id, deleted_at::text, deleted_by FROM customers WHERE id <= 5 ORDER BY id"
        ).fetchall()
    # row 3 was soft-deleted by the application before: left exactly as it was
    assert rows == [
        (1, None, None),
        (2, None, None),
        (3, "2020-01-01 00:00:00+00", "app"),
        (4, None, None),
        (5, None, None),
    ]


def test_no_rows_marked_records_nothing(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    with protected(ledger, db) as c:
        r = ledger.run(
            c, lambda c: c.execute(_sent("DELETE FROM customers WHERE id < 0", CUSTOMERS))
        )
    assert r.error is None and softguard_notices(r) == []
    assert row_ops(ledger, db) == []


def test_not_a_proxied_session_marks_but_records_nothing(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    r = ledger.execute(db, _sent("DELETE FROM customers WHERE id = 1", CUSTOMERS))
    assert r.error is None
    assert row_ops(ledger, db) == []


def test_name_resolving_to_another_table_is_refused(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    _soft(
        db,
        ledger,
        "CREATE SCHEMA other",
        "CREATE TABLE other.customers (id int PRIMARY KEY, deleted_at timestamptz,"
        " deleted_by text)",
        "INSERT INTO other.customers SELECT g FROM generate_series(1, 5) g",
    )
    with protected(
        ledger, db, options="-c softguard.capture=delete -c search_path=other,public"
    ) as c:
        r = ledger.run(
            c, lambda c: c.execute(_sent("DELETE FROM customers WHERE id = 1", CUSTOMERS))
        )
    assert r.error is not None
    assert r.error[0] == "55000"
    assert r.error[1] == (
        "softguard: the DELETE names other.customers, which is not the soft-delete table "
        "public.customers"
    )
    with ledger.connect(db) as c:
        assert c.execute(
            "SELECT count(*) FROM other.customers WHERE deleted_at IS NULL"
        ).fetchone() == (5,)
    assert row_ops(ledger, db) == []


def test_expression_mark_and_nullable_boolean(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    _soft(
        db,
        ledger,
        "ALTER TABLE vehicles ADD status text DEFAULT 'active', ADD gone boolean",
        "UPDATE vehicles SET status = 'archived' WHERE id = 2",
        "UPDATE vehicles SET status = 'deleted' WHERE id = 3",
        "UPDATE vehicles SET gone = false WHERE id % 2 = 0",
    )
    status = SoftTarget("public", "vehicles", "status", "text", "expression", "'deleted'", ("id",))
    gone = SoftTarget("public", "vehicles", "gone", "boolean", "boolean", "true", ("id",))
    with protected(ledger, db) as c:
        cur = c.execute(_sent("DELETE FROM vehicles WHERE id <= 4 RETURNING id, status", status))
        assert cur.statusmessage == "UPDATE 3"  # 3 was 'deleted' already
        assert sorted(cur.fetchall()) == [(1, "active"), (2, "archived"), (4, "active")]
    op1 = row_ops(ledger, db)[-1]["id"]
    with protected(ledger, db) as c:
        cur = c.execute(_sent("DELETE FROM vehicles WHERE id BETWEEN 5 AND 8", gone))
        assert cur.statusmessage == "UPDATE 4"
    op2 = row_ops(ledger, db)[-1]["id"]
    assert op2 != op1
    undo(ledger, db, op1)
    undo(ledger, db, op2)
    with ledger.connect(db) as c:
        rows = c.execute(
            "SELECT id, status, gone FROM vehicles WHERE id <= 8 ORDER BY id"
        ).fetchall()
    assert rows == [
        (1, "active", None),
        (2, "archived", False),
        (3, "deleted", None),
        (4, "active", False),
        (5, "active", None),
        (6, "active", False),
        (7, "active", None),
        (8, "active", False),
    ]


def test_partitioned_table(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    _soft(db, ledger, "ALTER TABLE events ADD deleted_at timestamptz")
    events = SoftTarget(
        "public",
        "events",
        "deleted_at",
        "timestamp with time zone",
        "timestamp",
        "now()",
        ("id", "happened_at"),
    )
    with ledger.connect(db) as c:
        before = c.execute(
            "SELECT count(*) FROM events WHERE happened_at > '2025-12-30'"
        ).fetchone()
    assert before is not None and before[0] > 0
    with protected(ledger, db) as c:
        cur = c.execute(_sent("DELETE FROM events WHERE happened_at > '2025-12-30'", events))
        assert cur.statusmessage == f"UPDATE {before[0]}"
    op = row_ops(ledger, db)[-1]
    assert op["row_counts"]["tables"] == {"public.events": before[0]}
    undo(ledger, db, op["id"])
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM events WHERE deleted_at IS NOT NULL").fetchone() == (
            0,
        )
    # a partition named directly (its own capture trigger)
    part = SoftTarget(
        "public",
        "events_2026",
        "deleted_at",
        "timestamp with time zone",
        "timestamp",
        "now()",
        ("id", "happened_at"),
    )
    with protected(ledger, db) as c:
        cur = c.execute(_sent("DELETE FROM events_2026 WHERE id % 100 = 0", part))
        assert cur.statusmessage.startswith("UPDATE ") and cur.rowcount > 0
        marked = cur.rowcount
    op = row_ops(ledger, db)[-1]
    assert op["row_counts"]["tables"] == {"public.events_2026": marked}
    undo(ledger, db, op["id"])
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM events WHERE deleted_at IS NOT NULL").fetchone() == (
            0,
        )


def test_two_soft_tables_in_one_statement_one_operation(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    _soft(db, ledger, "ALTER TABLE vehicles ADD deleted_at timestamptz")
    stmt = (
        "WITH v AS (DELETE FROM vehicles WHERE id <= 2 RETURNING id)"
        " DELETE FROM customers WHERE id <= 3"
    )
    with protected(ledger, db) as c:
        r = ledger.run(c, lambda c: c.execute(_sent(stmt, CUSTOMERS, VEHICLES)))
    assert r.error is None
    assert len(softguard_notices(r)) == 1
    ops = row_ops(ledger, db)
    assert len(ops) == 1
    assert ops[0]["row_counts"]["tables"] == {"public.customers": 3, "public.vehicles": 2}
    lines = undo(ledger, db, ops[0]["id"])
    assert len(lines) == 2
    assert _marked(ledger, db) == [] and _marked(ledger, db, "vehicles") == []


def test_purge_in_batches_then_undo_is_refused(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    with protected(ledger, db) as c:
        c.execute(_sent("DELETE FROM customers WHERE id BETWEEN 1001 AND 1025", CUSTOMERS))
    op = row_ops(ledger, db)[-1]["id"]
    with ledger.connect(db) as c:
        total = c.execute("SELECT count(*) FROM customers").fetchone()
        rentals = c.execute(
            "SELECT count(*) FROM reservations WHERE customer_id BETWEEN 1001 AND 1025"
        ).fetchone()
        taken = [
            c.execute("SELECT softguard.purge_soft_rows(%s, 10)", [op]).fetchone() for _ in range(4)
        ]
    assert taken == [(10,), (10,), (5,), (0,)]
    assert total is not None and rentals is not None and rentals[0] > 0
    with ledger.connect(db) as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
            c.execute("SELECT softguard.undo_op(%s)", [op])
        assert "purge began hard-deleting its rows" in str(err.value)
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (total[0] - 25,)
        # ON DELETE CASCADE fires when the rows are finally deleted
        assert c.execute(
            "SELECT count(*) FROM reservations WHERE customer_id BETWEEN 1001 AND 1025"
        ).fetchone() == (0,)
        line = c.execute("SELECT softguard.purge_op(%s)", [op]).fetchone()
        assert line is not None and "purged" in line[0]
    assert row_ops(ledger, db)[-1]["state"] == "purged"
    assert [o for o in row_ops(ledger, db) if o["id"] != op] == []  # purge made no operation


def test_purge_blocked_by_a_restricting_foreign_key(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _soft(db, ledger, "ALTER TABLE vehicles ADD deleted_at timestamptz")
    with protected(ledger, db) as c:
        c.execute(_sent("DELETE FROM vehicles WHERE id = 1", VEHICLES))
    op = row_ops(ledger, db)[-1]["id"]
    with ledger.connect(db) as c:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute("SELECT softguard.purge_soft_rows(%s, 10)", [op])
        assert c.execute("SELECT count(*) FROM vehicles WHERE id = 1").fetchone() == (1,)
    # nothing was half-done: the operation can still be undone
    assert undo(ledger, db, op)[0].startswith(f"operation {op}: cleared the soft-delete mark")


def test_undo_leaves_rows_marked_again_since(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    with protected(ledger, db) as c:
        c.execute(_sent("DELETE FROM customers WHERE id <= 5", CUSTOMERS))
    op = row_ops(ledger, db)[-1]["id"]
    _soft(db, ledger, "UPDATE customers SET deleted_at = now() + interval '1 hour' WHERE id = 3")
    lines = undo(ledger, db, op)
    assert lines == [
        f"operation {op}: cleared the soft-delete mark (deleted_at) of 4 rows of public.customers"
        " (1 left alone: deleted, or marked again, since)"
    ]
    assert _marked(ledger, db) == [3]


def test_merge_delete_marks_and_merge_updates_are_not_captured(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    _with_columns(ledger, db)
    _soft(db, ledger, "UPDATE customers SET deleted_at = '2020-01-01' WHERE id = 2")
    stmt = (
        "MERGE INTO customers t USING (SELECT g AS id FROM generate_series(1, 5) g) s"
        " ON t.id = s.id WHEN MATCHED AND s.id <= 2 THEN DELETE"
        " WHEN MATCHED AND s.id <= 4 THEN UPDATE SET phone = 'merged'"
        " WHEN NOT MATCHED THEN DO NOTHING"
    )
    with protected(ledger, db) as c:
        r = _Cur()
        res = ledger.run(
            c, lambda c: setattr(r, "tag", c.execute(_sent(stmt, CUSTOMERS)).statusmessage)
        )
        assert res.error is None
    # row 1 marked; row 2 was marked already: left alone, not counted, not updated either
    assert r.tag == "MERGE 3"
    (op,) = row_ops(ledger, db)
    assert op["kind"] == "MERGE"
    assert op["row_counts"]["tables"] == {"public.customers": 1}
    assert softguard_notices(res) == [
        f"softguard: MERGE INTO public.customers (soft delete: deleted_at set) is reversible as "
        f"operation {op['id']} until {op['expires_at']:%Y-%m-%d}"
    ]
    with ledger.connect(db) as c:
        phones = c.execute(
            "SELECT id, phone = 'merged', deleted_at IS NOT NULL FROM customers"
            " WHERE id <= 5 ORDER BY id"
        ).fetchall()
    assert phones == [
        (1, False, True),
        (2, False, True),
        (3, True, False),
        (4, True, False),
        (5, False, False),
    ]
    undo(ledger, db, op["id"])
    assert _marked(ledger, db) == [2]
