"""softguard.truncate_op and softguard.alter_op against the same statement run directly on a
twin database, their undo, and the issue's whole session undone newest first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest_capture import call_op, protected, row_ops, softguard_notices, tables_data, undo

Ledger = Any


@pytest.mark.parametrize(
    "stmt",
    [
        "TRUNCATE billing.refunds, billing.payments RESTART IDENTITY",
        "TRUNCATE customers",  # 0A000: referenced in a foreign key constraint
        "TRUNCATE customers CASCADE",
        "TRUNCATE TABLE ONLY events_2025",
        "TRUNCATE events RESTART IDENTITY",
        "TRUNCATE nosuch",
    ],
)
def test_truncate_like_postgres_then_undo(
    stmt: str, ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db, twin = rental_db(), rental_db()
    before = ledger.snapshot(db)
    with protected(ledger, db) as c:
        via = call_op(ledger, c, "truncate_op", stmt, "TRUNCATE TABLE")
    direct = ledger.execute(twin, stmt)
    assert via.error == direct.error
    assert via.public_notices() == direct.public_notices()
    assert ledger.snapshot(db) == ledger.snapshot(twin)
    if direct.error:
        assert ledger.operations(db) == []
        assert via.notices[0][0] == "SGBEG"
        return
    assert via.notices[0] == ("SGBEG", "0")
    assert via.notices[-1] == ("SGEND", "TRUNCATE TABLE")
    ops = row_ops(ledger, db)
    assert len(ops) == 1 and ops[0]["kind"] == "TRUNCATE"
    assert len(softguard_notices(via)) == 1
    lines = undo(ledger, db, ops[0]["id"])
    assert lines
    assert ledger.snapshot(db) == before


def test_truncate_notice_and_counts(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with protected(ledger, db) as c:
        r = call_op(
            ledger,
            c,
            "truncate_op",
            "TRUNCATE billing.refunds, billing.payments RESTART IDENTITY",
            "TRUNCATE TABLE",
        )
    op = row_ops(ledger, db)[0]
    assert softguard_notices(r) == [
        f"softguard: TRUNCATE TABLE billing.refunds, billing.payments is reversible as operation "
        f"{op['id']} until {op['expires_at']:%Y-%m-%d}"
    ]
    assert op["row_counts"] == {
        "estimate": False,
        "tables": {"billing.refunds": 1000, "billing.payments": 10000},
    }
    lines = undo(ledger, db, op["id"])
    assert f"operation {op['id']}: restored sequence billing.payments_id_seq to 10000" in lines


def test_truncate_rollback_keeps_nothing(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.data(db)
    with protected(ledger, db, autocommit=False) as c:
        call_op(ledger, c, "truncate_op", "TRUNCATE billing.refunds", "TRUNCATE TABLE")
        c.rollback()
    assert ledger.operations(db) == []
    assert ledger.data(db) == before


def test_drop_column_then_undo(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db, twin = rental_db(), rental_db()
    before = ledger.snapshot(db)
    stmt = "ALTER TABLE vehicles DROP COLUMN specs"
    with protected(ledger, db) as c:
        via = call_op(ledger, c, "alter_op", stmt, "ALTER TABLE")
    direct = ledger.execute(twin, stmt)
    assert via.error is None and direct.error is None
    assert via.public_notices() == direct.public_notices()
    assert ledger.snapshot(db) == ledger.snapshot(twin)
    op = row_ops(ledger, db)[0]
    assert op["kind"] == "ALTER TABLE"
    assert softguard_notices(via) == [
        f"softguard: ALTER TABLE DROP COLUMN public.vehicles.specs (restored as the last "
        f"column) is reversible as operation "
        f"{op['id']} until {op['expires_at']:%Y-%m-%d}"
    ]
    assert undo(ledger, db, op["id"]) == [
        f"operation {op['id']}: re-added column public.vehicles.specs with 200 values"
    ]
    assert ledger.snapshot(db) == before


def test_drop_column_with_index_and_comment(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    ledger.execute(db, "CREATE INDEX customers_phone_idx ON customers (phone)")
    ledger.execute(db, "COMMENT ON COLUMN customers.email IS 'Login and receipt address'")
    q = "SELECT id, email, full_name, phone, created_at, tags FROM customers ORDER BY id"
    with ledger.connect(db) as c:
        before = c.execute(q).fetchall()
    with protected(ledger, db) as c:
        r = call_op(ledger, c, "alter_op", "ALTER TABLE customers DROP COLUMN phone", "ALTER TABLE")
        assert r.error is None
    undo(ledger, db, row_ops(ledger, db)[0]["id"])
    # the column comes back last: compare the values and the index, not the column order
    with ledger.connect(db) as c:
        assert c.execute(q).fetchall() == before
    assert "CREATE INDEX customers_phone_idx ON public.customers USING btree (phone)" in (
        ledger.schema_dump(db)
    )


def test_drop_column_without_key_kept_by_row_image(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    """Decision 0022, since then: no key, the other columns find the rows again."""
    db = rental_db()
    ledger.execute(db, "CREATE TABLE nokey (a int, b text)")
    ledger.execute(db, "INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, NULL)")
    with protected(ledger, db) as c:
        r = call_op(ledger, c, "alter_op", "ALTER TABLE nokey DROP COLUMN b", "ALTER TABLE")
    assert r.error is None
    op = row_ops(ledger, db)[0]
    assert undo(ledger, db, op["id"]) == [
        f"operation {op['id']}: re-added column public.nokey.b with 3 values"
    ]


def test_table_dropped_since_blocks_undo(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.snapshot(db)
    with protected(ledger, db) as c:
        c.execute("DELETE FROM billing.refunds WHERE id < 100")
    first = row_ops(ledger, db)[0]["id"]
    assert ledger.drop(db, "DROP TABLE billing.refunds").error is None
    second = ledger.last_op(db)
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, first)
    assert info.value.diag.sqlstate == "55006"
    assert f"held by operation {second}" in (info.value.diag.message_primary or "")
    assert info.value.diag.message_hint == f"Undo operation {second} first, or use --cascade."
    with ledger.connect(db) as c:
        c.execute("SELECT * FROM softguard.undo_op(%s, NULL, true)", [first])
    assert ledger.snapshot(db) == before


def test_issue_session_undone_newest_first(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    """The issue's done-when: four reversible changes, a new customer, undo all newest first:
    the database equals the original plus that customer."""
    db = rental_db()
    original = ledger.snapshot(db)
    with protected(ledger, db) as c:
        c.execute("DELETE FROM customers WHERE id % 10 = 0")
        rows = c.execute(
            "DELETE FROM billing.payments WHERE amount > %s RETURNING id", [440]
        ).fetchall()
        assert rows
        r = call_op(
            ledger,
            c,
            "truncate_op",
            "TRUNCATE billing.refunds, billing.payments RESTART IDENTITY",
            "TRUNCATE TABLE",
        )
        assert r.error is None
        r = call_op(ledger, c, "alter_op", "ALTER TABLE vehicles DROP COLUMN specs", "ALTER TABLE")
        assert r.error is None
        c.execute(
            "INSERT INTO customers (email, full_name) VALUES ('late@example.com', 'Late Comer')"
        )
    ops = row_ops(ledger, db)
    assert [o["kind"] for o in ops] == ["DELETE", "DELETE", "TRUNCATE", "ALTER TABLE"]
    for op in reversed(ops):
        undo(ledger, db, op["id"])
    ledger.execute(db, "DELETE FROM customers WHERE email = 'late@example.com'")
    ledger.execute(db, "SELECT setval('customers_id_seq', 2000)")
    assert ledger.schema_dump(db) == original[0]
    assert tables_data(ledger, db) == {
        k: v for k, v in original[1].items() if not k.startswith("seq ")
    }
    assert ledger.data(db) == original[1]
