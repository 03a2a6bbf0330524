"""Helpers for tests/proxy_softdelete (soft-delete mode, issue 6).

The harnesses of tests/proxy_drop and tests/proxy_data (support.drop_harness,
support.data_harness) are reused.

What is added here: the rental template with the soft-delete columns, the proxy
configurations, the soft-delete NOTICE, and superuser-side views of the customers table
and of the ledger.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from support import data_harness
from support import drop_harness as dh
from support.proxy import free_port, wait_listening

REPO_ROOT = Path(__file__).resolve().parents[2]

results = data_harness.results
run = data_harness.run
cli = data_harness.cli
Seen = dh.Seen


# What the template adds to rental.sql: the application's soft-delete columns.
TEMPLATE_EXTRAS = """
ALTER TABLE customers ADD COLUMN deleted_at timestamptz, ADD COLUMN deleted_by text;
ALTER TABLE billing.refunds ADD COLUMN is_deleted boolean NOT NULL DEFAULT false;
ANALYZE;
"""

# The proxy most tests use: customers soft-deleted into deleted_at (+ deleted_by), refunds
# into a boolean. Its upstream DSN names database postgres, which has neither table.
MAIN_CONFIG = """
[[soft_delete]]
table = "public.customers"
column = "deleted_at"
mark = "timestamp"
deleted_by = "deleted_by"

[[soft_delete]]
table = "billing.refunds"
column = "is_deleted"
mark = "boolean"
"""

# First matching entry wins: reservations stays on the normal path, every other table of
# public is a soft-delete table (most of them lack deleted_at: misconfigured, DELETEs on
# them refused). Scoped to the twins' databases so that serve starts.
PATTERN_CONFIG = """
[[soft_delete]]
table = "public.reservations"
mode = "quarantine"
database = "sg_pd_*"

[[soft_delete]]
table = "public.*"
column = "deleted_at"
deleted_by = "deleted_by"
deleted_by_value = "application_name"
database = "sg_pd_*"
"""

# The NOTICE of a soft delete, exactly. It names no row count: later statements of the
# same query string may join the operation (decision 0006); the tag gives the count.
SD_NOTICE = re.compile(
    r"^softguard: DELETE FROM (?P<table>\S+) \(soft delete: (?P<column>\S+) set"
    r"(?: on (?P<n>\d+) rows)?\) is reversible as operation (?P<op>\d+) until "
    r"(?P<until>\d{4}-\d{2}-\d{2})$"
)

REFUSED_PREFIX = (
    "softguard: DELETE on public.customers is refused: its soft-delete configuration "
    "does not fit the table: "
)


def check_sd_notice(text: str, table: str = "public.customers", column: str = "deleted_at") -> int:
    """Assert the soft-delete NOTICE's exact form (it states no row count); return its
    operation id."""
    m = SD_NOTICE.match(text)
    assert m, f"soft-delete notice has an unexpected form: {text!r}"
    assert m["n"] is None, f"{text!r}: the NOTICE states no row count"
    assert m["table"] == table, text
    assert m["column"] == column, text
    until = date.fromisoformat(m["until"])
    today = date.today()
    assert today + timedelta(days=6) <= until <= today + timedelta(days=8), text
    return int(m["op"])


def check_sd_op(
    sg: Any,
    db: str,
    text: str,
    rows: int,
    table: str = "public.customers",
    column: str = "deleted_at",
) -> int:
    """check_sd_notice, and that the operation it announces marked ``rows`` rows of
    ``table`` with its first statement (the ledger's first capture; the NOTICE has no
    count); return the operation id."""
    op = check_sd_notice(text, table, column)
    caps = captures(sg, db, op)
    assert caps, f"operation {op} ({text!r}) captured nothing"
    first = caps[0]
    assert (first["table_identity"], first["event"], first["n_rows"]) == (
        table,
        "soft_delete",
        rows,
    ), f"{text!r}: expected {rows} rows marked, the ledger has {caps}"
    return op


def sg_notices(conn: psycopg.Connection[Any]) -> list[str]:
    """Collects the softguard notices a psycopg connection receives (a live list)."""
    got: list[str] = []

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        if (d.message_primary or "").startswith("softguard:"):
            got.append(d.message_primary or "")

    conn.add_notice_handler(on_notice)
    return got


# ----------------------------------------------------------------------- superuser views


def customers_state(sg: Any, db: str) -> tuple[Any, ...]:
    """customers without the exact mark timestamps: (row count, checksum of all columns
    but deleted_at, with deleted_at IS NULL in its place; marked ids; deleted_by values)."""
    with sg.connect(db) as c:
        count, checksum = c.execute(
            "SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x.id), '')) FROM"
            " (SELECT id, email, full_name, phone, created_at, tags, deleted_at IS NULL AS live,"
            " deleted_by FROM customers) x"
        ).fetchone()
        marked = c.execute(
            "SELECT id, deleted_by FROM customers WHERE deleted_at IS NOT NULL ORDER BY id"
        ).fetchall()
    return count, checksum, marked


def marks(sg: Any, db: str, ids: Sequence[int]) -> dict[int, tuple[datetime | None, str | None]]:
    with sg.connect(db) as c:
        rows = c.execute(
            "SELECT id, deleted_at, deleted_by FROM customers WHERE id = ANY(%s) ORDER BY id",
            [list(ids)],
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def scalar(sg: Any, db: str, query: str, params: Sequence[Any] = ()) -> Any:
    with sg.connect(db) as c:
        row = c.execute(query.encode(), list(params) or None).fetchone()
    assert row is not None
    return row[0]


def other_tables(data: dict[str, Any], *skip: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in skip}


# Operations that are not the records of undos, oldest first (tests/proxy_data's helper).
ledger_ops = data_harness.row_ops


def captures(sg: Any, db: str, op: int) -> list[dict[str, Any]]:
    with sg.connect(db) as c:
        cur = c.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(
            "SELECT id, table_identity, event, n_rows, info, (info->>'mark') AS mark_text"
            " FROM softguard.captures WHERE op_id = %s ORDER BY id",
            [op],
        ).fetchall()


def undo_sql(sg: Any, db: str, op: int) -> list[str]:
    with sg.connect(db) as c:
        rows = c.execute("SELECT softguard.undo_op(%s)", [op]).fetchall()
    return [r[0] for r in rows]


# ----------------------------------------------------------------------- softguard serve


def _read_all(f: Any) -> bytes:
    # pread: the child shares the file's offset, so seeking here would move its writes.
    fd = f.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0)


def serve_once(config: Path, upstream: str, timeout: float = 30) -> tuple[int | None, str, str]:
    """Run ``softguard serve`` on a free loopback port and wait until it exits or accepts
    TCP; (exit code, or None if it started listening and was stopped; stdout; stderr)."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("SOFTGUARD_"):
            env.pop(key)
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "softguard",
                "serve",
                "--config",
                str(config),
                "--upstream",
                upstream,
                "--listen",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        code: int | None = None
        try:
            if wait_listening(proc, "127.0.0.1", port, timeout):
                # serve prints its "listening on" line from the callback that runs just
                # after the bind, so TCP can accept a moment before the line is written.
                deadline = time.monotonic() + timeout
                while b"listening on" not in _read_all(out) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
                proc.wait(timeout=10)
            else:
                code = proc.returncode
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
