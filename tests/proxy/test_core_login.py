"""The session core ending authentication itself (credentials softguard holds): the
client's login to softguard and softguard's to the server, as bytes in and out."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_core import REGISTERED, STARTUP, Core, Out, drain, make_core, msg, query

from softguard.auth.login import Credentials
from softguard.auth.scram import MECHANISM, ScramClient, ScramServer, Verifier
from softguard.auth.users import User, UsersFile
from softguard.proxy import commands as cmd
from softguard.proxy.core import State
from softguard.wire import parse_fields

SERVER_PW = "server-secret"


def credentials(databases: tuple[str, ...] = (), held: str | None = SERVER_PW) -> Credentials:
    users = UsersFile(Path("/nonexistent"), {})
    users.put(User("alice", Verifier.from_password("alice-pw"), "app_role", databases))
    return Credentials(users, None, held)


def auth(code: int, data: bytes = b"") -> bytes:
    return msg(b"R", struct.pack("!I", code) + data)


def sasl_initial(mechanism: str, data: bytes) -> bytes:
    return msg(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data)


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def fatal(out: Out) -> dict[str, str]:
    """The FATAL error the session ended with (sent as the Close's farewell)."""
    data = out.to_client + b"".join(
        c.farewell for c in out.controls if isinstance(c, cmd.Close)
    )
    errors = [parse_fields(body) for t, body in messages(data) if t == b"E"]
    assert errors, out
    return errors[-1]


def client_logs_in(core: Core, password: str = "alice-pw", extra: bytes = b"") -> Out:
    """Run the client's SCRAM exchange; return what the core did last."""
    core.start()
    core.client_data(STARTUP)
    out = drain(core)
    assert core.state is State.LOGIN
    [(t, body)] = messages(out.to_client)
    assert t == b"R" and body[:4] == struct.pack("!I", 10)
    client = ScramClient(password)
    client.choose([MECHANISM])
    core.client_data(sasl_initial(MECHANISM, client.first()))
    [(t, body)] = messages(drain(core).to_client)
    assert body[:4] == struct.pack("!I", 11), body
    core.client_data(msg(b"p", client.final(body[4:])) + extra)
    return drain(core)


def test_login_then_server_login_then_session() -> None:
    core, _ = make_core(credentials=credentials())
    last = client_logs_in(core, extra=query("SELECT 1"))
    [(t, body)] = messages(last.to_client)
    assert body[:4] == struct.pack("!I", 12)  # SASLFinal from softguard; Ok is the server's
    assert core.state is State.CONNECTING and core.info.user == "app_role"
    core.upstream_connected()
    out = drain(core)
    assert b"user\0app_role\0" in out.to_server and b"alice" not in out.to_server
    # The server asks for SCRAM: softguard answers with the password it holds.
    server = ScramServer(Verifier.from_password(SERVER_PW))
    core.server_data(auth(10, MECHANISM.encode() + b"\0\0"))
    [(t, body)] = messages(drain(core).to_server)
    assert t == b"p"
    first = body[body.index(b"\0") + 5 :]
    core.server_data(auth(11, server.first(MECHANISM, first)))
    [(t, body)] = messages(drain(core).to_server)
    core.server_data(auth(12, server.final(body)))
    assert drain(core).to_client == b""  # nothing of the server's login reaches the client
    core.server_data(auth(0) + msg(b"Z", b"I"))
    out = drain(core)
    assert out.to_client == auth(0)
    assert core.state is State.REGISTERING
    core.server_data(REGISTERED)
    out = drain(core)
    # The query pipelined behind the password waited for the session, then went on.
    assert out.to_server.startswith(b"Q") and b"SELECT 1" in out.to_server


def test_wrong_password_is_28P01_and_nothing_is_connected() -> None:
    core, _ = make_core(credentials=credentials())
    last = client_logs_in(core, password="wrong")
    assert fatal(last)["C"] == "28P01"
    assert 'password authentication failed for user "alice"' in fatal(last)["M"]
    assert core.state is State.CLOSED


def test_database_not_allowed_looks_like_a_wrong_password() -> None:
    core, _ = make_core(credentials=credentials(databases=("other",)))
    last = client_logs_in(core)
    assert fatal(last)["C"] == "28P01"


def test_unknown_user_goes_through_the_whole_exchange() -> None:
    users = UsersFile(Path("/nonexistent"), {})
    core, _ = make_core(credentials=Credentials(users, None, SERVER_PW))
    last = client_logs_in(core)
    assert fatal(last)["C"] == "28P01"


@pytest.mark.parametrize(
    "data",
    [query("SELECT 1"), sasl_initial("PLAIN", b"x"), msg(b"p", b"garbage")],
    ids=["query-before-login", "unoffered-mechanism", "malformed"],
)
def test_protocol_errors_during_login(data: bytes) -> None:
    core, _ = make_core(credentials=credentials())
    core.start()
    core.client_data(STARTUP)
    drain(core)
    core.client_data(data)
    out = drain(core)
    assert fatal(out)["C"] == "08P01"
    assert core.state is State.CLOSED
    assert not any(isinstance(c, cmd.Connect) for c in out.controls)


def test_terminate_during_login_closes_quietly() -> None:
    core, _ = make_core(credentials=credentials())
    core.start()
    core.client_data(STARTUP)
    drain(core)
    core.client_data(msg(b"X"))
    out = drain(core)
    assert out.to_client == b"" and core.state is State.CLOSED


def test_startup_timeout_covers_the_login() -> None:
    core, _ = make_core(credentials=credentials())
    core.start()
    core.client_data(STARTUP)
    drain(core)
    core.startup_timed_out()
    assert fatal(drain(core))["C"] == "08P01"


def test_no_held_password_refuses_clearly() -> None:
    core, _ = make_core(credentials=credentials(held=None))
    client_logs_in(core)
    core.upstream_connected()
    drain(core)
    core.server_data(auth(10, MECHANISM.encode() + b"\0\0"))
    out = drain(core)
    assert fatal(out)["C"] == "28000"
    assert out.to_server == b""


def test_server_md5_and_cleartext_requests() -> None:
    for code, data, expect in ((5, b"salt", b"md5"), (3, b"", SERVER_PW.encode() + b"\0")):
        core, _ = make_core(credentials=credentials())
        client_logs_in(core)
        core.upstream_connected()
        drain(core)
        core.server_data(auth(code, data))
        [(t, body)] = messages(drain(core).to_server)
        assert t == b"p" and body.startswith(expect)


def test_server_signature_must_verify() -> None:
    core, _ = make_core(credentials=credentials())
    client_logs_in(core)
    core.upstream_connected()
    drain(core)
    impostor = ScramServer(Verifier.from_password("not-the-held-password"))
    core.server_data(auth(10, MECHANISM.encode() + b"\0\0"))
    [(_, body)] = messages(drain(core).to_server)
    core.server_data(auth(11, impostor.first(MECHANISM, body[body.index(b"\0") + 5 :])))
    drain(core)
    core.server_data(auth(12, b"v=" + b"A" * 44))
    assert fatal(drain(core))["C"] == "28P01"


def test_unsupported_server_method_is_refused() -> None:
    core, _ = make_core(credentials=credentials())
    client_logs_in(core)
    core.upstream_connected()
    drain(core)
    core.server_data(auth(7))  # GSSAPI
    assert fatal(drain(core))["C"] == "28000"
