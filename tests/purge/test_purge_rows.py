"""softguard.purge_rows among other captures (decision 0024): it deletes exactly the released
capture's rows, resuming where the last batch stopped, and leaves every other capture
byte for byte, so that undo of another operation still restores exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)

CAPTURE = "-c softguard.capture=delete -c softguard.retention=604800"
MAX_CALLS = 10_000  # purge_rows calls: bounds the loop, far above what the rows need


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


def delete(ledger: Ledger, db: str, stmt: str) -> int:
    with psycopg.connect(ledger.dsn(db), options=CAPTURE, autocommit=True) as c:
        c.execute(stmt)
    return int(ledger.last_op(db))


def captured(ledger: Ledger, db: str, op: int) -> Counter[tuple[int, str]]:
    with ledger.connect(db) as c:
        rows = c.execute(
            'SELECT r.capture_id, r."row" FROM softguard.captured_rows r'
            " JOIN softguard.captures c ON c.id = r.capture_id WHERE c.op_id = %s",
            [op],
        ).fetchall()
    return Counter((int(r[0]), str(r[1])) for r in rows)


def purge_rows(ledger: Ledger, db: str, batch: int) -> int:
    """purge_rows(batch) in one transaction per call until it returns 0; the calls made."""
    with ledger.connect(db) as c:
        for calls in range(1, MAX_CALLS + 1):
            row = c.execute("SELECT softguard.purge_rows(%s)", [batch]).fetchone()
            assert row is not None
            if row[0] == 0:
                return calls
    raise AssertionError(f"purge_rows still had rows after {MAX_CALLS} calls")


def test_purge_rows_takes_exactly_the_released_operation(ledger: Ledger, db: str) -> None:
    with ledger.connect(db) as c:
        row = c.execute(
            "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM customers t"
            " WHERE t.id <= 150 OR t.id BETWEEN 401 AND 450"
        ).fetchone()
    assert row is not None
    before_md5 = row[0]
    first = delete(ledger, db, "DELETE FROM customers WHERE id <= 150")
    middle = delete(ledger, db, "DELETE FROM customers WHERE id BETWEEN 151 AND 400")
    last = delete(ledger, db, "DELETE FROM customers WHERE id BETWEEN 401 AND 450")
    kept = {op: captured(ledger, db, op) for op in (first, last)}
    assert all(kept.values())
    assert sum(captured(ledger, db, middle).values()) > 250  # cascaded rows too

    with ledger.connect(db) as c:  # inline_rows 0: everything left to purge_rows
        row = c.execute("SELECT softguard.purge_op(%s, NULL, '2s', 0)", [middle]).fetchone()
    assert row is not None and "released (deleted in batches)" in row[0]
    calls = purge_rows(ledger, db, 7)
    assert calls > 10  # many batches, each resuming where the last one stopped

    with ledger.connect(db) as c:
        left = c.execute(
            "SELECT count(*) FROM softguard.captures WHERE op_id = %s", [middle]
        ).fetchone()
    assert left == (0,)
    assert captured(ledger, db, middle) == Counter()
    assert {op: captured(ledger, db, op) for op in (first, last)} == kept

    # the operations around it still undo exactly: what they deleted is back, byte for
    # byte, and the purged operation's rows stay gone
    ledger.undo(db, last)
    ledger.undo(db, first)
    with ledger.connect(db) as c:
        back = c.execute(
            "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM customers t"
            " WHERE t.id <= 150 OR t.id BETWEEN 401 AND 450"
        ).fetchone()
    assert back == (before_md5,)
    with ledger.connect(db) as c:
        ids = c.execute(
            "SELECT count(*) FILTER (WHERE id <= 150), count(*) FILTER (WHERE id BETWEEN 401"
            " AND 450), count(*) FILTER (WHERE id BETWEEN 151 AND 400) FROM customers"
        ).fetchone()
    assert ids == (150, 50, 0)


def test_purge_rows_of_two_released_operations(ledger: Ledger, db: str) -> None:
    a = delete(ledger, db, "DELETE FROM customers WHERE id <= 100")
    keep = delete(ledger, db, "DELETE FROM customers WHERE id BETWEEN 101 AND 200")
    b = delete(ledger, db, "DELETE FROM customers WHERE id BETWEEN 201 AND 300")
    ctx = {"action": "TRUNCATE TABLE", "offset": 0, "retention_seconds": 604800}
    with ledger.connect(db) as c:  # its sequences' captures hold no rows
        c.execute("CALL softguard.truncate_op(%s, %s)", ["TRUNCATE TABLE events", json.dumps(ctx)])
    t = int(ledger.last_op(db))
    kept = captured(ledger, db, keep)
    with ledger.connect(db) as c:
        for op in (a, b, t):
            c.execute("SELECT softguard.purge_op(%s, NULL, '2s', 0)", [op])
    purge_rows(ledger, db, 13)
    with ledger.connect(db) as c:
        left = c.execute(
            "SELECT count(*) FROM softguard.captures WHERE op_id = ANY (%s)", [[a, b, t]]
        ).fetchone()
    assert left == (0,)
    assert captured(ledger, db, keep) == kept
