"""softguard.proxy.link: a connection on its own socket, off uvloop's transport (decision 0040).

Real sockets and a real uvloop loop: a TCP connection accepted by a uvloop server is moved
onto a ``Link`` with ``adopt`` (as ``ClientSession`` does once its session is READY); the
peer is a plain blocking socket. Each test checks what a transport promises the session:
bytes in order, nothing lost when the peer's buffer is full (queued, flow control through
``pause_writing`` / ``resume_writing``), close after the queue drains, abort, end of file
and errors reported once through ``connection_lost``, and no shutdown of the connection
when the transport is let go.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from softguard.proxy import link

pytestmark = pytest.mark.skipif(
    not link.AVAILABLE, reason="links are not in use (no compiled module, or SOFTGUARD_NO_LINKS)"
)

LOOPBACK = "127.0.0.1"


class Recorder(asyncio.Protocol):
    """A protocol that records what its transport reports."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[Exception | None] = []
        self.made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()
        self.fail_on: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.fail_on is not None and self.fail_on in data:
            raise ValueError("refused by the test")
        self.data += data

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.append(exc)


async def _linked(high_water: int = 64 * 1024) -> tuple[link.Link, Recorder, socket.socket, Any]:
    """A uvloop-accepted connection moved onto a Link, and its blocking peer."""
    loop = asyncio.get_running_loop()
    protocol = Recorder()
    server = await loop.create_server(lambda: protocol, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    peer = await _connect(port)
    transport = await protocol.made
    # As the session's client socket: a small send buffer, so the queue is reached.
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    moved = link.adopt(loop, transport, protocol, high_water=high_water)
    assert moved is not None
    return moved, protocol, peer, server


_PEERS: list[socket.socket] = []


async def _connect(port: int) -> socket.socket:
    """The peer: a non-blocking socket read through the loop (no thread to hang on)."""
    loop = asyncio.get_running_loop()
    peer = socket.socket()
    peer.setblocking(False)
    _PEERS.append(peer)
    await loop.sock_connect(peer, (LOOPBACK, port))
    return peer


def run(body: Callable[[], Awaitable[None]]) -> None:
    try:
        uvloop.run(asyncio.wait_for(body(), 30))
    finally:
        # A failed test must not leave an executor thread blocked in recv.
        while _PEERS:
            _PEERS.pop().close()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"not reached: {what}")


