"""The least a relay on softguard's links can do: bytes from the client to PostgreSQL and
back, nothing read, each connection moved onto a ``softguard.proxy.link.Link`` as soon as
both are open (one poller callback, one recv and one send per chunk each way).

A reference for ``serve_cpu.py --configs ...,link-relay`` (decision 0040), beside
``_python_relay.py`` (the same on uvloop's transports): what softguard's relay loop costs
before softguard reads anything. Not a product: no TLS, no authentication, no limits.

    python bench/_link_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import uvloop

from softguard.proxy import link

LOOPBACK = "127.0.0.1"
BUFFER = 64 * 1024


class _Side(asyncio.Protocol):
    """One connection: what it reads goes to ``peer_write``, once both are linked."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.other: _Side | None = None
        self.peer_write: Any = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer_write is None:
            self.early.append(data)
        else:
            self.peer_write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer_write is not None:
            self.peer_write = None
            other = self.other
            if other is not None and other.transport is not None:
                other.transport.close()


async def _pair(client: _Side, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    upstream = _Side()
    try:
        await loop.create_connection(lambda: upstream, LOOPBACK, upstream_port)
    except OSError:
        client.transport.close()
        return
    sides = (client, upstream)
    for side, other in (sides, sides[::-1]):
        moved = link.adopt(loop, cast(asyncio.Transport, side.transport), side, high_water=BUFFER)
        if moved is None:  # closed meanwhile (a port probe): drop the pair
            client.transport.close()
            upstream.transport.close()
            return
        side.transport = moved
        side.other = other
    for side, other in (sides, sides[::-1]):
        side.peer_write = other.transport.write
        for data in side.early:
            side.peer_write(data)
        side.early.clear()


async def _serve(listen_port: int, upstream_port: int) -> None:
    if not link.AVAILABLE:
        raise SystemExit("link-relay needs softguard's compiled module (softguard._hotpath)")
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def accepted() -> _Side:
        side = _Side()

        def start() -> None:
            task = loop.create_task(_pair(side, upstream_port))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.call_soon(start)
        return side

    server = await loop.create_server(accepted, LOOPBACK, listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
