"""Soft delete through softguard against the hand-written soft delete, direct.

A table with ``deleted_at timestamptz`` / ``deleted_by text`` configured as a
``[[soft_delete]]`` table. One run, configurations interleaved:

- **single-row**, prepared, autocommit, blocks of ``--block`` alternating between
  ``direct UPDATE`` (``UPDATE t SET deleted_at = now(), deleted_by = current_user
  WHERE id = $1 AND deleted_at IS NULL``, PostgreSQL alone, capture triggers present but
  the session not captured), ``softguard soft DELETE`` (``DELETE FROM t WHERE id = $1``
  through the proxy: rewritten, rows captured, one ledger operation and NOTICE) and, for
  scale, ``softguard hard DELETE`` (the same DELETE on an identical table that is not
  configured: captured rows, decision 0006);
- **bulk**: per round, ``--rows`` rows marked by the direct UPDATE, by the soft DELETE
  through softguard, and by the same soft DELETE sent after a ``SELECT 1`` in one text
  (``checked``: a text of two statements is not bound to the session key, so the capture
  trigger compares old and new rows, as every soft delete did in ledger version 9:
  decision 0031), order rotating; then ``softguard.undo_op`` of the soft delete and
  ``purge_soft_rows`` of a second one (hard-deleting the rows), timed.

Prints medians, p95 and ratios; ``--json`` writes every sample. No target figures: the
issue states none; the cost is reported. See bench/README.md, "soft_delete.py".

    python bench/soft_delete.py [--rows 100000] [--single 1000] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, ManagedProcess, free_port, git_describe, machine_info

from softguard.embedded import EmbeddedPostgres

TABLE_SQL = """
DROP TABLE IF EXISTS {name};
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    status text NOT NULL,
    note text,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    deleted_by text
);
INSERT INTO {name} (id, customer_id, status, note, created_at)
    SELECT g, g % 10007, (ARRAY['new', 'paid', 'shipped'])[g % 3 + 1],
           'order ' || g, timestamptz '2024-01-01' + g * interval '1 second'
      FROM generate_series(1, {rows}) g;
