"""softguard's SCRAM-SHA-256, both sides: the RFC's vectors, every way an exchange can be
broken, and the client side against a real PostgreSQL (plain, and channel-bound over TLS)."""

from __future__ import annotations

import base64
import ssl
import struct
from typing import Any

import psycopg
import pytest
from support.faults import SSL_REQUEST, RawConn, msg, startup_packet
from support.pg import ROLE_PASSWORDS, TestServer

from softguard.auth.scram import (
    MECHANISM,
    MECHANISM_PLUS,
    AuthFailed,
    ScramClient,
    ScramServer,
    Verifier,
    md5_password_response,
    saslprep,
    tls_server_end_point,
)

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"


def test_client_reproduces_rfc7677_example() -> None:
    client = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO", user="user")
    assert client.choose([MECHANISM]) == MECHANISM
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(
        b"r=rOprNGfwEbeRWgbNEkqO"
        + RFC_SERVER_NONCE.encode()
        + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_server_accepts_rfc7677_example() -> None:
    server = ScramServer(Verifier.from_password("pencil", salt=RFC_SALT), nonce=RFC_SERVER_NONCE)
    first = server.first(MECHANISM, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert server.final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _exchange(server: ScramServer, client: ScramClient) -> None:
    mechanism = client.choose(server.mechanisms())
    client.verify(server.final(client.final(server.first(mechanism, client.first()))))


def test_round_trip_with_and_without_channel_binding() -> None:
    verifier = Verifier.from_password("s3cret")
    _exchange(ScramServer(verifier), ScramClient("s3cret"))
    _exchange(ScramServer(verifier, b"\x01" * 32), ScramClient("s3cret", b"\x01" * 32))


def test_wrong_password_fails_at_the_proof() -> None:
    with pytest.raises(AuthFailed, match="password does not match") as info:
        _exchange(ScramServer(Verifier.from_password("right")), ScramClient("wrong"))
    assert not info.value.protocol


def test_mock_verifier_fails_like_a_wrong_password_and_is_stable() -> None:
    secret = b"k" * 32
    assert Verifier.mock("ghost", secret) == Verifier.mock("ghost", secret)
    assert Verifier.mock("ghost", secret).salt != Verifier.mock("other", secret).salt
    with pytest.raises(AuthFailed, match="password does not match"):
        _exchange(ScramServer(Verifier.mock("ghost", secret)), ScramClient("anything"))


def test_channel_binding_of_another_certificate_is_refused() -> None:
    server = ScramServer(Verifier.from_password("pw"), b"\x01" * 32)
    client = ScramClient("pw", b"\x02" * 32)  # a man in the middle's certificate
    with pytest.raises(AuthFailed, match="channel binding does not match"):
        _exchange(server, client)


def test_downgrade_from_plus_is_refused() -> None:
    # The client can bind (flag y) but was shown no PLUS mechanism: someone removed it.
    server = ScramServer(Verifier.from_password("pw"), b"\x01" * 32)
    client = ScramClient("pw", b"\x01" * 32)
    client.choose([MECHANISM])
    with pytest.raises(AuthFailed, match="did not use it"):
        server.first(MECHANISM, client.first())


def test_client_without_tls_cannot_pick_plus() -> None:
    server = ScramServer(Verifier.from_password("pw"))
    assert server.mechanisms() == [MECHANISM]
    with pytest.raises(AuthFailed, match="not offered"):
        server.first(MECHANISM_PLUS, b"p=tls-server-end-point,,n=,r=abc")


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"n,,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,n=,r=\x01bc",
        b"\xff\xfe",
    ],
)
def test_malformed_client_first_is_a_protocol_error(first: bytes) -> None:
    with pytest.raises(AuthFailed) as info:
        ScramServer(Verifier.from_password("pw")).first(MECHANISM, first)
    assert info.value.protocol


@pytest.mark.parametrize(
    "final",
    [
        b"",
        b"c=biws,r=WRONG,p=" + base64.b64encode(b"x" * 32),
        b"c=biws,r={nonce}",
        b"c=biws,r={nonce},p=***",
        b"c=biws,r={nonce},p=" + base64.b64encode(b"x" * 31),
        b"r={nonce},c=biws,p=" + base64.b64encode(b"x" * 32),
    ],
)
def test_malformed_client_final_fails(final: bytes) -> None:
    server = ScramServer(Verifier.from_password("pw"), nonce="SERVER")
    server.first(MECHANISM, b"n,,n=,r=CLIENT")
    with pytest.raises(AuthFailed):
        server.final(final.replace(b"{nonce}", b"CLIENTSERVER"))


def test_final_twice_or_before_first_fails() -> None:
    server = ScramServer(Verifier.from_password("pw"))
    with pytest.raises(AuthFailed, match="out of order"):
        server.final(b"c=biws,r=x,p=" + base64.b64encode(b"x" * 32))


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=OTHERNONCE,s=AAAA,i=4096",  # does not extend our nonce
        b"r=CLIENT,s=AAAA,i=4096",  # does not add to it
        b"r=CLIENTx,s=AAAA,i=0",
        b"r=CLIENTx,s=AAAA,i=999999999999",
        b"r=CLIENTx,s=!!,i=4096",
        b"s=AAAA,r=CLIENTx,i=4096",
    ],
)
def test_client_refuses_a_bad_server_first(server_first: bytes) -> None:
    client = ScramClient("pw", nonce="CLIENT")
    client.choose([MECHANISM])
    client.first()
    with pytest.raises(AuthFailed):
        client.final(server_first)


