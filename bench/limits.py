"""Blast-radius limits (decision 0021): what they add to a captured single-row DELETE.

On one embedded server with the ledger installed, three sessions registered as the proxy
registers them (delete, truncate): without limits, with max_rows, and with max_rows,
max_table_bytes and a table rule naming other tables. Interleaved blocks of single-row
DELETEs, order rotating. The proxy hop is left out: this measures the database's part.

    python bench/limits.py [--rounds 12] [--per-block 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psycopg

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

TABLE_RULE = '[{"pattern": "billing.%", "shown": "billing.*", "category": "delete", "by": "bench"}]'
SESSIONS = {
    "none": None,
    "max_rows": "SELECT softguard.register_limits(1000, 'bench', NULL, NULL, NULL)",
    "max_rows+bytes+tables": "SELECT softguard.register_limits(1000, 'bench', 1073741824,"
    f" 'bench', '{TABLE_RULE}')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-block", type=int, default=50)
    args = parser.parse_args()
    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as admin:
            apply_migrations(admin)
            admin.execute("CREATE TABLE one (id int PRIMARY KEY, note text)")
            admin.execute(
                "INSERT INTO one SELECT g, 'x' || g FROM generate_series(1, %s) g",
                [len(SESSIONS) * args.rounds * args.per_block + 1],
            )
            sessions: dict[str, psycopg.Connection[Any]] = {}
            for label, limits in SESSIONS.items():
                c = psycopg.connect(dsn, autocommit=True, options="-c softguard.capture=delete")
                c.execute("SELECT softguard.register_session('delete,truncate', 604800, '::1')")
                if limits is not None:
                    c.execute(limits.encode())
                sessions[label] = c
            per_delete: dict[str, list[float]] = {label: [] for label in sessions}
            labels = list(sessions)
            next_id = 1
            for r in range(args.rounds):
                for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                    t0 = time.perf_counter()
                    for _ in range(args.per_block):
                        sessions[label].execute("DELETE FROM one WHERE id = %s", [next_id])
                        next_id += 1
                    per_delete[label].append((time.perf_counter() - t0) / args.per_block * 1e6)
            for c in sessions.values():
                c.close()
        print(
            json.dumps(
                {
                    label: {
                        "median_us": round(statistics.median(v), 1),
                        "min_us": round(min(v), 1),
                    }
                    for label, v in per_delete.items()
                },
                indent=1,
            )
        )
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
