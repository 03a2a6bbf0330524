"""Where a DROP TABLE through softguard and its undo spend their time, in counts.

drop_undo.py times the DROP and the undo as a client sees them; on a loaded machine those
times move with the load. This counts what the server runs for them instead:
``pg_stat_statements`` (``track = all``: every statement the ledger's functions run,
nested ones included) and ``track_functions = all`` (calls and time of each function).
Calls do not depend on the load; the times do, but all in proportion, so the breakdown
(which statement or function takes which share) holds.

One embedded server (pg_stat_statements preloaded), one ``softguard serve`` of this
checkout (in database ``this``). Each round creates the bench table (10^3 rows, one index
besides its primary key, no dependents), then, statistics reset before each:

- ``drop``: ``DROP TABLE bench_guarded`` through softguard (one client round trip);
- ``undo``: ``SELECT softguard.undo_op(id)`` directly, as ``softguard undo`` does.

It prints, per DROP and per undo: the statements the server ran at top level (the
client's and softguard's own connections: their round trips), the statements by time
(nested included: a function's statement counts inside its caller's too), and the
functions by self time, each as calls and ms per DROP (or undo). ``--json`` writes all.
``--baseline ROOT``: another checkout's ``softguard serve`` beside this one, each in a
database of its own (a ledger of its own version), rounds alternating: both breakdowns
and both client times from one run.

    python bench/drop_profile.py [--rounds 10] [--rows 1000] [--top 25] [--json out.json]
                                 [--baseline ROOT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, ManagedProcess, free_port, git_describe, serve_argv
from drop_undo import TABLE_SQL, _operation_id

from softguard.embedded import EmbeddedPostgres

WARM_ROUNDS = 3  # the proxied backend's PL/pgSQL plans are cached after the first DROP

STATEMENTS_SQL = """
SELECT toplevel, calls, total_exec_time, total_plan_time, rows,
       regexp_replace(query, '\\s+', ' ', 'g')
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND query !~* 'pg_stat_(statements_)?reset|pg_stat_force_next_flush'
"""

FUNCTIONS_SQL = """
SELECT schemaname || '.' || funcname, calls, total_time, self_time
  FROM pg_stat_user_functions
"""


def _reset(direct: psycopg.Connection[Any]) -> None:
    direct.execute("SELECT pg_stat_statements_reset()")
    direct.execute("SELECT pg_stat_reset()")


def _flush(*conns: psycopg.Connection[Any]) -> None:
    """Make each backend report its function statistics before its next ReadyForQuery."""
    for conn in conns:
        conn.execute("SELECT pg_stat_force_next_flush()")


def _collect(
    direct: psycopg.Connection[Any], into: dict[str, dict[tuple[Any, ...], list[float]]]
) -> None:
    for top, calls, exec_ms, plan_ms, rows, query in direct.execute(STATEMENTS_SQL):
        key = ("top" if top else "nested", query)
        acc = into["statements"].setdefault(key, [0.0, 0.0, 0.0, 0.0])
        acc[0] += calls
        acc[1] += exec_ms
        acc[2] += plan_ms
        acc[3] += rows
    for name, calls, total_ms, self_ms in direct.execute(FUNCTIONS_SQL):
        acc = into["functions"].setdefault((name,), [0.0, 0.0, 0.0])
        acc[0] += calls
        acc[1] += total_ms
        acc[2] += self_ms


def _phase() -> dict[str, dict[tuple[Any, ...], list[float]]]:
    return {"statements": {}, "functions": {}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="softguard-bench-dropprof-"))
    pg = EmbeddedPostgres(
        server_settings={
            "synchronous_commit": "off",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.max": "10000",
            "pg_stat_statements.track_planning": "on",
            "track_functions": "all",
        }
    )
    pg.start()
    # checkout label -> its root; each serves its own database (a ledger per version)
    roots = {"this": REPO_ROOT}
    if args.baseline is not None:
        roots["baseline"] = args.baseline.resolve()
    proxies: list[ManagedProcess] = []
    try:
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
            for label in roots:
                admin.execute(f"CREATE DATABASE {label}")
        sides = []
        for label, root in roots.items():
            port = free_port()
            # `python -m` puts its working directory first on sys.path: that checkout's code
            proxy = ManagedProcess(
                "softguard", serve_argv(port, pg.port), work / f"softguard-{label}.log", cwd=root
            )
            proxies.append(proxy)
            proxy.wait_for_port(port, 30)
            sides.append(_Side(label, pg, port))
        for round_no in range(WARM_ROUNDS + args.rounds):
            # alternate which side goes first, so that neither always follows the other
            for side in sides if round_no % 2 == 0 else list(reversed(sides)):
                side.round(args.rows, measured=round_no >= WARM_ROUNDS)
        for side in sides:
            side.close()
        return {
            "rounds": args.rounds,
            "rows": args.rows,
            "sides": {
                side.label: {
                    "client_ms": side.client_ms,
                    "phases": {n: _per_op(p, args.rounds) for n, p in side.phases.items()},
                }
                for side in sides
            },
            "softguard": git_describe(),
        }
    finally:
        for proxy in proxies:
            proxy.stop()
        pg.cleanup()


class _Side:
    """One checkout's softguard, its database and the two connections a round uses."""

    def __init__(self, label: str, pg: EmbeddedPostgres, port: int) -> None:
        self.label = label
        self.direct = psycopg.connect(pg.dsn(label), autocommit=True)
        self.proxied = psycopg.connect(
            f"postgresql://{pg.superuser}@127.0.0.1:{port}/{label}?sslmode=disable",
            autocommit=True,
        )
        self.notices: list[str] = []
        self.proxied.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.direct.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.proxied.execute("DROP TABLE IF EXISTS sg_bench_warmup")  # installs the ledger
        self.phases = {"drop": _phase(), "undo": _phase()}
        self.client_ms: dict[str, list[float]] = {"drop": [], "undo": []}

    def round(self, rows: int, measured: bool) -> None:
        direct, proxied = self.direct, self.proxied
        direct.execute(TABLE_SQL.format(name="bench_guarded", rows=rows))
        direct.execute("CHECKPOINT")
        _flush(direct, proxied)
        _reset(direct)
        self.notices.clear()
        start = time.perf_counter()
        proxied.execute("DROP TABLE bench_guarded")
        took = (time.perf_counter() - start) * 1000.0
        _flush(proxied)
        if measured:
            self.client_ms["drop"].append(took)
            _collect(direct, self.phases["drop"])
        op = _operation_id(self.notices)
        _reset(direct)
        start = time.perf_counter()
        direct.execute("SELECT softguard.undo_op(%s)", [op])
        took = (time.perf_counter() - start) * 1000.0
        _flush(direct)
        direct.execute("SELECT 1")  # the flush happens before this one's answer
        if measured:
            self.client_ms["undo"].append(took)
            _collect(direct, self.phases["undo"])
        direct.execute("DROP TABLE bench_guarded")

    def close(self) -> None:
        self.proxied.close()
        self.direct.close()


