"""Malformed client input (DESIGN.md §5): before startup and after it.

Each case talks raw protocol to the proxy over a plain socket and expects one FATAL
ErrorResponse with the documented SQLSTATE, then EOF; afterwards an ordinary psycopg
client through the same proxy must still work (the bad connection hurt nobody else).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.faults import (
    GSSENC_REQUEST,
    PROTOCOL_3_0,
    SSL_REQUEST,
    SYNC,
    RawConn,
    bind,
    environment,
    execute,
    expect_fatal,
    msg,
    parse,
    query,
    raw_header,
    raw_session,
    startup_packet,
)
from support.pg import TestServer, short_tempdir
from support.proxy import via_direct

pytestmark = pytest.mark.skipif(
    via_direct(), reason="checks softguard's own answers to bad input, not PostgreSQL's"
)

INSPECT_LIMIT = 4096


def _user(pg_server: TestServer) -> str:
    if pg_server.superuser_password is not None:
        pytest.skip("raw-socket sessions need trust authentication for the superuser")
    return pg_server.superuser


def assert_still_serving(target: Any, dbname: str) -> None:
    """An ordinary client through the same proxy works."""
    assert getattr(target, "alive", True), f"proxy died:\n{target.tail()}"
    with psycopg.connect(target.dsn(dbname), connect_timeout=10) as c:
        assert c.execute("select 1").fetchone() == (1,)


def _startup_body(*pairs: bytes, version: int = PROTOCOL_3_0, terminator: bool = True) -> bytes:
    body = struct.pack("!I", version) + b"".join(p + b"\0" for p in pairs)
    if terminator:
        body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


# ---------------------------------------------------------------------- before startup

PRE_STARTUP_CASES = {
    # "GET " read as a length is 0x47455420, far beyond the 10000-byte startup ceiling.
    "http-request": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "08P01"),
    "length-0": (struct.pack("!I", 0) + b"\0" * 8, "08P01"),
    "length-4": (struct.pack("!II", 4, PROTOCOL_3_0), "08P01"),
    "length-7": (struct.pack("!I", 7) + b"\0\3\0", "08P01"),
    "length-10001": (struct.pack("!II", 10001, PROTOCOL_3_0) + b"x" * 64, "08P01"),
    "length-2GiB": (struct.pack("!II", 0x7FFFFFFF, PROTOCOL_3_0), "08P01"),
    "length-negative": (struct.pack("!iI", -8, PROTOCOL_3_0), "08P01"),
    "tls-client-hello": (bytes.fromhex("160301020001") + b"\0" * 64, "08P01"),
    "protocol-2.0": (_startup_body(b"user", b"postgres", version=2 << 16), "0A000"),
    "protocol-4.0": (_startup_body(b"user", b"postgres", version=4 << 16), "0A000"),
    "protocol-1234.5681": (_startup_body(version=(1234 << 16) | 5681), "0A000"),
    "no-final-terminator": (_startup_body(b"user", b"postgres", terminator=False), "08P01"),
    # user\0post: the value itself runs into the end of the packet.
    "unterminated-value": (
        struct.pack("!II", 17, PROTOCOL_3_0) + b"user\0post",
        "08P01",
    ),
    "parameter-without-value": (_startup_body(b"user", b"postgres", b"orphan"), "08P01"),
    "bare-version": (struct.pack("!II", 8, PROTOCOL_3_0), "08P01"),
    "cancel-request-too-short": (struct.pack("!III", 12, 80877102, 1234), "08P01"),
}


@pytest.mark.parametrize("name", list(PRE_STARTUP_CASES))
def test_bad_startup_packet(name: str, proxy: Any, dbname: str) -> None:
    data, sqlstate = PRE_STARTUP_CASES[name]
    with RawConn.connect(proxy.host, proxy.port) as c:
        c.send(data)
        fields = expect_fatal(c, sqlstate)
    assert fields["M"].startswith("softguard"), fields
    assert_still_serving(proxy, dbname)


def test_startup_packet_in_tiny_pieces_works(
    proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """Not an error: a valid startup packet dribbled one byte per write is reassembled."""
    user = _user(pg_server)
    packet = startup_packet(user, dbname)
    with RawConn.connect(proxy.host, proxy.port) as c:
        for i in range(len(packet)):
            c.send(packet[i : i + 1])
        messages = c.read_until_ready()
        assert not [m for m in messages if m.type == b"E"], messages
        c.send(query("select 41 + 1"))
        rows = [m for m in c.read_until_ready() if m.type == b"D"]
        assert len(rows) == 1 and rows[0].body.endswith(b"42"), rows


def test_startup_followed_by_query_in_one_write(
    proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """A client may send its first Query right behind the StartupMessage (trust auth).

    PostgreSQL reads the packet and leaves the rest buffered: the query runs. Whether the
    two arrive in one TCP segment or two is up to the network; the outcome must not
    depend on it (the proxy already buffers bytes that arrive while it is connecting).
    """
    user = _user(pg_server)
    with RawConn.connect(proxy.host, proxy.port) as c:
        c.send(startup_packet(user, dbname) + query("select 6 * 7"))
        messages = c.read_until_ready()
        errors = [m.fields for m in messages if m.type == b"E"]
        assert not errors, f"startup + Query in one write refused: {errors}"
        messages = c.read_until_ready()
        rows = [m for m in messages if m.type == b"D"]
        assert len(rows) == 1 and rows[0].body.endswith(b"42"), messages


def test_ssl_request_with_trailing_plaintext_without_tls(
    proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """Bytes pipelined behind an SSLRequest (CVE-2021-23214 pattern), proxy without TLS.

    PostgreSQL answers the SSLRequest ('N' here) and then, finding data already buffered,
    sends FATAL 08P01 "received unencrypted data after SSL request". softguard rejects
    the same way but may skip the one-byte answer, so both are accepted: an optional 'N'
    followed by FATAL 08P01 and EOF. What must not happen is the startup packet being
    served, since a man-in-the-middle could have injected it.
    """
    user = _user(pg_server)
    with RawConn.connect(proxy.host, proxy.port) as c:
        c.send(SSL_REQUEST + startup_packet(user, dbname))
        first = c.read_bytes(1)
        if first != b"N":
            c.buf[:0] = first
        expect_fatal(c, "08P01")
    assert_still_serving(proxy, dbname)


def test_gssenc_request_then_garbage(proxy: Any, dbname: str) -> None:
    with RawConn.connect(proxy.host, proxy.port) as c:
        c.send(GSSENC_REQUEST)
        assert c.read_bytes(1) == b"N"
        c.send(b"\xff" * 16)
        expect_fatal(c, "08P01")
    assert_still_serving(proxy, dbname)


# -- with client TLS


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[Path, Path, Path]]:
    import trustme

    directory = short_tempdir("sg-badinput-tls-")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = directory / "proxy.crt", directory / "proxy.key", directory / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        yield cert, key, ca_file
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_proxy(proxy_factory: Any, tls_files: tuple[Path, Path, Path]) -> Iterator[Any]:
    cert, key, _ = tls_files
    p = proxy_factory("--tls-cert", str(cert), "--tls-key", str(key), fresh=True)
    yield p
    p.stop()


def test_ssl_request_with_trailing_plaintext_with_tls(
    tls_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """CVE-2021-23214: with TLS on offer, plaintext pipelined behind the SSLRequest must
    not be read as if it came through the handshake. PostgreSQL answers 'S' then sends a
    plaintext FATAL 08P01; softguard may skip the 'S'. Either way: FATAL 08P01, EOF."""
    user = _user(pg_server)
    with RawConn.connect(tls_proxy.host, tls_proxy.port) as c:
        c.send(SSL_REQUEST + startup_packet(user, dbname))
        first = c.read_bytes(1)
        if first != b"S":
            c.buf[:0] = first
        expect_fatal(c, "08P01")
    assert_still_serving(tls_proxy, dbname)


def test_second_ssl_request_inside_tls(
    tls_proxy: Any, tls_files: tuple[Path, Path, Path], dbname: str
) -> None:
    """After the TLS handshake another SSLRequest is a protocol violation."""
    _, _, ca_file = tls_files
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=5) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(SSL_REQUEST)
            c = RawConn(tls)
            expect_fatal(c, ("08P01", "0A000"))
    assert_still_serving(tls_proxy, dbname)


# ---------------------------------------------------------------------- after startup

POST_STARTUP_CASES = {
    "type-0x01": (raw_header(0x01, 4), "08P01"),
    "type-0x00": (raw_header(0x00, 8) + b"\0" * 4, "08P01"),
    "type-Z-backend-only": (msg(b"Z", b"I"), "08P01"),
    "type-T-backend-only": (msg(b"T", b"\0\0"), "08P01"),
    "query-length-0": (raw_header(b"Q", 0) + b"select 1\0", "08P01"),
    "query-length-3": (raw_header(b"Q", 3) + b"select 1\0", "08P01"),
    "sync-length-0": (raw_header(b"S", 0), "08P01"),
    "query-length-2GiB": (raw_header(b"Q", 0x7FFFFFFF) + b"select 1\0", "08P01"),
    "copydata-length-2GiB": (raw_header(b"d", 0x7FFFFFFF) + b"x" * 32, "08P01"),
    "bind-length-4GiB": (raw_header(b"B", 0xFFFFFFFF) + b"x" * 32, "08P01"),
    "query-unterminated": (msg(b"Q", b"select 1"), "08P01"),
    "query-empty-body": (msg(b"Q", b""), "08P01"),
    "query-nul-inside": (msg(b"Q", b"select 1\0select 2\0"), "08P01"),
    "parse-no-terminators": (msg(b"P", b"stmt"), "08P01"),
    "parse-unterminated-text": (msg(b"P", b"\0select 1"), "08P01"),
    "parse-empty-body": (msg(b"P", b""), "08P01"),
}


@pytest.mark.parametrize("name", list(POST_STARTUP_CASES))
def test_bad_message_after_startup(
    name: str, proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    data, sqlstate = POST_STARTUP_CASES[name]
    user = _user(pg_server)
    with raw_session(proxy.host, proxy.port, user, dbname) as c:
        c.send(data)
        fields = expect_fatal(c, sqlstate)
    assert fields["M"].startswith("softguard"), fields
    assert_still_serving(proxy, dbname)


def test_bad_message_after_valid_ones(proxy: Any, pg_server: TestServer, dbname: str) -> None:
    """A good Query answered in full, then an unknown type byte: FATAL 08P01, EOF."""
    user = _user(pg_server)
    with raw_session(proxy.host, proxy.port, user, dbname) as c:
        c.send(query("select 1"))
        c.read_until_ready()
        c.send(raw_header(0x7F, 4))
        expect_fatal(c, "08P01")
    assert_still_serving(proxy, dbname)


# -- messages over max_inspect_bytes


@pytest.fixture(scope="module")
def small_inspect_proxy(proxy_factory: Any) -> Iterator[Any]:
    with environment(SOFTGUARD_MAX_INSPECT_BYTES=str(INSPECT_LIMIT)):
        p = proxy_factory(fresh=True)
    yield p
    p.stop()


def test_query_over_max_inspect_bytes(
    small_inspect_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    user = _user(pg_server)
    big = "select '" + "x" * (INSPECT_LIMIT + 100) + "'"
    with raw_session(small_inspect_proxy.host, small_inspect_proxy.port, user, dbname) as c:
        c.send(query(big))
        fields = expect_fatal(c, "54000")
    assert "max_inspect_bytes" in fields["M"], fields
    assert_still_serving(small_inspect_proxy, dbname)


def test_parse_over_max_inspect_bytes(
    small_inspect_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    user = _user(pg_server)
    big = "select '" + "x" * (INSPECT_LIMIT + 100) + "'"
    with raw_session(small_inspect_proxy.host, small_inspect_proxy.port, user, dbname) as c:
        c.send(parse(big) + bind() + execute() + SYNC)
        expect_fatal(c, "54000")
    assert_still_serving(small_inspect_proxy, dbname)


def test_query_over_max_inspect_bytes_announced_by_header_only(
    small_inspect_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """The header alone (length 100 MB, no body yet) is enough to refuse: nothing is
    buffered waiting for a body softguard would refuse anyway."""
    user = _user(pg_server)
    with raw_session(small_inspect_proxy.host, small_inspect_proxy.port, user, dbname) as c:
        c.send(raw_header(b"Q", 100_000_000))
        expect_fatal(c, "54000")
    assert_still_serving(small_inspect_proxy, dbname)


def test_under_max_inspect_bytes_and_big_uninspected_messages_pass(
    small_inspect_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """Below the limit a Query is served; Bind carries no SQL text and is not limited."""
    user = _user(pg_server)
    with raw_session(small_inspect_proxy.host, small_inspect_proxy.port, user, dbname) as c:
        text = "select length('" + "y" * (INSPECT_LIMIT - 200) + "')"
        c.send(query(text))
        rows = [m for m in c.read_until_ready() if m.type == b"D"]
        assert rows and rows[0].body.endswith(str(INSPECT_LIMIT - 200).encode()), rows
        value = b"z" * 200_000
        c.send(parse("select length($1::text)") + bind(params=(value,)) + execute() + SYNC)
        messages = c.read_until_ready()
        assert not [m.fields for m in messages if m.type == b"E"]
        rows = [m for m in messages if m.type == b"D"]
        assert rows and rows[0].body.endswith(b"200000"), messages
