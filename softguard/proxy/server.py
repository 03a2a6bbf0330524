"""The listener: accepts clients, owns the session registry, shuts down gracefully, and
runs several worker processes on one port (SO_REUSEPORT) when asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast

from softguard.config import Settings
from softguard.policy import Policy
from softguard.proxy.ledger_gate import LedgerGate
from softguard.proxy.metrics import Metrics, check_metrics_address, metrics_port
from softguard.proxy.session import ClientSession, UpstreamProtocol
from softguard.proxy.statements import PlanInputs
from softguard.proxy.upstream import UpstreamError, UpstreamTarget, open_upstream
from softguard.sql import Classifier
from softguard.sql.offload import OffLoopClassifier
from softguard.wire import CancelRequest

log = logging.getLogger("softguard.server")


class ProxyServer:
    """Everything the sessions of one process share."""

    def __init__(
        self,
        settings: Settings,
        target: UpstreamTarget,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.loop = loop
        self.classifier = Classifier(settings.classify_cache_size)
        self.policy = Policy(settings.policy)
        self.ledger = LedgerGate(
            target,
            settings.connect_timeout,
            settings.soft_delete,
            settings.soft_delete_refresh,
            settings.capture_budget,
        )
        self.inputs = PlanInputs(self.classifier, self.policy, self.ledger)
        # Large texts are parsed in a worker process, never on the loop (decision 0011).
        self.offload = OffLoopClassifier()
        self.sessions: set[ClientSession] = set()
        self.upstream_ssl = target.ssl_context() if target.wants_tls else None
        self.client_ssl = _client_ssl_context(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self.metrics = metrics or Metrics()
        self.metrics.track_sessions(self.sessions.__len__)

    # -- sessions

    def register(self, session: ClientSession) -> None:
        self.sessions.add(session)
        self._no_sessions.clear()
        self.metrics.client_connections_total.inc()

    def unregister(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._no_sessions.set()

    def over_capacity(self) -> bool:
        return len(self.sessions) > self.settings.max_client_conn

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in a session task", exc_info=task.exception())

    async def forward_cancel(self, request: CancelRequest) -> None:
        """Send a client's CancelRequest to the upstream as it was sent.

        Sessions are 1:1 with server backends and softguard passes BackendKeyData through
        unchanged, so the key the client holds is the backend's own: the request reaches
        the right backend from any worker process.
        """
        sink = _CancelSink()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                transport = await open_upstream(
                    self.loop, self.target, sink, sink, self.upstream_ssl
                )
        except (TimeoutError, UpstreamError, ConnectionError) as exc:
            log.warning("cancel request for pid %d not delivered: %s", request.pid, exc)
            return
        cast(asyncio.WriteTransport, transport).write(request.raw)
        # The server closes the connection once it has read the request.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await sink.closed
        transport.close()

    # -- lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = bind_listener(
                self.settings.listen_host, self.settings.listen_port, reuse_port=False
            )
        self._server = await self.loop.create_server(
            lambda: ClientSession(self), sock=sock, backlog=1024
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let open transactions finish for ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.begin_shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._no_sessions.wait()
        for session in list(self.sessions):
            session.terminate(
                "57P01", "softguard: terminating connection because softguard is shutting down"
            )
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        self.offload.close()


class _CancelSink(UpstreamProtocol):
    """A minimal upstream protocol for the one-shot cancel connection."""

    def __init__(self) -> None:  # no session behind it
        self.transport = None
        self._answer = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is not None:
            self._answer = None
            if not answer.done():
                answer.set_result(data[:1])

    def connection_lost(self, exc: Exception | None) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(ConnectionError("upstream closed during SSL negotiation"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


def bind_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(addr)
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------------- process level


def install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep asyncio as fallback
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_worker(
    settings: Settings,
    target: UpstreamTarget,
    sock: socket.socket,
    index: int,
    metrics: Metrics | None,
) -> None:
    loop = asyncio.get_running_loop()
    server = ProxyServer(settings, target, loop, metrics)
    address = settings.metrics_address
    if address is not None:
        server.metrics.watch_ledger(server.ledger)
        server.metrics.serve(address[0], metrics_port(address[1], index))
    await server.start(sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: %d open connection(s)", len(server.sessions))
    await server.shutdown(settings.shutdown_timeout)
    server.metrics.close()


def run_worker(
    settings: Settings,
    target: UpstreamTarget,
    sock: socket.socket,
    index: int = 0,
    metrics: Metrics | None = None,
) -> None:
    install_event_loop_policy()
    sock.listen(1024)
    asyncio.run(_run_worker(settings, target, sock, index, metrics))


def serve_forever(
    settings: Settings, target: UpstreamTarget, metrics: Metrics | None = None
) -> None:
    """Run the proxy until SIGTERM/SIGINT: in this process, or in N forked workers.

    ``metrics``: the Metrics of the single worker (e.g. shared with a purge scheduler in
    this process); with N > 1, each forked worker makes its own and this one is unused.
    """
    workers = settings.workers
    host, port = settings.listen_host, settings.listen_port
    if settings.metrics_address is not None:
        # Here, before forking: a bad address is one clear error, not dying workers.
        check_metrics_address(*settings.metrics_address, workers)
    if workers == 1:
        run_worker(settings, target, bind_listener(host, port, reuse_port=False), 0, metrics)
        return
    # The parent holds a bound (never listening) socket so an ephemeral port stays ours.
    anchor = bind_listener(host, port, reuse_port=True)
    port = anchor.getsockname()[1]
    children: dict[int, int] = {}

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                anchor.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                run_worker(settings, target, bind_listener(host, port, reuse_port=True), index)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(workers):
        spawn(i)
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 5 * workers:
            log.error("workers keep dying (%d restarts in a minute); stopping", len(restarts))
            on_signal(signal.SIGTERM, None)
            continue
        log.error("worker %d (pid %d) exited with status %d; restarting", index, pid, status)
        spawn(index)
    anchor.close()