def _per_op(phase: dict[str, dict[tuple[Any, ...], list[float]]], n: int) -> dict[str, Any]:
    statements = [
        {
            "level": level,
            "calls": acc[0] / n,
            "exec_ms": acc[1] / n,
            "plan_ms": acc[2] / n,
            "rows": acc[3] / n,
            "query": query,
        }
        for (level, query), acc in phase["statements"].items()
    ]
    functions = [
        {"name": name, "calls": acc[0] / n, "total_ms": acc[1] / n, "self_ms": acc[2] / n}
        for (name,), acc in phase["functions"].items()
    ]
    statements.sort(key=lambda s: -(s["exec_ms"] + s["plan_ms"]))
    functions.sort(key=lambda f: -f["self_ms"])
    return {"statements": statements, "functions": functions}


def _print(result: dict[str, Any], top: int, width: int) -> None:
    for label, side in result["sides"].items():
        for name, phase in side["phases"].items():
            ms = sorted(side["client_ms"][name])
            print(
                f"== {label}, {name}: per operation, {result['rounds']} rounds; client "
                f"median {ms[len(ms) // 2]:.2f} ms"
            )
            _print_phase(phase, top, width)
    if len(result["sides"]) > 1:
        print(
            "== client medians (ms), same run: "
            + "; ".join(
                f"{label} {name} {sorted(v)[len(v) // 2]:.2f}"
                for label, side in result["sides"].items()
                for name, v in side["client_ms"].items()
            )
        )


def _print_phase(phase: dict[str, Any], top: int, width: int) -> None:
    tops = [s for s in phase["statements"] if s["level"] == "top"]
    nested = [s for s in phase["statements"] if s["level"] == "nested"]
    print(f"-- top-level statements (round trips): {sum(s['calls'] for s in tops):.1f}")
    for s in tops:
        print(f"{s['calls']:7.1f} {s['exec_ms']:8.3f} {s['plan_ms']:7.3f}  {s['query'][:width]}")
    print(
        f"-- nested statements: {sum(s['calls'] for s in nested):.1f} calls, "
        f"{len(nested)} distinct; by exec+plan ms (calls, exec, plan)"
    )
    for s in nested[:top]:
        print(f"{s['calls']:7.1f} {s['exec_ms']:8.3f} {s['plan_ms']:7.3f}  {s['query'][:width]}")
    funcs = phase["functions"]
    print(
        f"-- functions: {sum(f['calls'] for f in funcs):.1f} calls, "
        f"{sum(f['self_ms'] for f in funcs):.3f} ms self in all; by self ms "
        f"(calls, total, self)"
    )
    for f in funcs[:top]:
        print(f"{f['calls']:7.1f} {f['total_ms']:8.3f} {f['self_ms']:8.3f}  {f['name']}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--width", type=int, default=150)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's root: its softguard runs beside this one (its own "
        "database), rounds alternating",
    )
    args = parser.parse_args()
    result = run(args)
    _print(result, args.top, args.width)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
