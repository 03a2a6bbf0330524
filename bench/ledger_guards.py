"""What the ledger's guards (ledger version 3, threat model G8) cost: purge, capture and undo
with the guard triggers on softguard.operations, captures and captured_rows (and the
commit-time verify_operation) enabled and disabled, interleaved in one run.

Both configurations run on the same embedded server and ledger: between blocks the
triggers are switched with ALTER TABLE ... DISABLE / ENABLE ALWAYS TRIGGER, and the block
order alternates, so drift falls on both alike. Per sample: a captured DELETE of `--rows`
rows from a parent table whose ON DELETE CASCADE reaches a child (two tables: the
operation row is inserted once and updated once, as the capture trigger does), its undo,
and the purge of a second such operation (purge_op deletes its captured rows inline). The
DELETE is captured by a direct session with `softguard.capture = delete`: the proxy hop is
left out, this measures the database's part only.

    python bench/ledger_guards.py [--rounds 10] [--per-block 10] [--rows 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

TRIGGERS = (
    ("softguard.operations", "guard_ledger"),
    ("softguard.operations", "guard_operation"),
    ("softguard.operations", "verify_operation"),
    ("softguard.captures", "guard_ledger"),
    ("softguard.captures", "guard_capture"),
    ("softguard.captured_rows", "guard_ledger"),
)
WHAT = ("delete", "undo", "purge")


def set_mode(admin: psycopg.Connection, guarded: bool) -> None:
    for table, trigger in TRIGGERS:
        how = "ENABLE ALWAYS" if guarded else "DISABLE"
        admin.execute(f"ALTER TABLE {table} {how} TRIGGER {trigger}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=10)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    n_parents = args.rounds * 2 * args.per_block * 2 + 1

    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as admin:
            apply_migrations(admin)
            admin.execute("CREATE TABLE p (id int PRIMARY KEY, note text)")
            admin.execute(
                "CREATE TABLE c (id bigint PRIMARY KEY, p int NOT NULL REFERENCES p"
                " ON DELETE CASCADE, note text)"
            )
            admin.execute(
                "INSERT INTO p SELECT g, 'p' || g FROM generate_series(1, %s) g", [n_parents]
            )
            admin.execute(
                "INSERT INTO c SELECT g, 1 + (g - 1) / %s, 'c' || g FROM generate_series(1, %s) g",
                [args.rows, n_parents * args.rows],
            )
            samples: dict[str, dict[str, list[float]]] = {
                m: {w: [] for w in WHAT} for m in ("guarded", "plain")
            }
            with psycopg.connect(
                dsn, autocommit=True, options="-c softguard.capture=delete"
            ) as captured:
                parent = 1

                def delete_one(mode: str | None) -> int:
                    nonlocal parent
                    start = time.perf_counter()
                    captured.execute("DELETE FROM p WHERE id = %s", [parent])
                    if mode is not None:
                        samples[mode]["delete"].append(time.perf_counter() - start)
                    parent += 1
                    row = admin.execute("SELECT max(id) FROM softguard.operations").fetchone()
                    return int(row[0])  # type: ignore[index]

                for round_no in range(args.rounds):
                    order = ("guarded", "plain") if round_no % 2 == 0 else ("plain", "guarded")
                    for mode in order:
                        set_mode(admin, mode == "guarded")
                        for _ in range(args.per_block):
                            op = delete_one(mode)
                            start = time.perf_counter()
                            list(admin.execute("SELECT softguard.undo_op(%s)", [op]))
                            samples[mode]["undo"].append(time.perf_counter() - start)
                            op = delete_one(None)
                            start = time.perf_counter()
                            admin.execute("SELECT softguard.purge_op(%s)", [op])
                            samples[mode]["purge"].append(time.perf_counter() - start)
            set_mode(admin, True)  # leave the ledger as installed
    finally:
        pg.stop()

    print(f"{'config':8} " + " ".join(f"{w + ' median ms':>18}" for w in WHAT) + f" {'n':>5}")
    for mode, got in samples.items():
        print(
            f"{mode:8} "
            + " ".join(f"{statistics.median(got[w]) * 1000:18.3f}" for w in WHAT)
            + f" {len(got['delete']):5d}"
        )
    for what in WHAT:
        ratio = statistics.median(samples["guarded"][what]) / statistics.median(
            samples["plain"][what]
        )
        print(f"guarded / plain, {what}: {ratio:.3f}")


if __name__ == "__main__":
    main()
