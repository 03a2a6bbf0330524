"""A session's connection on its socket, once the session is up (decision 0040).

uvloop's transports cost more per chunk than the rest of the relay: one ``data_received``
and one ``transport.write`` per chunk each way is ~7,200 instructions per statement
(``bench/serve_cpu.py``, a relay that reads nothing), against PgBouncer's ~3,100 for the
whole statement. Reading and writing the socket from a reader callback costs ~2,400. So
when a session is READY and neither side is TLS, ``ClientSession`` moves both connections
from their transports onto a ``Link`` each (``adopt``): the socket is duplicated, the
transport let go without shutting the connection, and the event loop only reports that
the socket is readable or writable.

``Link`` is the small part of an asyncio transport the session uses (``write``,
``pause_reading`` / ``resume_reading``, ``close`` / ``abort``, flow control through the
protocol's ``pause_writing`` / ``resume_writing``, ``connection_lost``). The two calls every
chunk makes, ``read_ready`` and ``write``, are compiled (``softguard/_link.c``); this
class does the rest: a partial send queued and flushed when the socket is writable,
closing after the queue drains, end of file and errors. Without the compiled module
sessions keep their transports.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import weakref
from collections.abc import Callable
from typing import Any

from softguard.speedups import compiled

log = logging.getLogger("softguard.session")

#: Whether sessions can move onto links: the compiled module is in use (its poller is an
#: epoll set: Linux), and SOFTGUARD_NO_LINKS is not set (a diagnostic switch: sessions
#: then stay on the event loop's transports, e.g. to compare the two in bench/).
AVAILABLE = (
    compiled is not None
    and sys.platform.startswith("linux")
    and os.environ.get("SOFTGUARD_NO_LINKS", "") in ("", "0")
)

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _poller(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's link poller (``_link.c``), watched by the loop itself."""
    poller = _pollers.get(loop)
    if poller is None:
        assert compiled is not None
        poller = _pollers[loop] = compiled.Poller()
        loop.add_reader(poller.fileno(), poller.dispatch)
    return poller


class _Detached(asyncio.Protocol):
    """What a let-go transport reports to: nothing (its connection lives on in a link)."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


if compiled is not None:
    _LinkBase: Any = compiled.LinkBase
else:  # pragma: no cover - never instantiated without the compiled module (AVAILABLE)
    _LinkBase = object


class Link(_LinkBase):  # type: ignore[misc]
    """One connection on its own socket; see the module docstring."""

    # LinkBase's fields (C struct members, read by _link.c).
    fd: int
    closing: bool
    backlog: int
    receive: Callable[[bytes], Any]

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.Protocol,
        extra: dict[str, Any],
        *,
        high_water: int,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._poller = _poller(loop)
        self._sock = sock
        self._protocol = protocol
        self._extra = extra
        self._extra["socket"] = sock
        self._queue = bytearray()
        self._high = high_water
        self._low = high_water // 4
        self._reading = False
        self._writing = False
        self._protocol_paused = False
        self._lost = False
        # The protocol's data_received as it is now: an instance attribute (the compiled
        # Relay) where the session set one.
        self.receive = protocol.data_received
        self.fd = sock.fileno()

    # ------------------------------------------------------------------ transport API

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._watch()

    def resume_reading(self) -> None:
        if not self._reading and not self.closing:
            self._reading = True
            self._watch()

    def is_closing(self) -> bool:
        return bool(self.closing)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_write_buffer_size(self) -> int:
        return len(self._queue)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_flow()

    def close(self) -> None:
        """Stop reading; close once what is queued is sent."""
        if self.closing:
            return
        self.pause_reading()
        self.closing = True
        if not self._queue:
            self._loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self._fail(None)

    # ------------------------------------------------------------------ from _link.c

    def _write_slow(self, data: bytes | bytearray | memoryview) -> None:
        """What ``write`` does not send itself: bytes behind a queue, after ``close``, or
        not ``bytes``."""
        if self.closing or self.fd < 0:
            # A transport refuses writes once closing; the session only writes its
            # farewell before closing, so this is a late answer for a gone client.
            return
        if not data:
            return
        if not self._queue:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._enqueue(data)

    def _enqueue(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` behind what is queued, sent when the socket is writable (``write``
        hands it the rest of a partial send)."""
        self._queue += data
        self.backlog = len(self._queue)
        if not self._writing:
            self._writing = True
            self._watch()
        self._check_flow()

    def _eof(self) -> None:
        # The protocols here keep nothing half-open: end of file closes, as a transport
        # does when eof_received() returns a false value.
        keep_open = False
        eof_received = getattr(self._protocol, "eof_received", None)
        if eof_received is not None:
            keep_open = bool(eof_received())
        if keep_open:
            self.pause_reading()
        else:
            self.close()

    def _os_error(self, code: int) -> None:
        """A recv or send failed with errno ``code``."""
        self._fail(OSError(code, os.strerror(code)))

    def _receive_failed(self, exc: BaseException) -> None:
        log.error("softguard: data_received failed; closing the connection", exc_info=exc)
        self._fail(exc if isinstance(exc, Exception) else None)
        if not isinstance(exc, Exception):
            raise exc

    # ------------------------------------------------------------------ inside

    def _write_ready(self) -> None:
        if self.fd < 0:
            return
        try:
            sent = self._sock.send(self._queue)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._queue[:sent]
        self.backlog = len(self._queue)
        if not self._queue:
            self._writing = False
            self._watch()
            if self.closing:
                self._lose(None)
                return
        self._check_flow()

    def _watch(self) -> None:
        self._poller.watch(self, self._reading, self._writing)

    def _check_flow(self) -> None:
        size = len(self._queue)
        if not self._protocol_paused and size > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()
        elif self._protocol_paused and size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def _fail(self, exc: BaseException | None) -> None:
        """Close now, dropping what is queued (an error, or ``abort``)."""
        if self._reading or self._writing:
            self._reading = self._writing = False
            self._watch()
        self.closing = True
        self._queue.clear()
        self.backlog = 0
        self._loop.call_soon(self._lose, exc)

    def _lose(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self.fd >= 0:
            self._reading = self._writing = False
            self._watch()
            self.fd = -1
            self._sock.close()
        self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)


def adopt(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    *,
    high_water: int,
) -> Link | None:
    """Move ``transport``'s connection onto a ``Link`` (reading as the transport was), or
    None where it cannot move: TLS, no socket, something still queued in the transport."""
    if not AVAILABLE or transport.is_closing() or transport.get_write_buffer_size():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    pseudo = transport.get_extra_info("socket")
    if pseudo is None or pseudo.type != socket.SOCK_STREAM:
        return None
    if pseudo.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    try:
        fd = os.dup(pseudo.fileno())
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None  # out of descriptors: keep the transport
        raise
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname")}
    reading = transport.is_reading()
    # Let the transport go: closing it closes its descriptor only (no shutdown), and the
    # connection lives on in ours. Its reading stops here, before another read.
    transport.pause_reading()
    transport.set_protocol(_Detached())
    transport.close()
    link = Link(loop, sock, protocol, extra, high_water=high_water)
    if reading:
        link.resume_reading()
    return link