CREATE INDEX ON {name} (customer_id);
"""
SINGLE = ("direct UPDATE", "softguard soft DELETE", "softguard hard DELETE")
CONFIG = """
[[soft_delete]]
table = "public.soft_*"
column = "deleted_at"
deleted_by = "deleted_by"
"""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="softguard-bench-soft-"))
        self.pg: EmbeddedPostgres | None = None
        self.proxy: ManagedProcess | None = None

    def start(self) -> None:
        self.pg = EmbeddedPostgres(
            server_settings={"synchronous_commit": "off", "shared_buffers": "512MB"},
            log_file=self.work / "postgres.log",
        )
        self.pg.start()
        config = self.work / "softguard.toml"
        config.write_text(CONFIG)
        port = free_port()
        # the default log level, as deployed (issue 13)
        argv = [
            sys.executable, "-m", "softguard", "serve", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"postgresql://127.0.0.1:{self.pg.port}?sslmode=disable",
            "--config", str(config),
        ]  # fmt: skip
        self.proxy = ManagedProcess("softguard", argv, self.work / "softguard.log", cwd=REPO_ROOT)
        self.proxy.wait_for_port(port, 30)
        self.direct_dsn = self.pg.dsn("postgres") + "?sslmode=disable"
        self.proxied_dsn = f"postgresql://{self.pg.superuser}@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self) -> dict[str, Any]:
        self.start()
        with psycopg.connect(self.direct_dsn, autocommit=True) as admin:
            admin.execute("SELECT 1")
            # the ledger first (the proxy would install it on the first DELETE)
            from softguard.ledger import apply_migrations

            apply_migrations(admin)
            # Every table exists before the proxy first reads the soft-delete tables (it
            # reads them again after DDL it sees, or a minute later, not after DDL sent
            # around it); the bulk rounds re-create them under the same names.
            for name in ("soft_direct", "soft_proxied", "soft_checked", "soft_purged"):
                admin.execute(TABLE_SQL.format(name=name, rows=1))
            result: dict[str, Any] = {"machine": machine_info(), "git": git_describe()}
            result["single"] = self.single(admin) if self.args.single else None
            result["bulk"] = self.bulk(admin) if self.args.rounds else None
        return result

    def single(self, admin: psycopg.Connection[Any]) -> dict[str, Any]:
        n, block = self.args.single, self.args.block
        rows = max(10_000, 3 * n + 10)
        for name in ("soft_single", "plain_single"):
            admin.execute(TABLE_SQL.format(name=name, rows=rows))
            admin.execute(f"VACUUM (ANALYZE) {name}")
        admin.execute("CHECKPOINT")
        ids = random.Random(7).sample(range(1, rows + 1), 2 * n)
        work = {
            "direct UPDATE": ids[:n],
            "softguard soft DELETE": ids[n:],
            "softguard hard DELETE": list(range(1, n + 1)),
        }
        statements = {
            "direct UPDATE": "UPDATE soft_single SET deleted_at = now(), deleted_by = current_user"
            " WHERE id = %s AND deleted_at IS NULL",
            "softguard soft DELETE": "DELETE FROM soft_single WHERE id = %s",
            "softguard hard DELETE": "DELETE FROM plain_single WHERE id = %s",
        }
        conns = {
            "direct UPDATE": psycopg.connect(self.direct_dsn, autocommit=True),
            "softguard soft DELETE": psycopg.connect(self.proxied_dsn, autocommit=True),
            "softguard hard DELETE": psycopg.connect(self.proxied_dsn, autocommit=True),
        }
        samples: dict[str, list[float]] = {k: [] for k in SINGLE}
        try:
            for conn in conns.values():
                conn.add_notice_handler(lambda _d: None)
            for start in range(0, n, block):
                for config in SINGLE:
                    conn, stmt = conns[config], statements[config]
                    for i in work[config][start : start + block]:
                        t0 = time.perf_counter()
                        cur = conn.execute(stmt, [i], prepare=True)
                        samples[config].append(_ms(t0))
                        if cur.rowcount != 1:
                            raise RuntimeError(f"{config}: {cur.statusmessage} for id {i}")
        finally:
            for conn in conns.values():
                conn.close()
        base = statistics.median(samples["direct UPDATE"])
        return {
            config: {
                "median_ms": round(statistics.median(v), 4),
                "p95_ms": round(_p95(v), 4),
                "vs_direct_update": round(statistics.median(v) / base, 2),
                "samples": [round(x, 4) for x in v],
            }
            for config, v in samples.items()
        }

    def bulk(self, admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        rows = self.args.rows
        rounds: list[dict[str, Any]] = []
        for r in range(self.args.rounds):
            out: dict[str, Any] = {}
            configs = ["direct", "softguard", "checked"]
            order = configs[r % 3 :] + configs[: r % 3]
            for name in ("soft_direct", "soft_proxied", "soft_checked", "soft_purged"):
                admin.execute(TABLE_SQL.format(name=name, rows=rows))
            admin.execute(f"VACUUM (ANALYZE) {name}")
            admin.execute("CHECKPOINT")
            with psycopg.connect(self.proxied_dsn, autocommit=True) as proxied:
                proxied.add_notice_handler(lambda _d: None)
                for config in order:
                    t0 = time.perf_counter()
                    if config == "direct":
                        cur = admin.execute(
                            "UPDATE soft_direct SET deleted_at = now(), deleted_by = current_user"
                            " WHERE deleted_at IS NULL"
                        )
                    elif config == "softguard":
                        cur = proxied.execute("DELETE FROM soft_proxied")
                    else:
                        cur = proxied.execute("SELECT 1; DELETE FROM soft_checked")
                        cur.nextset()  # the DELETE's result
                    out[f"{config}_ms"] = round(_ms(t0), 1)
                    if cur.rowcount != rows:
                        raise RuntimeError(f"{config}: {cur.statusmessage}")
                proxied.execute("DELETE FROM soft_purged")
            ops = admin.execute(
                "SELECT o.objects->0->>'name', max(o.id) FROM softguard.operations o"
                " WHERE o.kind = 'DELETE' AND o.state = 'active'"
                " AND o.objects->0->>'event' = 'soft_delete' GROUP BY 1"
            ).fetchall()
            op_of = dict(ops)
            if not {"soft_proxied", "soft_checked", "soft_purged"} <= set(op_of):
                raise RuntimeError(f"the DELETEs through softguard were not soft deletes: {ops}")
            purged_op, undone_op = op_of["soft_purged"], op_of["soft_proxied"]
            # how the capture trigger judged each claim (decision 0031; none before version 10)
            out["claims"] = dict(
                admin.execute(
                    "SELECT c.table_identity, c.info->>'claim' FROM softguard.captures c"
                    " WHERE c.op_id = ANY(%s) AND c.event = 'soft_delete'",
                    [[op_of["soft_proxied"], op_of["soft_checked"]]],
                ).fetchall()
            )
            t0 = time.perf_counter()
            admin.execute("SELECT softguard.undo_op(%s)", [undone_op])
            out["undo_ms"] = round(_ms(t0), 1)
            t0 = time.perf_counter()
            batches = 0
            for _ in range(rows // 10_000 + 2):
                batches += 1
                with admin.transaction():
                    row = admin.execute(
                        "SELECT softguard.purge_soft_rows(%s, 10000)", [purged_op]
                    ).fetchone()
                if row is None or row[0] == 0:
                    break
            admin.execute("SELECT softguard.purge_op(%s)", [purged_op])
            out["purge_ms"] = round(_ms(t0), 1)
            out["purge_batches"] = batches
            left = admin.execute("SELECT count(*) FROM soft_purged").fetchone()
            if left is None or left[0] != 0:
                raise RuntimeError(f"purge left {left} rows")
            out["softguard_vs_direct"] = round(out["softguard_ms"] / out["direct_ms"], 2)
            out["checked_vs_direct"] = round(out["checked_ms"] / out["direct_ms"], 2)
            rounds.append(out)
        return rounds


def _print(result: dict[str, Any]) -> None:
    single = result.get("single")
    if single:
        print("single-row soft delete (prepared, autocommit)")
        print(f"  {'config':24} {'median ms':>10} {'p95 ms':>10} {'x direct UPDATE':>16}")
        for config, v in single.items():
            print(
                f"  {config:24} {v['median_ms']:10.3f} {v['p95_ms']:10.3f} "
                f"{v['vs_direct_update']:16.2f}"
            )
    bulk = result.get("bulk")
    if bulk:
        print("bulk soft delete of all rows (ms)")
        print(
            f"  {'round':6} {'direct':>9} {'softguard':>10} {'ratio':>6} {'checked':>9}"
            f" {'ratio':>6} {'undo':>9} {'purge':>9}"
        )
        for i, r in enumerate(bulk, 1):
            print(
                f"  {i:<6} {r['direct_ms']:9.1f} {r['softguard_ms']:10.1f} "
                f"{r['softguard_vs_direct']:6.2f} {r['checked_ms']:9.1f} "
                f"{r['checked_vs_direct']:6.2f} {r['undo_ms']:9.1f} {r['purge_ms']:9.1f}"
            )
        print(f"  claims (last round): {bulk[-1]['claims']}")
        for label, key in (("softguard", "softguard_vs_direct"), ("checked", "checked_vs_direct")):
            ratio = statistics.median(r[key] for r in bulk)
            print(f"  median ratio {label} / direct: {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the bulk tables")
    parser.add_argument("--single", type=int, default=1000, help="single-row statements per config")
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="bulk rounds (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rows < 1 or args.single < 0 or args.rounds < 0 or args.block < 1:
        parser.error("--rows and --block must be positive, --single and --rounds not negative")
    bench = Bench(args)
    try:
        result = bench.run()
    finally:
        bench.stop()
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
