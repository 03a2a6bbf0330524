"""Raw-socket helpers for the bad-input, fault and fuzz suites.

Everything here is bounded: every socket has a timeout, every read loop a deadline and
a byte ceiling, so a misbehaving proxy makes a test fail, never hang.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PROTOCOL_3_0 = 3 << 16
# Default wait for something that is bound to happen (a reply, an EOF): generous, because
# a loaded machine runs late; a test about a timeout passes within(timeout) instead.
EVENT_TIMEOUT = 30.0
SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


# ---------------------------------------------------------------------- building messages


def startup_packet(
    user: str, database: str = "postgres", version: int = PROTOCOL_3_0, **params: str
) -> bytes:
    body = struct.pack("!I", version)
    for key, value in {"user": user, "database": database, **params}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(mtype: bytes | int, body: bytes = b"") -> bytes:
    """A typed message: type byte, int32 length (itself included), body."""
    t = bytes((mtype,)) if isinstance(mtype, int) else mtype
    return t + struct.pack("!I", len(body) + 4) + body


def raw_header(mtype: bytes | int, length: int) -> bytes:
    """A header with an arbitrary (possibly impossible) length field."""
    t = bytes((mtype,)) if isinstance(mtype, int) else mtype
    return t + struct.pack("!I", length & 0xFFFFFFFF)


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def parse(sql: str, name: str = "", param_types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", len(param_types))
    body += b"".join(struct.pack("!I", t) for t in param_types)
    return msg(b"P", body)


def bind(portal: str = "", stmt: str = "", params: tuple[bytes | None, ...] = ()) -> bytes:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0"
    body += struct.pack("!H", 0)  # all parameters in text format
    body += struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!H", 0)  # all results in text format
    return msg(b"B", body)


def describe(kind: bytes = b"P", name: str = "") -> bytes:
    return msg(b"D", kind + name.encode() + b"\0")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!I", max_rows))


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERMINATE = msg(b"X")


# ---------------------------------------------------------------------- reading


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body keyed by their one-letter code."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise AssertionError(f"unterminated field in error body {body!r}")
        out[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


@dataclass
class Message:
    type: bytes
    body: bytes

    @property
    def fields(self) -> dict[str, str]:
        return parse_error_fields(self.body)

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 120 else self.body[:120] + b"..."
        return f"Message({self.type!r}, {shown!r})"


class RawConn:
    """A blocking client socket with a receive buffer and bounded reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = EVENT_TIMEOUT) -> RawConn:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_tolerant(self, data: bytes) -> bool:
        """Send; False if the peer already closed (a reset or broken pipe)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _fill(self, deadline: float, max_bytes: int = 1 << 20) -> None:
        """Read at least one chunk into buf; raise Closed at EOF, TimeoutError at deadline."""
        if self.eof:
            raise Closed()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(min(max_bytes, 1 << 16))
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        except TimeoutError:
            raise TimeoutError("no data before the deadline") from None
        if not chunk:
            self.eof = True
            raise Closed()
        self.buf += chunk

    def read_bytes(self, n: int, timeout: float = EVENT_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_message(self, timeout: float = EVENT_TIMEOUT, max_length: int = 1 << 28) -> Message:
        """One typed message; Closed at EOF (partial bytes left in buf), TimeoutError."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 5:
            self._fill(deadline)
        mtype = bytes(self.buf[:1])
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if length < 4 or length > max_length:
            raise AssertionError(f"peer sent an impossible length {length} for {mtype!r}")
        while len(self.buf) < 1 + length:
            self._fill(deadline)
        body = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return Message(mtype, body)

    def read_until(
        self, pred: Callable[[Message], bool], timeout: float = 10.0, max_messages: int = 100_000
    ) -> list[Message]:
        """Messages up to and including the first one matching ``pred``."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        for _ in range(max_messages):
            m = self.read_message(timeout=max(0.0, deadline - time.monotonic()))
            out.append(m)
            if pred(m):
                return out
        raise AssertionError(f"no matching message within {max_messages} messages")

    def read_until_ready(self, timeout: float = EVENT_TIMEOUT) -> list[Message]:
        return self.read_until(lambda m: m.type == b"Z", timeout)

    def wait_eof(self, timeout: float = EVENT_TIMEOUT) -> bytes:
        """Read until EOF, returning what came; TimeoutError if the peer keeps it open."""
        deadline = time.monotonic() + timeout
        got = bytes(self.buf)
        self.buf.clear()
        total = 0
        while True:
            try:
                self._fill(deadline)
            except Closed:
                return got
            total += len(self.buf)
            if total > 1 << 24:
                raise AssertionError("more than 16 MiB before EOF")
            got += bytes(self.buf)
            self.buf.clear()

    def messages_until_eof(self, timeout: float = EVENT_TIMEOUT) -> list[Message]:
        """All messages until EOF. TimeoutError if the connection stays open."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while True:
            try:
                out.append(self.read_message(timeout=max(0.0, deadline - time.monotonic())))
            except Closed:
                if self.buf:
                    raise AssertionError(
                        f"EOF in the middle of a message: {bytes(self.buf[:60])!r}"
                    ) from None
                return out
            if len(out) > 10_000:
                raise AssertionError("more than 10000 messages before EOF")


def expect_fatal(
    conn: RawConn, sqlstate: str | tuple[str, ...], timeout: float = EVENT_TIMEOUT
) -> dict[str, str]:
    """Everything until EOF must contain a FATAL ErrorResponse with ``sqlstate``, last.

    Returns the error's fields. Fails if the connection is not closed after it.
    """
    states = (sqlstate,) if isinstance(sqlstate, str) else sqlstate
    messages = conn.messages_until_eof(timeout)
    errors = [m for m in messages if m.type == b"E"]
    assert errors, f"expected a FATAL {states} ErrorResponse before EOF, got {messages!r}"
    fields = errors[-1].fields
    assert fields.get("S") == "FATAL", f"expected severity FATAL: {fields}"
    assert fields.get("C") in states, f"expected SQLSTATE {states}: {fields}"
    assert messages[-1].type == b"E", f"messages after the FATAL error: {messages!r}"
    return fields


def raw_session(
    host: str, port: int, user: str, database: str, timeout: float = EVENT_TIMEOUT
) -> RawConn:
    """A raw connection through startup (trust auth) up to the first ReadyForQuery."""
    conn = RawConn.connect(host, port, timeout=timeout)
    try:
        conn.send(startup_packet(user, database, application_name="softguard-faults"))
        for m in conn.read_until_ready(timeout):
            if m.type == b"E":
                raise AssertionError(f"startup failed: {m.fields}")
            if m.type == b"R":
                (code,) = struct.unpack_from("!I", m.body)
                if code != 0:
                    raise AssertionError(f"startup wants authentication {code}; need trust")
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def within(timeout: float) -> float:
    """How long a test waits for what a ``timeout``-second setting causes: far more than
    the setting (a loaded 2-core machine runs late), far less than "never". Tests assert
    lower bounds against the setting itself and upper bounds only through this."""
    return 10 * timeout + 20


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set SOFTGUARD_* variables while a proxy is started (ProxyFactory copies os.environ).

    Always combine with ``fresh=True``: the factory shares proxies by argument list only,
    so a proxy started under a changed environment must never be handed to anyone else.
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
