"""What the trust-boundary checks of ledger version 3 cost (decision 0012), interleaved.

The checks: the capture trigger asks the session's registration (softguard.sessions) when
its setting does not name the event, an operation's retention and client address come
from the registration, and a BEFORE statement trigger closes the open operation at each
top-level DELETE/UPDATE. Configurations, switched between blocks on one embedded server,
one ledger, one table, block order alternating so drift falls on both alike:

- ``checked``: the ledger as installed.
- ``unchecked``: ``softguard._session`` replaced by one that finds no registration (the
  session's settings alone decide, as in version 2) and the statement trigger disabled.
  The capture trigger's own registration probe for events its setting does not name (an
  indexed lookup by pid, inlined in ``_capture_rows``) cannot be switched off: it is in
  both, so the UPDATE ratio leaves it out.

Workloads, in a session registered as the proxy registers it (``softguard.capture =
delete``, registered for delete): a captured single-row ``DELETE`` (one operation each),
a single-row ``UPDATE`` (not captured: update protection is off by default, so the capture
trigger asks the registration), and ``SELECT 1`` (no trigger: the control).
The proxy hop is left out: this measures the database's part only.

    python bench/protection_checks.py [--rounds 20] [--per-block 25] [--json out.json]
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

CHECKED: dict[str, str] = {}  # function -> installed definition, read at start
UNCHECKED = {
    "softguard._session(boolean)": """
        CREATE OR REPLACE FUNCTION softguard._session(verify boolean)
        RETURNS softguard.sessions LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN NULL; END $$""",
}
WORKLOADS = ("delete", "update", "select")


def set_mode(admin: psycopg.Connection[Any], checked: bool) -> None:
    for fn, unchecked in UNCHECKED.items():
        admin.execute(CHECKED[fn] if checked else unchecked)
    # The tamper guard (G7) refuses switching a capture trigger: lifted for the switch.
    admin.execute("ALTER EVENT TRIGGER softguard_capture_tamper_ddl DISABLE")
    admin.execute(
        "ALTER TABLE t "
        + ("ENABLE ALWAYS" if checked else "DISABLE")
        + " TRIGGER zz_softguard_capture_statement"
    )
    admin.execute("ALTER EVENT TRIGGER softguard_capture_tamper_ddl ENABLE ALWAYS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    samples: dict[str, dict[str, list[float]]] = {
        m: {w: [] for w in WORKLOADS} for m in ("checked", "unchecked")
    }
    pg = EmbeddedPostgres()
    pg.start()
    try:
        dsn = pg.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as admin:
            apply_migrations(admin)
            for fn in UNCHECKED:
                row = admin.execute("SELECT pg_get_functiondef(%s::regprocedure)", [fn])
                CHECKED[fn] = row.fetchone()[0]  # type: ignore[index]
            admin.execute("CREATE TABLE t (id int PRIMARY KEY, d date, f float8, note text)")
            admin.execute(
                "INSERT INTO t SELECT g, '2020-01-01'::date + g, g * 1.5, 'x' || g"
                " FROM generate_series(1, %s) g",
                [args.rounds * 2 * args.per_block + 1],
            )
            with psycopg.connect(
                dsn, autocommit=True, options="-c softguard.capture=delete"
            ) as session:
                session.execute("SELECT softguard.register_session('delete', 604800, '::1')")
                next_id = 1
                for round_no in range(args.rounds):
                    order = (True, False) if round_no % 2 == 0 else (False, True)
                    for checked in order:
                        set_mode(admin, checked)
                        got = samples["checked" if checked else "unchecked"]
                        for _ in range(args.per_block):
                            for workload, sql in (
                                ("update", "UPDATE t SET f = f + 1 WHERE id = %s"),
                                ("select", "SELECT %s::int"),
                                ("delete", "DELETE FROM t WHERE id = %s"),
                            ):
                                start = time.perf_counter()
                                session.execute(sql, [next_id])  # type: ignore[arg-type]
                                got[workload].append(time.perf_counter() - start)
                            next_id += 1
            set_mode(admin, True)  # leave the ledger as installed
    finally:
        pg.stop()

    print(f"{'workload':8} {'checked ms':>11} {'unchecked ms':>13} {'ratio':>7} {'n':>6}")
    result: dict[str, Any] = {"rounds": args.rounds, "per_block": args.per_block}
    for workload in WORKLOADS:
        c = statistics.median(samples["checked"][workload]) * 1000
        u = statistics.median(samples["unchecked"][workload]) * 1000
        n = len(samples["checked"][workload])
        print(f"{workload:8} {c:11.3f} {u:13.3f} {c / u:7.3f} {n:6d}")
        result[workload] = {"checked_ms": c, "unchecked_ms": u, "ratio": c / u}
    if args.json:
        result["samples"] = samples
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
