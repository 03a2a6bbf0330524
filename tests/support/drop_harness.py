"""Run the same client steps directly on one twin and through softguard on the other, and
record everything a client sees (DESIGN.md §1-§2): values (command tags, rows, statement
descriptions), errors with all their client-visible fields, notices, transaction status.

A step is a SQL string (run according to the mode) or a callable taking the connection.
Modes:
- "simple":   psycopg ``conn.execute(sql, prepare=False)`` without parameters: a Query
              message (psycopg uses the simple protocol when there are no parameters and
              the result format is text).
- "prepared": psycopg ``conn.execute(sql, prepare=True)``: Parse of a named statement,
              then Bind/Execute (extended protocol).
- "unnamed":  psycopg ``conn.execute(sql, binary=True)``: unnamed Parse/Bind/Execute.
- "asyncpg":  asyncpg ``conn.prepare(sql)`` (Parse + Describe statement), then
              ``stmt.fetch()``; the value records get_parameters/get_attributes/statusmsg.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg
import psycopg

SG_NOTICE = re.compile(
    r"^softguard: (?P<action>DROP (?:MATERIALIZED VIEW|[A-Z]+)) (?P<what>.+) is reversible as "
    r"operation (?P<op>\d+) until (?P<until>\d{4}-\d{2}-\d{2})$"
)

Step = str | Callable[[Any], Any]


@dataclass
class Err:
    cls: str
    severity: str | None
    sqlstate: str | None
    message: str | None
    detail: str | None
    hint: str | None
    position: str | None
    context: str | None
    internal_position: str | None
    internal_query: str | None
    schema: str | None
    table: str | None
    column: str | None
    datatype: str | None
    constraint: str | None


@dataclass
class Seen:
    value: Any = None
    error: Err | None = None
    notices: list[tuple[Any, ...]] = field(default_factory=list)
    tx: str | None = None
    softguard: list[str] = field(default_factory=list)  # softguard notices (removed)


def _pg_err(e: psycopg.Error) -> Err:
    d = e.diag
    return Err(
        type(e).__name__,
        d.severity_nonlocalized,
        d.sqlstate,
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.statement_position,
        d.context,
        d.internal_position,
        d.internal_query,
        d.schema_name,
        d.table_name,
        d.column_name,
        d.datatype_name,
        d.constraint_name,
    )


def _pg_notice(d: psycopg.errors.Diagnostic) -> tuple[Any, ...]:
    return (
        d.severity_nonlocalized,
        d.sqlstate,
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.statement_position,
        d.context,
        d.internal_query,
    )


def _split_softguard(seen: Seen) -> None:
    kept = []
    for n in seen.notices:
        if n[0] == "NOTICE" and (n[2] or "").startswith("softguard:"):
            seen.softguard.append(n[2])
        else:
            kept.append(n)
    seen.notices = kept


def _results(cur: psycopg.Cursor[Any]) -> list[Any]:
    out = []
    while True:
        rows = cur.fetchall() if cur.description else None
        cols = [c.name for c in cur.description] if cur.description else None
        out.append((cur.statusmessage, cols, rows))
        if not cur.nextset():
            break
    return out


def psycopg_step(
    conn: psycopg.Connection[Any],
    step: Step,
    mode: str,
    read: Callable[[psycopg.Cursor[Any]], Any] | None = None,
) -> Any:
    if callable(step):
        return step(conn)
    cur = conn.cursor()
    if mode == "simple":
        cur.execute(step.encode(), prepare=False)
    elif mode == "prepared":
        cur.execute(step.encode(), prepare=True)
    elif mode == "unnamed":
        cur.execute(step.encode(), binary=True)
    else:  # pragma: no cover
        raise ValueError(mode)
    return (read or _results)(cur)


def run_psycopg(
    dsn: str,
    steps: Sequence[Step],
    *,
    mode: str = "simple",
    autocommit: bool = True,
    read: Callable[[psycopg.Cursor[Any]], Any] | None = None,
) -> list[Seen]:
    """``read`` turns a finished cursor into the step's value (default: tags and rows)."""
    out: list[Seen] = []
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        for step in steps:
            seen = Seen()

            def on_notice(d: psycopg.errors.Diagnostic, seen: Seen = seen) -> None:
                seen.notices.append(_pg_notice(d))

            conn.add_notice_handler(on_notice)
            try:
                seen.value = psycopg_step(conn, step, mode, read)
            except psycopg.Error as e:
                seen.error = _pg_err(e)
            finally:
                conn.remove_notice_handler(on_notice)
            seen.tx = conn.info.transaction_status.name
            out.append(seen)
        if not autocommit and conn.info.transaction_status.name != "IDLE":
            conn.rollback()
    return out


