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
from collections.abc import Callable, Coroutine
from typing import Any, cast

from softguard.auth.login import Credentials
from softguard.config import Settings
from softguard.policy import Policy
from softguard.proxy import hotpath, link
from softguard.proxy.ledger_gate import LedgerGate
from softguard.proxy.metrics import Metrics, check_metrics_address, metrics_port
from softguard.proxy.session import ClientSession, UpstreamProtocol
from softguard.proxy.statements import PlanInputs
from softguard.proxy.upstream import UpstreamError, UpstreamTarget, open_upstream
from softguard.sql import Classifier
from softguard.sql.offload import OffLoopClassifier
from softguard.wire import CancelRequest

log = logging.getLogger("softguard.server")

#: Reads the configuration again (SIGHUP); raises ValueError (ConfigError) when invalid.
Reload = Callable[[], Settings]
#: Told the port once the listening socket is bound.
OnListening = Callable[[int], None]
# While the upstream stays unreachable, the warning is repeated at most this often.
_UPSTREAM_WARN_EVERY = 60.0


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
            passfile=settings.upstream_passfile,
            password=_held_password(settings),
        )
        self.inputs = PlanInputs(self.classifier, self.policy, self.ledger)
        # Large texts are parsed in a worker process, never on the loop (decision 0011).
        self.offload = OffLoopClassifier()
        self.sessions: set[ClientSession] = set()
        self.upstream_ssl = target.ssl_context() if target.wants_tls else None
        self.client_ssl = _client_ssl_context(settings)
        self.credentials = _credentials(settings, target)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self.metrics = metrics or Metrics()
        self.metrics.track_sessions(self.sessions.__len__)
        self._upstream_down_since: float | None = None
        self._upstream_warned_at = 0.0

    # -- upstream health: one warning per failure burst, not one per client

    def upstream_failed(self, reason: str) -> None:
        now = self.loop.time()
        if self._upstream_down_since is None:
            self._upstream_down_since = now
        elif now - self._upstream_warned_at < _UPSTREAM_WARN_EVERY:
            log.debug("upstream still unreachable: %s", reason)
            return
        self._upstream_warned_at = now
        log.warning("upstream %s unreachable: %s", self.target.display, reason)

    def upstream_ok(self) -> None:
        if self._upstream_down_since is not None:
            down = self.loop.time() - self._upstream_down_since
            self._upstream_down_since = None
            log.info("upstream %s reachable again (after %.0fs)", self.target.display, down)

    # -- configuration

    def reload(self, settings: Settings) -> None:
        """Apply what a reload may change: the policy (read by every later statement of
        every session, open ones included) and the log level. Sessions are kept; the
        listen address, upstream and TLS files need a restart."""
        self.policy.config = settings.policy
        logging.getLogger().setLevel(getattr(logging, settings.log_level.upper()))
        self.settings = self.settings.model_copy(
            update={"policy": settings.policy, "log_level": settings.log_level}
        )
        self._warn_pooled_read_only()
        if (settings.users_file is None) != (self.credentials is None):
            log.warning("SIGHUP: users_file switched on or off: that needs a restart")
        elif settings.users_file is not None:
            # The users file and the passfile: new logins use them (decision 0018).
            self.credentials = _credentials(settings, self.target)

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

    def _warn_pooled_read_only(self) -> None:
        if self.settings.upstream_pooler == "transaction" and self.settings.policy.has_read_only:
            log.warning(
                "read-only mode behind a transaction-mode pooler: softguard refuses the "
                "writes, DDL and code it can read, but the server does not make those "
                "sessions read-only (a SELECT of a function that writes is not stopped; "
                "decision 0026)"
            )

    async def start(self, sock: socket.socket | None = None) -> None:
        self._warn_pooled_read_only()
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


def _held_password(settings: Settings) -> str | None:
    """The one password softguard holds for every role (SOFTGUARD_UPSTREAM_PASSWORD)."""
    password = settings.upstream_password
    return password.get_secret_value() if password is not None else None


def _credentials(settings: Settings, target: UpstreamTarget) -> Credentials | None:
    """What softguard holds to end authentication itself (decision 0018), or None."""
    if settings.users_file is None:
        return None
    return Credentials.load(
        settings.users_file,
        settings.upstream_passfile,
        _held_password(settings) or target.password,
        target.host,
        target.port,
        settings.tls_cert,
    )


def _client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(
            f"TLS: cannot load certificate {settings.tls_cert} and key {settings.tls_key}: "
            f"{exc.strerror or exc}"
        ) from None
    return ctx


