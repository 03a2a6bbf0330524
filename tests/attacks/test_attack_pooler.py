"""Issue 10 item 6: a pooler between softguard and PostgreSQL drops softguard's marks.

PgBouncer with `ignore_startup_parameters` (and other poolers) forwards only the startup
parameters it knows, so softguard's startup parameters vanish behind it; the session's
registration (decision 0012), a statement on the session's own connection, does not.
Stand-in for the pooler: a relay that forwards the startup packet with only user,
database, application_name and client_encoding (what PgBouncer passes), then relays bytes
as sent.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from attacker import Arena, Template, template_fixture
from support.pg import TestServer
from support.proxy import ProxyFactory

arena_template = template_fixture()

KEPT = {b"user", b"database", b"application_name", b"client_encoding"}


class ForgetfulPooler:
    """Relays TCP to the server, forgetting startup parameters it does not know."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        for _ in range(10_000):  # connections a module makes: far fewer
            if self.stopping:
                return
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read_exact(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def _serve(self, client: socket.socket) -> None:
        try:
            for _ in range(3):  # SSLRequest / GSSENCRequest, then the StartupMessage
                (n,) = struct.unpack("!I", self._read_exact(client, 4))
                body = self._read_exact(client, n - 4)
                if body[:4] in (struct.pack("!I", 80877103), struct.pack("!I", 80877104)):
                    client.sendall(b"N")
                    continue
                break
            parts = body[4:].split(b"\0")
            pairs = zip(parts[::2], parts[1::2], strict=False)  # trailing terminator
            kept = b"".join(k + b"\0" + v + b"\0" for k, v in pairs if k in KEPT)
            body = body[:4] + kept + b"\0"
            server = socket.create_connection(self.upstream)
            self.sockets.append(server)
            server.sendall(struct.pack("!I", len(body) + 4) + body)
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            self._pipe(client, server)
        except (OSError, ConnectionError):
            client.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            for _ in range(10_000_000):  # ends when either side closes
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def arena(
    arena_template: Template, proxy_factory: ProxyFactory, pg_server: TestServer
) -> Iterator[Arena]:
    pooler = ForgetfulPooler(pg_server.host, pg_server.port)
    p = proxy_factory(
        "--upstream-pooler",
        "session",
        upstream=f"postgresql://127.0.0.1:{pooler.port}?sslmode=disable",
        fresh=True,
    )
    try:
        yield from arena_template.clone(p)
    finally:
        p.stop()
        pooler.close()


@pytest.mark.parametrize("stmt", ["DELETE FROM parent WHERE id = 1", "DELETE FROM big"])
def test_pooler_dropping_marks_fails_closed(arena: Arena, stmt: str) -> None:
    """The session's registration (decision 0012) travels as a statement, not a startup
    parameter: the pooler cannot drop it."""
    arena.attempt([stmt])


def test_drop_behind_pooler_is_still_reversible(arena: Arena) -> None:
    """Control: statements the proxy rewrites do not depend on the session marks."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["DROP TABLE big"])
    assert arena.ops_since(last), out.describe()
    arena.verdict(before, last, out)
