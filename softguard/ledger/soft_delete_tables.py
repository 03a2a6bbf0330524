"""Checking the ``[[soft_delete]]`` entries against a database's catalog.

``resolve`` reads the catalog of one database and returns the soft-delete tables found,
each with what the rewrite needs (mark column type, key) or the reason it cannot be used;
``check`` turns that into the lines ``softguard serve`` prints (and refuses to start on).
The entries themselves are softguard/soft_delete_config.py; the rewrite
softguard/sql/soft_delete.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from softguard.ledger.db import error_line
from softguard.soft_delete_config import SoftDeleteRule
from softguard.sql.soft_delete import SoftDeleteTables, SoftTarget

# Types a mark kind accepts (format_type names, without typmods).
_TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
_TEXT_TYPES = ("text", "character varying", "character", "name", "citext")


@dataclass(frozen=True)
class _Column:
    name: str
    type: str  # format_type
    base: str  # format_type without typmod


_CATALOG_QUERY = """
SELECT n.nspname, c.relname,
       CASE WHEN c.relispartition THEN
           (SELECT ARRAY[rn.nspname::text, r.relname::text] FROM pg_class r
              JOIN pg_namespace rn ON rn.oid = r.relnamespace
             WHERE r.oid = pg_partition_root(c.oid)) END AS root,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname,
                                  format_type(a.atttypid, a.atttypmod),
                                  format_type(a.atttypid, NULL),
                                  a.attgenerated <> '') ORDER BY a.attnum), '[]')
          FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
       (SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, o)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      ORDER BY k.o)
          FROM pg_index i
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
           AND i.indexprs IS NULL AND 0 <> ALL (i.indkey)
           AND NOT EXISTS (SELECT FROM unnest(i.indkey) k(attnum)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                            WHERE NOT a.attnotnull)
         ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid LIMIT 1) AS key
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'softguard%'
 ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True)
class Resolution:
    """The soft-delete tables of one database, and what was wrong with the configuration."""

    tables: SoftDeleteTables
    unmatched: list[str]  # entries (table patterns) that matched no table here


def resolve(
    conn: psycopg.Connection[Any], rules: list[SoftDeleteRule], database: str
) -> Resolution:
    """Match ``rules`` against the tables of the database ``conn`` is connected to."""
    applicable = [r for r in rules if r.applies_to(database)]
    if not applicable:
        return Resolution(SoftDeleteTables(), [])
    rows = conn.execute(_CATALOG_QUERY).fetchall()
    found: dict[tuple[str, str], SoftTarget] = {}
    rule_of: dict[tuple[str, str], SoftDeleteRule] = {}
    used: set[int] = set()
    partitions = []
    for schema, table, root, columns, key in rows:
        cols = {c[0]: _Column(c[0], c[1], c[2]) for c in columns if not c[3]}
        if root is not None:
            partitions.append((schema, table, tuple(root), cols, key))
            continue
        for index, rule in enumerate(applicable):
            if not rule.matches(database, schema, table):
                continue
            if rule.mode == "soft" and rule.is_pattern and rule.column not in cols:
                continue  # a pattern covers the tables that have the mark column
            used.add(index)
            if rule.mode == "soft":
                found[(schema, table)] = _target(conn, rule, schema, table, cols, key)
                rule_of[(schema, table)] = rule
            break
    # A partition named directly is its partitioned table's: soft-deleted the same way.
    for schema, table, root, cols, key in partitions:
        root_rule = rule_of.get(root)
        if root_rule is not None:
            found[(schema, table)] = _target(conn, root_rule, schema, table, cols, key)
    unmatched = [r.table for i, r in enumerate(applicable) if i not in used]
    return Resolution(SoftDeleteTables(found), unmatched)


def _target(
    conn: psycopg.Connection[Any],
    rule: SoftDeleteRule,
    schema: str,
    table: str,
    cols: dict[str, _Column],
    key: list[str] | None,
) -> SoftTarget:
    assert rule.column is not None
    column = cols.get(rule.column)
    by = cols.get(rule.deleted_by) if rule.deleted_by else None
    problem = _problem(conn, rule, column, by, key)
    return SoftTarget(
        schema=schema,
        table=table,
        column=rule.column,
        column_type=column.type if column is not None else "text",
        mark=rule.mark,
        value=rule.mark_value,
        key=tuple(key or ()),
        by_column=rule.deleted_by,
        by_value=rule.deleted_by_value,
        problem=problem,
    )


def _problem(
    conn: psycopg.Connection[Any],
    rule: SoftDeleteRule,
    column: _Column | None,
    by: _Column | None,
    key: list[str] | None,
) -> str | None:
    if column is None:
        return f"column {rule.column!r} does not exist (or is generated)"
    if rule.mark == "timestamp" and column.base not in _TIMESTAMP_TYPES:
        return (
            f"column {rule.column!r} is {column.type}; mark = 'timestamp' needs timestamptz, "
            "timestamp or date (or use mark = 'boolean' / 'expression')"
        )
    if rule.mark == "boolean" and column.base != "boolean":
        return f"column {rule.column!r} is {column.type}; mark = 'boolean' needs boolean"
    if rule.deleted_by is not None:
        if by is None:
            return f"deleted_by column {rule.deleted_by!r} does not exist (or is generated)"
        if by.base not in _TEXT_TYPES:
            return f"deleted_by column {rule.deleted_by!r} is {by.type}; it needs a text type"
        if by.name == column.name:
            return "deleted_by and column name the same column"
    if not key:
        return "the table has no primary key (or unique NOT NULL key) to find the rows by"
    if column.name in key or (by is not None and by.name in key):
        return f"column {column.name!r} is part of the table's key"
    try:
        with conn.transaction():
            conn.execute(f"SELECT ({rule.mark_value})::{column.type}")
    except psycopg.Error as exc:
        message = error_line(exc)
        return (
            f"value {rule.mark_value!r} does not fit column {rule.column!r} ({column.type}): "
            f"{message}"
        )
    return None


def check(resolution: Resolution, database: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) to print: misconfigured tables are errors, patterns that match
    nothing are warnings (the table may be created later)."""
    errors = [
        f"soft_delete: {t.qualified} in database {database!r}: {t.problem}"
        for t in resolution.tables.tables.values()
        if t.problem is not None
    ]
    warnings = [
        f"soft_delete: {pattern!r} matches no table in database {database!r}"
        for pattern in resolution.unmatched
    ]
    return errors, warnings
