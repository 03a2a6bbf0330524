"""The operator's day with a real `softguard serve` subprocess (issue 12): what serve
prints, SIGHUP reloading the policy with sessions kept, SIGTERM, --log-file, TLS file
errors, an unreachable upstream logged once per burst, --require-tls."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from serve_process import Serve, wait_file_contains
from support.pg import TestServer
from support.ports import free_port

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def serve_procs() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for proc in started:
        proc.stop()


def _serve(started: list[Serve], upstream: str, *args: str) -> Serve:
    """serve on a free port in front of ``upstream``."""
    proc = Serve("--listen", "127.0.0.1:0", "--upstream", upstream, *args)
    started.append(proc)
    return proc


def _proxy_dsn(server: TestServer, port: int, db: str) -> str:
    return server.dsn(db, server.superuser, server.superuser_password).replace(
        f":{server.port}/", f":{port}/"
    )


def test_serve_prints_the_ledger_dsn_after_binding(
    pg_server: TestServer, serve_procs: list[Serve]
) -> None:
    upstream = pg_server.upstream_dsn()
    proc = _serve(serve_procs, upstream)
    port = proc.listening_port()
    assert port != 0
    # "listening" comes once the socket is bound: a client can connect at once
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    dsn_line = proc.wait_for(r"export SOFTGUARD_DSN='([^']*)'")
    assert dsn_line.group(1) == upstream
    assert proc.stop() == 0


def test_serve_hides_the_upstream_password_in_the_ledger_dsn(
    pg_server: TestServer, serve_procs: list[Serve]
) -> None:
    upstream = f"host=127.0.0.1 port={pg_server.port} password=s3cret dbname=postgres"
    proc = _serve(serve_procs, upstream)
    line = proc.wait_for(r"export SOFTGUARD_DSN='([^']*)'").group(1)
    assert "s3cret" not in line and f"port={pg_server.port}" in line
    proc.stop()


def test_sighup_reloads_the_policy_and_keeps_sessions(
    pg_server: TestServer,
    rental_db: Callable[[], str],
    serve_procs: list[Serve],
    tmp_path: Path,
) -> None:
    db = rental_db()
    config = tmp_path / "softguard.toml"
    config.write_text('[policy]\ndrop = "protect"\n')
    log = tmp_path / "softguard.log"
    proc = _serve(
        serve_procs,
        pg_server.upstream_dsn(),
        "--config",
        str(config),
        "--log-file",
        str(log),
    )
    dsn = _proxy_dsn(pg_server, proc.listening_port(), db)
    with psycopg.connect(dsn, autocommit=True) as open_session:
        notices: list[str] = []
        open_session.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        open_session.execute("DROP TABLE billing.refunds")
        assert any("reversible as operation" in n for n in notices)

        config.write_text('[policy]\ndrop = "deny"\n')
        proc.signal(signal.SIGHUP)
        wait_file_contains(log, "SIGHUP: configuration reloaded")

        # the open session is kept, and its next statement sees the new policy
        assert open_session.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.Error) as denied:
            open_session.execute("DROP TABLE events")
        assert denied.value.sqlstate == "42501", denied.value
        with psycopg.connect(dsn, autocommit=True) as new_session:
            with pytest.raises(psycopg.Error):
                new_session.execute("DROP TABLE events")

        # an invalid file is refused with the old configuration kept
        config.write_text("[policy]\ndrop = 'sometimes'\n")
        proc.signal(signal.SIGHUP)
        wait_file_contains(log, "configuration not reloaded")
        assert open_session.execute("SELECT 2").fetchone() == (2,)
    assert proc.proc.poll() is None
    assert proc.stop() == 0
    assert "shutting down" in log.read_text()


def test_sighup_empties_what_sessions_remembered_as_allowed(
    pg_server: TestServer,
    rental_db: Callable[[], str],
    serve_procs: list[Serve],
    tmp_path: Path,
) -> None:
    """An open session's allowed UPDATE shape (passed unplanned by the relay's fast path
    after the first one, statements.remember_allowed) is decided anew after a reload: the
    same shape, other numbers, is refused once the policy denies updates."""
    db = rental_db()
    config = tmp_path / "softguard.toml"
    config.write_text('[policy]\nupdate = "allow"\n')
    log = tmp_path / "softguard.log"
    proc = _serve(
        serve_procs, pg_server.upstream_dsn(), "--config", str(config), "--log-file", str(log)
    )
    dsn = _proxy_dsn(pg_server, proc.listening_port(), db)
    update = "UPDATE customers SET phone = phone WHERE id = {}"  # no parameters: a Query
    with psycopg.connect(dsn, autocommit=True) as open_session:
        for i in range(1, 5):
            assert open_session.execute(update.format(i)).rowcount == 1
        config.write_text('[policy]\nupdate = "deny"\n')
        proc.signal(signal.SIGHUP)
        wait_file_contains(log, "SIGHUP: configuration reloaded")
        with pytest.raises(psycopg.Error) as denied:
            open_session.execute(update.format(5))
        assert denied.value.sqlstate == "42501", denied.value
        config.write_text('[policy]\nupdate = "allow"\n')
        proc.signal(signal.SIGHUP)
        for _ in range(100):  # bounded: the second reload's line
            if log.read_text().count("SIGHUP: configuration reloaded") >= 2:
                break
            time.sleep(0.05)
        assert open_session.execute(update.format(6)).rowcount == 1


def test_sighup_with_workers_reaches_every_worker(
    pg_server: TestServer, serve_procs: list[Serve], tmp_path: Path
) -> None:
    log = tmp_path / "softguard.log"
    proc = _serve(
        serve_procs,
        pg_server.upstream_dsn(),
        "--workers",
        "2",
        "--log-file",
        str(log),
    )
    port = proc.listening_port()
    # A worker still starting ignores SIGHUP; send again until both have reloaded.
    reloaded: set[str] = set()
    for _ in range(100):
        proc.signal(signal.SIGHUP)
        time.sleep(0.2)
        text = log.read_text() if log.exists() else ""
        reloaded = set(
            re.findall(r"softguard\[(\d+)\] INFO \S+: SIGHUP: configuration reloaded", text)
        )
        if len(reloaded) == 2:
            break
    assert len(reloaded) == 2, reloaded
    assert proc.proc.poll() is None
    with psycopg.connect(_proxy_dsn(pg_server, port, "postgres"), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert proc.stop() == 0


def test_tls_file_errors_are_tls_errors(tmp_path: Path, serve_procs: list[Serve]) -> None:
    proc = _serve(
        serve_procs,
        "postgresql://127.0.0.1:1",
        "--tls-cert",
        str(tmp_path / "missing.crt"),
        "--tls-key",
        str(tmp_path / "missing.key"),
    )
    assert proc.exit_code() == 1
    out = proc.output()
    assert "TLS: cannot load certificate" in out and "missing.crt" in out
    assert "cannot listen" not in out and "Traceback" not in out


def test_unreachable_upstream_is_logged_once_per_burst(
    tmp_path: Path, serve_procs: list[Serve]
) -> None:
    log = tmp_path / "softguard.log"
    dead = free_port()
    proc = _serve(
        serve_procs,
        f"postgresql://127.0.0.1:{dead}",
        "--log-file",
        str(log),
    )
    port = proc.listening_port()
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://x@127.0.0.1:{port}/postgres", connect_timeout=10)
    text = wait_file_contains(log, "unreachable")
    assert text.count("WARNING softguard.server: upstream") == 1, text
    assert f"127.0.0.1:{dead}" in text
    proc.stop()


def test_require_tls_refuses_plaintext_clients(
    pg_server: TestServer, serve_procs: list[Serve]
) -> None:
    if pg_server.tls is None:
        pytest.skip("needs the test server's certificates")
    proc = _serve(
        serve_procs,
        pg_server.upstream_dsn(sslmode="disable"),
        "--tls-cert",
        str(pg_server.tls.proxy_cert),
        "--tls-key",
        str(pg_server.tls.proxy_key),
        "--require-tls",
    )
    port = proc.listening_port()
    base = _proxy_dsn(pg_server, port, "postgres")
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(base, sslmode="disable")
    assert "requires TLS" in str(refused.value)
    assert refused.value.sqlstate in ("28000", None)  # libpq keeps no SQLSTATE at connect
    with psycopg.connect(base, sslmode="require", channel_binding="disable") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        assert c.pgconn.ssl_in_use
    proc.stop()


def test_require_tls_needs_a_certificate(serve_procs: list[Serve]) -> None:
    proc = _serve(serve_procs, "postgresql://h:1", "--require-tls")
    assert proc.exit_code() == 2
    assert "require_tls needs tls_cert and tls_key" in proc.output()


def test_require_tls_with_tls_on_both_hops_client_settings(
    pg_server: TestServer, proxy_factory: Any
) -> None:
    """The runbook's table: sslmode=require + channel_binding=disable works with SCRAM on
    both hops; libpq's defaults (prefer/prefer) fail and their plaintext retry is refused."""
    if pg_server.tls is None or not pg_server.auth_roles:
        pytest.skip("needs the embedded test server (certificates, our pg_hba.conf)")
    tls = pg_server.tls
    proxy = proxy_factory(
        "--tls-cert",
        str(tls.proxy_cert),
        "--tls-key",
        str(tls.proxy_key),
        "--require-tls",
        upstream=pg_server.upstream_dsn(sslmode="require"),
    )
    if proxy.is_direct:
        pytest.skip("about the proxy itself")
    common = {"sslrootcert": str(tls.ca_file), "connect_timeout": "15"}
    works = proxy.dsn(
        "postgres", "sg_tls", "tls-pw", sslmode="verify-full", channel_binding="disable", **common
    )
    with psycopg.connect(works) as c:
        assert c.pgconn.ssl_in_use
    defaults = proxy.dsn("postgres", "sg_tls", "tls-pw", sslmode="prefer", **common)
    with pytest.raises(psycopg.OperationalError) as failed:
        psycopg.connect(defaults)
    assert "channel binding" in str(failed.value) or "requires TLS" in str(failed.value)
    plain = proxy.dsn("postgres", "sg_tls", "tls-pw", sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        psycopg.connect(plain)


def test_read_only_behind_a_transaction_pooler_is_said_at_start(
    tmp_path: Path, serve_procs: list[Serve]
) -> None:
    """Read-only mode loses its server-side half behind a transaction pooler (decision
    0026): serve says so at start, not silently."""
    config = tmp_path / "softguard.toml"
    config.write_text('[[policy.rules]]\nrole = "agent_*"\nmode = "read-only"\n')
    proc = _serve(
        serve_procs,
        f"postgresql://127.0.0.1:{free_port()}",
        "--config", str(config), "--upstream-pooler", "transaction",
    )  # fmt: skip
    proc.listening_port()
    proc.wait_for(r"WARNING .*read-only mode behind a transaction-mode pooler")
    proc.stop()
