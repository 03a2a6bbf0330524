"""Backend CPU of a captured single-row DELETE: this checkout's ledger against another's.

One embedded server, one database per ledger (this checkout's migrations/, and with
``--baseline DIR`` another checkout's, e.g. main's extracted with ``git archive``), each
with the same table (data_changes.py's shape, 100,000 rows). A session registered as the
proxy registers one (``register_session``, ``softguard.capture = delete``) deletes single
rows by id, and the CPU its backend used is read from ``/proc/<pid>/stat``:

- ``--mode stmt`` (default): one prepared ``DELETE FROM t WHERE id = $1`` per transaction
  (autocommit), as a client through the proxy sends it; includes the commit;
- ``--mode do``: ``--deletes`` DELETEs in one DO block (one transaction, each its own
  operation): the capture alone, no protocol or commit per DELETE.

The configurations take turns (``--pairs`` rounds, the order alternating), so that the
load of other processes falls on all of them alike; the table prints per round and the
median µs of backend CPU per DELETE. ``uncaptured`` is the same DELETE on this checkout's
table in a session that is not captured (the triggers' cost alone).

``--profile`` then runs one more block per ledger with ``pg_stat_statements.track = all``
and ``track_functions = all`` and prints the statements and functions the capture runs,
with their mean µs per DELETE (timing overhead included: read the shares).

``--proxy`` then starts ``softguard serve`` (this checkout, default log level) in front of
the server and measures the CPU of the proxy's processes and of the backend per DELETE,
captured against the same prepared DELETE of an id that does not exist (no operation):
what the proxy itself spends on an operation (its NOTICE, the log line, the metrics).
``--proxy-baseline ROOT`` also starts another checkout's ``softguard serve`` (its root,
e.g. main's from ``git archive``) on the same database; its blocks take turns with this
one's, and the last column gives each config's paired median against this checkout's
captured DELETE.

    python bench/capture_cpu.py [--baseline DIR] [--deletes 3000] [--pairs 3] [--mode stmt]
                                [--profile] [--proxy [--proxy-baseline ROOT]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_ROOT,
    ManagedProcess,
    free_port,
    git_describe,
    machine_info,
    serve_argv,
    tree_pids,
)
from data_changes import TABLE_SQL as SHAPE_SQL

from softguard.embedded import EmbeddedPostgres
from softguard.ledger.migrate import apply_migrations

ROWS = 100_000
WARMUP = 30
TABLE_SQL = SHAPE_SQL.format(name="t", rows=ROWS)  # data_changes.py's table
REGISTER = "SELECT softguard.register_session('delete,drop,truncate,alter', 604800, '127.0.0.1')"


def backend_cpu(pid: int) -> float:
    """Seconds of CPU backend `pid` ran so far: the scheduler's count in ns
    (/proc/<pid>/schedstat), not /proc/<pid>/stat's 10 ms ticks, so that short blocks can
    take turns often."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


class Config:
    """One session deleting from one database's table, on ids of its own."""

    def __init__(self, name: str, dsn: str, captured: bool, ids: list[int]) -> None:
        self.name = name
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.add_notice_handler(lambda _d: None)
        if captured:
            self.conn.execute(REGISTER)
            self.conn.execute("SET softguard.capture = 'delete'")
        self.pid = int(self.conn.info.backend_pid)
        self.ids = ids
        self.pos = 0
        self.per_delete_us: list[float] = []
        self.wall_us: list[float] = []

    def take(self, n: int) -> list[int]:
        out = self.ids[self.pos : self.pos + n]
        if len(out) < n:
            raise SystemExit(f"{self.name}: out of ids (raise ROWS or lower --deletes)")
        self.pos += n
        return out

    def run(self, n: int, mode: str) -> tuple[float, float]:
        """Delete n rows; (backend CPU s, wall s)."""
        ids = self.take(n)
        cur = self.conn.cursor()
        before = backend_cpu(self.pid)
        start = time.perf_counter()
        if mode == "do":
            cur.execute(
                "DO $$ DECLARE i bigint; BEGIN FOREACH i IN ARRAY '{"
                + ",".join(map(str, ids))
                + "}'::bigint[] LOOP DELETE FROM t WHERE id = i; END LOOP; END $$"
            )
        else:
            for i in ids:  # bounded by n
                cur.execute("DELETE FROM t WHERE id = %s", [i], prepare=True)
        wall = time.perf_counter() - start
        return backend_cpu(self.pid) - before, wall


