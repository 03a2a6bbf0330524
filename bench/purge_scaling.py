"""Purge of one captured DELETE: does its time depend on what else the ledger holds?

One embedded server, the ledger installed, a session with ``softguard.capture = delete``
(what the proxy sets). Per round: a fresh table of ``--rows`` rows is deleted (captured:
one operation of ``--rows`` rows), then ``softguard.purge_op(op, inline_rows => 0)`` and
``softguard.purge_rows(--batch)`` in a loop, one transaction per call, as ``softguard
purge`` does; the purge is timed. Between rounds, ``--others`` more rows are captured by
other operations that stay in the ledger, so each round purges the same amount from a
bigger ledger. Figure: purge time of the last round / the first (target <= 1.5: independent
of the other captured rows). See bench/README.md, "purge_scaling.py".

    python bench/purge_scaling.py [--rows 1000000] [--others 2000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import git_describe, machine_info
from data_changes import TABLE_SQL

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

MAX_PURGE_CALLS = 1_000_000  # bounds the purge_rows loop


def captured_delete(conn: psycopg.Connection[Any], name: str, rows: int) -> int:
    """Create `name` with `rows` rows, delete them all as a captured session; the op id."""
    conn.execute("SET softguard.capture = ''")
    conn.execute(TABLE_SQL.format(name=name, rows=rows))
    conn.execute("SET softguard.capture = 'delete'")
    conn.execute(f"DELETE FROM {name}")
    conn.execute("SET softguard.capture = ''")
    row = conn.execute("SELECT max(id) FROM softguard.operations").fetchone()
    assert row is not None
    return int(row[0])


def purge(conn: psycopg.Connection[Any], op: int, batch: int) -> tuple[float, int]:
    """purge_op then purge_rows until done, as `softguard purge` runs them; (seconds, calls)."""
    t0 = time.perf_counter()
    conn.execute("SELECT softguard.purge_op(%s, NULL, '2s', 0)", [op])
    for calls in range(1, MAX_PURGE_CALLS + 1):
        row = conn.execute("SELECT softguard.purge_rows(%s)", [batch]).fetchone()
        if row is not None and row[0] == 0:
            return time.perf_counter() - t0, calls
    raise RuntimeError("purge_rows did not finish")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--others", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--migrations", type=Path, help="another checkout's migrations/ (to compare with it)"
    )
    args = ap.parse_args()

    results: list[dict[str, Any]] = []
    pg = EmbeddedPostgres(
        server_settings={
            "synchronous_commit": "off",
            "shared_buffers": "1GB",
            "max_wal_size": "16GB",
            "checkpoint_timeout": "1h",
        },
    )
    pg.start()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            apply_migrations(conn, args.migrations)
            held = 0
            for rnd in range(args.rounds):
                if rnd > 0:
                    captured_delete(conn, f"other_{rnd}", args.others)
                    held += args.others
                op = captured_delete(conn, f"target_{rnd}", args.rows)
                conn.execute("CHECKPOINT")
                seconds, calls = purge(conn, op, args.batch)
                results.append(
                    {"round": rnd, "other_rows": held, "seconds": seconds, "calls": calls}
                )
                print(
                    f"round {rnd}: other captured rows {held:>10,}  purge of {args.rows:,}"
                    f" rows {seconds * 1000:8.0f} ms in {calls} purge_rows calls",
                    flush=True,
                )
    finally:
        pg.stop()
        pg.cleanup()
    ratio = results[-1]["seconds"] / results[0]["seconds"] if results else float("nan")
    verdict = "PASS" if ratio <= 1.5 else "MISS"
    print(f"last round / first round: {ratio:.2f} (target <= 1.5) {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": machine_info(),
                    "git": git_describe(),
                    "rounds": results,
                    "ratio": ratio,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
