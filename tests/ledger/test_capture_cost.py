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


# The table's shape changed between the DELETE and its undo: undo reads the row texts
# through the table's own row type only while its columns are still exactly the captured
# ones, else through a temporary type of the captured columns (as always).
Rows = list[tuple[Any, ...]]
# change after the DELETE -> (a temporary type made?, the rows after undo)
SHAPES: dict[str, tuple[str | None, bool, Rows]] = {
    "unchanged": (None, False, [(g, g * 10, f"b{g}") for g in range(1, 6)]),
    "column_added": (
        "ALTER TABLE shape ADD COLUMN c int",
        True,
        [(g, g * 10, f"b{g}", None) for g in range(1, 6)],
    ),
    "column_dropped": ("ALTER TABLE shape DROP COLUMN b", True, [(g, g * 10) for g in range(1, 6)]),
    "column_retyped": (
        "ALTER TABLE shape ALTER COLUMN a TYPE bigint",
        True,
        [(g, g * 10, f"b{g}") for g in range(1, 6)],
    ),
    # the same names and types in the same order, a dropped attribute between them: the
    # table's own type reads the texts (record_in skips dropped attributes)
    "column_dropped_and_added_back": (
        "ALTER TABLE shape DROP COLUMN b; ALTER TABLE shape ADD COLUMN b text",
        False,
        [(g, g * 10, f"b{g}" if g <= 3 else None) for g in range(1, 6)],
    ),
    "columns_reordered": (
        "ALTER TABLE shape DROP COLUMN a; ALTER TABLE shape ADD COLUMN a int",
        True,
        [(g, g * 10 if g <= 3 else None, f"b{g}") for g in range(1, 6)],
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_undo_reads_rows_through_the_right_type(
    ledger: Ledger, rental_db: Callable[[], str], shape: str
) -> None:
    change, temporary, expect = SHAPES[shape]
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE TABLE shape (id int PRIMARY KEY, a int NOT NULL, b text)")
        c.execute("INSERT INTO shape SELECT g, g * 10, 'b' || g FROM generate_series(1, 5) g")
    with protected(ledger, db) as c:
        c.execute("DELETE FROM shape WHERE id <= 3")
    op = row_ops(ledger, db)[-1]["id"]
    with ledger.connect(db) as c:
        if change is not None:
            c.execute(change)
    with ledger.connect(db, autocommit=True) as c:
        c.execute("SELECT softguard.undo_op(%s)", [op])
        made = c.execute(
            "SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()"
            " AND typname LIKE 'sg\\_undo\\_%%'"
        ).fetchone()
        cols = (
            "id, a, b, c"
            if shape == "column_added"
            else "id, a"
            if shape == "column_dropped"
            else "id, a, b"
        )
        rows = c.execute(f"SELECT {cols} FROM shape ORDER BY id").fetchall()
    assert made == ((1,) if temporary else (0,))
    assert rows == expect


def test_undo_of_an_update_reads_rows_through_the_tables_own_type(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE TABLE shape (id int PRIMARY KEY, a int NOT NULL, b text)")
        c.execute("INSERT INTO shape SELECT g, g * 10, 'b' || g FROM generate_series(1, 5) g")
    with protected(ledger, db, options=CAPTURE_ALL) as c:
        c.execute("UPDATE shape SET a = -a, b = upper(b) WHERE id <= 3")
    op = row_ops(ledger, db)[-1]["id"]
    with ledger.connect(db, autocommit=True) as c:
        c.execute("SELECT softguard.undo_op(%s)", [op])
        made = c.execute(
            "SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()"
            " AND typname LIKE 'sg\\_undo\\_%%'"
        ).fetchone()
        rows = c.execute("SELECT id, a, b FROM shape ORDER BY id").fetchall()
    assert made == (0,)
    assert rows == [(g, g * 10, f"b{g}") for g in range(1, 6)]
