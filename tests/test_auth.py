"""Authentication and encryption through the proxy (DESIGN.md §1).

The session server (tests/support/pg.py) has one role per auth method in pg_hba.conf:
sg_scram (scram-sha-256), sg_md5 (md5), sg_password (cleartext), sg_trust (trust) and
sg_tls (scram-sha-256 over hostssl only). The proxy relays whatever the server asks for;
with client TLS terminated at the proxy it must withdraw SCRAM-SHA-256-PLUS (the channel
binding would be to the proxy's certificate, not the server's).
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
from typing import Any

import asyncpg
import psycopg
import pytest
from support.compare import run_async
from support.pg import ROLE_PASSWORDS, TestServer

METHOD_ROLES = ["sg_scram", "sg_md5", "sg_password", "sg_trust"]
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


@pytest.fixture(scope="module")
def auth_server(pg_server: TestServer) -> TestServer:
    if not pg_server.auth_roles:
        pytest.skip("needs the embedded test server (our pg_hba.conf)")
    return pg_server


@pytest.fixture(scope="module")
def tls_server(auth_server: TestServer) -> TestServer:
    if auth_server.tls is None:
        pytest.skip("PostgreSQL binaries built without OpenSSL")
    return auth_server


def proxy_only(target: Any) -> None:
    if target.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")


def _strip_port(msg: str) -> str:
    return re.sub(r'server at "127\.0\.0\.1", port \d+', "server at 127.0.0.1", msg)


async def _asyncpg_user(dsn: str, **kwargs: Any) -> Any:
    conn = await asyncpg.connect(dsn, timeout=15, **kwargs)
    try:
        return await conn.fetchval("SELECT current_user")
    finally:
        await conn.close(timeout=10)


def _asyncpg_outcome(dsn: str, **kwargs: Any) -> Any:
    try:
        return ("ok", run_async(_asyncpg_user(dsn, **kwargs)))
    except asyncpg.PostgresError as e:
        return ("error", type(e).__name__, e.sqlstate, str(e))


def _psycopg_outcome(dsn: str, **kwargs: Any) -> Any:
    try:
        with psycopg.connect(dsn, connect_timeout=15, **kwargs) as c:
            row = c.execute("SELECT current_user").fetchone()
            return ("ok", row[0] if row else None)
    except psycopg.OperationalError as e:
        return ("error", type(e).__name__, e.sqlstate, _strip_port(str(e)))


# ------------------------------------------------------------------ each auth method


@pytest.mark.parametrize("role", METHOD_ROLES)
def test_psycopg_auth_methods(auth_server: TestServer, proxy: Any, role: str) -> None:
    dsn = proxy.dsn("postgres", role, ROLE_PASSWORDS[role], sslmode="disable")
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert c.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.parametrize("role", METHOD_ROLES)
def test_asyncpg_auth_methods(auth_server: TestServer, proxy: Any, role: str) -> None:
    dsn = proxy.dsn("postgres", role, ROLE_PASSWORDS[role])
    assert run_async(_asyncpg_user(dsn, ssl=False)) == role


@pytest.mark.parametrize("role", ["sg_scram", "sg_md5", "sg_password"])
def test_wrong_password_same_as_direct(auth_server: TestServer, proxy: Any, role: str) -> None:
    direct = auth_server.dsn("postgres", role, "wrong-pw", sslmode="disable")
    proxied = proxy.dsn("postgres", role, "wrong-pw", sslmode="disable")
    d = _asyncpg_outcome(direct, ssl=False)
    p = _asyncpg_outcome(proxied, ssl=False)
    assert p == d
    assert d[:3] == ("error", "InvalidPasswordError", "28P01")
    d = _psycopg_outcome(direct)
    p = _psycopg_outcome(proxied)
    assert p == d
    assert d[0] == "error" and "password authentication failed" in d[3]


@pytest.mark.parametrize(
    ("user", "dbname", "sqlstate"),
    [("sg_nosuch_role", "postgres", "28000"), ("sg_trust", "sg_nosuch_db", "3D000")],
)
def test_startup_errors_same_as_direct(
    auth_server: TestServer, proxy: Any, user: str, dbname: str, sqlstate: str
) -> None:
    d = _asyncpg_outcome(auth_server.dsn(dbname, user), ssl=False)
    p = _asyncpg_outcome(proxy.dsn(dbname, user), ssl=False)
    assert p == d and d[2] == sqlstate
    assert _psycopg_outcome(proxy.dsn(dbname, user, sslmode="disable")) == _psycopg_outcome(
        auth_server.dsn(dbname, user, sslmode="disable")
    )


def test_missing_password(auth_server: TestServer, proxy: Any) -> None:
    d = _psycopg_outcome(auth_server.dsn("postgres", "sg_scram", sslmode="disable"))
    p = _psycopg_outcome(proxy.dsn("postgres", "sg_scram", sslmode="disable"))
    assert p == d and d[0] == "error" and "no password supplied" in d[3]


# ------------------------------------------------------------------ client TLS at the proxy


@pytest.fixture(scope="module")
def tls_proxy(tls_server: TestServer, proxy_factory: Any) -> Any:
    assert tls_server.tls is not None
    # softguard terminating client TLS beside the server, plain on the loopback hop: the
    # deployment where SCRAM with libpq's default channel_binding=prefer works (see
    # test_both_sides_tls for TLS on both hops).
    return proxy_factory(
        "--tls-cert",
        str(tls_server.tls.proxy_cert),
        "--tls-key",
        str(tls_server.tls.proxy_key),
        upstream=tls_server.upstream_dsn(sslmode="disable"),
    )


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
@pytest.mark.parametrize("role", METHOD_ROLES)
def test_client_tls_then_auth(
    tls_server: TestServer, tls_proxy: Any, sslmode: str, role: str
) -> None:
    assert tls_server.tls is not None
    dsn = tls_proxy.dsn(
        "postgres",
        role,
        ROLE_PASSWORDS[role],
        sslmode=sslmode,
        sslrootcert=str(tls_server.tls.ca_file),
        channel_binding="prefer",
    )
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone() == (role,)


def test_client_tls_scram_without_channel_binding_plus(
    tls_server: TestServer, tls_proxy: Any
) -> None:
    """Terminating TLS, the proxy cannot offer SCRAM-SHA-256-PLUS: channel_binding=require
    fails cleanly on the client side; prefer/disable authenticate with plain SCRAM."""
    proxy_only(tls_proxy)
    assert tls_server.tls is not None
    base = {"sslmode": "verify-full", "sslrootcert": str(tls_server.tls.ca_file)}
    for cb in ("prefer", "disable"):
        dsn = tls_proxy.dsn("postgres", "sg_scram", "scram-pw", channel_binding=cb, **base)
        with psycopg.connect(dsn, connect_timeout=15) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    dsn = tls_proxy.dsn("postgres", "sg_scram", "scram-pw", channel_binding="require", **base)
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(dsn, connect_timeout=15).close()


@pytest.mark.parametrize("channel_binding", ["disable", "prefer"])
def test_client_tls_plain_upstream_scram(
    tls_server: TestServer, proxy_factory: Any, channel_binding: str
) -> None:
    assert tls_server.tls is not None
    tls = tls_server.tls
    p = proxy_factory(
        "--tls-cert",
        str(tls.proxy_cert),
        "--tls-key",
        str(tls.proxy_key),
        upstream=tls_server.upstream_dsn(sslmode="disable"),
    )
    dsn = p.dsn(
        "postgres",
        "sg_scram",
        "scram-pw",
        sslmode="verify-full",
        sslrootcert=str(tls.ca_file),
        channel_binding=channel_binding,
    )
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone() == ("sg_scram",)


def test_client_tls_asyncpg_scram(tls_server: TestServer, tls_proxy: Any) -> None:
    assert tls_server.tls is not None
    ctx = ssl.create_default_context(cafile=str(tls_server.tls.ca_file))
    dsn = tls_proxy.dsn("postgres", "sg_scram", "scram-pw")
    assert run_async(_asyncpg_user(dsn, ssl=ctx)) == "sg_scram"


def test_client_plaintext_to_tls_proxy(tls_server: TestServer, tls_proxy: Any) -> None:
    # A proxy with a certificate still serves clients that do not ask for TLS.
    dsn = tls_proxy.dsn("postgres", "sg_scram", "scram-pw", sslmode="disable")
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone() == ("sg_scram",)


def test_tls_proxy_answers_s(tls_server: TestServer, tls_proxy: Any) -> None:
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"


# ------------------------------------------------------------------ no certificate at the proxy


def test_ssl_request_answered_n_without_cert(auth_server: TestServer, proxy: Any) -> None:
    proxy_only(proxy)
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"N"
        _startup_and_expect_auth(s)


def test_sslmode_prefer_and_disable_without_cert(auth_server: TestServer, proxy: Any) -> None:
    proxy_only(proxy)
    for mode in ("prefer", "disable", "allow"):
        dsn = proxy.dsn("postgres", "sg_scram", "scram-pw", sslmode=mode)
        with psycopg.connect(dsn, connect_timeout=15) as c:
            assert not c.pgconn.ssl_in_use
            assert c.execute("SELECT current_user").fetchone() == ("sg_scram",)


def test_sslmode_require_without_cert_fails(auth_server: TestServer, proxy: Any) -> None:
    proxy_only(proxy)
    dsn = proxy.dsn("postgres", "sg_trust", sslmode="require")
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(dsn, connect_timeout=15).close()


def test_gssenc_request_answered_n(auth_server: TestServer, proxy: Any) -> None:
    proxy_only(proxy)  # a server built with GSSAPI answers 'G'
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(GSSENC_REQUEST)
        assert s.recv(1) == b"N"
        # then SSLRequest on the same socket (what libpq does), then the startup message
        s.sendall(SSL_REQUEST)
        assert s.recv(1) in (b"N", b"S")


def test_gssencmode_prefer_works(auth_server: TestServer, proxy: Any) -> None:
    dsn = proxy.dsn("postgres", "sg_scram", "scram-pw", gssencmode="prefer", sslmode="prefer")
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert c.execute("SELECT current_user").fetchone() == ("sg_scram",)


def _startup_and_expect_auth(s: socket.socket) -> list[bytes]:
    """Send a startup packet for sg_scram; the SASL mechanisms offered."""
    params = b"user\0sg_scram\0database\0postgres\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    head = _recv_exact(s, 5)
    assert head[:1] == b"R", head  # AuthenticationSASL
    (length,) = struct.unpack("!i", head[1:])
    body = _recv_exact(s, length - 4)
    (code,) = struct.unpack("!i", body[:4])
    assert code == 10  # SASL
    mechanisms = [m for m in body[4:].split(b"\0") if m]
    assert b"SCRAM-SHA-256" in mechanisms
    return mechanisms


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"connection closed after {buf!r}")
        buf += chunk
    return buf


def test_plain_connection_offers_no_scram_plus(auth_server: TestServer, proxy: Any) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        assert b"SCRAM-SHA-256-PLUS" not in _startup_and_expect_auth(s)


# ------------------------------------------------------------------ TLS to the server


@pytest.fixture(scope="module")
def upstream_tls_proxy(tls_server: TestServer, proxy_factory: Any) -> Any:
    return proxy_factory(upstream=tls_server.upstream_dsn(sslmode="require"))


def _backend_ssl(dsn: str) -> Any:
    with psycopg.connect(dsn, connect_timeout=15) as c:
        return c.execute(
            "SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()


def test_upstream_tls(tls_server: TestServer, upstream_tls_proxy: Any) -> None:
    proxy_only(upstream_tls_proxy)
    dsn = upstream_tls_proxy.dsn("postgres", "sg_scram", "scram-pw", sslmode="disable")
    assert _backend_ssl(dsn) == (True, "sg_scram")


@pytest.mark.parametrize("role", [*METHOD_ROLES, "sg_tls"])
def test_upstream_tls_auth_methods(
    tls_server: TestServer, upstream_tls_proxy: Any, role: str
) -> None:
    proxy_only(upstream_tls_proxy)
    dsn = upstream_tls_proxy.dsn("postgres", role, ROLE_PASSWORDS[role], sslmode="disable")
    assert _backend_ssl(dsn) == (True, role)


def test_plain_connection_offers_no_scram_plus_over_tls_upstream(
    tls_server: TestServer, upstream_tls_proxy: Any
) -> None:
    """On TLS the server offers SCRAM-SHA-256-PLUS, bound to the server's certificate: the
    proxy withdraws it from a plaintext client (which could not bind to it anyway)."""
    proxy_only(upstream_tls_proxy)
    p = upstream_tls_proxy
    with socket.create_connection((p.host, p.port), timeout=10) as s:
        assert b"SCRAM-SHA-256-PLUS" not in _startup_and_expect_auth(s)


def test_upstream_plain_rejects_hostssl_role(tls_server: TestServer, proxy_factory: Any) -> None:
    # sg_tls is hostssl-only: through a proxy with a plaintext upstream the server refuses it,
    # and the client gets the server's error.
    p = proxy_factory(upstream=tls_server.upstream_dsn(sslmode="disable"))
    proxy_only(p)
    out = _asyncpg_outcome(p.dsn("postgres", "sg_tls", "tls-pw"), ssl=False)
    assert out[0] == "error" and out[2] == "28000"
    assert "no encryption" in out[3]
    assert _backend_ssl(p.dsn("postgres", "sg_trust", sslmode="disable")) == (False, "sg_trust")


def test_upstream_tls_verify_full(tls_server: TestServer, proxy_factory: Any) -> None:
    assert tls_server.tls is not None
    p = proxy_factory(
        upstream=tls_server.upstream_dsn(
            sslmode="verify-full", sslrootcert=str(tls_server.tls.ca_file)
        )
    )
    proxy_only(p)
    assert _backend_ssl(p.dsn("postgres", "sg_trust", sslmode="disable")) == (True, "sg_trust")


@pytest.mark.parametrize("channel_binding", ["disable", "prefer"])
def test_both_sides_tls(tls_server: TestServer, proxy_factory: Any, channel_binding: str) -> None:
    """Client TLS terminated at the proxy, server TLS from the proxy, SCRAM relayed.

    With channel_binding=prefer libpq (having TLS, offered no -PLUS) sends the GS2 flag
    'y'; the server, itself on TLS and able to bind, takes that for a downgrade attack.
    The flag is covered by the client's proof, so no proxy can relay past it: softguard
    adds a hint saying what to change. channel_binding=disable works.
    """
    assert tls_server.tls is not None
    tls = tls_server.tls
    p = proxy_factory(
        "--tls-cert",
        str(tls.proxy_cert),
        "--tls-key",
        str(tls.proxy_key),
        upstream=tls_server.upstream_dsn(sslmode="require"),
    )
    dsn = p.dsn(
        "postgres",
        "sg_tls",
        "tls-pw",
        sslmode="verify-full",
        sslrootcert=str(tls.ca_file),
        channel_binding=channel_binding,
    )
    if channel_binding == "prefer":
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn, connect_timeout=15).close()
        message = str(info.value)
        assert "channel binding" in message
        assert "channel_binding=disable" in message  # softguard's hint says what to change
        return
    with psycopg.connect(dsn, connect_timeout=15) as c:
        assert c.pgconn.ssl_in_use
        row = c.execute(
            "SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == (True, "sg_tls")