async def _recv_exactly(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < size:
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_bytes_both_ways_in_order_and_the_let_go_transport_does_not_shut_down() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        await asyncio.sleep(0.05)  # the old transport's close has run
        assert protocol.events == []  # its close is not reported to the protocol
        await asyncio.get_running_loop().sock_sendall(peer, b"one,")
        await asyncio.get_running_loop().sock_sendall(peer, b"two")
        await _until(lambda: bytes(protocol.data) == b"one,two", "both chunks read")
        moved.write(b"abc")
        moved.write(bytearray(b"def"))  # not bytes: the Python side sends it
        moved.write(memoryview(b"ghi"))
        moved.write(b"")
        assert await _recv_exactly(peer, 9) == b"abcdefghi"
        peer.close()
        await _until(lambda: protocol.events == ["lost"], "end of file reported")
        assert protocol.lost == [None] and moved.is_closing() and moved.fd == -1
        server.close()

    run(body)


def test_a_full_peer_queues_in_order_and_flow_control_pauses_and_resumes() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked(high_water=64 * 1024)
        sent = bytearray()
        for i in range(400):  # ~3.2 MB: far over what both kernel buffers hold
            chunk = bytes([i % 251]) * 8000
            moved.write(chunk)
            sent += chunk
        assert moved.get_write_buffer_size() > 0 and moved.backlog == moved.get_write_buffer_size()
        assert protocol.events == ["pause"]
        moved.write(b"tail")  # behind the queue, never before it
        sent += b"tail"
        got = await _recv_exactly(peer, len(sent))
        assert got == bytes(sent)
        await _until(lambda: moved.get_write_buffer_size() == 0, "queue drained")
        assert protocol.events == ["pause", "resume"] and moved.backlog == 0
        peer.close()
        server.close()

    run(body)


def test_close_sends_what_is_queued_first_then_reports_lost() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        payload = b"x" * 2_000_000
        moved.write(payload)
        moved.close()
        moved.write(b"after close")  # dropped, as a closing transport's
        assert moved.is_closing() and protocol.lost == []
        got = await _recv_exactly(peer, len(payload) + 100)
        assert got == payload  # everything, then end of file
        await _until(lambda: protocol.lost == [None], "lost after the drain")
        moved.close()  # twice is harmless
        await asyncio.sleep(0.01)
        assert protocol.events.count("lost") == 1
        peer.close()
        server.close()

    run(body)


def test_abort_drops_the_queue_and_reports_lost_once() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        moved.write(b"y" * 2_000_000)
        assert moved.get_write_buffer_size() > 0
        moved.abort()
        moved.abort()
        await _until(lambda: protocol.lost == [None], "lost")
        assert moved.get_write_buffer_size() == 0 and moved.fd == -1
        got = await _recv_exactly(peer, 10_000_000)
        assert 0 < len(got) < 2_000_000  # what the kernel already held, then end of file
        assert protocol.events.count("lost") == 1
        peer.close()
        server.close()

    run(body)


def test_another_users_reader_on_the_same_descriptor_number_does_not_stop_it() -> None:
    """A library that closed its socket before removing its reader removes, later, the
    reader of whatever got that number: with per-descriptor loop readers a link would stop
    reading (psycopg after a dropped connection did this to the upstream link)."""

    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        loop = asyncio.get_running_loop()
        loop.add_reader(moved.fd, lambda: None)
        loop.remove_reader(moved.fd)
        await loop.sock_sendall(peer, b"still read")
        await _until(lambda: protocol.data == b"still read", "read")
        peer.close()
        await _until(lambda: protocol.lost == [None], "end of file seen")
        server.close()

    run(body)


def test_pause_reading_holds_bytes_until_resumed() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        moved.pause_reading()
        assert not moved.is_reading()
        await asyncio.get_running_loop().sock_sendall(peer, b"held")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        moved.resume_reading()
        await _until(lambda: protocol.data == b"held", "read after resume")
        peer.close()
        server.close()

    run(body)


def test_a_paused_transport_moves_paused() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        server = await loop.create_server(lambda: protocol, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        peer = await _connect(port)
        transport = await protocol.made
        transport.pause_reading()
        moved = link.adopt(loop, transport, protocol, high_water=1024)
        assert moved is not None and not moved.is_reading()
        await asyncio.get_running_loop().sock_sendall(peer, b"wait")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        moved.resume_reading()
        await _until(lambda: protocol.data == b"wait", "read after resume")
        peer.close()
        server.close()

    run(body)


def test_a_transport_with_unsent_bytes_or_tls_is_not_moved() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        protocol = Recorder()
        server = await loop.create_server(lambda: protocol, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        peer = await _connect(port)
        transport = await protocol.made
        transport.write(b"z" * 4_000_000)
        assert transport.get_write_buffer_size() > 0
        assert link.adopt(loop, transport, protocol, high_water=1) is None
        assert not transport.is_closing()  # left as it was
        transport.close()
        peer.close()
        server.close()

    run(body)


def test_an_exception_in_data_received_closes_with_it(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        _moved, protocol, peer, server = await _linked()
        protocol.fail_on = b"boom"
        await asyncio.get_running_loop().sock_sendall(peer, b"boom")
        await _until(lambda: protocol.events == ["lost"], "lost")
        assert isinstance(protocol.lost[0], ValueError)
        peer.close()
        server.close()

    with caplog.at_level(logging.ERROR, logger="softguard.session"):
        run(body)
    assert "data_received failed" in caplog.text


def test_a_reset_peer_is_reported_as_an_error() -> None:
    async def body() -> None:
        moved, protocol, peer, server = await _linked()
        # SO_LINGER 0: close sends RST, so the next read fails with ECONNRESET.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        await _until(lambda: protocol.events == ["lost"], "lost")
        assert isinstance(protocol.lost[0], ConnectionResetError)
        moved.write(b"into the void")  # after the loss: nothing happens
        server.close()

    run(body)
