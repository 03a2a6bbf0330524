"""How a client connection's byte streams become actions (sans-IO).

``SessionCore`` is the per-connection state machine of session mode: startup and SSL/GSSENC
negotiation, the authentication relay, ReadyForQuery accounting, the inspection seam
(``statements.plan_message``), result filtering (``softguard.wire.results``), waiting for
the ledger, stalls and shutdown. It imports no asyncio and no socket: events go in as
method calls (``client_data``, ``server_data``, ``upstream_connected``, ``ledger_known``,
timer expiries ...) and what to do comes out in two ways:

- ``to_server`` / ``to_client``: the bytes to send, in order, handed to a sink (the
  transport's ``write`` in ``proxy/session.py``, a list's ``append`` in tests). Harmless
  traffic is the very chunk that arrived (or a slice of it); only inspected messages are
  decoded. A sink rather than a list to drain: the relay stays as cheap as a proxy
  writing its transports directly (bench/relay_cpu.py).
- ``controls``: everything else (``Connect``, ``StartTLS``, ``WaitLedger``, ``Close`` ...),
  a list the I/O glue executes after every call, once the bytes are sent.

Rules that always hold here:
- What softguard itself says to the client (a FATAL ErrorResponse) is only added at a
  message boundary of the server stream; otherwise the connection is just closed.
- Nothing shared is changed from here: counting goes to the ``StatementCounter`` handed
  in, cache invalidation and metrics leave as controls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, cast

from softguard import contract
from softguard.auth.login import ClientLogin, Credentials, LoginRefused, ServerLogin
from softguard.contract import NOTICE_MARKER_BYTES
from softguard.policy import Action, SessionInfo
from softguard.proxy.commands import (
    Cache,
    ClassifyOffLoop,
    ClientReading,
    Close,
    Connect,
    Control,
    Forget,
    ForwardCancel,
    Measure,
    Observe,
    OperationNotice,
    Refused,
    RequestApproval,
    SetTimer,
    StartTLS,
    Timer,
    WaitLedger,
)
from softguard.proxy.statements import (
    SAFE,
    AllowedShapes,
    NeedLedger,
    PlanInputs,
    SoftSession,
    allowed_passes,
    passes_unread,
    plan_message,
    take_call_key,
)
from softguard.speedups import CoreBase
from softguard.sql import Classification
from softguard.sql.prefilter import may_be_destructive
from softguard.sql.rewrite import RewritePlan, refusal
from softguard.sql.soft_delete import prepared_changes
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
    parse_query_text,
    strip_scram_plus,
)
from softguard.wire.constants import AUTH_SASL, FRONTEND_TYPES, TX_IDLE
from softguard.wire.function_call import REFUSAL_HINT, function_call_oid, lo_open_mode
from softguard.wire.messages import auth_code, with_hint
from softguard.wire.results import ALL_NAMES, UNKNOWN_NAME, ResultFilter, without_context

log = logging.getLogger("softguard.session")

_Q, _P, _S, _F = b"QPSF"
_Z, _E, _R, _K, _D = b"ZERKD"
# Client messages the proxy reads: statement texts, and what produces a ReadyForQuery.
_CLIENT_WANT = frozenset((_Q, _P, _S, _F))
# While answers are filtered, Close too: it may drop a statement made from a rewrite.
_CLOSE = ord("C")
_CLIENT_WANT_FILTERED = _CLIENT_WANT | {_CLOSE}
# While the client logs in to softguard: its password messages, or Terminate.
_TERMINATE, _PASSWORD = b"Xp"
_MAX_LOGIN_MESSAGE = 1 << 16
# Server messages the proxy reads once the session is up.
_N, _C = b"NC"
# NoticeResponse too: softguard's "reversible as operation N" notice (metrics, the
# operation log line); notices are rare, so this costs nothing on rows.
# ParameterStatus ('S' from the server): client_encoding, which decides how the server
# reads the next statement texts (decision 0011); sent only when a reported setting changes.
_PARAMETER_STATUS = ord("S")
_SERVER_WANT = frozenset((_Z, _E, _N, _PARAMETER_STATUS))
# Once a session has sent a rewritten statement, its answers are filtered too.
_SERVER_WANT_FILTERED = frozenset((_Z, _E, _N, _C, _PARAMETER_STATUS))
# Client bytes buffered while the upstream is being reached.
_MAX_EARLY_BYTES = 1 << 20
_MAX_PROTECTED = 64
# At most this much of the server's answer waits for the bytes after an operation's NOTICE.
_MAX_HELD_OUT = 1 << 16
# The registration's errors that mean the ledger is not there (any more): undefined
# function, invalid schema name.
_LEDGER_GONE = frozenset(("42883", "3F000"))
# SCRAM channel binding cannot span a proxy that terminates TLS: libpq, on TLS and not
# offered SCRAM-SHA-256-PLUS, tells the server so, and a server on TLS itself then suspects
# a downgrade. Nothing in between can fix that, since the client signs that flag.
_CHANNEL_BINDING_HINT = (
    "softguard terminates the client's TLS, so SCRAM channel binding cannot reach the "
    "server: connect with channel_binding=disable, or run softguard with an upstream "
    "sslmode of disable/allow on a trusted network."
)
_TLS_REQUIRED = (
    "softguard: this server requires TLS (SSL) from clients; connect with sslmode=require "
    "(or verify-ca/verify-full) and channel_binding=disable"
)
SHUTDOWN = ("57P01", "softguard: terminating connection because softguard is shutting down")


class State(Enum):
    STARTUP = auto()  # reading the startup packet (SSL/GSSENC negotiation included)
    TLS = auto()  # handshaking TLS with the client
    LOGIN = auto()  # the client logs in to softguard (credentials softguard holds)
    CONNECTING = auto()  # reaching the upstream
    AUTH = auto()  # relaying authentication until the first ReadyForQuery
    REGISTERING = auto()  # registering the session in the ledger (decision 0012)
    READY = auto()  # relaying
    CLOSED = auto()


_CONNECT = Connect()
_START_TLS = StartTLS()
_PAUSE = ClientReading(paused=True)
_RESUME = ClientReading(paused=False)


class StatementCounter(Protocol):
    """Where inspected statements are counted (``Metrics``): a SAFE one is a plain
    integer increment, the rest are rare."""

    safe_statements: int
    # Query/Sync/FunctionCall messages relayed while the session's answers were filtered
    # (the fast paths step aside for them), and filters dropped (the session back on them).
    filtered_statements: int
    filters_released: int

    def count_statement(self, classification: str, action: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The settings the state machine reads (``Settings`` has them all)."""

    max_inspect_bytes: int = 1 << 20
    # Statement texts longer than this that might be destructive are classified off the
    # event loop (``ClassifyOffLoop``); 0: never.
    offload_bytes: int = 0
    startup_timeout: float = 60.0
    client_stall_timeout: float = 60.0
    max_client_conn: int = 1000
    tls: bool = False  # whether the proxy can accept TLS from clients
    # Set: clients log in to softguard and softguard to the server (decision 0018);
    # None: authentication is relayed between them.
    credentials: Credentials | None = None
    # Whether a session-mode pooler (or a TCP proxy) between softguard and the server is
    # declared; undeclared, a session whose server sees another client port is refused.
    upstream_pooler: bool = False
    # Whether that pooler pools transactions: sessions are then registered by login role,
    # since the client's next transaction may run on another backend (decision 0026).
    register_roles: bool = False
    require_tls: bool = False  # refuse clients that did not negotiate TLS


