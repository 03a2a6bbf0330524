"""What the capture trigger no longer does (decision 0042), and that what it checks is kept.

- A DELETE or UPDATE of a captured session that removes or changes no row returns before
  anything else: no capture id drawn, no ledger row (main drew one, read the column list
  and ran an INSERT for nothing). Fails on 5880cea.
- Guards for the budget of a single-row capture, which the trigger's reordered branch
  still checks first: each limit (max_capture_bytes, the disk sample, the session's own
  lower setting) refuses a single-row DELETE with 54000 and its wording, and the running
  total the statement's cascade shares is still written. These pass on 5880cea too: the
  disk limit of a small DELETE had no test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest_capture import CAPTURE_ALL, protected, row_ops

Ledger = Any


def _capture_ids(ledger: Ledger, db: str) -> tuple[int, bool]:
    with ledger.connect(db) as c:
        row = c.execute("SELECT last_value, is_called FROM softguard.captures_id_seq").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def test_statements_that_remove_nothing_draw_no_capture(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    before = _capture_ids(ledger, db)
    with protected(ledger, db, options=CAPTURE_ALL) as c:
        c.execute("DELETE FROM customers WHERE id < 0")
        c.execute("UPDATE customers SET full_name = full_name WHERE id < 0")
        c.execute("DELETE FROM customers WHERE id < 0; DELETE FROM reservations WHERE id < 0")
    assert _capture_ids(ledger, db) == before
    assert row_ops(ledger, db) == []


@contextmanager
def _settings(
    ledger: Ledger, db: str, max_bytes: int, pct: float, total: int | None, free: int | None
) -> Iterator[None]:
    """softguard.settings as given, for the block (the installer's own write path)."""
    with ledger.connect(db) as c:
        old = c.execute(
            "SELECT max_capture_bytes, min_free_disk_percent, disk_total_bytes, disk_free_bytes"
            " FROM softguard.settings"
        ).fetchone()
        c.execute(
            "SELECT softguard._settings_set(%s::bigint, %s::real, %s::bigint, %s::bigint)",
            [max_bytes, pct, total, free],
        )
    try:
        yield
    finally:
        with ledger.connect(db) as c:
            c.execute(
                "SELECT softguard._settings_set(%s::bigint, %s::real, %s::bigint, %s::bigint)",
                list(old),
            )


# (max_capture_bytes, min_free_disk_percent, disk total, disk free, session's own setting)
# -> the budget and the words of its limit
LIMITS: dict[str, tuple[tuple[int, float, int | None, int | None, str | None], int, str]] = {
    "max": ((10, 10, None, None, None), 10, "max_capture_bytes"),
    "max_under_disk": ((10, 10, 10**9, 5 * 10**8, None), 10, "max_capture_bytes"),
    "disk": ((10**9, 10, 10**6, 100_050, None), 50, "min_free_disk_percent: 10% of the disk"),
    "disk_full": ((10**9, 50, 10**6, 10, None), 0, "min_free_disk_percent: 50% of the disk"),
    "session": ((10**9, 10, None, None, " 42 "), 42, "this session's softguard.max_capture_bytes"),
    "session_under_disk": ((10**9, 10, 10**6, 100_050, "7"), 7, "this session's"),
    "session_not_lower": ((10, 10, None, None, "1000"), 10, "max_capture_bytes"),
    "session_not_a_number": ((10, 10, None, None, "1e3"), 10, "max_capture_bytes"),
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_limit_refuses_a_small_capture(
    ledger: Ledger, rental_db: Callable[[], str], name: str
) -> None:
    (max_bytes, pct, total, free, own), budget, words = LIMITS[name]
    db = rental_db()
    before = ledger.data(db)
    with _settings(ledger, db, max_bytes, pct, total, free):
        with protected(ledger, db) as c:
            if own is not None:
                c.execute("SELECT set_config('softguard.max_capture_bytes', %s, false)", [own])
            got = c.execute("SELECT * FROM softguard._capture_budget()").fetchone()
            assert got is not None and got[0] == budget and got[1].startswith(words), got
            with pytest.raises(psycopg.errors.ProgramLimitExceeded) as err:
                c.execute("DELETE FROM customers WHERE id = 1")  # one row, over 50 bytes
            assert words in str(err.value.diag.message_primary)
    assert ledger.data(db) == before
    assert row_ops(ledger, db) == []


def test_a_small_capture_within_the_budget_is_counted(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    """The running total a statement's cascade shares (softguard.capture_bytes) is still
    written, so that the cascaded tables' captures count against one budget."""
    db = rental_db()
    with protected(ledger, db) as c:
        c.execute("BEGIN")
        c.execute("DELETE FROM customers WHERE id = 1")
        total = c.execute("SELECT current_setting('softguard.capture_bytes')").fetchone()
        c.execute("COMMIT")
    assert total is not None
    key, _, kept = str(total[0]).partition("/")
    assert key.isdigit() and int(kept) > 0