def _apg_err(e: asyncpg.PostgresError) -> Err:
    g = lambda name: getattr(e, name, None)  # noqa: E731
    return Err(
        type(e).__name__,
        g("severity_en"),
        g("sqlstate"),
        g("message"),
        g("detail"),
        g("hint"),
        g("position"),
        g("context"),
        g("internal_position"),
        g("internal_query"),
        g("schema_name"),
        g("table_name"),
        g("column_name"),
        g("data_type_name"),
        g("constraint_name"),
    )


async def _run_asyncpg(dsn: str, steps: Sequence[Step]) -> list[Seen]:
    out: list[Seen] = []
    conn = await asyncpg.connect(dsn)
    try:
        for step in steps:
            seen = Seen()

            def on_log(_c: Any, m: Any, seen: Seen = seen) -> None:
                seen.notices.append(
                    (
                        m.severity_en,
                        m.sqlstate,
                        m.message,
                        m.detail,
                        m.hint,
                        m.position,
                        m.context,
                        m.internal_query,
                    )
                )

            conn.add_log_listener(on_log)
            try:
                if callable(step):
                    seen.value = await step(conn)
                else:
                    stmt = await conn.prepare(step)
                    desc = (
                        [p.name for p in stmt.get_parameters()],
                        [(a.name, a.type.name) for a in stmt.get_attributes()],
                    )
                    rows = await stmt.fetch()
                    seen.value = (desc, [tuple(r) for r in rows], stmt.get_statusmsg())
            except asyncpg.PostgresError as e:
                seen.error = _apg_err(e)
            finally:
                # log messages are delivered via call_soon: let them arrive first
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                conn.remove_log_listener(on_log)
            seen.tx = "INTRANS" if conn.is_in_transaction() else "IDLE"
            out.append(seen)
    finally:
        await conn.close()
    return out


def run_asyncpg(dsn: str, steps: Sequence[Step]) -> list[Seen]:
    return asyncio.run(asyncio.wait_for(_run_asyncpg(dsn, steps), 60))


def run(dsn: str, steps: Sequence[Step], mode: str, autocommit: bool = True) -> list[Seen]:
    if mode == "asyncpg":
        return run_asyncpg(dsn, steps)
    return run_psycopg(dsn, steps, mode=mode, autocommit=autocommit)


def check_softguard_notice(text: str, active_ops: Sequence[int]) -> re.Match[str]:
    """The extra NOTICE is short and exact (DESIGN.md §2)."""
    m = SG_NOTICE.match(text)
    assert m, f"softguard notice has an unexpected form: {text!r}"
    until = date.fromisoformat(m["until"])
    today = date.today()
    assert today + timedelta(days=6) <= until <= today + timedelta(days=8), text
    return m


def compare_runs(
    direct: list[Seen],
    proxied: list[Seen],
    expected_sg: Sequence[int],
    steps: Sequence[Step],
) -> list[str]:
    """Assert step by step that the proxied run looks like the direct one (minus exactly
    the expected softguard notices); return the softguard notices in order."""
    assert len(direct) == len(proxied) == len(expected_sg) == len(steps)
    notices: list[str] = []
    for i, (d, p, n, step) in enumerate(zip(direct, proxied, expected_sg, steps, strict=True)):
        _split_softguard(d)
        assert not d.softguard, f"direct twin sent softguard notices?! {d}"
        _split_softguard(p)
        label = step if isinstance(step, str) else getattr(step, "__name__", repr(step))
        assert (p.value, p.error, p.notices, p.tx) == (d.value, d.error, d.notices, d.tx), (
            f"step {i} {label!r} differs\nthrough softguard:\n{p}\ndirect:\n{d}"
        )
        assert len(p.softguard) == n, (
            f"step {i} {label!r}: expected {n} softguard notice(s), got {p.softguard}"
        )
        notices.extend(p.softguard)
    return notices