def profile(cfg: Config, n: int, mode: str) -> dict[str, Any]:
    """Statements and functions run by n captured DELETEs, per DELETE."""
    c = cfg.conn
    c.execute("SET pg_stat_statements.track = 'all'")
    c.execute("SET track_functions = 'all'")
    c.execute("SELECT pg_stat_statements_reset()")
    c.execute("SELECT pg_stat_reset()")
    cfg.run(n, mode)
    c.execute("SET pg_stat_statements.track = 'top'")
    time.sleep(0.6)  # function statistics reach the collector at most every 500 ms
    c.execute("SELECT pg_stat_force_next_flush()") if c.info.server_version >= 150000 else None
    stmts = c.execute(
        "SELECT calls, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g')"
        "  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
        "  WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT 25"
    ).fetchall()
    funcs = c.execute(
        "SELECT schemaname || '.' || funcname, calls, total_time, self_time"
        "  FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 25"
    ).fetchall()
    return {
        "statements": [
            {"calls": r[0], "us_per_delete": 1000 * r[1] / n, "query": r[2][:160]} for r in stmts
        ],
        "functions": [
            {
                "name": r[0],
                "calls_per_delete": r[1] / n,
                "total_us_per_delete": 1000 * r[2] / n,
                "self_us_per_delete": 1000 * r[3] / n,
            }
            for r in funcs
        ],
    }


