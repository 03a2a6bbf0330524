"""Protocol-level behaviour through the proxy: 3.2 startup, workers, cancel from any
worker, and the inspection seam (destructive statements logged with their targets)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import psycopg
import pytest
from support.proxy import ProxyFactory, Target


def _read_messages(
    sock: socket.socket, until: bytes, limit: int = 200
) -> list[tuple[bytes, bytes]]:
    """Read backend messages until one of type ``until`` (bounded)."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    for _ in range(limit):
        while len(buf) >= 5:
            length = struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + length:
                break
            out.append((buf[:1], buf[5 : 1 + length]))
            buf = buf[1 + length :]
            if out[-1][0] == until:
                return out
        chunk = sock.recv(65536)
        if not chunk:
            return out
        buf += chunk
    raise AssertionError(f"no {until!r} message within {limit} reads: {out}")


def _startup(version: int, user: str, database: str) -> bytes:
    body = (
        struct.pack("!I", version)
        + b"".join(
            k + b"\0" + v.encode() + b"\0" for k, v in ((b"user", user), (b"database", database))
        )
        + b"\0"
    )
    return struct.pack("!I", len(body) + 4) + body


def _session_types(host: str, port: int, version: int, user: str, db: str) -> list[bytes]:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(_startup(version, user, db))
        msgs = _read_messages(sock, b"Z")
        sock.sendall(b"X\0\0\0\x04")
    # ParameterStatus and BackendKeyData contents differ per backend; their order does not.
    return [t for t, _ in msgs]


@pytest.mark.parametrize("minor", [0, 2])
def test_startup_versions_answered_as_by_the_server(proxy: Target, minor: int) -> None:
    server = proxy.server
    version = (3 << 16) | minor
    direct = _session_types(server.host, server.port, version, server.superuser, "postgres")
    proxied = _session_types(proxy.host, proxy.port, version, server.superuser, "postgres")
    assert proxied == direct
    if minor == 2 and server.version_num < 180000:
        assert proxied[0] == b"v"  # NegotiateProtocolVersion from the older server


def test_libpq_protocol_3_2_request_works(proxy: Target) -> None:
    with psycopg.connect(proxy.dsn(max_protocol_version="3.2")) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)


def test_workers_share_the_port_and_cancel_reaches_the_backend(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory("--workers", "2", fresh=True)
    if proxy.is_direct:
        pytest.skip("needs the proxy")
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(12)]
    try:
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in conns}  # type: ignore[index]
        assert len(pids) == 12
        children = (
            Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text().split()
        )  # type: ignore[union-attr]
        assert len(children) == 2
        # A cancel request opens a new connection that may land on either worker.
        for conn in conns[:4]:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            # the event: only a cancel that reached the backend ends the sleep with 57014
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(300)")
            timer.join()
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for c in conns:
            c.close()
        proxy.stop()
    assert proxy.proc is not None and proxy.proc.returncode == 0


def _log_after(proxy: Target, mark: int) -> str:
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = proxy.log_path.read_text(errors="replace")[mark:]
        if "DROP SCHEMA" in text:
            break
        time.sleep(0.05)
    return text


def test_destructive_statements_are_logged_with_targets(proxy: Target, dbname: str) -> None:
    if proxy.is_direct:
        pytest.skip("needs the proxy")
    mark = len(proxy.log_path.read_text(errors="replace"))
    with psycopg.connect(proxy.dsn(dbname), autocommit=True) as conn:
        conn.execute(
            'create table "Mixed Case"(id int); create table plain(id int);'
            " create schema gone; select 1; delete from plain where id = 1"
        )
        conn.execute("delete from plain where id = %s", [5])  # extended protocol (Parse)
        conn.execute("select * from plain")  # safe: not logged
        conn.execute('drop table "Mixed Case", plain cascade')
        conn.execute("drop schema gone")
    log = _log_after(proxy, mark)
    assert "protect delete via query: DELETE FROM plain" in log
    assert "protect delete via parse: DELETE FROM plain" in log
    assert 'protect drop via query: DROP TABLE "Mixed Case", plain' in log
    assert "protect drop via query: DROP SCHEMA gone" in log
    assert "SELECT" not in log.split(" via ", 1)[0]
