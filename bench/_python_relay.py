"""The least a Python relay can do: bytes from the client to PostgreSQL and back, nothing
read, one uvloop callback and one ``transport.write`` per chunk each way.

A reference for ``pgbench_compare.py --configs ...,python-relay`` (decision 0017): what any
proxy whose relay loop runs in Python pays per statement before it inspects anything, to
set beside softguard (which inspects) and PgBouncer (whose loop is C). Not a product: no
TLS, no authentication of its own, no limits.

    python bench/_python_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

LOOPBACK = "127.0.0.1"


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, tasks: set[asyncio.Task[None]]) -> None:
        self.upstream_port = upstream_port
        self.tasks = tasks
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what arrives before the upstream connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self.transport), LOOPBACK, self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)
        self.early.clear()
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve(listen_port: int, upstream_port: int) -> None:
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Client(upstream_port, tasks), LOOPBACK, listen_port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
