"""The `softguard demo` scenario: its database, the agent's session, and the checksums
that prove the data came back (data access only, no printing; the CLI prints).

What this package owns:
- ``rental.sql``: the car-rental database the demo loads (a copy of the shared test
  fixture, shipped inside the package so an installed softguard can run the demo from any
  directory), and turning its psql script into plain SQL (``rental_sql``);
- ``AGENT_SESSION``: the destructive statements the "agent" sends through the proxy;
- ``take_checksums`` / ``compare``: per relation a row count and an md5 of its rows in a
  fixed order, per sequence its value, and the verdict before/after.

What always holds:
- checksums are read on a DIRECT connection (the proxy refuses statements that touch
  softguard's schemas, and the ledger must not count as user data): softguard's own
  schemas are left out, partitions are covered by their parent;
- a relation is compared with an optional ``WHERE`` that leaves out rows added on purpose
  after the accident (the demo's new customer), and those exceptions are reported, never
  silently absorbed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "AGENT_SESSION",
    "DEMO_DATABASE",
    "Checksum",
    "Comparison",
    "compare",
    "rental_sql",
    "take_checksums",
]

#: The database the demo creates and loads.
DEMO_DATABASE = "rental"

#: What the agent does through softguard, in order: (statement, what a human would call it).
AGENT_SESSION: tuple[tuple[str, str], ...] = (
    ("DROP TABLE reservations CASCADE", "drops the reservations, and with them a view and a FK"),
    ("TRUNCATE billing.refunds", "empties the refunds"),
    ("DELETE FROM customers WHERE id % 10 = 0", "deletes one customer in ten"),
)

#: softguard's own schemas: never user data.
_OWN_SCHEMAS = ("softguard", "softguard_quarantine", "softguard_rows")

_RELATION_KINDS = {"r": "table", "p": "table", "v": "view", "m": "mview", "S": "seq"}


def rental_sql(scale: int = 1) -> str:
    """rental.sql as plain SQL (psql meta-commands removed, ``:scale`` substituted), to run
    as one simple-protocol query."""
    if scale < 1:
        raise ValueError("scale must be at least 1")
    text = resources.files(__name__).joinpath("rental.sql").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("\\")]
    return re.sub(r"(?<!:):scale\b", str(scale), "\n".join(lines))


@dataclass(frozen=True)
class Checksum:
    relation: str  # name in public, else schema.name
    kind: str  # table, view, mview (materialized view), seq (sequence)
    rows: int | None  # None for a sequence
    digest: str  # md5 of the rows (as text, sorted); a sequence: "last_value/is_called"
    where: str | None = None  # rows left out of the digest (see take_checksums)


def _relations(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND NOT c.relispartition"
        " AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%'"
        " AND n.nspname <> 'information_schema'"
        " ORDER BY c.relkind = 'S', n.nspname <> 'public', n.nspname, c.relname",
        [list(_OWN_SCHEMAS)],
    ).fetchall()
    return [(str(s), str(n), str(k)) for s, n, k in rows]


def _label(schema: str, name: str) -> str:
    """How the demo names a relation: bare in public, else schema.name (display only)."""
    return name if schema == "public" else f"{schema}.{name}"


def take_checksums(
    conn: psycopg.Connection[Any], exclude: dict[str, str] | None = None
) -> dict[str, Checksum]:
    """Every user relation and sequence of the connected database, by name (bare in
    public, else schema.name).

    ``exclude``: {name: SQL condition} of rows to leave out of that relation's
    checksum (``"id <> 2001"`` keeps every row but 2001). The condition is the caller's own
    text, not user input.
    """
    exclude = exclude or {}
    found: dict[str, Checksum] = {}
    for schema, name, relkind in _relations(conn):
        label = _label(schema, name)
        rel = sql.Identifier(schema, name)
        kind = _RELATION_KINDS[relkind]
        if relkind == "S":
            query = sql.SQL("SELECT last_value, is_called FROM {}").format(rel)
            row = conn.execute(query).fetchone()
            assert row is not None
            found[label] = Checksum(label, kind, None, f"{row[0]}/{'t' if row[1] else 'f'}")
            continue
        where = exclude.get(label)
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), ''))"
            " FROM (SELECT t::text AS r FROM {} AS t {}) AS s"
        ).format(rel, sql.SQL("WHERE " + where) if where else sql.SQL(""))
        row = conn.execute(query).fetchone()
        assert row is not None
        found[label] = Checksum(label, kind, int(row[0]), str(row[1]), where)
    return found


@dataclass(frozen=True)
class Comparison:
    relation: str
    kind: str
    before: Checksum | None
    after: Checksum | None
    ok: bool
    note: str = ""


def compare(
    before: dict[str, Checksum],
    after: dict[str, Checksum],
    expected: dict[str, str] | None = None,
) -> list[Comparison]:
    """One Comparison per relation in either snapshot, in ``before``'s order.

    ``expected``: {relation: digest} for a relation whose new value is known and wanted
    (a sequence advanced by work done after the accident); it is then compared with that.
    """
    expected = expected or {}
    result: list[Comparison] = []
    for name in list(before) + [n for n in after if n not in before]:
        b, a = before.get(name), after.get(name)
        known = b if b is not None else a
        kind = known.kind if known is not None else "?"
        if b is None:
            result.append(Comparison(name, kind, b, a, False, "DIFFERS (new)"))
        elif a is None:
            result.append(Comparison(name, kind, b, a, False, "DIFFERS (missing)"))
        elif name in expected:
            ok = a.digest == expected[name]
            note = "advanced by the new rows" if ok else f"DIFFERS (expected {expected[name]})"
            result.append(Comparison(name, kind, b, a, ok, note))
        else:
            ok = (a.rows, a.digest) == (b.rows, b.digest)
            note = "same (rows added since left out)" if a.where else "same"
            result.append(Comparison(name, kind, b, a, ok, note if ok else "DIFFERS"))
    return result
