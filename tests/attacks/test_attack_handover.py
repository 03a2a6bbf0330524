"""Decision 0040: aim at the moment a session leaves uvloop's transports for its own links.

A plain session moves onto its links in the loop turn after it becomes ready. A client
that knows this times its bytes to that turn: a Query pipelined behind the startup packet
(it is already read when the session becomes ready), a Query cut in two around the move,
the write half closed right behind the last Query. None of it may get a DELETE past the
policy or lose an answer: the DELETE is refused (or captured, where the policy protects),
every Query before the end of file is answered, and the proxy serves the next session.
Raw protocol, paced with short sleeps at several offsets from ReadyForQuery (the move
runs within microseconds of it), so that some tries land before the move and some after.
The arenas' proxy takes plain client connections, so the client side moves (that it does
is `tests/test_metrics.py::test_sessions_move_onto_links`).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest
from attacker import Arena, ServerError, deny_arena_fixture, fixtures

arena_template, arena = fixtures()
arena_deny = deny_arena_fixture('delete = "deny"\n')

DELETE = b"DELETE FROM parent WHERE id = 1"
MARKER = b"SELECT 'handover-done'"
PAUSES = (0.0, 0.0002, 0.001, 0.005)  # after ReadyForQuery, before the rest is sent


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _query(text: bytes) -> bytes:
    return _msg(b"Q", text + b"\0")


def _startup(arena: Arena) -> bytes:
    body = struct.pack("!I", 196608)
    for k, v in (("user", arena.owner), ("database", arena.db)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


class Wire:
    """A socket to the proxy (or, direct, to the server) and the messages read from it."""

    def __init__(self, arena: Arena, *, direct: bool = False) -> None:
        where = arena.server if direct else arena.proxy
        self.sock = socket.create_connection((where.host, where.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def read(self) -> tuple[bytes, bytes] | None:
        """The next message, or None at end of file."""
        for _ in range(100_000):
            if len(self.buf) >= 5:
                (n,) = struct.unpack("!I", self.buf[1:5])
                if len(self.buf) >= n + 1:
                    kind, body = self.buf[:1], self.buf[5 : n + 1]
                    self.buf = self.buf[n + 1 :]
                    return kind, body
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                return None
            self.buf += chunk
        raise AssertionError("no whole message")

    def until_ready(self) -> list[Any]:
        """Messages up to the next ReadyForQuery (errors as ServerError), [] at EOF."""
        out: list[Any] = []
        for _ in range(100_000):
            got = self.read()
            if got is None:
                return out
            kind, body = got
            if kind == b"E":
                fields = {chr(p[0]): p[1:].decode(errors="replace") for p in body.split(b"\0") if p}
                out.append(ServerError(fields))
            elif kind not in (b"S", b"K", b"R", b"N"):
                out.append((kind, body))
            if kind == b"Z":
                return out
        raise AssertionError("no ReadyForQuery")

    def close(self) -> None:
        self.sock.close()


def _codes(msgs: list[Any]) -> list[str]:
    return [m.sqlstate for m in msgs if isinstance(m, ServerError)]


def _marker_answered(msgs: list[Any]) -> bool:
    return any(
        m[0] == b"D" and m[1].endswith(b"handover-done") for m in msgs if isinstance(m, tuple)
    )


def _intact(arena: Arena) -> None:
    assert arena.direct("SELECT count(*) FROM parent WHERE id = 1") == [(1,)]


def _still_serves(arena: Arena) -> None:
    with arena.connect() as c:
        assert c.execute("SELECT 1").fetchall() == [(1,)]


def test_a_query_pipelined_behind_the_startup_is_decided(arena_deny: Arena) -> None:
    """Startup, the DELETE and a marker in one write: all of it is read before the session
    is ready and moves; the DELETE is refused, the marker answered."""
    for _ in range(4):
        wire = Wire(arena_deny)
        try:
            wire.sock.sendall(_startup(arena_deny) + _query(DELETE) + _query(MARKER))
            login = wire.until_ready()
            assert not _codes(login), login
            refused = wire.until_ready()
            assert _codes(refused) == ["42501"], refused
            assert _marker_answered(wire.until_ready())
        finally:
            wire.close()
    _intact(arena_deny)
    _still_serves(arena_deny)


@pytest.mark.parametrize("pause", PAUSES)
def test_a_query_cut_in_two_around_the_move_is_decided(arena_deny: Arena, pause: float) -> None:
    """Half of the DELETE behind the startup, the rest when the client sees ReadyForQuery
    (plus a pause): its two halves cross the move; refused all the same."""
    whole = _query(DELETE)
    for cut in (1, 5, 9, len(whole) - 1):
        wire = Wire(arena_deny)
        try:
            wire.sock.sendall(_startup(arena_deny) + whole[:cut])
            assert not _codes(wire.until_ready())
            time.sleep(pause)
            wire.sock.sendall(whole[cut:] + _query(MARKER))
            assert _codes(wire.until_ready()) == ["42501"], cut
            assert _marker_answered(wire.until_ready())
        finally:
            wire.close()
    _intact(arena_deny)
    _still_serves(arena_deny)


@pytest.mark.parametrize("pause", PAUSES)
def test_a_half_close_at_the_move_loses_no_answer(arena_deny: Arena, pause: float) -> None:
    """The DELETE and the marker, then the write half closed, at the move: both are
    answered (the refusal, the marker's row) and only then does the proxy close."""
    wire = Wire(arena_deny)
    try:
        wire.sock.sendall(_startup(arena_deny))
        assert not _codes(wire.until_ready())
        time.sleep(pause)
        wire.sock.sendall(_query(DELETE) + _query(MARKER))
        wire.sock.shutdown(socket.SHUT_WR)
        assert _codes(wire.until_ready()) == ["42501"]
        assert _marker_answered(wire.until_ready())
        assert wire.read() is None  # then the end, with nothing more
    finally:
        wire.close()
    _intact(arena_deny)
    _still_serves(arena_deny)


def test_a_half_close_behind_the_startup_loses_no_answer(arena_deny: Arena) -> None:
    """Startup, DELETE, marker and the end of file before the session is even ready."""
    wire = Wire(arena_deny)
    try:
        wire.sock.sendall(_startup(arena_deny) + _query(DELETE) + _query(MARKER))
        wire.sock.shutdown(socket.SHUT_WR)
        assert not _codes(wire.until_ready())
        assert _codes(wire.until_ready()) == ["42501"]
        assert _marker_answered(wire.until_ready())
        assert wire.read() is None
    finally:
        wire.close()
    _intact(arena_deny)
    _still_serves(arena_deny)


@pytest.mark.parametrize("pause", PAUSES)
def test_a_protected_delete_at_the_move_is_captured(arena: Arena, pause: float) -> None:
    """Where the policy protects DELETE (the default), one sent at the move is captured:
    one operation, and undo brings the row back."""
    last = arena.last_op()
    wire = Wire(arena)
    try:
        wire.sock.sendall(_startup(arena))
        assert not _codes(wire.until_ready())
        time.sleep(pause)
        wire.sock.sendall(_query(DELETE) + _query(MARKER))
        done = wire.until_ready()
        assert not _codes(done) and (b"C", b"DELETE 1\0") in done, done
        assert _marker_answered(wire.until_ready())
    finally:
        wire.close()
    ops = arena.ops_since(last)
    assert [o["kind"] for o in ops] == ["DELETE"], ops
    assert arena.direct("SELECT count(*) FROM parent WHERE id = 1") == [(0,)]
    undone = arena.undo([ops[0]["id"]])
    assert undone.returncode == 0, undone.stdout + undone.stderr
    _intact(arena)


def _half_closed(arena: Arena, *, direct: bool) -> list[Any]:
    wire = Wire(arena, direct=direct)
    try:
        wire.sock.sendall(_startup(arena) + _query(b"SELECT 1") + _query(MARKER))
        wire.sock.shutdown(socket.SHUT_WR)
        got: list[Any] = []
        for _ in range(10):
            batch = wire.until_ready()
            if not batch:
                break
            got += batch
        assert wire.eof
        return got
    finally:
        wire.close()


def test_a_half_close_is_answered_as_directly(arena: Arena) -> None:
    """The same bytes and half-close, directly and through softguard: the same answers,
    then the end of file (PostgreSQL answers what it read before it)."""
    direct = _half_closed(arena, direct=True)
    assert _marker_answered(direct)
    assert _half_closed(arena, direct=False) == direct
