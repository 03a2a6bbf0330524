"""DELETE / UPDATE / MERGE captured in the database (statement triggers, transition tables).

Sessions are opened as the proxy opens them: softguard.capture etc. as session defaults in
the StartupMessage options. Each test checks the ledger row, the one NOTICE, and that
softguard.undo_op puts every captured row back (per-table checksums as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest_capture import (
    CAPTURE_ALL,
    CAPTURE_DELETE,
    protected,
    row_ops,
    softguard_notices,
    tables_data,
    undo,
)

Ledger = Any


class _Cur:
    cur: Any = None


def _run(ledger: Ledger, conn: Any, stmt: str, params: Any = None, out: _Cur | None = None) -> Any:
    cur = conn.cursor()
    if out is not None:
        out.cur = cur
    return ledger.run(conn, lambda c: cur.execute(stmt, params) if params else cur.execute(stmt))


def test_delete_with_cascades_one_operation_then_undo(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    before = ledger.data(db)
    with protected(ledger, db) as c:
        r = _run(ledger, c, "DELETE FROM customers WHERE id % 10 = 0")
        assert r.error is None
    ops = row_ops(ledger, db)
    assert len(ops) == 1
    op = ops[0]
    assert op["kind"] == "DELETE"
    assert op["statement"] == "DELETE FROM customers WHERE id % 10 = 0"
    assert op["client_addr"] == "127.0.0.1"
    assert op["row_counts"] == {
        "estimate": False,
        "tables": {
            "public.customers": 200,
            "public.reservations": 1000,
            "billing.payments": 1000,
            "billing.refunds": 100,  # SET NULL: captured although update capture is off
        },
    }
    assert [(o["identity"], o["event"], o["original"]) for o in op["objects"]] == [
        ("public.customers", "delete", True),
        ("public.reservations", "delete", False),
        ("billing.payments", "delete", False),
        ("billing.refunds", "update", False),
    ]
    assert softguard_notices(r) == [
        f"softguard: DELETE FROM public.customers is reversible as operation {op['id']} until "
        f"{op['expires_at']:%Y-%m-%d}"
    ]
    assert ledger.data(db) != before
    lines = undo(ledger, db, op["id"])
    assert lines == [
        f"operation {op['id']}: restored 200 rows into public.customers",
        f"operation {op['id']}: restored 1000 rows into public.reservations",
        f"operation {op['id']}: restored 1000 rows into billing.payments",
        f"operation {op['id']}: restored old values of 100 rows of billing.refunds",
    ]
    assert ledger.data(db) == before
    states = [o["state"] for o in ledger.operations(db)]
    assert states == ["undone", "active"]  # the DELETE, the UNDO record


@pytest.mark.parametrize(
    ("setup", "stmt", "params"),
    [
        ([], "DELETE FROM customers WHERE id < 30 RETURNING id, email", None),
        (
            [],
            "DELETE FROM reservations r USING customers c WHERE c.id = r.customer_id AND c.id < 20",
            None,
        ),
        ([], "DELETE FROM ONLY customers WHERE id BETWEEN 40 AND 45", None),
        (
            [],
            "WITH d AS (DELETE FROM customers WHERE id < 10 RETURNING *) SELECT count(*) FROM d",
            None,
        ),
        (
            [],
            "MERGE INTO customers t USING (SELECT g AS id FROM generate_series(1, 30) g) s"
            " ON t.id = s.id WHEN MATCHED THEN DELETE",
            None,
        ),
        ([], "DELETE FROM events WHERE happened_at < '2025-07-01'", None),
        ([], "DELETE FROM events_2025 WHERE id < 100", None),
        ([], "DELETE FROM customers WHERE id = %s", [5]),
        ([], "DELETE FROM customers WHERE id = ANY (%s) RETURNING *", [[3, 6, 9]]),
    ],
    ids=[
        "returning",
        "using",
        "only",
        "with",
        "merge",
        "partitioned",
        "partition",
        "param",
        "param_returning",
    ],
)
def test_delete_forms_captured_and_undone(
    setup: list[str],
    stmt: str,
    params: Any,
    ledger: Ledger,
    rental_db: Callable[[], str],
) -> None:
    db, twin = rental_db(), rental_db()
    before = ledger.data(db)
    with protected(ledger, db) as c, ledger.connect(twin) as d:
        vc, dc = _Cur(), _Cur()
        via = _run(ledger, c, stmt, params, vc)
        via_rows = vc.cur.fetchall() if vc.cur.description else None
        direct = _run(ledger, d, stmt, params, dc)
        direct_rows = dc.cur.fetchall() if dc.cur.description else None
        assert via.error is None and direct.error is None
        assert vc.cur.statusmessage == dc.cur.statusmessage
        assert via_rows == direct_rows
    assert via.public_notices() == direct.public_notices()
    assert tables_data(ledger, db) == tables_data(ledger, twin)
    ops = row_ops(ledger, db)
    assert len(ops) == 1, ops
    assert ops[0]["kind"] == ("MERGE" if stmt.startswith("MERGE") else "DELETE")
    assert len(softguard_notices(via)) == 1
    undo(ledger, db, ops[0]["id"])
    assert ledger.data(db) == before


def test_prepared_and_cursor(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.data(db)
    with protected(ledger, db) as c:
        r = _run(ledger, c, "PREPARE d(int) AS DELETE FROM customers WHERE id = $1")
        r = _run(ledger, c, "EXECUTE d(5)")
        assert r.error is None and len(softguard_notices(r)) == 1
        c.autocommit = False
        c.execute("DECLARE cur CURSOR FOR SELECT * FROM customers WHERE id > 100 FOR UPDATE")
        c.execute("FETCH 1 FROM cur")
        cc = _Cur()
        r = _run(ledger, c, "DELETE FROM customers WHERE CURRENT OF cur", out=cc)
        assert r.error is None and cc.cur.rowcount == 1
        c.commit()
    ops = row_ops(ledger, db)
    assert [o["statement"] for o in ops] == [
        "EXECUTE d(5)",
        "DELETE FROM customers WHERE CURRENT OF cur",
    ]
    assert ops[1]["row_counts"]["tables"]["public.customers"] == 1
    for op in reversed(ops):
        undo(ledger, db, op["id"])
    assert ledger.data(db) == before


def test_unprotected_session_not_captured(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    r = ledger.execute(db, "DELETE FROM customers WHERE id % 10 = 0")
    assert r.error is None and softguard_notices(r) == []
    assert ledger.operations(db) == []
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM softguard.captured_rows").fetchone() == (0,)


def test_rollback_and_empty_delete_record_nothing(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with protected(ledger, db, autocommit=False) as c:
        c.execute("DELETE FROM customers WHERE id % 10 = 0")
        c.rollback()
        c.execute("SAVEPOINT s")
        c.execute("DELETE FROM customers WHERE id < 10")
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.execute("DELETE FROM customers WHERE id < 0")  # removes nothing
        c.commit()
    assert ledger.operations(db) == []
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM softguard.captured_rows").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM softguard.captures").fetchone() == (0,)


def test_later_insert_survives_undo(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with protected(ledger, db) as c:
        c.execute("DELETE FROM customers WHERE id % 10 = 0")
        c.execute("INSERT INTO customers (email, full_name) VALUES ('new@example.com', 'New One')")
    op = row_ops(ledger, db)[0]["id"]
    undo(ledger, db, op)
    with ledger.connect(db) as c:
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2001,)
        assert c.execute(
            "SELECT count(*) FROM customers WHERE email = 'new@example.com'"
        ).fetchone() == (1,)


def test_key_reused_since(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with protected(ledger, db) as c:
        c.execute("DELETE FROM customers WHERE id IN (10, 20, 30)")
        c.execute(
            "INSERT INTO customers (id, email, full_name) VALUES (20, 'again@example.com', 'Again')"
        )
    op = row_ops(ledger, db)[0]["id"]
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    err = info.value.diag
    assert err.sqlstate == "23505"
    assert "(id)=(20)" in (err.message_primary or ""), err.message_primary
    assert err.message_hint == "use --on-conflict skip"
    assert row_ops(ledger, db)[0]["state"] == "active"  # nothing changed
    lines = undo(ledger, db, op, on_conflict="skip")
    assert (
        f"operation {op}: restored 2 rows into public.customers (1 skipped: key re-used since)"
        in lines
    )
    with ledger.connect(db) as c:
        assert c.execute("SELECT full_name FROM customers WHERE id = 20").fetchone() == ("Again",)
        assert c.execute("SELECT count(*) FROM customers WHERE id IN (10, 30)").fetchone() == (2,)


def test_update_captured_only_when_asked(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.data(db)
    with protected(ledger, db, CAPTURE_DELETE) as c:
        c.execute("UPDATE vehicles SET daily_rate = daily_rate + 1 WHERE id < 10")
    assert ledger.operations(db) == []
    ledger.execute(db, "UPDATE vehicles SET daily_rate = daily_rate - 1 WHERE id < 10")
    assert ledger.data(db) == before
    with protected(ledger, db, CAPTURE_ALL) as c:
        r = _run(ledger, c, "UPDATE reservations SET status = 'cancelled' WHERE id <= 50")
    assert r.error is None
    ops = row_ops(ledger, db)
    assert len(ops) == 1 and ops[0]["kind"] == "UPDATE"
    assert softguard_notices(r)[0].startswith(
        f"softguard: UPDATE public.reservations is reversible as operation {ops[0]['id']} "
    )
    lines = undo(ledger, db, ops[0]["id"])
    assert lines == [
        f"operation {ops[0]['id']}: restored old values of 50 rows of public.reservations"
    ]
    assert ledger.data(db) == before  # the BEFORE UPDATE trigger did not touch updated_at


def test_function_deletes_are_one_operation_each(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    """Rows removed by a function (not visible to a SQL rewrite) are caught: one operation
    per DELETE statement it runs (decision 0012), its cascade with it."""
    db = rental_db()
    before = ledger.data(db)
    ledger.execute(
        db,
        "CREATE FUNCTION purge(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
        " DELETE FROM billing.refunds WHERE id < n; DELETE FROM locations WHERE id = 20; END $$",
    )
    with protected(ledger, db) as c:
        r = _run(ledger, c, "SELECT purge(50)")
    assert r.error is None and len(softguard_notices(r)) == 2
    ops = row_ops(ledger, db)
    assert [o["row_counts"]["tables"] for o in ops] == [
        {"billing.refunds": 49},
        {"public.locations": 1, "public.vehicles": 10},  # ON DELETE SET NULL
    ]
    assert {o["statement"] for o in ops} == {"SELECT purge(50)"}
    for op in reversed(ops):
        undo(ledger, db, op["id"])
    after = ledger.data(db)
    assert after == before


def test_tables_created_later_are_captured(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    ledger.execute(db, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    ledger.execute(db, "INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 10) g")
    ledger.execute(db, "CREATE TABLE notes_copy AS SELECT * FROM notes")
    ledger.execute(
        db,
        "CREATE TABLE events_2027 PARTITION OF events"
        " FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    )
    with ledger.connect(db) as c:
        n = c.execute(
            "SELECT tgrelid::regclass::text, count(*) FROM pg_trigger"
            " WHERE tgname LIKE 'zz_softguard_capture_%' AND tgrelid IN"
            " ('notes'::regclass, 'notes_copy'::regclass, 'events_2027'::regclass)"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall()
    # delete, update, truncate and the statement trigger
    assert n == [("events_2027", 4), ("notes", 4), ("notes_copy", 4)]
    with protected(ledger, db) as c:
        c.execute("DELETE FROM notes_copy WHERE id > 5")
    assert row_ops(ledger, db)[0]["row_counts"]["tables"] == {"public.notes_copy": 5}


def test_ledger_tables_not_public(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        for t in ("softguard.captures", "softguard.captured_rows"):
            assert c.execute(
                "SELECT has_table_privilege('public', %s, 'SELECT')", [t]
            ).fetchone() == (False,)
            assert c.execute(
                "SELECT has_table_privilege(%s, %s, 'INSERT')", [ledger.nonowner["user"], t]
            ).fetchone() == (False,)
    # a non-superuser protected session can still delete (capture runs as the definer)
    ledger.execute(db, f"GRANT SELECT, DELETE ON billing.refunds TO {ledger.nonowner['user']}")
    ledger.execute(db, f"GRANT USAGE ON SCHEMA billing TO {ledger.nonowner['user']}")
    with psycopg.connect(
        ledger.dsn(db, **ledger.nonowner), options=CAPTURE_DELETE, autocommit=True
    ) as c:
        c.execute("DELETE FROM billing.refunds WHERE id < 11")
    op = row_ops(ledger, db)[0]
    assert op["db_role"] == ledger.nonowner["user"]
    assert op["current_role"] == ledger.nonowner["user"]
