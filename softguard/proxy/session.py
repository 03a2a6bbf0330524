"""One proxied client connection and its upstream connection (session mode).

The hot path is ``_client_data`` / ``_server_ready_data``: frame just enough to find
Query/Parse texts (client side) and ReadyForQuery/ErrorResponse (server side), hand whole
chunks to the other transport, decode nothing else. What a statement becomes is decided
in ``statements.py``; how a rewritten statement's answers are restored, in
``softguard.wire.results``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from enum import Enum, auto
from typing import TYPE_CHECKING, cast

from softguard.policy import SessionInfo
from softguard.proxy.metrics import NOTICE_MARKER, log_operation
from softguard.proxy.statements import NeedLedger, Rebuilt, SoftSession, plan_message
from softguard.proxy.upstream import UpstreamError, open_upstream
from softguard.sql.rewrite import RewritePlan
from softguard.wire import (
    CancelRequest,
    ClientProtocolError,
    Framer,
    GSSENCRequest,
    Message,
    ProtocolViolation,
    ServerProtocolError,
    SSLRequest,
    StartupMessage,
    StartupReader,
    error_response,
    parse_fields,
    strip_scram_plus,
)
from softguard.wire.constants import AUTH_SASL, FRONTEND_TYPES, TX_IDLE
from softguard.wire.messages import TERMINATE, auth_code, with_hint
from softguard.wire.results import ResultFilter, without_context

if TYPE_CHECKING:
    from softguard.proxy.server import ProxyServer

log = logging.getLogger("softguard.session")

_Q, _P, _S, _F = b"QPSF"
_Z, _E, _R, _K = b"ZERK"
# Client messages the proxy reads: statement texts, and what produces a ReadyForQuery.
_CLIENT_WANT = frozenset((_Q, _P, _S, _F))
# Server messages the proxy reads once the session is up.
_N, _C = b"NC"
# NoticeResponse too: softguard's "reversible as operation N" notice (metrics, the
# operation log line); notices are rare, so this costs nothing on rows.
_SERVER_WANT = frozenset((_Z, _E, _N))
# Once a session has sent a rewritten statement, its answers are filtered too.
_SERVER_WANT_FILTERED = frozenset((_Z, _E, _N, _C))
_MAX_EARLY_BYTES = 1 << 20
# SCRAM channel binding cannot span a proxy that terminates TLS: libpq, on TLS and not
# offered SCRAM-SHA-256-PLUS, tells the server so, and a server on TLS itself then suspects
# a downgrade. Nothing in between can fix that, since the client signs that flag.
_CHANNEL_BINDING_HINT = (
    "softguard terminates the client's TLS, so SCRAM channel binding cannot reach the "
    "server: connect with channel_binding=disable, or run softguard with an upstream "
    "sslmode of disable/allow on a trusted network."
)  # client bytes buffered while the upstream is being reached


class State(Enum):
    STARTUP = auto()  # reading the startup packet (SSL/GSSENC negotiation included)
    TLS = auto()  # handshaking TLS with the client
    CONNECTING = auto()  # reaching the upstream
    AUTH = auto()  # relaying authentication until the first ReadyForQuery
    READY = auto()  # relaying
    CLOSED = auto()


class UpstreamProtocol(asyncio.Protocol):
    """The upstream side: forwards every event to its session."""

    __slots__ = ("_answer", "session", "transport")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[bytes] | None = None

    def expect_ssl_answer(self) -> asyncio.Future[bytes]:
        self._answer = asyncio.get_running_loop().create_future()
        return self._answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is not None:
            # The one-byte reply to SSLRequest; anything after it would be a server
            # speaking before the handshake, which libpq also refuses.
            self._answer = None
            if not answer.done():
                answer.set_result(data[:1] if len(data) == 1 else b"?")
            return
        self.session._server_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(ConnectionError("upstream closed during SSL negotiation"))
        self.session._server_lost(exc)

    def pause_writing(self) -> None:
        self.session._set_client_reading(paused=True, reason="upstream-buffer")

    def resume_writing(self) -> None:
        self.session._set_client_reading(paused=False, reason="upstream-buffer")


class ClientSession(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.state = State.STARTUP
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.up_transport: asyncio.Transport | None = None
        self.info = SessionInfo("", "", "", "")
        self.peer = "?"
        self.tx_status = TX_IDLE
        # ReadyForQuery messages still owed to the client (one per Query/Sync/FunctionCall).
        self.pending = 0
        self._startup = StartupReader()
        self._tls_done = False
        self._cframer = Framer(
            want=_CLIENT_WANT,
            allowed=FRONTEND_TYPES,
            max_want_length=server.settings.max_inspect_bytes,
        )
        self._sframer = Framer(want=None, error_class=ServerProtocolError)
        self._early: list[bytes] = []
        self._early_size = 0
        self._paused_reasons: set[str] = set()
        self._client_bytes = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_mark = -1
        self._startup_timer: asyncio.TimerHandle | None = None
        self._server_fatal = False
        self._closing_for_shutdown = False
        self._cancel_key: tuple[int, bytes] | None = None
        # Set once the session has sent a rewritten statement; then stays on.
        self._filter: ResultFilter | None = None
        self._plan: RewritePlan | None = None
        self._retag: frozenset[int] = frozenset()
        self._parse_plan: RewritePlan | None = None
        self._soft = SoftSession()
        self._resumed: Message | None = None
        # Observability: (category, text) of statements made reversible and not yet paired
        # with their operation's NOTICE; [ReadyForQuery countdown, start] per rewritten
        # statement in flight; when the upstream connection began.
        self._protected: list[tuple[str, str]] = []
        self._timings: list[list[float]] | None = None
        self._connect_started = 0.0

    # ------------------------------------------------------------------ client events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        elif peer:
            self.peer = str(peer)
        self.server.register(self)
        loop = self.server.loop
        self._startup_timer = loop.call_later(
            self.server.settings.startup_timeout, self._startup_timed_out
        )

    def data_received(self, data: bytes) -> None:
        if self.state is State.READY or self.state is State.AUTH:
            self._client_data(data)
        elif self.state is State.STARTUP:
            self._startup_data(data)
        elif self.state is State.CONNECTING:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _MAX_EARLY_BYTES:
                self._fail(ClientProtocolError("client sent too much data before authentication"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._cancel_timers()
        up = self.up_transport
        if up is not None and not up.is_closing():
            if self._cframer.at_boundary:
                up.write(TERMINATE)
            up.close()
        self.server.unregister(self)

    def pause_writing(self) -> None:
        if self.up_transport is not None:
            self.up_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up_transport is not None and not self.up_transport.is_closing():
            self.up_transport.resume_reading()

    # ------------------------------------------------------------------ startup

    def _startup_data(self, data: bytes) -> None:
        try:
            packet, rest = self._startup.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        if packet is None:
            return
        assert self.transport is not None
        if isinstance(packet, SSLRequest):
            if rest:
                # Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                self._fail(ClientProtocolError("received unencrypted data after SSL request"))
                return
            ctx = self.server.client_ssl
            if ctx is None or self._tls_done:
                if self._tls_done:
                    self._fail(ClientProtocolError("SSL negotiation requested twice"))
                    return
                self.transport.write(b"N")
                return
            self.transport.write(b"S")
            self.state = State.TLS
            self.transport.pause_reading()
            self.server.spawn(self._start_tls(ctx))
            return
        if isinstance(packet, GSSENCRequest):
            if rest:
                # As after SSLRequest: bytes sent before our answer are refused.
                self._fail(
                    ClientProtocolError("received unencrypted data after GSSAPI encryption request")
                )
                return
            self.transport.write(b"N")
            return
        if isinstance(packet, CancelRequest):
            self.server.spawn(self.server.forward_cancel(packet))
            self._close()
            return
        assert isinstance(packet, StartupMessage)
        if rest:
            # PostgreSQL leaves what follows the packet buffered for later; so do we.
            self._early.append(rest)
            self._early_size += len(rest)
        if self.server.over_capacity():
            self.server.metrics.refused["max_client_conn"].inc()
            self._send_fatal(
                "53300",
                f"softguard: too many client connections "
                f"(max_client_conn = {self.server.settings.max_client_conn})",
            )
            return
        self.info = SessionInfo(
            user=packet.user,
            database=packet.database,
            application_name=packet.application_name,
            client_addr=self.peer,
        )
        self.state = State.CONNECTING
        self._set_client_reading(paused=True, reason="connecting")
        self.server.spawn(self._connect(packet, self._startup_bytes(packet)))

    def _startup_bytes(self, packet: StartupMessage) -> bytes:
        """The startup packet for the server, with the session's capture settings.

        Row changes are captured by triggers in the database (decision 0006); these
        session defaults tell them that this session's deletes (and updates) are protected,
        who the client is, and how long to keep what they capture.
        """
        server = self.server
        events = server.policy.captured_events(self.info)
        settings = {
            "softguard.capture": ",".join(events) or "off",
            "softguard.retention": str(server.policy.retention_seconds(self.info)),
            "softguard.client_addr": self.peer.rpartition(":")[0] or self.peer,
        }
        return packet.with_settings(settings, reserved_prefix="softguard.")

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        assert self.transport is not None
        try:
            new = await self.server.loop.start_tls(self.transport, self, ctx, server_side=True)
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log.info(
                "client %s: TLS handshake failed: %s", self.peer, str(exc) or type(exc).__name__
            )
            self._close()
            return
        if self.state is State.CLOSED or new is None:
            return
        self.transport = new
        self._tls_done = True
        self.state = State.STARTUP

    async def _connect(self, packet: StartupMessage, startup: bytes) -> None:
        server = self.server
        upstream = UpstreamProtocol(self)
        self.upstream = upstream
        self._connect_started = time.perf_counter()
        try:
            async with asyncio.timeout(server.settings.connect_timeout):
                transport = await open_upstream(
                    server.loop, server.target, upstream, upstream, server.upstream_ssl
                )
        except TimeoutError:
            server.metrics.refused["upstream"].inc()
            self._send_fatal(
                "08006",
                f"softguard: timed out connecting to upstream server at {server.target.display}",
            )
            return
        except (UpstreamError, ConnectionError) as exc:
            server.metrics.refused["upstream"].inc()
            self._send_fatal("08006", f"softguard: {exc}")
            return
        if self.state is State.CLOSED:
            transport.close()
            return
        up = self.up_transport = cast(asyncio.Transport, transport)
        up.write(startup)
        self.state = State.AUTH
        early, self._early, self._early_size = self._early, [], 0
        for chunk in early:
            self._client_data(chunk)
        self._set_client_reading(paused=False, reason="connecting")

    def _startup_timed_out(self) -> None:
        self._startup_timer = None
        if self.state in (State.STARTUP, State.TLS, State.CONNECTING, State.AUTH):
            self.server.metrics.refused["protocol"].inc()
            self._send_fatal("08P01", "softguard: startup and authentication not completed in time")

    # ------------------------------------------------------------------ relaying

    def _client_data(self, data: bytes) -> None:
        self._client_bytes += len(data)
        try:
            buf, msgs, held = self._cframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        if msgs:
            self._relay_messages(buf, msgs, held, 0, 0)
        else:
            up = self.up_transport
            assert up is not None
            if held == 0:
                up.write(buf)
            elif len(buf) > held:
                up.write(buf[: len(buf) - held])
        if self._stall_timer is None and not self._cframer.at_boundary:
            self._arm_stall_timer()

    def _relay_messages(
        self, buf: bytes, msgs: list[Message], held: int, index: int, cursor: int
    ) -> None:
        """Forward ``buf`` with the wanted ``msgs[index:]`` inspected (and maybe replaced)."""
        up = self.up_transport
        assert up is not None
        for i in range(index, len(msgs)):
            msg = msgs[i]
            mtype = msg.type
            if mtype == _Q or mtype == _P:
                try:
                    replacement = self._inspect(msg)
                except ProtocolViolation as exc:
                    self._fail(exc)
                    return
                if isinstance(replacement, NeedLedger):
                    if msg.start > cursor:
                        up.write(buf[cursor : msg.start])
                    self._defer(buf, msgs, held, i, max(msg.start, 0))
                    return
                if mtype == _Q:
                    self.pending += 1
                    if self._filter is not None:
                        self._filter.expect_ready(self._plan, self._retag)
                        self._plan = None
                        self._retag = frozenset()
                if replacement is None and msg.start >= 0:
                    continue
                if msg.start > cursor:
                    up.write(buf[cursor : msg.start])
                up.write(msg.raw if replacement is None else replacement)
                cursor = msg.end
                continue
            self.pending += 1  # Sync or FunctionCall: each ends with a ReadyForQuery
            if self._filter is not None:
                self._filter.expect_ready(self._parse_plan)
                self._parse_plan = None
            if msg.start < 0:
                up.write(msg.raw)
                cursor = msg.end
        end = len(buf) - held
        if cursor == 0 and held == 0:
            up.write(buf)
        elif end > cursor:
            up.write(buf[cursor:end])

    def _defer(self, buf: bytes, msgs: list[Message], held: int, index: int, cursor: int) -> None:
        """Hold the client's stream until the ledger of this database is known."""
        self._set_client_reading(paused=True, reason="ledger")

        async def resume() -> None:
            await self.server.ledger.ensure(self.info.database, self.info.user)
            if self.state is State.CLOSED:
                return
            self._resumed = msgs[index]  # its decision was logged before the wait
            self._relay_messages(buf, msgs, held, index, cursor)
            self._resumed = None
            self._set_client_reading(paused=False, reason="ledger")

        self.server.spawn(resume())

    def _inspect(self, msg: Message) -> bytes | NeedLedger | None:
        """Apply the inspection seam; turn result filtering on once anything is rewritten."""
        protected = self._protected
        before = len(protected)
        result = plan_message(
            self.server,
            self.info,
            msg,
            log_it=msg is not self._resumed,
            protected=protected,
            soft=self._soft,
        )
        if not isinstance(result, Rebuilt):
            if isinstance(result, NeedLedger):
                del protected[before:]  # planned again once the ledger is known
            return result
        if len(protected) > before:
            # Made reversible: time it until its ReadyForQuery (this message's, or the
            # next Sync's), after the ones still owed.
            if self._timings is None:
                self._timings = []
            self._timings.append([self.pending + 1, time.perf_counter()])
            if len(protected) > 64:
                del protected[:-64]
        if self._filter is None:
            self._filter = ResultFilter()
            # The rewritten statement's answers have not begun: safe to widen the framing.
            self._sframer.set_want(_SERVER_WANT_FILTERED)
            # Answers still owed for messages sent before filtering began come first.
            for _ in range(self.pending):
                self._filter.expect_ready(None)
        if msg.type == _Q:
            self._plan = result.plan
            self._retag = result.retag
        else:
            self._parse_plan = result.plan  # positions of errors before the next Sync
        return result.raw

    def _server_data(self, data: bytes) -> None:
        if self.state is State.READY:
            self._server_ready_data(data)
        elif self.state is State.AUTH:
            self._server_startup_data(data)

    def _server_ready_data(self, data: bytes) -> None:
        client = self.transport
        assert client is not None
        try:
            buf, msgs, held = self._sframer.feed(data)
        except ProtocolViolation as exc:
            client.write(data)
            self._fail(exc)
            return
        cursor = 0
        filt = self._filter
        for msg in msgs:
            mtype = msg.type
            if mtype == _Z:
                self._ready_for_query(msg.body)
            elif mtype == _E and _is_fatal(msg.body):
                self._server_fatal = True
            elif mtype == _N and NOTICE_MARKER in msg.body:
                log_operation(self.server.metrics, msg.body, self.info, self._protected)
            replacement = None if filt is None else filt.process(mtype, msg.body)
            if replacement is None and mtype == _N and NOTICE_MARKER in msg.body:
                replacement = without_context(mtype, msg.body)
            if filt is not None and filt.ledger_missing:
                filt.ledger_missing = False
                self.server.ledger.forget(self.info.database)
            if replacement is None and msg.start >= 0:
                continue
            if msg.start > cursor:
                client.write(buf[cursor : msg.start])
            if replacement is None:
                client.write(msg.raw)
            elif replacement:
                client.write(replacement)
            cursor = msg.end
        end = len(buf) - held
        if cursor == 0 and held == 0:
            client.write(buf)
        elif end > cursor:
            client.write(buf[cursor:end])
        if self._closing_for_shutdown:
            self._after_server_chunk()

    def _server_startup_data(self, data: bytes) -> None:
        """Until the first ReadyForQuery: read every message (auth offer, key data)."""
        client = self.transport
        assert client is not None
        try:
            _, msgs, _ = self._sframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        for msg in msgs:
            mtype = msg.type
            if mtype == _R and auth_code(msg.body) == AUTH_SASL:
                client.write(_message(_R, strip_scram_plus(msg.body)))
                continue
            if mtype == _E and self._tls_done and b"channel binding" in msg.body:
                client.write(_message(_E, with_hint(msg.body, _CHANNEL_BINDING_HINT)))
                continue
            client.write(msg.raw)
            if mtype == _K and len(msg.body) >= 8:
                self._cancel_key = (int.from_bytes(msg.body[:4], "big"), msg.body[4:])
            elif mtype == _E and _is_fatal(msg.body):
                self._server_fatal = True
            elif mtype == _Z:
                self.state = State.READY
                if self._startup_timer is not None:
                    self._startup_timer.cancel()
                    self._startup_timer = None
                self._sframer.set_want(_SERVER_WANT)
                self.pending = 0
                self._ready_for_query(msg.body)
                self.server.metrics.upstream_connect_seconds.observe(
                    time.perf_counter() - self._connect_started
                )
                log.debug(
                    "client %s: session ready user=%s db=%s",
                    self.peer,
                    self.info.user,
                    self.info.database,
                )
        if self._closing_for_shutdown:
            self._after_server_chunk()

    def _ready_for_query(self, body: bytes) -> None:
        self.tx_status = body[0] if body else TX_IDLE
        if self.pending > 0:
            self.pending -= 1
        if self._timings or self._protected:
            self._after_ready()

    def _after_ready(self) -> None:
        """A ReadyForQuery went by: rewritten statements it ends are timed."""
        timings = self._timings
        if timings:
            now = time.perf_counter()
            histogram = self.server.metrics.rewritten_statement_seconds
            for entry in timings:
                entry[0] -= 1
                if entry[0] <= 0:
                    histogram.observe(now - entry[1])
            timings[:] = [e for e in timings if e[0] > 0]
        if self.pending == 0:
            self._protected.clear()  # statements that made no operation (error, no rows)

    def _after_server_chunk(self) -> None:
        """Once a chunk is forwarded: a session waiting to shut down may go now."""
        if self._closing_for_shutdown and self.is_idle:
            self.terminate(
                "57P01", "softguard: terminating connection because softguard is shutting down"
            )

    def _server_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CONNECTING:
            return  # _connect reports the failure
        client = self.transport
        if client is not None and not client.is_closing():
            if not self._server_fatal and self._sframer.at_boundary:
                # Only at a message boundary can the client still parse what we add.
                client.write(
                    error_response(
                        "08006",
                        "softguard: lost connection to the upstream server",
                        severity="FATAL",
                    )
                )
            client.close()
        self.state = State.CLOSED
        self._cancel_timers()
        self.server.unregister(self)

    # ------------------------------------------------------------------ flow control

    def _set_client_reading(self, *, paused: bool, reason: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        was_paused = bool(self._paused_reasons)
        if paused:
            self._paused_reasons.add(reason)
        else:
            self._paused_reasons.discard(reason)
        now_paused = bool(self._paused_reasons)
        if now_paused and not was_paused:
            transport.pause_reading()
        elif was_paused and not now_paused:
            transport.resume_reading()

    def _arm_stall_timer(self) -> None:
        self._stall_mark = self._client_bytes
        self._stall_timer = self.server.loop.call_later(
            self.server.settings.client_stall_timeout, self._check_stall
        )

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self.state is State.CLOSED or self._cframer.at_boundary:
            return
        if self._client_bytes == self._stall_mark:
            self._fail(
                ClientProtocolError(
                    "softguard: client stalled in the middle of a message for "
                    f"{self.server.settings.client_stall_timeout:g} s"
                )
            )
            return
        self._arm_stall_timer()

    # ------------------------------------------------------------------ ending

    @property
    def is_idle(self) -> bool:
        return (
            self.state is State.READY
            and self.pending == 0
            and self.tx_status == TX_IDLE
            and self._cframer.at_boundary
        )

    def begin_shutdown(self) -> None:
        """Close now if idle, else after the transaction in progress ends."""
        if self.state is not State.READY or self.is_idle:
            self.terminate(
                "57P01", "softguard: terminating connection because softguard is shutting down"
            )
        else:
            self._closing_for_shutdown = True

    def terminate(self, sqlstate: str, text: str) -> None:
        if self.state is State.CLOSED:
            return
        if self._sframer.at_boundary or self.state is not State.READY:
            self._send_fatal(sqlstate, text)
        else:
            self._close()

    def _fail(self, exc: ProtocolViolation) -> None:
        side = "upstream" if isinstance(exc, ServerProtocolError) else "client"
        log.warning("%s %s: %s (%s)", side, self.peer, exc.message, exc.sqlstate)
        if side == "client" and self.state is not State.READY:
            self.server.metrics.refused["protocol"].inc()
        if self.state is State.READY and not self._sframer.at_boundary:
            self._close()
            return
        self._send_fatal(
            exc.sqlstate,
            exc.message if exc.message.startswith("softguard") else f"softguard: {exc.message}",
        )

    def _send_fatal(self, sqlstate: str, text: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(error_response(sqlstate, text, severity="FATAL"))
        self._close()

    def _close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        up = self.up_transport
        if up is not None and not up.is_closing():
            if self._cframer.at_boundary and self.state is State.READY:
                up.write(TERMINATE)
            up.close()
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._cancel_timers()
            self.server.unregister(self)

    def _cancel_timers(self) -> None:
        for timer in (self._stall_timer, self._startup_timer):
            if timer is not None:
                timer.cancel()
        self._stall_timer = self._startup_timer = None


def _message(mtype: int, body: bytes) -> bytes:
    return bytes((mtype,)) + (len(body) + 4).to_bytes(4, "big") + body


def _is_fatal(body: bytes) -> bool:
    try:
        fields = parse_fields(body)
    except ProtocolViolation:
        return False
    severity = fields.get("V") or fields.get("S", "")
    return severity in ("FATAL", "PANIC")
