"""Observability: `softguard serve --metrics HOST:PORT` and the per-operation log line.

A fresh proxy with the endpoint runs safe statements, a DROP, a DELETE and a denied DROP
DATABASE; the scrape must show each in the counters (statements by classification and
action, operations by kind, connections, histograms) and the ledger gauges must show the
operations; the proxy log must carry one `operation id=N ...` line per operation, with
the id the client was told. Also: refusals by reason, the PORT+i rule with workers, and a
clear startup error for an unusable address.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.pg import TestServer
from support.ports import free_port_pair
from support.proxy import REPO_ROOT, ProxyFactory, free_port, via_direct

from softguard.policy import SessionInfo
from softguard.proxy.metrics import (
    logfmt_value,
    operation_line,
    pair_statement,
    parse_operation_notice,
)
from softguard.wire.messages import notice_response

pytestmark = pytest.mark.skipif(via_direct(), reason="metrics are the proxy's")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    # The proxy's port may accept a moment before its worker has started the endpoint.
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_metrics_and_operation_log(
    proxy_factory: ProxyFactory, pg_server: TestServer, dbname: str
) -> None:
    mport = free_port()
    proxy = proxy_factory("--metrics", f"127.0.0.1:{mport}", fresh=True)
    # The factory's readiness probe connected and closed: gone once the proxy has seen it.
    wait_for(lambda: value(scrape(mport), "softguard_client_connections") == 0)
    before = scrape(mport)
    assert value(before, "softguard_client_connections") == 0
    assert value(before, "softguard_statements_total", classification="safe", action="allow") == 0

    notices: list[str] = []
    with psycopg.connect(proxy.dsn(dbname), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("CREATE TABLE keep_me (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO keep_me SELECT g, repeat('x', 100) FROM generate_series(1, 50) g")
        conn.execute("CREATE TABLE drop_me AS SELECT g AS id FROM generate_series(1, 1000) g")
        conn.execute("SELECT 1")
        conn.execute("DROP TABLE drop_me")
        conn.execute("DELETE FROM keep_me WHERE id <= 3")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP DATABASE no_such_db")
        during = scrape(mport)
        assert value(during, "softguard_client_connections") == 1

    ops = {
        int(m.group(1)): m.group(0)
        for n in notices
        if (m := re.search(r"is reversible as operation ([0-9]+)", n))
    }
    assert len(ops) == 2, notices
    drop_id, delete_id = sorted(ops)

    wait_for(lambda: value(scrape(mport), "softguard_client_connections") == 0)
    s = scrape(mport)
    assert value(s, "softguard_client_connections_accepted_total") >= 1
    assert value(s, "softguard_statements_total", classification="safe", action="allow") >= 4
    assert (
        value(s, "softguard_statements_total", classification="destructive", action="protect") == 2
    )
    assert value(s, "softguard_statements_total", classification="destructive", action="deny") == 1
    assert value(s, "softguard_operations_total", kind="DROP TABLE") == 1
    assert value(s, "softguard_operations_total", kind="DELETE") == 1
    assert value(s, "softguard_upstream_connect_seconds_count") >= 1
    # Only the DROP was rewritten; the DELETE passed as sent (captured by triggers).
    assert value(s, "softguard_rewritten_statement_seconds_count") == 1
    assert value(s, "softguard_rewritten_statement_seconds_sum") > 0
    assert value(s, "softguard_purge_runs_total") == 0
    # The ledger gauges, read from softguard.operations of the database.
    assert (
        value(s, "softguard_ledger_operations", database=dbname, kind="DROP TABLE", state="active")
        == 1
    )
    assert (
        value(s, "softguard_ledger_operations", database=dbname, kind="DELETE", state="active") == 1
    )
    assert value(s, "softguard_quarantine_bytes", database=dbname) > 0
    assert value(s, "softguard_ledger_scrape_errors_total") == 0

    # One structured line per operation, with the id the client was told.
    def logged() -> list[str]:
        return [ln for ln in proxy.tail(400).splitlines() if " operation id=" in ln]

    wait_for(lambda: len(logged()) >= 2)
    lines = logged()
    drop_line = next(ln for ln in lines if f"operation id={drop_id} " in ln)
    assert 'kind="DROP TABLE"' in drop_line
    assert "objects=public.drop_me" in drop_line
    assert f"db={dbname} " in drop_line
    assert f"user={pg_server.superuser} " in drop_line
    assert "client=127.0.0.1 " in drop_line
    assert 'statement="DROP TABLE drop_me"' in drop_line
    assert re.search(r" expires=\d{4}-\d\d-\d\d$", drop_line)
    delete_line = next(ln for ln in lines if f"operation id={delete_id} " in ln)
    assert "kind=DELETE" in delete_line
    assert 'statement="DELETE FROM keep_me WHERE id <= 3"' in delete_line


def test_refusals_by_reason(proxy_factory: ProxyFactory) -> None:
    mport = free_port()
    proxy = proxy_factory("--metrics", f"127.0.0.1:{mport}", "--max-client-conn", "1", fresh=True)
    with psycopg.connect(proxy.dsn()) as first:
        first.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="too many client connections"):
            psycopg.connect(proxy.dsn(), connect_timeout=5)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        raw.sendall(b"\x00\x00\x00\x08garbage!")
        raw.recv(1000)
    wait_for(
        lambda: (
            value(scrape(mport), "softguard_client_connections_refused_total", reason="protocol")
            == 1
        )
    )
    s = scrape(mport)
    refused = "softguard_client_connections_refused_total"
    assert value(s, refused, reason="max_client_conn") == 1
    assert value(s, refused, reason="upstream") == 0


def test_upstream_refusal(proxy_factory: ProxyFactory) -> None:
    mport = free_port()
    dead = f"postgresql://127.0.0.1:{free_port()}"
    proxy = proxy_factory("--metrics", f"127.0.0.1:{mport}", upstream=dead, fresh=True)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(), connect_timeout=5)
    s = scrape(mport)
    assert value(s, "softguard_client_connections_refused_total", reason="upstream") == 1
    # No ledger known: the ledger gauges are simply absent, the endpoint fine.
    assert not any(name == "softguard_ledger_operations" for name, _ in s)


def test_workers_serve_consecutive_ports(proxy_factory: ProxyFactory) -> None:
    mport = free_port_pair()
    proxy = proxy_factory("--metrics", f"127.0.0.1:{mport}", "--workers", "2", fresh=True)
    for _ in range(6):
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute("SELECT 1")
    # Each worker serves its own counts (the factory's readiness probe is one more).
    wait_for(
        lambda: (
            sum(
                value(scrape(p), "softguard_client_connections_accepted_total")
                for p in (mport, mport + 1)
            )
            >= 6
        )
    )


def test_sessions_move_onto_links(
    proxy_factory: ProxyFactory, pg_server: TestServer, dbname: str
) -> None:
    """Once READY, a plain session's two connections leave uvloop's transports for links
    (decision 0040), counted per side; large answers and a large COPY in cross them whole.
    Without the compiled module (SOFTGUARD_PURE_PYTHON=1) nothing moves."""
    from softguard.proxy import link

    mport = free_port()
    # Plain on both hops (the test server also offers TLS, which a link never carries).
    upstream = pg_server.upstream_dsn(sslmode="disable")
    proxy = proxy_factory("--metrics", f"127.0.0.1:{mport}", upstream=upstream, fresh=True)
    wait_for(lambda: value(scrape(mport), "softguard_client_connections") == 0)
    with psycopg.connect(proxy.dsn(dbname, sslmode="disable"), autocommit=True) as conn:
        rows = conn.execute("SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g")
        assert sum(r[0] for r in rows.fetchall()) == 20000 * 20001 // 2
        conn.execute("CREATE TEMP TABLE sink (v text)")
        with conn.cursor().copy("COPY sink FROM STDIN") as copy:
            for i in range(3000):
                copy.write_row((f"{i}" * 400,))
        assert conn.execute("SELECT count(*), sum(length(v)) FROM sink").fetchone() == (
            3000,
            sum(len(f"{i}" * 400) for i in range(3000)),
        )
    s = scrape(mport)
    moved = 1 if link.AVAILABLE else 0
    assert value(s, "softguard_relay_links_total", side="client") == moved
    assert value(s, "softguard_relay_links_total", side="server") == moved


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "softguard", "serve", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_metrics_address_is_a_clear_startup_error(pg_server: TestServer) -> None:
    upstream = pg_server.upstream_dsn()
    listen = f"127.0.0.1:{free_port()}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve(
            "--listen", listen, "--upstream", upstream, "--metrics", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr

    result = _serve("--listen", listen, "--upstream", upstream, "--metrics", "nonsense")
    assert result.returncode == 2
    assert "metrics" in result.stderr and "expected HOST:PORT" in result.stderr


# ---------------------------------------------------------------------- pure helpers


def test_logfmt_and_notice_parsing() -> None:
    assert logfmt_value("rental") == "rental"
    assert logfmt_value("") == '""'
    assert logfmt_value('a "b"\nc\\') == '"a \\"b\\"\\nc\\\\"'
    body = notice_response(
        "softguard: DROP MATERIALIZED VIEW public.mv, public.mv2 is reversible as operation 42"
        " until 2026-12-04"
    )[5:]
    notice = parse_operation_notice(body)
    assert notice is not None
    assert (notice.id, notice.kind, notice.objects, notice.expires) == (
        42,
        "DROP MATERIALIZED VIEW",
        "public.mv, public.mv2",
        "2026-12-04",
    )
    forged = notice_response("softguard: LAUNCH MISSILES is reversible as operation 7 until x")
    assert parse_operation_notice(forged[5:]) is not None
    assert parse_operation_notice(forged[5:]).kind == "other"  # type: ignore[union-attr]
    info = SessionInfo("agent", "rental", "claude", "1.2.3.4:5555")
    protected = [("delete", "DELETE FROM nothing_here"), ("drop", "DROP TABLE mv CASCADE")]
    assert pair_statement(notice, list(protected)) is None  # kind mismatch: left out
    drop = parse_operation_notice(
        notice_response("softguard: DROP TABLE public.mv is reversible as operation 9 until d")[5:]
    )
    assert drop is not None
    pending = list(protected)
    assert pair_statement(drop, pending) == "DROP TABLE mv CASCADE"
    assert pending == []
    line = operation_line(drop, info, "1.2.3.4", "DROP TABLE mv CASCADE")
    assert line == (
        'operation id=9 kind="DROP TABLE" objects=public.mv db=rental user=agent app=claude'
        ' client=1.2.3.4 statement="DROP TABLE mv CASCADE" expires=d'
    )