def proxy_split(
    pg: EmbeddedPostgres, deletes: int, rounds: int, baseline: Path | None = None
) -> dict[str, Any]:
    """CPU of the proxy and of the backend per DELETE through `softguard serve` (this
    checkout, default log level): captured (one operation, one NOTICE) against the same
    prepared DELETE of an id that does not exist (no operation), blocks alternating.
    ``baseline``: another checkout's root; its `softguard serve` runs beside this one's
    (same server, same database), and its blocks take turns with this one's."""
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
        admin.execute("CREATE DATABASE proxied")
    work = Path(tempfile.mkdtemp(prefix="sg-capture-cpu-"))
    roots = {"": REPO_ROOT}
    if baseline is not None:
        roots["baseline "] = baseline
    proxies: dict[str, tuple[ManagedProcess, int]] = {}
    try:
        for prefix, root in roots.items():
            port = free_port()
            argv = serve_argv(port, pg.port)
            log_path = work / f"softguard{prefix.strip()}.log"
            # `python -m` puts its working directory first on sys.path: that checkout's code.
            proxies[prefix] = (ManagedProcess("softguard", argv, log_path, cwd=root), port)
        for proxy, port in proxies.values():
            proxy.wait_for_port(port, 30)
        dsns = {
            prefix: f"postgresql://{pg.superuser}@127.0.0.1:{port}/proxied?sslmode=disable"
            for prefix, (_, port) in proxies.items()
        }
        with psycopg.connect(dsns[""], autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS sg_warmup")  # installs the ledger
        with psycopg.connect(pg.dsn("proxied"), autocommit=True) as c:
            c.execute(TABLE_SQL)
            c.execute("VACUUM (ANALYZE) t")
        ids = iter(random.Random(7).sample(range(1, ROWS + 1), len(roots) * (rounds + 1) * deletes))
        missing = iter(range(-1, -ROWS, -1))
        turn: list[tuple[str, list[int], psycopg.Connection[Any], int, Any]] = []
        for prefix, (proxy, _) in proxies.items():
            conn = psycopg.connect(dsns[prefix], autocommit=True)
            conn.add_notice_handler(lambda _d: None)
            pids = tree_pids(proxy.pid)
            backend = int(conn.info.backend_pid)
            turn.append((prefix + "captured", pids, conn, backend, ids))
            turn.append((prefix + "0 rows", pids, conn, backend, missing))
        out: dict[str, dict[str, list[float]]] = {
            name: {"proxy_us": [], "backend_us": []} for name, *_ in turn
        }
        for r in range(rounds + 1):  # bounded; round 0 warms up
            for name, pids, conn, backend, source in turn if r % 2 else reversed(turn):
                p0, b0 = sum(backend_cpu(p) for p in pids), backend_cpu(backend)
                for _ in range(deletes):  # bounded
                    conn.execute("DELETE FROM t WHERE id = %s", [next(source)], prepare=True)
                if r:
                    out[name]["proxy_us"].append(
                        1e6 * (sum(backend_cpu(p) for p in pids) - p0) / deletes
                    )
                    out[name]["backend_us"].append(1e6 * (backend_cpu(backend) - b0) / deletes)
        for _, _, conn, _, _ in turn:
            conn.close()
        print(f"\nthrough the proxy, CPU per DELETE ({deletes} per block, {rounds} rounds):")
        print(
            f"{'config':<22} {'proxy µs':>9} {'backend µs':>11} {'proxy - captured (paired)':>26}"
        )
        first = out["captured"]["proxy_us"]
        for name, v in out.items():
            paired = statistics.median(a - b for a, b in zip(v["proxy_us"], first, strict=True))
            print(
                f"{name:<22} {statistics.median(v['proxy_us']):>9.0f}"
                f" {statistics.median(v['backend_us']):>11.0f} {paired:>+26.0f}"
            )
        return out
    finally:
        for proxy, _ in proxies.values():
            proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout's migrations/")
    parser.add_argument(
        "--ledger", action="append", default=[], metavar="NAME=DIR", help="more ledgers to compare"
    )
    parser.add_argument("--deletes", type=int, default=3000, help="DELETEs per block")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of blocks")
    parser.add_argument("--mode", choices=("stmt", "do"), default="stmt")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--proxy", action="store_true", help="also: proxy CPU, captured against 0-row DELETEs"
    )
    parser.add_argument(
        "--proxy-baseline",
        type=Path,
        help="with --proxy: another checkout's root, its proxy's blocks taking turns",
    )
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    needed = (args.pairs + 1) * args.deletes + WARMUP
    if 2 * needed > ROWS:
        parser.error(f"2 * ((pairs + 1) * deletes + {WARMUP}) must be at most {ROWS}")

    pg = EmbeddedPostgres(
        server_settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "top",
            "synchronous_commit": "off",
            "shared_buffers": "256MB",
        }
    )
    pg.start()
    configs: list[Config] = []
    try:
        ledgers = {"branch": REPO_ROOT / "migrations"}
        if args.baseline:
            ledgers["baseline"] = args.baseline.resolve()
        for spec in args.ledger:
            name, _, directory = spec.partition("=")
            ledgers[name] = Path(directory).resolve()
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for name, directory in ledgers.items():
                admin.execute(f"CREATE DATABASE {name}")
                with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
                    apply_migrations(conn, directory)
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    conn.execute(TABLE_SQL)
                    conn.execute("VACUUM (ANALYZE) t")
        rng = random.Random(13)
        order = list(ledgers)
        ids = {n: rng.sample(range(1, ROWS + 1), 2 * needed) for n in order}
        configs = [Config(n, pg.dsn(n), True, ids[n][:needed]) for n in order]
        # the same table as the first ledger's session, on ids of its own
        configs.append(Config("uncaptured", pg.dsn(order[0]), False, ids[order[0]][needed:]))
        for cfg in configs:
            cfg.run(WARMUP, args.mode)
        rounds: list[dict[str, float]] = []
        for r in range(args.pairs):  # bounded
            turn = configs if r % 2 == 0 else list(reversed(configs))
            row: dict[str, float] = {}
            for cfg in turn:
                cpu, wall = cfg.run(args.deletes, args.mode)
                cfg.per_delete_us.append(1e6 * cpu / args.deletes)
                cfg.wall_us.append(1e6 * wall / args.deletes)
                row[cfg.name] = cfg.per_delete_us[-1]
            rounds.append(row)
            if args.verbose:
                print(
                    f"round {r + 1}: " + ", ".join(f"{k} {v:.0f} µs" for k, v in row.items()),
                    flush=True,
                )
        print(
            f"\nbackend CPU per DELETE ({args.mode}, {args.deletes} per block,"
            f" {args.pairs} rounds):"
        )
        # paired: each round's difference to the first ledger cancels what the load did
        # to that round
        first = configs[0]
        print(
            f"{'config':<12} {'median µs':>10} {'min':>7} {'max':>7} {'wall µs':>9}"
            f" {'- ' + first.name + ' (paired median)':>28}"
        )
        for cfg in configs:
            paired = statistics.median(
                a - b for a, b in zip(cfg.per_delete_us, first.per_delete_us, strict=True)
            )
            print(
                f"{cfg.name:<12} {statistics.median(cfg.per_delete_us):>10.0f}"
                f" {min(cfg.per_delete_us):>7.0f} {max(cfg.per_delete_us):>7.0f}"
                f" {statistics.median(cfg.wall_us):>9.0f} {paired:>+28.0f}"
            )
        profiles: dict[str, Any] = {}
        if args.profile:
            n = min(args.deletes, len(configs[0].ids) - configs[0].pos)
            for cfg in configs[:-1]:
                profiles[cfg.name] = prof = profile(cfg, n, args.mode)
                print(f"\n{cfg.name}: statements, µs per DELETE (tracking on)")
                for s in prof["statements"][:15]:
                    print(f"{s['us_per_delete']:>8.1f}  {s['calls']:>6}  {s['query'][:100]}")
                print(f"{cfg.name}: functions, self / total µs per DELETE")
                for f in prof["functions"][:12]:
                    print(
                        f"{f['self_us_per_delete']:>8.1f} {f['total_us_per_delete']:>8.1f}"
                        f"  {f['calls_per_delete']:>5.2f}  {f['name']}"
                    )
        split = proxy_split(pg, args.deletes, args.pairs, args.proxy_baseline) if args.proxy else {}
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "machine": machine_info(),
                        "git": git_describe(),
                        "rounds": rounds,
                        "configs": {
                            c.name: {"cpu_us": c.per_delete_us, "wall_us": c.wall_us}
                            for c in configs
                        },
                        "profiles": profiles,
                        "proxy": split,
                    },
                    indent=2,
                )
            )
    finally:
        for cfg in configs:
            cfg.conn.close()
        pg.stop()
        pg.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