class TlsFileError(Exception):
    """The client TLS certificate or key cannot be read or used (not a listen error)."""


def check_client_tls(settings: Settings) -> None:
    """Load the client TLS files once before serving; raises TlsFileError."""
    _client_ssl_context(settings)


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
    reload: Reload | None = None,
    ready: Callable[[], None] | None = None,
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
    loop.add_signal_handler(signal.SIGHUP, _reload, server, reload)
    if ready is not None:
        ready()
    await stop.wait()
    log.info("shutting down: %d open connection(s)", len(server.sessions))
    await server.shutdown(settings.shutdown_timeout)
    server.metrics.close()


def _reload(server: ProxyServer, reload: Reload | None) -> None:
    if reload is None:
        log.info("SIGHUP: nothing to reload")
        return
    try:
        settings = reload()
    except ValueError as exc:  # ConfigError: keep running with what was loaded
        log.error("SIGHUP: configuration not reloaded, keeping the current one: %s", exc)
        return
    server.reload(settings)
    log.info(
        "SIGHUP: configuration reloaded (policy, log level, users); %d session(s) kept",
        len(server.sessions),
    )


def run_worker(
    settings: Settings,
    target: UpstreamTarget,
    sock: socket.socket,
    index: int = 0,
    metrics: Metrics | None = None,
    reload: Reload | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """``ready``: called once the worker accepts clients and handles its signals."""
    install_event_loop_policy()
    sock.listen(1024)
    asyncio.run(_run_worker(settings, target, sock, index, metrics, reload, ready))


def _ready_byte(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b".")
        os.close(fd)


def _wait_ready(fd: int, workers: int, timeout: float) -> None:
    """Until every worker said it accepts clients, one died (EOF) or ``timeout`` passed."""
    import select

    deadline = time.monotonic() + timeout
    seen = 0
    while seen < workers:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            readable, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not readable:
            return
        chunk = os.read(fd, workers)
        if not chunk:
            return
        seen += len(chunk)


def serve_forever(
    settings: Settings,
    target: UpstreamTarget,
    metrics: Metrics | None = None,
    *,
    reload: Reload | None = None,
    on_listening: OnListening | None = None,
) -> None:
    """Run the proxy until SIGTERM/SIGINT: in this process, or in N forked workers.

    ``metrics``: the Metrics of the single worker (e.g. shared with a purge scheduler in
    this process); with N > 1, each forked worker makes its own and this one is unused.
    ``reload``: called on SIGHUP for the new settings (each worker calls it itself).
    ``on_listening``: told the port once it is bound, before any client is accepted.
    """
    workers = settings.workers
    host, port = settings.listen_host, settings.listen_port
    log.info(
        "relay fast path: %s; ready plain sessions on %s",
        "compiled (softguard._hotpath)"
        if hotpath.COMPILED
        else "pure Python (softguard._hotpath not built or SOFTGUARD_PURE_PYTHON set)",
        "softguard's own socket reads and writes"
        if link.AVAILABLE
        else "the event loop's transports",
    )
    if settings.metrics_address is not None:
        # Here, before forking: a bad address is one clear error, not dying workers.
        check_metrics_address(*settings.metrics_address, workers)
    if workers == 1:
        sock = bind_listener(host, port, reuse_port=False)
        bound = sock.getsockname()[1]
        ready = None if on_listening is None else (lambda: on_listening(bound))
        run_worker(settings, target, sock, 0, metrics, reload, ready)
        return
    # The parent holds a bound (never listening) socket so an ephemeral port stays ours.
    anchor = bind_listener(host, port, reuse_port=True)
    port = anchor.getsockname()[1]
    children: dict[int, int] = {}
    # Each worker writes one byte here once it accepts clients (see _ready_byte).
    ready_r, ready_w = os.pipe()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                anchor.close()
                os.close(ready_r)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # Until the worker's loop handles it, a reload must not kill the worker.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                run_worker(
                    settings,
                    target,
                    bind_listener(host, port, reuse_port=True),
                    index,
                    reload=reload,
                    ready=lambda: _ready_byte(ready_w),
                )
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

    def on_hangup(_signum: int, _frame: object) -> None:
        for pid in children:  # each worker reloads its own configuration
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    for i in range(workers):
        spawn(i)
    os.close(ready_w)
    _wait_ready(ready_r, workers, settings.connect_timeout + 60)
    os.close(ready_r)
    if on_listening is not None:
        on_listening(port)
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
