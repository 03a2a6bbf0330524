"""Helpers for the row-capture tests (DELETE/UPDATE/MERGE capture, truncate_op, alter_op).

Imported by test_capture.py and test_truncate_alter.py (the directory is on sys.path);
the fixtures rental_db and ledger come from tests/fixtures/fix_ledger.py.

A "protected" session is what the proxy opens: the StartupMessage options carry
softguard.capture / softguard.retention / softguard.client_addr as session defaults.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)

CAPTURE_DELETE = (
    "-c softguard.capture=delete -c softguard.retention=604800 -c softguard.client_addr=127.0.0.1"
)
CAPTURE_ALL = (
    "-c softguard.capture=delete,update -c softguard.retention=604800"
    " -c softguard.client_addr=127.0.0.1"
)


def protected(ledger: Ledger, db: str, options: str = CAPTURE_DELETE, **kw: Any) -> Any:
    """A connection like the proxy's to PostgreSQL: capture on by session default."""
    kw.setdefault("autocommit", True)
    return psycopg.connect(ledger.dsn(db), options=options, **kw)


def softguard_notices(result: Any) -> list[str]:
    return [n[1] for n in result.notices if (n[1] or "").startswith("softguard: ")]


def row_ops(ledger: Ledger, db: str) -> list[dict[str, Any]]:
    return [o for o in ledger.operations(db) if o["kind"] != "UNDO"]


def undo(ledger: Ledger, db: str, op: int, on_conflict: str | None = None) -> list[str]:
    with ledger.connect(db) as c:
        if on_conflict is None:
            rows = c.execute("SELECT * FROM softguard.undo_op(%s)", [op]).fetchall()
        else:
            rows = c.execute(
                "SELECT * FROM softguard.undo_op(%s, NULL, false, %s)", [op, on_conflict]
            ).fetchall()
    return [r[0] for r in rows]


def call_op(ledger: Ledger, conn: Any, proc: str, stmt: str, action: str) -> Any:
    """CALL softguard.<proc>(stmt, ctx) as the proxy does; returns a Result."""
    ctx = {"action": action, "offset": 0, "client_addr": "127.0.0.1", "retention_seconds": 604800}
    return ledger.run(
        conn,
        lambda c: c.execute(f"CALL softguard.{proc}(%s, %s)", [stmt, json.dumps(ctx)]),
    )


def tables_data(ledger: Ledger, db: str) -> dict[str, Any]:
    """ledger.data() without the sequences (row counts and checksums per table)."""
    return {k: v for k, v in ledger.data(db).items() if not k.startswith("seq ")}
