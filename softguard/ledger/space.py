"""The quarantine's size: what each operation keeps there, and which operations are due.

Used by ``softguard space`` and ``softguard ops`` (the sizes), ``softguard purge`` and the
scheduled purge (what is due), on a connection made DIRECTLY to the protected database.

What holds:
- Sizes (``softguard.op_size``) are estimates, O(objects): relation sizes from the catalog,
  captured rows as count x sampled width.
- An operation "keeps something" while it is active (and not an undo record), or while it
  has captured rows not yet released (an undone row operation keeps its captured rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row


@dataclass(frozen=True)
class OpSpace:
    """An operation and the bytes it keeps in quarantine (softguard.op_size, estimated)."""

    id: int
    kind: str
    state: str
    statement: str
    created_at: datetime
    expires_at: datetime
    bytes: int
    captured_rows: int

    @property
    def holds_objects(self) -> bool:
        return self.state == "active" and self.kind != "UNDO"


@dataclass(frozen=True)
class SpaceReport:
    operations: list[OpSpace]  # operations keeping something, oldest first
    total_bytes: int  # sum of their sizes
    ledger_bytes: int  # the ledger tables themselves (operations, captures, captured_rows)

    @property
    def count(self) -> int:
        return len(self.operations)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 kB' (powers of 1024, like pg_size_pretty)."""
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def over_cap_warning(total: int, cap: int, where: str) -> str:
    """The loud line printed/logged when the quarantine holds more than the cap."""
    return (
        f"WARNING: the quarantine{where} holds {human_bytes(total)} ({total} bytes), more"
        f" than max_quarantine_bytes {cap}: nothing is evicted automatically; run softguard"
        " purge (e.g. --older-than 3d) or lower retention_days to free space"
    )


_OPS_QUERY = """
SELECT o.id, o.kind, o.state, o.statement, o.created_at, o.expires_at,
       softguard.op_size(o.id) AS bytes,
       coalesce((SELECT sum(c.n_rows) FROM softguard.captures c WHERE c.op_id = o.id), 0)
           AS captured_rows
  FROM softguard.operations o
 WHERE {where}
 ORDER BY o.id
"""

# What keeps something: an active operation (not an undo record), or any operation with
# captured rows not yet released (an undone row operation keeps its captured rows).
_KEEPS = (
    "((o.state = 'active' AND o.kind <> 'UNDO') OR (o.state <> 'purged' AND EXISTS"
    " (SELECT FROM softguard.captures c WHERE c.op_id = o.id AND c.released_at IS NULL)))"
)


def _op_spaces(conn: psycopg.Connection[Any], where: str, params: list[Any]) -> list[OpSpace]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(sql.SQL(_OPS_QUERY.format(where=where)), params).fetchall()
    return [
        OpSpace(
            id=int(r["id"]),
            kind=r["kind"],
            state=r["state"],
            statement=r["statement"],
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            bytes=int(r["bytes"]),
            captured_rows=int(r["captured_rows"]),
        )
        for r in rows
    ]


def space_report(conn: psycopg.Connection[Any]) -> SpaceReport:
    """Every operation keeping something in quarantine, with its size; and the total."""
    found = [o for o in _op_spaces(conn, _KEEPS, []) if o.bytes > 0 or o.holds_objects]
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " WHERE c.oid IN ('softguard.operations'::regclass, 'softguard.captures'::regclass,"
        " 'softguard.captured_rows'::regclass, 'softguard.migrations'::regclass)"
    ).fetchone()
    ledger_bytes = int(row[0]) if row is not None else 0
    return SpaceReport(
        operations=found,
        total_bytes=sum(o.bytes for o in found),
        ledger_bytes=ledger_bytes,
    )


def due_operations(
    conn: psycopg.Connection[Any], *, older_than: timedelta | None = None
) -> list[OpSpace]:
    """What purge would take now, oldest first: operations keeping something whose expiry
    has passed, or (with ``older_than``) created at least that long ago."""
    return _op_spaces(
        conn,
        f"{_KEEPS} AND (o.expires_at <= now() OR o.created_at <= now() - %s::interval)",
        [older_than],
    )
