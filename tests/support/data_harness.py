"""Helpers for tests/proxy_data: drop_harness reused, plus what the data-change tests add
(RowDescription types, the data-change NOTICE, ledger queries)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg

from support import drop_harness as dh

REPO_ROOT = Path(__file__).resolve().parents[2]

Seen = dh.Seen
Step = dh.Step

# DESIGN §2: the one extra NOTICE of a reversible data change.
SG_DATA_NOTICE = re.compile(
    r"^softguard: (?P<action>DELETE FROM|MERGE INTO|UPDATE|TRUNCATE TABLE|"
    r"ALTER TABLE DROP COLUMN) (?P<what>.+) is reversible as operation (?P<op>\d+) "
    r"until (?P<until>\d{4}-\d{2}-\d{2})$"
)


def check_notice(text: str, action: str | None = None, what: str | None = None) -> int:
    """Assert the softguard NOTICE's exact form; return its operation id."""
    m = SG_DATA_NOTICE.match(text)
    assert m, f"softguard notice has an unexpected form: {text!r}"
    until = date.fromisoformat(m["until"])
    today = date.today()
    assert today + timedelta(days=6) <= until <= today + timedelta(days=8), text
    if action is not None:
        assert m["action"] == action, text
    if what is not None:
        assert m["what"] == what, text
    return int(m["op"])


# ----------------------------------------------------------------------- running steps


def results(cur: psycopg.Cursor[Any]) -> list[Any]:
    """Every result of a cursor: tag, RowDescription (names and type OIDs), rows."""
    out = []
    while True:
        desc = (
            [(c.name, c.type_code, c.internal_size, c.precision, c.scale) for c in cur.description]
            if cur.description
            else None
        )
        rows = cur.fetchall() if cur.description else None
        out.append((cur.statusmessage, cur.rowcount, desc, rows))
        if not cur.nextset():
            break
    return out


def run(dsn: str, steps: Sequence[Step], mode: str) -> list[Any]:
    if mode == "asyncpg":
        return dh.run_asyncpg(dsn, steps)
    return dh.run_psycopg(dsn, steps, mode=mode, read=results)


def compare_runs(
    direct: list[Any], proxied: list[Any], expected_sg: Sequence[int], steps: Sequence[Step]
) -> list[str]:
    """Step by step identical, minus exactly the expected softguard notices."""
    return list(dh.compare_runs(direct, proxied, expected_sg, steps))


# ----------------------------------------------------------------------- ledger side


def row_ops(sg: Any, db: str) -> list[dict[str, Any]]:
    """Operations (not the records of undos) with their row counts."""
    if not sg.has_ledger(db):
        return []
    with sg.connect(db) as c:
        cur = c.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(
            "SELECT id, kind, statement, state, objects, row_counts FROM softguard.operations"
            " WHERE kind <> 'UNDO' ORDER BY id"
        ).fetchall()


def tables(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not k.startswith("seq ")}


def undo_all(sg: Any, db: str, ops: Sequence[int], on_conflict: str | None = None) -> list[str]:
    lines: list[str] = []
    with sg.connect(db) as c:
        for op in sorted(ops, reverse=True):
            if on_conflict is None:
                rows = c.execute("SELECT softguard.undo_op(%s)", [op]).fetchall()
            else:
                rows = c.execute(
                    "SELECT softguard.undo_op(%s, NULL, false, %s)", [op, on_conflict]
                ).fetchall()
            lines.extend(r[0] for r in rows)
    return lines


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SOFTGUARD_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "softguard", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def notices_of(conn: psycopg.Connection[Any]) -> Callable[[], list[str]]:
    """Collect the softguard notices a connection receives; returns a getter."""
    got: list[str] = []

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        if (d.message_primary or "").startswith("softguard:"):
            got.append(d.message_primary or "")

    conn.add_notice_handler(on_notice)
    return lambda: list(got)
