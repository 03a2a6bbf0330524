"""softguard.alter_op for ALTER TABLE ... ALTER COLUMN ... TYPE (migration 0004): the
statement run through alter_op compared with the same statement on a twin, then undone:
the type and the exact values come back (numeric(10,2) -> integer rounds; undo gives the
numerics back), rows written since are kept, conflicts are refused clearly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest_capture import CAPTURE_DELETE, protected, row_ops, softguard_notices, undo

Ledger = Any

# 200 vehicles; a third get cents, which ALTER ... TYPE integer rounds away
CENTS = "UPDATE vehicles SET daily_rate = daily_rate + 0.45 WHERE id % 3 = 0"
CODES = """
CREATE TABLE codes (
    id    integer PRIMARY KEY,
    code  text NOT NULL DEFAULT '007',
    label varchar(20) COLLATE "C"
);
INSERT INTO codes VALUES (1, ' 12', 'one'), (2, '007', 'two'), (3, '5', NULL);
"""


def call_alter(
    ledger: Ledger,
    conn: Any,
    stmt: str,
    columns: list[tuple[str | None, str, str]],
    drop_column: bool = False,
) -> Any:
    """CALL softguard.alter_op(stmt, ctx) as the proxy does for ALTER COLUMN ... TYPE."""
    ctx = {
        "action": "ALTER TABLE",
        "offset": 0,
        "client_addr": "127.0.0.1",
        "retention_seconds": 604800,
        "columns": [{"schema": s, "table": t, "column": c} for s, t, c in columns],
        "drop_column": drop_column,
    }
    return ledger.run(
        conn, lambda c: c.execute("CALL softguard.alter_op(%s, %s)", [stmt, json.dumps(ctx)])
    )


def notice_for(op: dict[str, Any], what: str, action: str = "ALTER COLUMN TYPE") -> str:
    return (
        f"softguard: ALTER TABLE {action} {what} is reversible as operation {op['id']}"
        f" until {op['expires_at']:%Y-%m-%d}"
    )


def rows(ledger: Ledger, db: str, query: str) -> list[Any]:
    with ledger.connect(db) as c:
        return c.execute(query).fetchall()


def column_type(ledger: Ledger, db: str, table: str, column: str) -> Any:
    (row,) = rows(
        ledger,
        db,
        "SELECT format_type(atttypid, atttypmod), pg_get_expr(d.adbin, d.adrelid),"
        " (SELECT collname FROM pg_collation WHERE oid = attcollation), attnotnull"
        " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid"
        f" AND d.adnum = a.attnum WHERE attrelid = '{table}'::regclass AND attname = '{column}'",
    )
    return row


def test_numeric_to_integer_rounds_and_undo_gives_the_numerics_back(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db, twin = rental_db(), rental_db()
    for d in (db, twin):
        assert ledger.execute(d, CENTS).error is None
    before = ledger.snapshot(db)
    rates = "SELECT id, daily_rate FROM vehicles ORDER BY id"
    old_rates = rows(ledger, db, rates)
    stmt = "ALTER TABLE vehicles ALTER COLUMN daily_rate TYPE integer"
    with protected(ledger, db) as c:
        via = call_alter(ledger, c, stmt, [(None, "vehicles", "daily_rate")])
    direct = ledger.execute(twin, stmt)
    assert via.error is None and direct.error is None
    assert via.notices[0] == ("SGBEG", "0") and via.notices[-1] == ("SGEND", "ALTER TABLE")
    assert via.public_notices() == direct.public_notices()
    assert ledger.snapshot(db) == ledger.snapshot(twin)
    assert rows(ledger, db, rates) != old_rates  # rounded
    (op,) = row_ops(ledger, db)
    assert op["kind"] == "ALTER TABLE" and op["statement"] == stmt
    assert softguard_notices(via) == [notice_for(op, "public.vehicles.daily_rate")]
    assert op["row_counts"]["tables"] == {"public.vehicles": 200}
    (obj,) = op["objects"]
    assert obj["identity"] == "public.vehicles.daily_rate"
    assert (obj["old_type"], obj["new_type"]) == ("numeric(10,2)", "integer")
    assert undo(ledger, db, op["id"]) == [
        f"operation {op['id']}: column public.vehicles.daily_rate back to numeric(10,2),"
        " 200 values restored"
    ]
    assert rows(ledger, db, rates) == old_rates
    assert ledger.snapshot(db) == before


def test_text_to_int_using_several_subcommands_and_writes_since(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db, twin = rental_db(), rental_db()
    for d in (db, twin):
        assert ledger.execute(d, CODES).error is None
    before = ledger.snapshot(db)
    q = "SELECT id, code, label FROM codes ORDER BY id"
    stmt = (
        "ALTER TABLE codes ALTER COLUMN code DROP DEFAULT,"
        " ALTER COLUMN code TYPE integer USING trim(code)::integer,"
        " ALTER COLUMN code SET DEFAULT 7, ALTER label TYPE text"
    )
    cols = [(None, "codes", "code"), (None, "codes", "label")]
    with protected(ledger, db) as c:
        via = call_alter(ledger, c, stmt, cols)
    direct = ledger.execute(twin, stmt)
    assert via.error is None and direct.error is None
    assert via.public_notices() == direct.public_notices()
    assert ledger.snapshot(db) == ledger.snapshot(twin)
    assert rows(ledger, db, q) == [(1, 12, "one"), (2, 7, "two"), (3, 5, None)]
    (op,) = row_ops(ledger, db)
    assert softguard_notices(via) == [notice_for(op, "public.codes.code, public.codes.label")]
    assert op["row_counts"]["tables"] == {"public.codes": 3}
    # written since: a new row, a changed value; both are kept, converted back
    ledger.execute(db, "INSERT INTO codes (id, label) VALUES (4, 'four')")
    ledger.execute(db, "UPDATE codes SET code = 99 WHERE id = 3")
    lines = undo(ledger, db, op["id"])
    assert sorted(lines) == [
        f"operation {op['id']}: column public.codes.code back to text, 2 values restored"
        " (2 rows added or changed since: converted back)",
        f"operation {op['id']}: column public.codes.label back to character varying(20),"
        " 3 values restored (1 row added or changed since: converted back)",
    ]
    assert rows(ledger, db, q) == [
        (1, " 12", "one"),
        (2, "007", "two"),
        (3, "99", None),
        (4, "7", "four"),
    ]
    assert column_type(ledger, db, "codes", "code") == ("text", "'007'::text", "default", True)
    assert column_type(ledger, db, "codes", "label")[:3] == ("character varying(20)", None, "C")
    ledger.execute(db, "DELETE FROM codes WHERE id = 4; UPDATE codes SET code = '5' WHERE id = 3")
    assert ledger.snapshot(db) == before


def test_several_columns_of_vehicles_back_exactly(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    assert ledger.execute(db, CENTS).error is None
    before = ledger.snapshot(db)
    stmt = (
        "ALTER TABLE public.vehicles ALTER COLUMN daily_rate TYPE numeric(6,1),"
        " ALTER COLUMN model TYPE varchar(5) USING left(model, 5),"
        " ALTER COLUMN specs TYPE text USING specs->>'seats'"
    )
    cols = [("public", "vehicles", c) for c in ("daily_rate", "model", "specs")]
    with protected(ledger, db) as c:
        via = call_alter(ledger, c, stmt, cols)
    assert via.error is None, via.error
    (op,) = row_ops(ledger, db)
    assert softguard_notices(via) == [
        notice_for(op, "public.vehicles.daily_rate, public.vehicles.model, public.vehicles.specs")
    ]
    assert len(undo(ledger, db, op["id"])) == 3
    assert ledger.snapshot(db) == before


def test_drop_column_and_type_change_in_one_statement(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db, twin = rental_db(), rental_db()
    q = "SELECT id, email, full_name, phone, created_at, tags FROM customers ORDER BY id"
    old = rows(ledger, db, q)
    stmt = "ALTER TABLE customers DROP COLUMN phone, ALTER COLUMN email TYPE varchar(80)"
    with protected(ledger, db) as c:
        via = call_alter(ledger, c, stmt, [(None, "customers", "email")], drop_column=True)
    direct = ledger.execute(twin, stmt)
    assert via.error is None and direct.error is None
    assert via.public_notices() == direct.public_notices()
    assert ledger.snapshot(db) == ledger.snapshot(twin)
    (op,) = row_ops(ledger, db)
    assert softguard_notices(via) == [
        notice_for(
            op,
            "public.customers.phone (restored as the last column), "
            "ALTER COLUMN TYPE public.customers.email",
            "DROP COLUMN",
        )
    ]
    assert len(undo(ledger, db, op["id"])) == 2
    # the dropped column comes back last: compare the values, not the column order
    assert rows(ledger, db, q) == old
    assert column_type(ledger, db, "customers", "email")[0] == "email"


def test_too_narrow_type_is_postgres_own_error(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db, twin = rental_db(), rental_db()
    stmt = "ALTER TABLE customers ALTER COLUMN phone TYPE varchar(3)"
    with protected(ledger, db) as c:
        via = call_alter(ledger, c, stmt, [(None, "customers", "phone")])
    direct = ledger.execute(twin, stmt)
    assert via.error == direct.error and via.sqlstate == "22001"
    assert ledger.operations(db) == []


def test_refused_without_a_key_the_statement_leaves_alone(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    """Without a key the rows are found by the columns the statement leaves alone
    (decision 0022, since then); when it changes them all, nothing is left to find them."""
    db = rental_db()
    ledger.execute(db, "CREATE TABLE nokey (b text)")
    with protected(ledger, db) as c:
        r = call_alter(
            ledger, c, "ALTER TABLE nokey ALTER b TYPE varchar(3)", [(None, "nokey", "b")]
        )
    assert r.sqlstate == "0A000"
    assert "no primary key" in (r.error[1] or "")
    # its primary key is its only key, and the statement changes every column
    ledger.execute(db, "CREATE TABLE onekey (id int PRIMARY KEY, v text)")
    with protected(ledger, db) as c:
        r = call_alter(
            ledger,
            c,
            "ALTER TABLE onekey ALTER id TYPE bigint, ALTER v TYPE varchar(9)",
            [(None, "onekey", "id"), (None, "onekey", "v")],
        )
    assert r.sqlstate == "0A000"
    assert "has a column that this statement changes" in (r.error[1] or "")
    assert ledger.operations(db) == []
    # a temporary table, a missing column: as PostgreSQL does, nothing recorded
    with protected(ledger, db) as c:
        r = call_alter(
            ledger,
            c,
            "CREATE TEMP TABLE tmp (id int PRIMARY KEY, v text);"
            " ALTER TABLE tmp ALTER v TYPE varchar(3)",
            [(None, "tmp", "v")],
        )
        assert r.error is None and softguard_notices(r) == []
        r = call_alter(
            ledger, c, "ALTER TABLE vehicles ALTER nosuch TYPE int", [(None, "vehicles", "nosuch")]
        )
    assert r.sqlstate == "42703"
    assert ledger.operations(db) == []


def _retype_rate(ledger: Ledger, db: str, to: str = "numeric(14,2)") -> int:
    stmt = f"ALTER TABLE vehicles ALTER COLUMN daily_rate TYPE {to}"
    with protected(ledger, db) as c:
        assert call_alter(ledger, c, stmt, [(None, "vehicles", "daily_rate")]).error is None
    return int(row_ops(ledger, db)[-1]["id"])


def test_conflicts(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.snapshot(db)
    op = _retype_rate(ledger, db)
    # a value written since that does not fit the old type: refused, keys named
    ledger.execute(db, "UPDATE vehicles SET daily_rate = 123456789012 WHERE id IN (7, 9)")
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    assert info.value.diag.sqlstate == "55000"
    assert info.value.diag.message_primary == (
        f"cannot undo operation {op}: 2 rows of public.vehicles added or changed since hold a"
        " value of daily_rate that does not convert back to numeric(10,2): (id)=(7), (id)=(9)"
    )
    ledger.execute(db, "UPDATE vehicles SET daily_rate = 30 + (id % 70) WHERE id IN (7, 9)")
    # renamed since
    ledger.execute(db, "ALTER TABLE vehicles RENAME daily_rate TO rate")
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    assert info.value.diag.sqlstate == "55000"
    assert "was renamed to rate since" in (info.value.diag.message_primary or "")
    ledger.execute(db, "ALTER TABLE vehicles RENAME rate TO daily_rate")
    # changed again by hand
    ledger.execute(db, "ALTER TABLE vehicles ALTER daily_rate TYPE numeric(15,2)")
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    assert info.value.diag.sqlstate == "55000"
    assert "is of type numeric(15,2) now, not numeric(14,2)" in (
        info.value.diag.message_primary or ""
    )
    ledger.execute(db, "ALTER TABLE vehicles ALTER daily_rate TYPE numeric(14,2)")
    # changed again through softguard: held by that operation; --cascade undoes both
    later = _retype_rate(ledger, db, "integer")
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    assert info.value.diag.sqlstate == "55006"
    assert f"held by operation {later}" in (info.value.diag.message_primary or "")
    with ledger.connect(db) as c:
        c.execute("SELECT * FROM softguard.undo_op(%s, NULL, true)", [op]).fetchall()
    assert ledger.snapshot(db) == before


def test_dropped_since_through_softguard_then_cascade(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    before = ledger.snapshot(db)
    op = _retype_rate(ledger, db)
    stmt = "ALTER TABLE vehicles DROP COLUMN daily_rate"
    with protected(ledger, db) as c:
        assert call_alter(ledger, c, stmt, [], drop_column=True).error is None
    later = int(row_ops(ledger, db)[-1]["id"])
    with pytest.raises(psycopg.Error) as info:
        undo(ledger, db, op)
    assert info.value.diag.sqlstate == "55006"
    assert info.value.diag.message_primary.startswith(
        f"cannot undo operation {op}: column public.vehicles.daily_rate was dropped since,"
        f" held by operation {later}"
    )
    with ledger.connect(db) as c:
        c.execute("SELECT * FROM softguard.undo_op(%s, NULL, true)", [op]).fetchall()
    q = "SELECT id, daily_rate FROM vehicles ORDER BY id"
    with ledger.connect(rental_db()) as c:
        assert rows(ledger, db, q) == c.execute(q).fetchall()
    assert column_type(ledger, db, "vehicles", "daily_rate")[0] == "numeric(10,2)"
    del before


def test_rollback_keeps_nothing(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.snapshot(db)
    with protected(ledger, db, autocommit=False) as c:
        call_alter(
            ledger,
            c,
            "ALTER TABLE vehicles ALTER daily_rate TYPE int",
            [(None, "vehicles", "daily_rate")],
        )
        c.rollback()
    assert ledger.operations(db) == []
    assert ledger.snapshot(db) == before


def test_non_superuser_owner_and_non_owner(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    user, password = ledger.nonowner["user"], ledger.nonowner["password"]
    ledger.execute(
        db,
        "CREATE TABLE owned (id int PRIMARY KEY, v numeric(6,2));"
        " INSERT INTO owned VALUES (1, 1.25), (2, 2.5);"
        f" ALTER TABLE owned OWNER TO {user}",
    )
    dsn = ledger.dsn(db, user, password)
    with psycopg.connect(dsn, options=CAPTURE_DELETE, autocommit=True) as c:
        r = call_alter(ledger, c, "ALTER TABLE owned ALTER v TYPE int", [(None, "owned", "v")])
        assert r.error is None, r.error
        assert len(softguard_notices(r)) == 1
        r = call_alter(
            ledger, c, "ALTER TABLE vehicles ALTER plate TYPE text", [(None, "vehicles", "plate")]
        )
        assert r.error == ("42501", "must be owner of table vehicles")
    (op,) = row_ops(ledger, db)
    undo(ledger, db, op["id"])
    assert rows(ledger, db, "SELECT * FROM owned ORDER BY id") == [
        (1, Decimal("1.25")),
        (2, Decimal("2.50")),
    ]
