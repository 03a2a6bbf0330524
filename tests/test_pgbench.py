"""pgbench through the proxy: initialisation (COPY, DDL, VACUUM) and short runs in the
simple, extended and prepared query modes. Only correctness is asserted, never speed.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.slow

PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
ERROR_LINE = re.compile(r"\berror\b|\bFATAL\b|\bPANIC\b|aborted", re.IGNORECASE)


@pytest.fixture(scope="module")
def bench_db(pg_server: Any) -> Iterator[str]:
    with pg_server.scratch_database() as name:
        yield name


def pgbench(pg_server: Any, target: Any, dbname: str, *args: str, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    cmd = [
        str(pg_server.bin("pgbench")),
        "-h",
        target.host,
        "-p",
        str(target.port),
        "-U",
        pg_server.superuser,
        *args,
        dbname,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    output = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{output}"
    bad = [line for line in output.splitlines() if ERROR_LINE.search(line)]
    assert not bad, f"errors in pgbench output:\n{output}"
    return output


def processed(output: str) -> int:
    m = PROCESSED.search(output)
    assert m, f"no transaction count in pgbench output:\n{output}"
    return int(m.group(1))


@pytest.fixture(scope="module")
def initialised(pg_server: Any, proxy: Any, bench_db: str) -> str:
    pgbench(pg_server, proxy, bench_db, "-i", "-s", "1", "-q")
    with psycopg.connect(pg_server.dsn(bench_db)) as c:
        counts = c.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM "
            "pgbench_branches), (SELECT count(*) FROM pgbench_tellers)"
        ).fetchone()
        pkeys = c.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid::regclass::text "
            "LIKE 'pgbench_%'"
        ).fetchone()
    assert counts == (100000, 1, 10)
    assert pkeys == (3,)
    return bench_db


def test_select_only(pg_server: Any, proxy: Any, initialised: str) -> None:
    out = pgbench(pg_server, proxy, initialised, "-S", "-T", "3", "-c", "4", "-j", "2")
    assert processed(out) > 0


def test_tpcb_prepared(pg_server: Any, proxy: Any, initialised: str) -> None:
    out = pgbench(pg_server, proxy, initialised, "-T", "3", "-c", "2", "-M", "prepared")
    assert processed(out) > 0
    with psycopg.connect(pg_server.dsn(initialised)) as c:
        row = c.execute("SELECT count(*) > 0 FROM pgbench_history").fetchone()
        assert row == (True,)


def test_tpcb_extended_fixed_count(pg_server: Any, proxy: Any, initialised: str) -> None:
    out = pgbench(pg_server, proxy, initialised, "-t", "50", "-c", "2", "-M", "extended")
    assert processed(out) == 100
