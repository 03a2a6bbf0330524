"""What keeping definitions costs (issue 11 item 6, 65_definitions.sql): a loop of
CREATE OR REPLACE FUNCTION run directly, with softguard's definitions event trigger
disabled ("off"), enabled in a session that is not registered ("history": the new
definition is kept, nothing recorded) and in a session registered with 'alter'
("recorded": each replace also writes an operation and raises its NOTICE).

One embedded server and ledger; the three configurations run in interleaved blocks (the
order rotates each round) so drift falls on all alike. Each statement really replaces:
the body alternates between two texts.

    python bench/definitions.py [--rounds 5] [--per-block 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

MODES = ("off", "history", "recorded")


def replace_loop(conn: psycopg.Connection, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        conn.execute(
            f"CREATE OR REPLACE FUNCTION bench_f(int) RETURNS int LANGUAGE sql "
            f"AS 'SELECT $1 + {i % 2}'"
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-block", type=int, default=100)
    args = parser.parse_args()

    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with (
            psycopg.connect(dsn, autocommit=True) as admin,
            psycopg.connect(dsn, autocommit=True) as plain,
            psycopg.connect(dsn, autocommit=True) as registered,
        ):
            apply_migrations(admin)
            admin.execute("CREATE FUNCTION bench_f(int) RETURNS int LANGUAGE sql AS 'SELECT 1'")
            registered.execute("SELECT softguard.register_session('alter', 604800, '')")
            registered.add_notice_handler(lambda _d: None)
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                for k in range(len(MODES)):
                    mode = MODES[(r + k) % len(MODES)]
                    how = "DISABLE" if mode == "off" else "ENABLE ALWAYS"
                    admin.execute(f"ALTER EVENT TRIGGER softguard_capture_definitions {how}")
                    conn = registered if mode == "recorded" else plain
                    elapsed = replace_loop(conn, args.per_block)
                    times[mode].append(elapsed / args.per_block * 1e6)
            admin.execute("ALTER EVENT TRIGGER softguard_capture_definitions ENABLE ALWAYS")
        n = args.rounds * args.per_block
        print(f"CREATE OR REPLACE FUNCTION, {n} per configuration, µs per statement:")
        base = statistics.median(times["off"])
        for mode in MODES:
            med = statistics.median(times[mode])
            print(
                f"  {mode:<9} median {med:8.1f}  min {min(times[mode]):8.1f}  "
                f"(+{med - base:.1f} over off)"
            )
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()
