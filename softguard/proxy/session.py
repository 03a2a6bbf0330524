"""One proxied client connection and its upstream connection (session mode): the I/O.

What the connection does is decided by ``core.SessionCore`` (sans-IO); this module owns
the two transports, the timers and the background tasks, feeds every event to the core
and executes what it asks: the bytes go to the transports' ``write`` (the core's
``to_server`` / ``to_client`` sinks), everything else in ``_run``. The hot path is
``data_received`` -> ``SessionCore.client_data`` -> ``up.write`` (and the same from the
upstream): the chunk that arrived is written on, usually as the same bytes object.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from softguard.auth.login import Credentials
from softguard.auth.scram import tls_server_end_point
from softguard.config import Settings
from softguard.policy import SessionInfo
from softguard.proxy import commands as cmd
from softguard.proxy import hotpath, link
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.ledger_gate import LedgerGate
from softguard.proxy.metrics import Metrics, log_operation
from softguard.proxy.statements import PlanInputs
from softguard.proxy.upstream import UpstreamError, UpstreamTarget, open_upstream
from softguard.sql.offload import OffLoopClassifier
from softguard.wire import CancelRequest
from softguard.wire.messages import TERMINATE

log = logging.getLogger("softguard.session")


class SessionHost(Protocol):
    """What a session needs from the process that runs it (``ProxyServer``)."""

    settings: Settings
    target: UpstreamTarget
    loop: asyncio.AbstractEventLoop
    ledger: LedgerGate
    metrics: Metrics
    inputs: PlanInputs
    offload: OffLoopClassifier
    client_ssl: ssl.SSLContext | None
    upstream_ssl: ssl.SSLContext | None
    credentials: Credentials | None

    def register(self, session: ClientSession) -> None: ...

    def unregister(self, session: ClientSession) -> None: ...

    def over_capacity(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    async def forward_cancel(self, request: CancelRequest) -> None: ...

    def upstream_failed(self, reason: str) -> None: ...

    def upstream_ok(self) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    """The upstream side: forwards every event to its session."""

    __slots__ = ("_answer", "core", "data_received", "session", "transport")
    # Set per instance (hotpath.relay): a C callable or the bound Python method.
    data_received: Callable[[bytes], None]  # type: ignore[assignment]

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.core = session.core
        self.transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[bytes] | None = None
        # Set before any transport reads it (uvloop keeps the bound callable it finds).
        self.data_received = hotpath.relay(
            self.core, self._data_received, session._run, server=True
        )

    def expect_ssl_answer(self) -> asyncio.Future[bytes]:
        self._answer = asyncio.get_running_loop().create_future()
        return self._answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def _data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is not None:
            # The one-byte reply to SSLRequest; anything after it would be a server
            # speaking before the handshake, which libpq also refuses.
            self._answer = None
            if not answer.done():
                answer.set_result(data[:1] if len(data) == 1 else b"?")
            return
        # Straight to the core: no second Python call per chunk.
        core = self.core
        core.server_data(data)
        if core.controls:
            self.session._run()

    def connection_lost(self, exc: Exception | None) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(ConnectionError("upstream closed during SSL negotiation"))
        self.session._server_lost(exc)

    def pause_writing(self) -> None:
        self.session._upstream_paused(True)

    def resume_writing(self) -> None:
        self.session._upstream_paused(False)


class ClientSession(asyncio.Protocol):
    # Set per instance (hotpath.relay): a C callable or the bound Python method.
    data_received: Callable[[bytes], None]  # type: ignore[assignment]

    def __init__(self, server: SessionHost) -> None:
        self.server = server
        settings = server.settings
        self.core = SessionCore(
            CoreConfig(
                max_inspect_bytes=settings.max_inspect_bytes,
                offload_bytes=server.offload.threshold,
                startup_timeout=settings.startup_timeout,
                client_stall_timeout=settings.client_stall_timeout,
                max_client_conn=settings.max_client_conn,
                tls=server.client_ssl is not None,
                credentials=server.credentials,
                upstream_pooler=settings.upstream_pooler != "none",
                register_roles=settings.upstream_pooler == "transaction",
                require_tls=settings.require_tls,
            ),
            server.inputs,
            server.metrics,
            over_capacity=server.over_capacity,
            clock=time.perf_counter,
        )
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.up_transport: asyncio.Transport | None = None
        self._timers: dict[cmd.Timer, asyncio.TimerHandle] = {}
        self._closed = False
        # Until the session is READY on both connections, then once (decision 0040).
        self._to_links = link.AVAILABLE
        # The compiled fast path first, when there is one (decision 0034); an instance
        # attribute, set before the transport exists, which is when uvloop looks it up.
        self.data_received = hotpath.relay(
            self.core, self._data_received, self._run, server=False
        )

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def info(self) -> SessionInfo:
        return self.core.info

    @property
    def is_idle(self) -> bool:
        return self.core.is_idle

    # ------------------------------------------------------------------ events in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _relay_buffer(self.transport, socket.SO_SNDBUF)
        self.core.to_client = self.transport.write
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.core.peer = f"{peer[0]}:{peer[1]}"
        elif peer:
            self.core.peer = str(peer)
        self.server.register(self)
        self.core.start()
        self._run()

    def _data_received(self, data: bytes) -> None:
        core = self.core
        core.client_data(data)
        if core.controls:
            self._run()

    def eof_received(self) -> bool:
        # A half-close: the answers owed go out first (the core says when to close).
        keep_open = self.core.client_eof()
        self._run()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.client_lost()
        self._run()

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None and not self.up_transport.is_closing():
            self.up_transport.resume_reading()

    def _server_lost(self, exc: Exception | None) -> None:
        self.core.server_lost()
        self._run()

    def _upstream_paused(self, paused: bool) -> None:
        # Called from inside ``up.write`` when its buffer fills, that is from inside the
        # core's relay: stop reading the client now, as a proxy writing directly would.
        self.core.upstream_paused(paused)
        self._run()

    def _timer_fired(self, timer: cmd.Timer) -> None:
        self._timers.pop(timer, None)
        if timer is cmd.Timer.STARTUP:
            self.core.startup_timed_out()
        else:
            self.core.stall_check()
        self._run()

    def begin_shutdown(self) -> None:
        """Close now if idle, else after the transaction in progress ends."""
        self.core.begin_shutdown()
        self._run()

    def terminate(self, sqlstate: str, text: str) -> None:
        self.core.terminate(sqlstate, text)
        self._run()

    # ------------------------------------------------------------------ commands out

    def _run(self) -> None:
        """Execute what the core asked for besides the bytes (already handed to the
        transports' ``write``), in order."""
        core = self.core
        while core.controls:
            controls, core.controls = core.controls, []
            for control in controls:
                self._execute(control)
        if self._to_links and core.state is State.READY:
            # Soon, not here: a _run may come from inside the core (a write that filled a
            # buffer), whose chunk must end on the sinks it began with.
            self._to_links = False
            self.server.loop.call_soon(self._move_to_links)

    def _execute(self, control: cmd.Control) -> None:
        server = self.server
        match control:
            case cmd.ClientReading(paused=paused):
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    if paused:
                        transport.pause_reading()
                    else:
                        transport.resume_reading()
            case cmd.SetTimer(timer=timer, seconds=seconds):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
                if seconds is not None and not self._closed:
                    self._timers[timer] = server.loop.call_later(seconds, self._timer_fired, timer)
            case cmd.Close(terminate_upstream=terminate, farewell=farewell):
                self._close(terminate, farewell)
            case cmd.Connect():
                server.spawn(self._connect())
            case cmd.StartTLS():
                assert self.transport is not None and server.client_ssl is not None
                self.transport.pause_reading()
                server.spawn(self._start_tls(server.client_ssl))
            case cmd.WaitLedger(database=database, user=user):
                server.spawn(self._wait_ledger(database, user))
            case cmd.ClassifyOffLoop(text=text, client_encoding=encoding):
                server.spawn(self._classify_off_loop(text, encoding))
            case cmd.ForwardCancel(request=request):
                server.spawn(server.forward_cancel(request))
            case cmd.OperationNotice(body=body, protected=protected):
                log_operation(server.metrics, body, self.core.info, protected)
            case cmd.Forget(cache=cmd.Cache.LEDGER, database=database):
                server.ledger.forget(database)
            case cmd.Forget(cache=cmd.Cache.SOFT_DELETE_TABLES, database=database):
                server.ledger.forget_soft_delete_tables(database)
            case cmd.RequestApproval() as request:
                server.spawn(server.ledger.request_approval(request))
            case cmd.Refused(reason=reason):
                server.metrics.refused[reason].inc()
            case cmd.Observe(measure=cmd.Measure.UPSTREAM_CONNECT, seconds=seconds):
                server.metrics.upstream_connect_seconds.observe(seconds)
            case cmd.Observe(measure=cmd.Measure.REWRITTEN_STATEMENT, seconds=seconds):
                server.metrics.rewritten_statement_seconds.observe(seconds)

    def _move_to_links(self) -> None:
        """Both connections off their transports onto links, where they can move (plain
        TCP or Unix sockets): the relay's reads and writes then cost a recv and a send
        (decision 0040). Scheduled by the ``_run`` in which the session became READY;
        tried again after a later one while a transport still holds unsent bytes."""
        client, up, upstream = self.transport, self.up_transport, self.upstream
        if self._closed or self.core.state is not State.READY:
            return
        if client is None or up is None or upstream is None:
            return
        if client.get_write_buffer_size() or up.get_write_buffer_size():
            self._to_links = True
            return
        loop = self.server.loop
        moved = link.adopt(loop, client, self, high_water=RELAY_BUFFER)
        metrics = self.server.metrics.relay_links
        if moved is not None:
            self.transport = cast(asyncio.Transport, moved)
            self.core.to_client = moved.write
            metrics.labels("client").inc()
        moved = link.adopt(loop, up, upstream, high_water=RELAY_BUFFER)
        if moved is not None:
            self.up_transport = upstream.transport = cast(asyncio.Transport, moved)
            self.core.to_server = moved.write
            metrics.labels("server").inc()

    def _close(self, terminate_upstream: bool, farewell: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if farewell:
                transport.write(farewell)
            transport.close()
        up = self.up_transport
        if up is not None and not up.is_closing():
            if terminate_upstream:
                up.write(TERMINATE)
            up.close()
        if not self._closed:
            self._closed = True
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            self.server.unregister(self)

    # ------------------------------------------------------------------ background work

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        assert self.transport is not None
        try:
            new = await self.server.loop.start_tls(self.transport, self, ctx, server_side=True)
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log.info(
                "client %s: TLS handshake failed: %s",
                self.core.peer,
                str(exc) or type(exc).__name__,
            )
            self.core.abort()
            self._run()
            return
        if self.core.state is State.CLOSED or new is None:
            return
        self.transport = new
        self.core.to_client = new.write
        self.core.tls_started()
        self._run()

    async def _connect(self) -> None:
        server = self.server
        upstream = UpstreamProtocol(self)
        self.upstream = upstream
        try:
            async with asyncio.timeout(server.settings.connect_timeout):
                transport = await open_upstream(
                    server.loop, server.target, upstream, upstream, server.upstream_ssl
                )
        except TimeoutError:
            server.upstream_failed("timed out")
            self.core.upstream_failed(
                f"softguard: timed out connecting to upstream server at {server.target.display}"
            )
            self._run()
            return
        except (UpstreamError, ConnectionError) as exc:
            server.upstream_failed(str(exc))
            self.core.upstream_failed(f"softguard: {exc}")
            self._run()
            return
        server.upstream_ok()
        if self.core.state is State.CLOSED:
            transport.close()
            return
        self.up_transport = cast(asyncio.Transport, transport)
        _relay_buffer(self.up_transport, socket.SO_RCVBUF)
        self.core.to_server = self.up_transport.write
        sockname = self.up_transport.get_extra_info("sockname")
        local_port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        self.core.upstream_connected(_certificate_binding(self.up_transport), local_port)
        self._run()

    async def _classify_off_loop(self, text: bytes, client_encoding: str) -> None:
        result = await asyncio.wrap_future(self.server.offload.submit(text, client_encoding))
        self.core.classified(result)
        self._run()

    async def _wait_ledger(self, database: str, user: str) -> None:
        await self.server.ledger.ensure(database, user)
        self.core.ledger_known()
        self._run()


def _certificate_binding(transport: asyncio.BaseTransport) -> bytes | None:
    """The upstream certificate's channel binding data, when the connection is TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return tls_server_end_point(der) if der else None


#: What the proxy holds between the server and a client that stops reading (kernel buffer
#: on each side plus the transport's own). Directly, the server blocks once the client's
#: socket is full; with the proxy's buffers at their autotuned size (megabytes) the server
#: would run ahead, e.g. finish a COPY TO STDOUT that the client then cancels, which
#: directly fails with 57014 (issue 16).
RELAY_BUFFER = 64 * 1024


def _relay_buffer(transport: asyncio.Transport, option: int) -> None:
    """Keep the buffer the relay adds small: ``option`` is SO_SNDBUF on the client's
    socket, SO_RCVBUF on the upstream's (the other direction is not held up)."""
    transport.set_write_buffer_limits(high=RELAY_BUFFER)
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, RELAY_BUFFER)
    except OSError:  # pragma: no cover - the kernel's default stays
        pass
