"""The capture budget (decision 0014): how fast an over-budget statement is refused, and
what the check adds to a captured single-row DELETE.

On one embedded server with the ledger installed and a budget of 64 kB, in a session
registered as the proxy registers it (delete and truncate):

- ``refusal``: the time to refuse, for tables 10x and 1000x the budget, of
  ``CALL softguard.truncate_op('TRUNCATE t')`` (what the proxy sends for a TRUNCATE),
  ``DO $$ BEGIN TRUNCATE t; END $$`` (the nested capture) and ``DELETE FROM t`` (measured
  row by row from the transition table). Each is checked to have written nothing
  (captured_rows unchanged, table whole).
- ``delete cost``: a captured single-row DELETE with the budget check as installed
  (``checked``) and with ``_budget_fits`` replaced by one that answers true without
  looking (``unchecked``), interleaved in blocks, order alternating.
The proxy hop is left out: this measures the database's part only.

    python bench/capture_budget.py [--rounds 10] [--per-block 25] [--repeat 5] [--json out]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

BUDGET = 64 * 1024
SIZES = {"10x": 10, "1000x": 1000}  # table size as a multiple of the budget
UNCHECKED = """
    CREATE OR REPLACE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN true; END $$"""


def fill(admin: psycopg.Connection[Any], name: str, factor: int) -> int:
    admin.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, payload text NOT NULL)")
    rows = 0
    batch = factor * 200  # ~ a third of the target: overshoots by at most that
    while True:  # bounded by the row limit
        size = admin.execute(f"SELECT pg_table_size('{name}')").fetchone()[0]  # type: ignore[index]
        if size >= factor * BUDGET or rows > 50_000_000:
            return int(size)
        admin.execute(
            f"INSERT INTO {name} SELECT g, repeat(md5(g::text), 4)"
            " FROM generate_series(%s::int, %s::int) g",
            [rows + 1, rows + batch],
        )
        rows += batch


def time_refusal(session: psycopg.Connection[Any], stmt: str) -> float:
    start = time.perf_counter()
    try:
        session.execute(stmt.encode())
    except psycopg.errors.ProgramLimitExceeded:
        return time.perf_counter() - start
    raise AssertionError(f"not refused: {stmt}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    result: dict[str, Any] = {"budget_bytes": BUDGET, "refusal": {}, "delete": {}}
    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as admin:
            apply_migrations(admin)
            admin.execute("SELECT softguard._settings_set(%s, 0, NULL, NULL)", [BUDGET])
            sizes = {label: fill(admin, f"t{label}", f) for label, f in SIZES.items()}
            checked = admin.execute(
                "SELECT pg_get_functiondef('softguard._budget_fits(text, oid)'::regprocedure)"
            ).fetchone()[0]  # type: ignore[index]
            admin.execute("CREATE TABLE one (id int PRIMARY KEY, note text)")
            admin.execute(
                "INSERT INTO one SELECT g, 'x' || g FROM generate_series(1, %s) g",
                [args.rounds * 2 * args.per_block + 1],
            )
            with psycopg.connect(
                dsn, autocommit=True, options="-c softguard.capture=delete"
            ) as session:
                session.execute(
                    "SELECT softguard.register_session('delete,truncate', 604800, '::1')"
                )
                captured = "SELECT count(*) FROM softguard.captured_rows"
                for label in SIZES:
                    t = f"t{label}"
                    before = admin.execute(captured).fetchone()
                    rows = admin.execute(f"SELECT count(*) FROM {t}").fetchone()
                    got: dict[str, float] = {}
                    for kind, stmt in (
                        ("truncate_op", f"CALL softguard.truncate_op('TRUNCATE {t}', '{{}}')"),
                        ("nested_truncate", f"DO $$ BEGIN TRUNCATE {t}; END $$"),
                        ("delete", f"DELETE FROM {t}"),
                    ):
                        times = [time_refusal(session, stmt) for _ in range(args.repeat)]
                        got[kind] = statistics.median(times) * 1000
                    assert admin.execute(captured).fetchone() == before, "wrote captured rows"
                    assert admin.execute(f"SELECT count(*) FROM {t}").fetchone() == rows
                    result["refusal"][label] = {"table_bytes": sizes[label], "ms": got}

                samples: dict[str, list[float]] = {"checked": [], "unchecked": []}
                next_id = 1
                for round_no in range(args.rounds):
                    order = ("checked", "unchecked")
                    for mode in order if round_no % 2 == 0 else order[::-1]:
                        admin.execute(checked if mode == "checked" else UNCHECKED)
                        for _ in range(args.per_block):
                            start = time.perf_counter()
                            session.execute("DELETE FROM one WHERE id = %s", [next_id])
                            samples[mode].append(time.perf_counter() - start)
                            next_id += 1
                admin.execute(checked)
    finally:
        pg.stop()

    print(f"budget {BUDGET} bytes; median ms to refuse ({args.repeat} tries each)")
    print(f"{'table':6} {'MB':>8} {'truncate_op':>12} {'nested':>8} {'delete':>9}")
    for label, r in result["refusal"].items():
        ms = r["ms"]
        print(
            f"{label:6} {r['table_bytes'] / 2**20:8.1f} {ms['truncate_op']:12.2f}"
            f" {ms['nested_truncate']:8.2f} {ms['delete']:9.1f}"
        )
    c = statistics.median(samples["checked"]) * 1000
    u = statistics.median(samples["unchecked"]) * 1000
    print(f"single-row DELETE: checked {c:.3f} ms, unchecked {u:.3f} ms, ratio {c / u:.3f}")
    result["delete"] = {"checked_ms": c, "unchecked_ms": u, "ratio": c / u}
    if args.json:
        result["samples"] = samples
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