def test_client_refuses_a_server_that_does_not_know_the_password() -> None:
    client = ScramClient("pw")
    server = ScramServer(Verifier.from_password("other"))
    client.choose(server.mechanisms())
    server.first(MECHANISM, client.first())
    client.final(server._server_first.encode())
    with pytest.raises(AuthFailed, match="signature does not match"):
        client.verify(b"v=" + base64.b64encode(b"y" * 32))
    with pytest.raises(AuthFailed, match="rejected"):
        client.verify(b"e=invalid-proof")


def test_verifier_text_round_trips_and_rejects_garbage() -> None:
    v = Verifier.from_password("pw", iterations=4096)
    assert Verifier.parse(v.format()) == v
    for bad in ("", "md5abc", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA", "SCRAM-SHA-256$4096:AAAA$AA:AA"):
        with pytest.raises(ValueError):
            Verifier.parse(bad)


def test_saslprep() -> None:
    assert saslprep("I\u00adX") == "IX"  # soft hyphen mapped to nothing
    assert saslprep("user") == "user"
    assert saslprep("\u00aa") == "a"  # NFKC
    assert saslprep("a\u2003b") == "a b"  # non-ASCII space to space
    assert saslprep("\u0007") == "\u0007"  # prohibited: used as given, like PostgreSQL
    assert saslprep("\u0627\u0031") == "\u0627\u0031"  # bidi rule broken: as given


def test_tls_server_end_point_of_garbage_is_none() -> None:
    assert tls_server_end_point(b"") is None
    assert tls_server_end_point(b"\x30\x03\x02\x01\x00") is None


# ---------------------------------------------------------------------- against PostgreSQL


def _needs_auth_roles(pg_server: TestServer) -> None:
    if not pg_server.auth_roles:
        pytest.skip("the server's pg_hba is not ours (SOFTGUARD_TEST_DSN)")


def test_verifier_equals_what_postgresql_stores(pg_server: TestServer) -> None:
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("DROP ROLE IF EXISTS sg_verifier_check")
        c.execute("CREATE ROLE sg_verifier_check PASSWORD 'pässword'")
        try:
            row = c.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'sg_verifier_check'"
            ).fetchone()
        finally:
            c.execute("DROP ROLE sg_verifier_check")
    assert row is not None
    theirs = Verifier.parse(row[0])
    ours = Verifier.from_password("pässword", iterations=theirs.iterations, salt=theirs.salt)
    assert ours == theirs


def _auth_messages(conn: RawConn) -> Any:
    m = conn.read_message()
    if m.type == b"E":
        raise AssertionError(f"server refused: {m.fields}")
    assert m.type == b"R", m
    (code,) = struct.unpack_from("!I", m.body)
    return code, m.body[4:]


def _scram_login(conn: RawConn, user: str, password: str, binding: bytes | None) -> str:
    """Log in with softguard's client; return the mechanism used."""
    conn.send(startup_packet(user, "postgres"))
    code, body = _auth_messages(conn)
    assert code == 10, code
    offered = [m.decode() for m in body.split(b"\0") if m]
    client = ScramClient(password, binding)
    mechanism = client.choose(offered)
    first = client.first()
    conn.send(msg(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first))
    code, body = _auth_messages(conn)
    assert code == 11, code
    conn.send(msg(b"p", client.final(body)))
    code, body = _auth_messages(conn)
    assert code == 12, code
    client.verify(body)
    code, _ = _auth_messages(conn)
    assert code == 0
    return mechanism


def test_client_logs_in_to_postgresql(pg_server: TestServer) -> None:
    _needs_auth_roles(pg_server)
    with RawConn.connect(pg_server.host, pg_server.port) as conn:
        assert _scram_login(conn, "sg_scram", str(ROLE_PASSWORDS["sg_scram"]), None) == MECHANISM


def test_client_wrong_password_is_refused_by_postgresql(pg_server: TestServer) -> None:
    _needs_auth_roles(pg_server)
    with RawConn.connect(pg_server.host, pg_server.port) as conn:
        with pytest.raises(AssertionError, match="28P01"):
            _scram_login(conn, "sg_scram", "not-the-password", None)


def test_md5_response_logs_in_to_postgresql(pg_server: TestServer) -> None:
    _needs_auth_roles(pg_server)
    with RawConn.connect(pg_server.host, pg_server.port) as conn:
        conn.send(startup_packet("sg_md5", "postgres"))
        code, salt = _auth_messages(conn)
        assert code == 5
        password = str(ROLE_PASSWORDS["sg_md5"])
        # A wrong password's answer differs: the server would refuse it (checked below).
        assert md5_password_response("sg_md5", "x", salt) != md5_password_response(
            "sg_md5", password, salt
        )
        conn.send(msg(b"p", md5_password_response("sg_md5", password, salt) + b"\0"))
        code, _ = _auth_messages(conn)
        assert code == 0


def test_channel_bound_login_over_tls(pg_server: TestServer) -> None:
    """tls_server_end_point() computed from PostgreSQL's certificate is the binding
    PostgreSQL expects: SCRAM-SHA-256-PLUS succeeds (a wrong hash would fail)."""
    _needs_auth_roles(pg_server)
    if pg_server.tls is None:
        pytest.skip("the test server has no TLS")
    ctx = ssl.create_default_context(cafile=str(pg_server.tls.ca_file))
    with RawConn.connect(pg_server.host, pg_server.port) as conn:
        conn.send(SSL_REQUEST)
        assert conn.read_bytes(1) == b"S"
        conn.sock = ctx.wrap_socket(conn.sock, server_hostname="127.0.0.1")
        cert = conn.sock.getpeercert(binary_form=True)
        assert cert is not None
        binding = tls_server_end_point(cert)
        assert binding is not None and len(binding) == 32
        password = str(ROLE_PASSWORDS["sg_tls"])
        assert _scram_login(conn, "sg_tls", password, binding) == MECHANISM_PLUS