Sink = Callable[[bytes], None]


def _unconnected(data: bytes) -> None:
    raise AssertionError("bytes for a connection that does not exist yet")


class SessionCore(CoreBase):
    """One client connection and its upstream connection, as a pure state machine.

    The fields its fast paths read live in ``CoreBase`` (softguard/speedups.py), where the
    compiled fast path (proxy/hotpath.py) reads them too."""

    def __init__(
        self,
        config: CoreConfig,
        inputs: PlanInputs,
        counter: StatementCounter,
        *,
        peer: str = "?",
        to_server: Sink = _unconnected,
        to_client: Sink = _unconnected,
        over_capacity: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.config = config
        self.inputs = inputs
        self.counter = counter
        self.peer = peer
        self._over_capacity = over_capacity
        self._clock = clock
        # Where bytes go (set by the glue once each connection exists), and what else to
        # do, executed by the glue after every call.
        self.to_server = to_server
        self.to_client = to_client
        self.controls: list[Control] = []
        self.state = State.STARTUP
        self.info = SessionInfo("", "", "", "")
        self.tx_status = TX_IDLE
        # How the server reads this session's statement texts: the last client_encoding it
        # reported (ParameterStatus), UTF8 until then.
        self.client_encoding = "UTF8"
        # ReadyForQuery messages still owed to the client (one per Query/Sync/FunctionCall).
        self.pending = 0
        self.cancel_key: tuple[int, bytes] | None = None
        self._startup = StartupReader()
        self._startup_packet = b""
        self._client_login: ClientLogin | None = None
        self._login_packet: StartupMessage | None = None
        self._server_login: ServerLogin | None = None
        # A read-only session (decision 0019), and whether the server reported that
        # something switched its read-only default off.
        self._read_only = False
        self._read_only_lost = False
        self._mode_generation = -1
        self._mode_is_full = True
        # The Query and Parse shapes this session's policy lets pass as sent (statements.
        # remember_allowed), for its current generation: emptied when that changes.
        self._allowed: AllowedShapes = {}
        # softguard's port of the upstream connection, and the port the server reported
        # seeing at registration ("" when it said NULL: a Unix socket).
        self._local_port: int | None = None
        self._server_saw_port: str | None = None
        self._tls_done = False
        self._cframer = self._client_framer()
        self._sframer = Framer(want=None, error_class=ServerProtocolError)
        self._early: list[bytes] = []
        self._early_size = 0
        # The server's first ReadyForQuery, held while the session is registered; then
        # whether the client's bytes are being held until it is (``_hold_client``).
        self._first_ready = b""
        self._holding = False
        self._registration_sent = False
        self._registration_error = ""
        self._paused_reasons: set[str] = set()
        self._client_bytes = 0
        self._stall_armed = False
        self._stall_mark = -1
        self._server_fatal = False
        self._closing_for_shutdown = False
        # The client closed its sending side (``client_eof``): it is owed the answers to
        # what it sent before, then the session ends. Sets ``_closing_for_shutdown`` too,
        # which is what sends every server chunk through ``_after_server_chunk``.
        self._client_ended = False
        # Set while the session has a rewritten statement in flight, or a prepared
        # statement made from one (``_start_filtering``, ``_maybe_stop_filtering``).
        self._filter: ResultFilter | None = None
        self._plan: RewritePlan | None = None
        self._retag: frozenset[int] = frozenset()
        self._parse_plan: RewritePlan | None = None
        self._soft = SoftSession()
        # The client's stream held while the ledger is checked: (buf, msgs, held, index,
        # cursor) as ``_relay_messages`` takes them.
        self._deferred: tuple[bytes, list[Message], int, int, int] | None = None
        # A held message's classification, made off the loop (``classified``).
        self._known: tuple[Message, Classification] | None = None
        # Observability: (category, text) of statements made reversible and not yet paired
        # with their operation's NOTICE; [ReadyForQuery countdown, start] per rewritten
        # statement in flight; when the upstream connection began.
        self._protected: list[tuple[str, str]] = []
        self._timings: list[list[float]] | None = None
        # An answer ending with an operation's NOTICE, not yet sent (``_server_messages``);
        # and whether the server's next chunk may skip framing (no filter, nothing held).
        self._held_out = b""
        self._answers_plain = True
        self._connect_started = 0.0

    # ------------------------------------------------------------------ events

    def start(self) -> None:
        """The client connected."""
        self.controls.append(SetTimer(Timer.STARTUP, self.config.startup_timeout))

    def client_data(self, data: bytes) -> None:
        """Bytes from the client. The hot path: once the session is up, relayed from here."""
        state = self.state
        if state is not State.READY:
            if state is State.AUTH and not self._holding and self._server_login is None:
                self._client_auth_data(data)
            elif state is State.AUTH or state is State.REGISTERING:
                self._hold_client(data)
            else:
                self._client_data_before_auth(data)
            return
        n = len(data)
        self._client_bytes += n
        cframer = self._cframer
        if cframer.lone(data, _Q):
            # The commonest chunk: one whole Query. Proven harmless from its bytes, it
            # goes on as it came, without framing objects (a framer's state is unchanged
            # by a lone message). A text not ended by its only NUL is left to the framing
            # path, which reports it.
            if self._known is None and data.find(b"\0", 5) == n - 1 and self._full_mode():
                text = data[5:-1]
                if passes_unread(text, self._soft):
                    self.counter.safe_statements += 1
                    if self._filter is None:
                        self.pending += 1  # _query_sent, one call less per statement
                    else:
                        self._note_query(text)
                        self._query_sent()
                    self.to_server(data)
                    return
                if self._allowed and self._filter is None and not self._soft.prepared:
                    # A shape the policy let pass before (pgbench's UPDATEs): what
                    # planning would do for it, without planning.
                    counted = allowed_passes(text, self._allowed)
                    if counted is not None:
                        self.counter.count_statement(*counted)
                        self.pending += 1
                        self.to_server(data)
                        return
                # Planned: the one Message ``feed`` would hand out, its text already read
                # and already found to need planning.
                self._relay_messages(data, [Message(_Q, data[5:], 0, n)], 0, 0, 0, read=text)
                return
        elif self._filter is None and cframer.lone_last(data, _S, 4):
            # Bind/Execute/Sync (a prepared statement): nothing in it but the Sync is read.
            self.pending += 1
            self.to_server(data)
            return
        elif self._filter is None and self._known is None:
            # A driver's Parse/Bind/Describe/Execute/Sync whose text is proven harmless
            # from its bytes: what ``_relay_messages`` does for it, without framing objects.
            parsed = cframer.parse_then_sync(data)
            if parsed is not None and self._full_mode():
                if passes_unread(parsed, self._soft):
                    self.counter.safe_statements += 1
                    self.pending += 1
                    self.to_server(data)
                    return
                if self._allowed and not self._soft.prepared:
                    counted = allowed_passes(parsed, self._allowed, parse=True)
                    if counted is not None:  # as for a Query above
                        self.counter.count_statement(*counted)
                        self.pending += 1
                        self.to_server(data)
                        return
        try:
            buf, msgs, held = self._cframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        if msgs:
            self._relay_messages(buf, msgs, held, 0, 0)
        elif held == 0:
            self.to_server(buf)
        elif len(buf) > held:
            self.to_server(buf[: len(buf) - held])
        if not self._stall_armed and not self._cframer.at_boundary:
            self._arm_stall_timer()

    def server_data(self, data: bytes) -> None:
        """Bytes from the server. The hot path: once the session is up, relayed from here."""
        if self.state is not State.READY:
            if self.state is State.AUTH:
                self._server_startup_data(data)
            elif self.state is State.REGISTERING:
                self._server_registering_data(data)
            return
        if self._answers_plain and self._sframer.lone_last(data, _Z, 5):
            # The commonest answer: whatever rows, then ReadyForQuery, nothing else read
            # (``_ready_for_query`` inlined: one call less per statement).
            self.tx_status = data[-1]
            if self.pending > 0:
                self.pending -= 1
            if self._timings or self._protected:
                self._after_ready()
            self.to_client(data)
        elif not self._server_messages(data):
            return
        if self._read_only_lost:
            self._end_read_only_session()
        elif self._closing_for_shutdown:
            self._after_server_chunk()

    def _server_messages(self, data: bytes) -> bool:
        """Relay a chunk from the server, its wanted messages read (and maybe replaced);
        False when it broke the protocol (the session is ending)."""
        out = self.to_client
        try:
            buf, msgs, held = self._sframer.feed(data)
        except ProtocolViolation as exc:
            self._release_held()
            out(data)
            self._fail(exc)
            return False
        cursor = 0
        filt = self._filter
        # What goes to the client, sent in one write at the end: a replaced message would
        # otherwise cost a write for the bytes before it, one for itself and one for the rest.
        parts: list[bytes] = []
        if self._held_out:
            parts.append(self._held_out)
            self._held_out = b""
            self._answers_plain = filt is None
        operation_last = False
        ready_seen = False
        for msg in msgs:
            mtype = msg.type
            operation = False
            if mtype == _Z:
                ready_seen = True
                self._ready_for_query(msg.body)
            elif mtype == _E and _is_fatal(msg.body):
                self._server_fatal = True
            elif mtype == _N and NOTICE_MARKER_BYTES in msg.body:
                operation = True
                self.controls.append(OperationNotice(msg.body, self._protected))
                operation_last = msg.end == len(buf)
            elif mtype == _PARAMETER_STATUS:
                self._parameter_status(msg.body)
            replacement = None if filt is None else filt.process(mtype, msg.body)
            if replacement is None and operation:
                replacement = without_context(mtype, msg.body)
            if filt is not None and filt.ledger_missing:
                filt.ledger_missing = False
                self.controls.append(Forget(Cache.LEDGER, self.info.database))
            if replacement is None and msg.start >= 0:
                continue
            if msg.start > cursor:
                parts.append(buf[cursor : msg.start])
            if replacement is None:
                parts.append(msg.raw)
            elif replacement:
                parts.append(replacement)
            cursor = msg.end
        if not parts and not operation_last:
            _send_rest(out, buf, cursor, held)
            if filt is not None and ready_seen:
                self._maybe_stop_filtering()
            return True
        if cursor == 0 and held == 0:
            parts.append(buf)
        elif len(buf) - held > cursor:
            parts.append(buf[cursor : len(buf) - held])
        answer = parts[0] if len(parts) == 1 else b"".join(parts)
        if operation_last and self.pending > 0 and len(answer) <= _MAX_HELD_OUT:
            # The server flushes at every NOTICE, so an operation's NOTICE (raised as its
            # statement ends) arrives alone, before the CommandComplete and ReadyForQuery
            # still owed: held until the server's next bytes, it reaches the client in
            # their write (decision 0024, "Since then").
            self._held_out = answer
            self._answers_plain = False
        else:
            out(answer)
        if filt is not None and ready_seen:
            self._maybe_stop_filtering()
        return True

    def _release_held(self) -> None:
        """Send what an operation's NOTICE held back, before anything else reaches the client."""
        if self._held_out:
            held, self._held_out = self._held_out, b""
            self._answers_plain = self._filter is None
            self.to_client(held)

    def client_lost(self) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.controls.append(Close(terminate_upstream=self._cframer.at_boundary))

    def client_eof(self) -> bool:
        """The client closed its sending side (a half-close). PostgreSQL answers whatever
        it read before the end of file, then ends the session: so does softguard, keeping
        the connection open for those answers (True) and closing once none is owed (the
        check runs after each server chunk). False: nothing is owed, closed now; also
        while softguard still waits for the client's own part of the startup (its
        startup packet, TLS, its login), which will not come."""
        if self.state is State.CLOSED:
            return False
        if self.state in (State.STARTUP, State.TLS, State.LOGIN):
            self.client_lost()
            return False
        self._client_ended = True
        self._closing_for_shutdown = True
        self._after_server_chunk()
        return cast(State, self.state) is not State.CLOSED  # the call may have closed it

    def server_lost(self) -> None:
        if self.state is State.CLOSED or self.state is State.CONNECTING:
            return  # while connecting, the connection attempt reports the failure
        self._release_held()
        farewell = b""
        if not self._server_fatal and self._sframer.at_boundary:
            # Only at a message boundary can the client still parse what we add.
            farewell = error_response(
                "08006", "softguard: lost connection to the upstream server", severity="FATAL"
            )
        self.state = State.CLOSED
        self.controls.append(Close(terminate_upstream=False, farewell=farewell))

    def tls_started(self) -> None:
        if self.state is State.CLOSED:
            return
        self._tls_done = True
        self.state = State.STARTUP

    def upstream_connected(
        self, server_cert_binding: bytes | None = None, local_port: int | None = None
    ) -> None:
        """The upstream connection is open; *server_cert_binding* is the
        ``tls-server-end-point`` hash of its certificate when it is TLS, *local_port*
        softguard's end of it (None over a Unix socket)."""
        self._local_port = local_port
        login = self._client_login
        if login is not None:
            credentials = self.config.credentials
            assert credentials is not None
            self._server_login = ServerLogin(
                login.role,
                credentials.server_password(self.info.database, login.role),
                server_cert_binding,
            )
        self.to_server(self._startup_packet)
        self.state = State.AUTH
        early, self._early, self._early_size = self._early, [], 0
        for chunk in early:
            self.client_data(chunk)
        self._set_client_reading(paused=False, reason="connecting")

    def upstream_failed(self, text: str) -> None:
        self.controls.append(Refused("upstream"))
        self._send_fatal("08006", text)

    def upstream_paused(self, paused: bool) -> None:
        """The upstream's write buffer filled up (True) or drained (False)."""
        self._set_client_reading(paused=paused, reason="upstream-buffer")

    def ledger_known(self) -> None:
        """The ledger check asked for by ``WaitLedger`` is done: register the session (at
        startup), or relay what was held."""
        if self.state is State.REGISTERING and not self._registration_sent:
            self._register()
            return
        self._resume("ledger", resumed=True)

    def classified(self, result: Classification) -> None:
        """The classification asked for by ``ClassifyOffLoop`` is ``result``: plan the
        held message with it and relay what was held."""
        deferred = self._deferred
        if deferred is not None:
            self._known = (deferred[1][deferred[3]], result)
        self._resume("classify", resumed=False)

    def _resume(self, reason: str, *, resumed: bool) -> None:
        deferred, self._deferred = self._deferred, None
        if self.state is State.CLOSED or deferred is None:
            return
        buf, msgs, held, index, cursor = deferred
        self._relay_messages(buf, msgs, held, index, cursor, resumed=resumed)
        if self._deferred is None:
            self._set_client_reading(paused=False, reason=reason)

    def startup_timed_out(self) -> None:
        if self.state in (
            State.STARTUP,
            State.TLS,
            State.LOGIN,
            State.CONNECTING,
            State.AUTH,
            State.REGISTERING,
        ):
            self.controls.append(Refused("protocol"))
            self._send_fatal("08P01", "softguard: startup and authentication not completed in time")

    def stall_check(self) -> None:
        self._stall_armed = False
        if self.state is State.CLOSED or self._cframer.at_boundary:
            return
        if self._client_bytes == self._stall_mark:
            self._fail(
                ClientProtocolError(
                    "softguard: client stalled in the middle of a message for "
                    f"{self.config.client_stall_timeout:g} s"
                )
            )
            return
        self._arm_stall_timer()

    def abort(self) -> None:
        """Close without a word (a failed TLS handshake)."""
        self._close()

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
            self.terminate(*SHUTDOWN)
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
            self.controls.append(Refused("protocol"))
        if self.state is State.READY and not self._sframer.at_boundary:
            self._close()
            return
        self._send_fatal(
            exc.sqlstate,
            exc.message if exc.message.startswith("softguard") else f"softguard: {exc.message}",
        )

    def _send_fatal(self, sqlstate: str, text: str) -> None:
        self._close(error_response(sqlstate, text, severity="FATAL"))

    def _close(self, farewell: bytes = b"") -> None:
        if self.state is State.CLOSED:
            return
        self._release_held()
        terminate = self._cframer.at_boundary and self.state is State.READY
        self.state = State.CLOSED
        self.controls.append(Close(terminate_upstream=terminate, farewell=farewell))

    # ------------------------------------------------------------------ startup

    def _client_data_before_auth(self, data: bytes) -> None:
        if self.state is State.STARTUP:
            self._startup_data(data)
        elif self.state is State.LOGIN:
            self._login_data(data)
        elif self.state is State.CONNECTING:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _MAX_EARLY_BYTES:
                self._fail(ClientProtocolError("client sent too much data before authentication"))

    def _startup_data(self, data: bytes) -> None:
        try:
            packet, rest = self._startup.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        if packet is None:
            return
        if isinstance(packet, SSLRequest):
            if rest:
                # Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                self._fail(ClientProtocolError("received unencrypted data after SSL request"))
            elif self._tls_done:
                self._fail(ClientProtocolError("SSL negotiation requested twice"))
            elif not self.config.tls:
                self.to_client(b"N")
            else:
                self.to_client(b"S")
                self.state = State.TLS
                self.controls.append(_START_TLS)
            return
        if isinstance(packet, GSSENCRequest):
            if rest:
                # As after SSLRequest: bytes sent before our answer are refused.
                self._fail(
                    ClientProtocolError("received unencrypted data after GSSAPI encryption request")
                )
                return
            self.to_client(b"N")
            return
        if isinstance(packet, CancelRequest):
            self.controls.append(ForwardCancel(packet))
            self._close()
            return
        assert isinstance(packet, StartupMessage)
        if self.config.require_tls and not self._tls_done:
            self.controls.append(Refused("protocol"))  # a client without TLS
            self._send_fatal("28000", _TLS_REQUIRED)
            return
        if rest:
            # PostgreSQL leaves what follows the packet buffered for later; so do we.
            self._early.append(rest)
            self._early_size += len(rest)
        if self._over_capacity():
            self.controls.append(Refused("max_client_conn"))
            self._send_fatal(
                "53300",
                f"softguard: too many client connections "
                f"(max_client_conn = {self.config.max_client_conn})",
            )
            return
        self.info = SessionInfo(
            user=packet.user,
            database=packet.database,
            application_name=packet.application_name,
            client_addr=self.peer,
        )
        credentials = self.config.credentials
        if credentials is not None:
            self._client_login = ClientLogin(
                credentials, packet.user, packet.database, tls=self._tls_done
            )
            self._login_packet = packet
            self.state = State.LOGIN
            # Every message handed out whole: the first that is not a password message
            # ends the login, and whatever follows the last is replayed once connected.
            self._cframer = Framer(
                want=None, allowed=FRONTEND_TYPES, max_want_length=_MAX_LOGIN_MESSAGE
            )
            self.to_client(self._client_login.opening())
            return
        self._connect_upstream(self._startup_bytes(packet))

    def _connect_upstream(self, startup_packet: bytes) -> None:
        self.state = State.CONNECTING
        self._startup_packet = startup_packet
        self._set_client_reading(paused=True, reason="connecting")
        self._connect_started = self._clock()
        self.controls.append(_CONNECT)

    def _login_data(self, data: bytes) -> None:
        """The client's password messages, answered by softguard (``ClientLogin``)."""
        login = self._client_login
        assert login is not None
        try:
            buf, msgs, _ = self._cframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        for msg in msgs:
            if msg.type == _TERMINATE:
                self._close()
                return
            if msg.type != _PASSWORD:
                self._fail(
                    ClientProtocolError(
                        f"expected password response, got message type {chr(msg.type)!r}"
                    )
                )
                return
            try:
                answer = login.password_message(msg.body)
            except LoginRefused as exc:
                log.warning(
                    "login refused for softguard user %r from %s: %s",
                    login.user,
                    self.peer,
                    exc.reason or exc.message,
                )
                self.controls.append(Refused("auth"))
                self._send_fatal(exc.sqlstate, exc.message)
                return
            self.to_client(answer)
            if login.done:
                # What follows (a pipelined query) waits, as during CONNECTING.
                rest = buf[msg.end :] if msg.start >= 0 else b""
                if rest:
                    self._early.append(rest)
                    self._early_size += len(rest)
                self._login_succeeded(login)
                return

    def _login_succeeded(self, login: ClientLogin) -> None:
        packet = self._login_packet
        assert packet is not None
        self._cframer = self._client_framer()
        self.info = SessionInfo(
            user=login.role,
            database=packet.database,
            application_name=packet.application_name,
            client_addr=self.peer,
        )
        log.debug("softguard user %r logged in as role %r", login.user, login.role)
        self._connect_upstream(
            self._startup_bytes(packet, {"user": login.role, "database": packet.database})
        )

    def _parameter_status(self, body: bytes) -> None:
        name, _, rest = body.partition(b"\0")
        if name == b"client_encoding":
            self.client_encoding = rest.split(b"\0", 1)[0].decode("ascii", "replace")
        elif name == b"default_transaction_read_only" and self._read_only:
            # PostgreSQL 14+ reports it. Off in a read-only session means something the
            # proxy could not read switched it off (a function calling set_config).
            if rest.split(b"\0", 1)[0] != b"on":
                self._read_only_lost = True

    def _end_read_only_session(self) -> None:
        log.warning(
            "read-only mode switched off in session of user=%s db=%s client=%s: closed",
            self.info.user,
            self.info.database,
            self.peer,
        )
        self._read_only_lost = False
        self._send_fatal(
            "25006",
            "softguard: this read-only session switched read-only off (a function set "
            "default_transaction_read_only); the session is closed",
        )

    def _startup_bytes(
        self, packet: StartupMessage, override: dict[str, str] | None = None
    ) -> bytes:
        """The startup packet for the server, with the session's capture settings.

        Row changes are captured by triggers in the database (decision 0006); these
        session defaults tell them that this session's deletes (and updates) are protected,
        who the client is, and how long to keep what they capture.
        """
        policy = self.inputs.policy
        events = policy.captured_events(self.info)
        settings = {
            contract.CAPTURE_SETTING: ",".join(events) or "off",
            contract.RETENTION_SETTING: str(policy.retention_seconds(self.info)),
            **(override or {}),
        }
        self._read_only = policy.mode(self.info)[0] == "read-only"
        if self._read_only:
            # The server enforces read-only mode for everything the proxy cannot read (a
            # function's INSERT); as a startup setting it is also what RESET goes back to.
            # The registration sets it again where a pooler drops startup settings.
            settings["default_transaction_read_only"] = "on"
        return packet.with_settings(settings, reserved_prefix="softguard.")

    def _server_startup_data(self, data: bytes) -> None:
        """Until the first ReadyForQuery: read every message (auth offer, key data)."""
        try:
            _, msgs, _ = self._sframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        out = self.to_client
        for msg in msgs:
            mtype = msg.type
            if mtype == _Z:
                # Held: the client may not send anything before the session is registered.
                # The client's part of the startup is done: what follows (the ledger
                # check, the registration) is softguard's, not the startup timeout's.
                self._first_ready = msg.raw
                self.state = State.REGISTERING
                self.controls.append(SetTimer(Timer.STARTUP, None))
                self._registration_sent = False
                self._register()
                return
            if mtype == _R and self._server_login is not None:
                if not self._server_login_step(msg.body):
                    return
                continue
            if mtype == _R and auth_code(msg.body) == AUTH_SASL:
                out(_message(_R, strip_scram_plus(msg.body)))
                continue
            if mtype == _E and self._tls_done and b"channel binding" in msg.body:
                out(_message(_E, with_hint(msg.body, _CHANNEL_BINDING_HINT)))
                continue
            out(msg.raw)
            if mtype == _K and len(msg.body) >= 8:
                self.cancel_key = (int.from_bytes(msg.body[:4], "big"), msg.body[4:])
            elif mtype == _E and _is_fatal(msg.body):
                self._server_fatal = True
            elif mtype == _PARAMETER_STATUS:
                self._parameter_status(msg.body)
        if self._closing_for_shutdown:
            self._after_server_chunk()

    def _server_login_step(self, body: bytes) -> bool:
        """An authentication request from the server, answered with what softguard
        holds; AuthenticationOk goes on to the client. False once the session failed."""
        login = self._server_login
        assert login is not None
        try:
            answer = login.request(body)
        except LoginRefused as exc:
            log.error("softguard could not log in to the server: %s", exc.reason)
            self.controls.append(Refused("auth"))
            self._send_fatal(exc.sqlstate, f"softguard: {exc.message}")
            return False
        if answer is None:
            self._server_login = None
            self.to_client(_message(_R, body))
        elif answer:
            self.to_server(answer)
        return True

    # ------------------------------------------------------------------ registration

    def _client_framer(self) -> Framer:
        return Framer(
            want=_CLIENT_WANT, allowed=FRONTEND_TYPES, max_want_length=self.config.max_inspect_bytes
        )

    def _client_auth_data(self, data: bytes) -> None:
        """Authentication messages are relayed; a statement sent before the session is up
        is held until it is registered (else the server would run it first, unprotected)."""
        try:
            buf, msgs, held = self._cframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        if not msgs:
            _send_rest(self.to_server, buf, 0, held)
            return
        first = msgs[0]
        if first.start > 0:
            self.to_server(buf[: first.start])
        rest = buf[first.start :] if first.start >= 0 else first.raw + buf[first.end :]
        # A fresh framer reads the held bytes again once the session is ready.
        self._cframer = self._client_framer()
        self._holding = True
        self._hold_client(rest)

    def _hold_client(self, data: bytes) -> None:
        self._holding = True
        self._early.append(data)
        self._early_size += len(data)
        self._set_client_reading(paused=True, reason="registering")
        if self._early_size > _MAX_EARLY_BYTES:
            self._fail(
                ClientProtocolError("client sent too much data before the session was ready")
            )

    def _register(self) -> None:
        """Register the session in the ledger (decision 0012) once the ledger is known;
        sessions of a database without a ledger go on unregistered (softguard refuses their
        protected statements)."""
        state = self.inputs.ledger.state(self.info.database, self.info.user)
        if state is None:
            self.controls.append(WaitLedger(self.info.database, self.info.user))
            return
        if state is not True:
            self._session_ready()
            return
        policy = self.inputs.policy
        limits = policy.limits(self.info)
        denied = policy.table_denials(self.info)
        query = contract.register_session_query(
            ",".join(policy.registered_categories(self.info)) or "off",
            policy.retention_seconds(self.info),
            self.peer.rpartition(":")[0] or self.peer,
            (
                limits.max_rows,
                limits.max_rows_by,
                limits.max_table_bytes,
                limits.max_table_bytes_by,
                json.dumps(denied),
            )
            if limits or denied
            else None,
            by_role=self.config.register_roles,
        )
        self._registration_sent = True
        self._registration_error = ""
        self.to_server(_message(_Q, query + b"\0"))

    def _server_registering_data(self, data: bytes) -> None:
        """The registration's answers: read here, never shown to the client."""
        try:
            _, msgs, _ = self._sframer.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        for msg in msgs:
            mtype = msg.type
            if mtype == _E:
                if _is_fatal(msg.body):
                    self._server_fatal = True
                    self.to_client(msg.raw)
                    return
                fields = parse_fields(msg.body)
                self._registration_error = f"{fields.get('C', '')}: {fields.get('M', '')}"
                if fields.get("C") in _LEDGER_GONE:
                    # The ledger was removed since it was checked: check it again next time.
                    self.controls.append(Forget(Cache.LEDGER, self.info.database))
            elif mtype == _PARAMETER_STATUS:
                self.to_client(msg.raw)
                self._parameter_status(msg.body)
            elif mtype == _D:
                columns = _columns(msg.body)
                self._server_saw_port = columns[-1] if columns else None
                if len(columns) > 2 and not self.config.register_roles:
                    take_call_key(
                        self.inputs,
                        self._soft,
                        self.info.database,
                        columns[-2],
                        self.config.upstream_pooler,
                    )
            elif mtype == _Z:
                if not self._registration_error:
                    self._registration_error = self._pooler_between()
                if self._registration_error:
                    # Fail closed: an unregistered session could switch its capture off.
                    log.error(
                        "client %s: session not registered with the ledger of database %s: %s",
                        self.peer,
                        self.info.database,
                        self._registration_error,
                    )
                    self.controls.append(Refused("ledger"))
                    self._send_fatal(
                        "55000",
                        "softguard: cannot protect this session: registering it with the "
                        f"ledger failed ({self._registration_error})",
                    )
                    return
                self._session_ready()
                return

    def _pooler_between(self) -> str:
        """Why the session cannot be protected when something sits between softguard and
        the server (the server saw another client port than softguard's), else ""."""
        saw = self._server_saw_port
        if saw is None or self.config.upstream_pooler:
            return ""
        mine = "" if self._local_port is None else str(self._local_port)
        if saw == mine:
            return ""
        return (
            f"the server sees this connection from port {saw or 'a Unix socket'}, not "
            f"softguard's {mine or 'Unix socket'}: a pooler or proxy sits between them. "
            "softguard keeps protection only when each client session keeps one server "
            "session: with a session-mode pooler (or a TCP proxy), set upstream_pooler = "
            '"session"; with a transaction-mode pooler, upstream_pooler = "transaction"'
        )

    def _session_ready(self) -> None:
        """Hand the session to the client: the server's first ReadyForQuery, then what the
        client sent meanwhile."""
        self.state = State.READY
        self._sframer.set_want(_SERVER_WANT)
        self.pending = 0
        first, self._first_ready = self._first_ready, b""
        self.to_client(first)
        self._ready_for_query(first[5:])
        self.controls.append(
            Observe(Measure.UPSTREAM_CONNECT, self._clock() - self._connect_started)
        )
        log.debug(
            "client %s: session ready user=%s db=%s", self.peer, self.info.user, self.info.database
        )
        held, self._early, self._early_size = self._early, [], 0
        self._holding = False
        if held:
            # One chunk: a statement in it that must wait (for the ledger, for classifying
            # off the loop) holds the rest of it in order, as any chunk's tail is held.
            self.client_data(b"".join(held))
            if self.state is not State.READY:
                return
        self._set_client_reading(paused=False, reason="registering")
        if self._closing_for_shutdown:
            self._after_server_chunk()

    # ------------------------------------------------------------------ relaying

    def _relay_messages(
        self,
        buf: bytes,
        msgs: list[Message],
        held: int,
        index: int,
        cursor: int,
        *,
        resumed: bool = False,
        read: bytes | None = None,
    ) -> None:
        """Forward ``buf`` with the wanted ``msgs[index:]`` inspected (and maybe replaced).

        ``resumed``: ``msgs[index]`` was planned (logged, counted) before a ledger wait.
        ``read``: the text of ``msgs[index]``, which ``passes_unread`` already refused."""
        out = self.to_server
        for i in range(index, len(msgs)):
            msg = msgs[i]
            mtype = msg.type
            if mtype == _CLOSE:
                self._note_close(msg.body)
                if msg.start >= 0:
                    continue
                if msg.start > cursor:
                    out(buf[cursor : msg.start])
                out(msg.raw)
                cursor = msg.end
                continue
            if mtype == _Q or mtype == _P:
                fresh = self._known is None
                if read is not None:
                    text: bytes | None = read
                    read = None
                    unread = False
                else:
                    try:
                        text = parse_query_text(mtype, msg.body)
                    except ProtocolViolation:
                        text = None  # malformed: ``_inspect`` reports it
                    unread = (
                        fresh
                        and text is not None
                        and self._full_mode()
                        and passes_unread(text, self._soft)
                    )
                if self._filter is not None and self._filter.names and fresh:
                    self._note_drops(mtype, msg.body, text)
                if unread:
                    # The hot path: proven harmless from its bytes, planned no further.
                    self.counter.safe_statements += 1
                    replacement: bytes | NeedLedger | None = None
                else:
                    offload = self.config.offload_bytes
                    if offload and fresh and text is not None and len(text) > offload:
                        if may_be_destructive(text):
                            if msg.start > cursor:
                                out(buf[cursor : msg.start])
                            self._deferred = (buf, msgs, held, i, max(msg.start, 0))
                            self._set_client_reading(paused=True, reason="classify")
                            self.controls.append(ClassifyOffLoop(text, self.client_encoding))
                            return
                    try:
                        replacement = self._inspect(msg, log_it=not resumed or i != index)
                    except ProtocolViolation as exc:
                        self._fail(exc)
                        return
                if isinstance(replacement, NeedLedger):
                    if msg.start > cursor:
                        out(buf[cursor : msg.start])
                    self._deferred = (buf, msgs, held, i, max(msg.start, 0))
                    self._set_client_reading(paused=True, reason="ledger")
                    self.controls.append(WaitLedger(self.info.database, self.info.user))
                    return
                if mtype == _Q:
                    self._query_sent()
                if replacement is None and msg.start >= 0:
                    continue
                if msg.start > cursor:
                    out(buf[cursor : msg.start])
                out(msg.raw if replacement is None else replacement)
                cursor = msg.end
                continue
            self.pending += 1  # Sync or FunctionCall: each ends with a ReadyForQuery
            refused = self._refuse_function_call(msg) if mtype == _F else None
            if self.state is State.CLOSED:
                return  # a malformed FunctionCall: the session has ended
            if self._filter is not None:
                self._filter.expect_ready(self._parse_plan)
                self._parse_plan = None
                self.counter.filtered_statements += 1
            if refused is not None:
                if msg.start > cursor:
                    out(buf[cursor : msg.start])
                out(refused)
                cursor = msg.end
            elif msg.start < 0:
                out(msg.raw)
                cursor = msg.end
        _send_rest(out, buf, cursor, held)

    def _full_mode(self) -> bool:
        """Whether the session's mode is ``full`` (decision 0019): only then may a text the
        prefilter proves harmless skip planning (an INSERT is harmless to the prefilter,
        a write to read-only mode). Cached until the policy is reloaded."""
        policy = self.inputs.policy
        if self._mode_generation != policy.generation:
            self._mode_generation = policy.generation
            self._mode_is_full = policy.mode(self.info)[0] == "full"
            self._allowed.clear()  # decided under the old policy
        return self._mode_is_full

    def _query_sent(self) -> None:
        """A Query goes to the server: its ReadyForQuery is owed (and filtered with the
        plan of its rewrite, if any)."""
        self.pending += 1
        if self._filter is not None:
            self.counter.filtered_statements += 1
            self._filter.expect_ready(self._plan, self._retag)
            self._plan = None
            self._retag = frozenset()

    def _inspect(self, msg: Message, *, log_it: bool) -> bytes | NeedLedger | None:
        """Apply the inspection seam; turn result filtering on once anything is rewritten."""
        known = self._known
        if known is not None and known[0] is msg:
            classification: Classification | None = known[1]
        else:
            classification, self._known = None, None
        planned = plan_message(
            self.inputs,
            self.info,
            msg,
            log_it=log_it,
            soft=self._soft,
            client_encoding=self.client_encoding,
            known=classification,
            mode="full" if self._full_mode() else None,
            allowed=self._allowed,
        )
        if not isinstance(planned, NeedLedger):
            self._known = None  # planned: the held classification is spent
        if planned is SAFE:
            self.counter.safe_statements += 1
            return None
        if isinstance(planned, NeedLedger):
            if planned.kind:
                self.counter.count_statement(planned.kind, planned.action)
            return planned
        kind = planned.kind
        if kind == "safe" and planned.action == "allow":
            self.counter.safe_statements += 1
        elif kind:
            self.counter.count_statement(kind, planned.action)
        if planned.approval is not None:
            statement, reason = planned.approval
            self.controls.append(
                RequestApproval(
                    self.info.database,
                    self.info.user,
                    statement,
                    reason,
                    self.peer.rpartition(":")[0] or self.peer,
                )
            )
        if planned.reread_soft_delete:
            self.controls.append(Forget(Cache.SOFT_DELETE_TABLES, self.info.database))
        if planned.protected:
            self._protected.extend(planned.protected)
        raw = planned.raw
        if raw is None:
            return None
        if planned.protected:
            # Made reversible: time it until its ReadyForQuery (this message's, or the
            # next Sync's), after the ones still owed.
            if self._timings is None:
                self._timings = []
            self._timings.append([self.pending + 1, self._clock()])
            if len(self._protected) > _MAX_PROTECTED:
                del self._protected[:-_MAX_PROTECTED]
        self._start_filtering(self.pending)
        self._note_made(msg)
        if msg.type == _Q:
            self._plan = planned.plan
            self._retag = planned.retag
        else:
            self._parse_plan = planned.plan  # positions of errors before the next Sync
        return raw

    def _start_filtering(self, owed: int) -> None:
        """Filter the server's answers from now on (a rewritten message is on its way)."""
        if self._filter is None:
            self._filter = ResultFilter()
            self._answers_plain = False
            # The rewritten message's answers have not begun: safe to widen the framing.
            self._sframer.set_want(_SERVER_WANT_FILTERED)
            # A Close already being skipped passes unread: its name is then kept.
            self._cframer.set_want(_CLIENT_WANT_FILTERED)
            # Answers still owed for messages sent before filtering began come first.
            for _ in range(owed):
                self._filter.expect_ready(None)

    def _note_made(self, msg: Message) -> None:
        """A rewritten message was sent: the prepared statements it makes, or may make,
        are kept by the filter (a Parse's name; the names its SQL PREPAREs give)."""
        filt = self._filter
        assert filt is not None
        body = msg.body
        if msg.type == _P:
            filt.made(_name(body))
        try:
            text = parse_query_text(msg.type, body)
        except ProtocolViolation:
            return
        if b"prepare" not in text.lower():
            return
        try:
            changes = prepared_changes(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            changes = None
        if changes is None:
            filt.made(UNKNOWN_NAME)  # some PREPARE: kept until DEALLOCATE ALL / DISCARD ALL
            return
        for what, name in changes:
            if what == "prepare":
                filt.made(name)

    def _note_query(self, text: bytes) -> None:
        """A Query goes to the server with answers filtered: the statements it drops."""
        filt = self._filter
        if filt is not None and filt.names:
            self._note_drops(_Q, b"", text)

    def _note_drops(self, mtype: int, body: bytes, text: bytes | None) -> None:
        """The statement names a Query or Parse drops if the server runs it: the unnamed
        one (a Query, or a Parse of ""), and a Query's DEALLOCATE / DISCARD ALL. A Parse of
        another name cannot replace it (the server refuses a name in use); a DEALLOCATE
        inside a Parse runs at some Execute, maybe never: not counted (kept)."""
        filt = self._filter
        assert filt is not None
        if mtype == _P:
            if body[:1] == b"\0":
                filt.dropped("")
            return
        filt.dropped("")
        if text is None:
            return
        lowered = text.lower()
        if b"deallocate" not in lowered and b"discard" not in lowered:
            return
        try:
            changes = prepared_changes(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return
        for what, name in changes or ():
            if what == "discard" or (what == "deallocate" and not name):
                filt.dropped(ALL_NAMES)
            elif what == "deallocate":
                filt.dropped(name)

    def _note_close(self, body: bytes) -> None:
        """A Close: a statement's drops its name (a portal ends with its transaction,
        which ``_maybe_stop_filtering`` waits for anyway)."""
        filt = self._filter
        if filt is not None and filt.names and body[:1] == b"S" and b"\0" in body:
            filt.dropped(_name(body[1:]))

    def _maybe_stop_filtering(self) -> None:
        """Drop the result filter once nothing needs it, so the fast paths take the session
        again: no answer owed, no transaction open (it could hold a portal of a rewritten
        statement), no rewritten Parse waiting for its Sync, no prepared statement made
        from a rewrite (nor a SQL-level prepared soft delete), nothing held. A message the
        client sends after this starts a fresh filter if it is rewritten."""
        filt = self._filter
        if filt is None:
            return
        prepared = self._soft.prepared
        if prepared and UNKNOWN_NAME not in filt.names:
            # SQL-level prepared soft deletes the server surely dropped (each was made a
            # name of the filter when its PREPARE was rewritten): EXECUTE of them no
            # longer needs retagging, and statements are no longer all planned for them.
            prepared.intersection_update(filt.names)
        if (
            not filt.idle
            or self.pending
            or self.tx_status != TX_IDLE
            or self._parse_plan is not None
            or self._soft.prepared
            or self._deferred is not None
            or self._held_out
            or not self._sframer.at_boundary
        ):
            return
        self._filter = None
        self._answers_plain = True
        self._sframer.set_want(_SERVER_WANT)
        self._cframer.set_want(_CLIENT_WANT)
        self.counter.filters_released += 1

    def _refuse_function_call(self, msg: Message) -> bytes | None:
        """None to pass a FunctionCall on; else the Query that makes the server refuse it.

        The server raises the refusal, so the answer (ErrorResponse, ReadyForQuery) comes
        in order after what is still owed, and the transaction fails as by any error."""
        try:
            oid = function_call_oid(msg.body)
        except ProtocolViolation as exc:
            self._fail(exc)
            return None
        decision = self.inputs.policy.decide_function_call(oid, self.info, lo_open_mode(msg.body))
        self.counter.count_statement("function_call", decision.action.value)
        if decision.action is Action.ALLOW:
            return None
        # Its ReadyForQuery was counted as owed already: filtering starts before it.
        self._start_filtering(self.pending - 1)
        text = refusal("42501", decision.reason or "softguard: FunctionCall refused", REFUSAL_HINT)
        return _message(_Q, text.encode() + b"\0")

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
            now = self._clock()
            for entry in timings:
                entry[0] -= 1
                if entry[0] <= 0:
                    self.controls.append(Observe(Measure.REWRITTEN_STATEMENT, now - entry[1]))
            timings[:] = [e for e in timings if e[0] > 0]
        if self.pending == 0:
            # Statements that made no operation (error, no rows). A new list: an
            # OperationNotice of this chunk still holds (and pairs from) the old one.
            self._protected = []

    def _after_server_chunk(self) -> None:
        """Once a chunk is forwarded: a session waiting to shut down may go now; one whose
        client has ended goes once every answer it is owed went by."""
        if self._client_ended:
            if self.state is State.READY and self.pending == 0 and self._deferred is None:
                self._close()
        elif self._closing_for_shutdown and self.is_idle:
            self.terminate(*SHUTDOWN)

    # ------------------------------------------------------------------ flow control

    def _set_client_reading(self, *, paused: bool, reason: str) -> None:
        reasons = self._paused_reasons
        was_paused = bool(reasons)
        if paused:
            reasons.add(reason)
        else:
            reasons.discard(reason)
        if reasons and not was_paused:
            self.controls.append(_PAUSE)
        elif was_paused and not reasons:
            self.controls.append(_RESUME)

    def _arm_stall_timer(self) -> None:
        self._stall_armed = True
        self._stall_mark = self._client_bytes
        self.controls.append(SetTimer(Timer.STALL, self.config.client_stall_timeout))


def _name(body: bytes) -> str:
    """The statement name a Parse or Close body starts with (as the server compares it:
    byte for byte; undecodable bytes kept apart by surrogateescape)."""
    return body[: body.find(b"\0")].decode("utf-8", "surrogateescape")


def _send_rest(out: Sink, buf: bytes, cursor: int, held: int) -> None:
    """Send what follows ``cursor`` in ``buf`` up to the ``held`` incomplete tail: the
    whole chunk, the very object that arrived, when nothing was replaced or held."""
    if cursor == 0 and held == 0:
        out(buf)
    elif len(buf) - held > cursor:
        out(buf[cursor : len(buf) - held])


def _message(mtype: int, body: bytes) -> bytes:
    return bytes((mtype,)) + (len(body) + 4).to_bytes(4, "big") + body


def _is_fatal(body: bytes) -> bool:
    try:
        fields = parse_fields(body)
    except ProtocolViolation:
        return False
    severity = fields.get("V") or fields.get("S", "")
    return severity in ("FATAL", "PANIC")


def _columns(body: bytes) -> list[str]:
    """The columns of a DataRow as text ("" for NULL), [] when malformed."""
    if len(body) < 2:
        return []
    count = int.from_bytes(body[:2], "big")
    pos, values = 2, []
    for _ in range(count):
        if pos + 4 > len(body):
            return []
        length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if length < 0:
            values.append("")
            continue
        values.append(body[pos : pos + length].decode("ascii", "replace"))
        pos += length
    return values
