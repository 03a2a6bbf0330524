"""What the fixed formats of ledger version 2 cost: a captured single-row DELETE and its
undo, with the capture and undo functions' pinned settings (DateStyle, IntervalStyle,
extra_float_digits, bytea_output, lc_monetary) and without them, interleaved in one run.

Both configurations run on the same embedded server, the same ledger and table: between
blocks the functions' SET clauses are switched with ALTER FUNCTION, and the block order
alternates, so drift (the growing ledger, the page cache) falls on both alike. The DELETE
is captured by a direct session with `softguard.capture = delete` (what the proxy sets),
so the proxy hop is left out: this measures the database's part only.

    python bench/pinned_formats.py [--rounds 20] [--per-block 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

PINNED = (
    "SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 "
    "SET bytea_output = 'hex' SET lc_monetary = 'C'"
)
FUNCTIONS = (
    "softguard._capture_rows()",
    "softguard.undo_steps(bigint, text, boolean, text)",
    "softguard.undo_op(bigint, text, boolean, text)",
    "softguard.undo_op(bigint, text, boolean)",
)


def set_mode(admin: psycopg.Connection, pinned: bool) -> None:
    for function in FUNCTIONS:
        admin.execute(f"ALTER FUNCTION {function} RESET ALL")
        admin.execute(
            f"ALTER FUNCTION {function} SET search_path = pg_catalog, pg_temp"
            + (f" {PINNED}" if pinned else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=20)
    args = parser.parse_args()

    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as admin:
            apply_migrations(admin)
            admin.execute("CREATE TABLE t (id int PRIMARY KEY, d date, f float8, note text)")
            admin.execute(
                "INSERT INTO t SELECT g, '2020-01-01'::date + g, g * 1.5, 'x' || g"
                " FROM generate_series(1, %s) g",
                [args.rounds * 2 * args.per_block + 1],
            )
            samples: dict[str, dict[str, list[float]]] = {
                m: {"delete": [], "undo": []} for m in ("pinned", "plain")
            }
            with psycopg.connect(
                dsn, autocommit=True, options="-c softguard.capture=delete"
            ) as captured:
                next_id = 1
                for round_no in range(args.rounds):
                    order = ("pinned", "plain") if round_no % 2 == 0 else ("plain", "pinned")
                    for mode in order:
                        set_mode(admin, mode == "pinned")
                        for _ in range(args.per_block):
                            start = time.perf_counter()
                            captured.execute("DELETE FROM t WHERE id = %s", [next_id])
                            samples[mode]["delete"].append(time.perf_counter() - start)
                            row = admin.execute("SELECT max(id) FROM softguard.operations")
                            op = row.fetchone()[0]  # type: ignore[index]
                            start = time.perf_counter()
                            list(admin.execute("SELECT softguard.undo_op(%s)", [op]))
                            samples[mode]["undo"].append(time.perf_counter() - start)
                            next_id += 1
            set_mode(admin, True)  # leave the ledger as installed
    finally:
        pg.stop()

    print(f"{'config':8} {'DELETE median ms':>17} {'undo median ms':>15} {'n':>5}")
    for mode, got in samples.items():
        print(
            f"{mode:8} {statistics.median(got['delete']) * 1000:17.3f}"
            f" {statistics.median(got['undo']) * 1000:15.3f} {len(got['delete']):5d}"
        )
    for what in ("delete", "undo"):
        ratio = statistics.median(samples["pinned"][what]) / statistics.median(
            samples["plain"][what]
        )
        print(f"pinned / plain, {what}: {ratio:.3f}")


if __name__ == "__main__":
    main()
