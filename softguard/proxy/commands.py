"""What the session core asks the I/O glue to do, besides writing bytes (sans-IO).

``core.SessionCore`` appends these to its ``controls`` outbox; ``session.ClientSession``
executes them, in order, after writing the bytes of the same call. Each is a small frozen
value: tests compare them with ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from softguard.wire import CancelRequest


class Timer(Enum):
    STARTUP = auto()  # startup and authentication must be done by then
    STALL = auto()  # a client stopped in the middle of a message


class Measure(Enum):
    UPSTREAM_CONNECT = auto()  # from connecting until the first ReadyForQuery
    REWRITTEN_STATEMENT = auto()  # from sending a rewritten statement to its ReadyForQuery


class Cache(Enum):
    LEDGER = auto()  # the server says the ledger is gone: check it again next time
    SOFT_DELETE_TABLES = auto()  # table DDL went by: read the soft-delete tables again


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Pause reading the client and run the server side of a TLS handshake; then
    ``tls_started()`` (or ``abort()``)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Reach the upstream; then ``upstream_connected()`` or ``upstream_failed(text)``."""


@dataclass(frozen=True, slots=True)
class ForwardCancel:
    request: CancelRequest


@dataclass(frozen=True, slots=True)
class WaitLedger:
    """Check (or install) the ledger of ``database``; then ``ledger_known()``."""

    database: str
    user: str


@dataclass(frozen=True, slots=True)
class ClassifyOffLoop:
    """Classify ``text`` (too large to parse on the event loop every session shares) as
    the server reads it in ``client_encoding``; then ``classified(result)``."""

    text: bytes
    client_encoding: str


@dataclass(frozen=True, slots=True)
class ClientReading:
    """Stop reading the client (the first reason to pause) or read it again (the last
    reason is gone)."""

    paused: bool


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call the timer's method (``startup_timed_out`` / ``stall_check``) in ``seconds``;
    None cancels it."""

    timer: Timer
    seconds: float | None


@dataclass(frozen=True, slots=True)
class Close:
    """Close both connections and cancel the timers. ``farewell`` (softguard's FATAL
    ErrorResponse) goes to the client first if it is still connected; the upstream is
    told Terminate first when ``terminate_upstream`` (the client stream is at a message
    boundary)."""

    terminate_upstream: bool
    farewell: bytes = b""


@dataclass(frozen=True, slots=True)
class Refused:
    """A connection refused or ended before its session was up, by reason (metrics)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Observe:
    """A duration for a histogram."""

    measure: Measure
    seconds: float


@dataclass(frozen=True, slots=True)
class OperationNotice:
    """softguard's operation NOTICE went to the client: count and log it, pairing it with
    (and removing from) ``protected``, the statements made reversible and not yet paired."""

    body: bytes
    protected: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Forget:
    """Something the process caches about ``database`` is stale."""

    cache: Cache
    database: str


@dataclass(frozen=True, slots=True)
class RequestApproval:
    """Ask the database's ledger for a person's approval of a refused statement
    (decision 0020): fire and forget, the client asks again."""

    database: str
    role: str
    statement: str
    reason: str
    client_addr: str


Control = (
    StartTLS
    | Connect
    | ForwardCancel
    | WaitLedger
    | ClassifyOffLoop
    | ClientReading
    | SetTimer
    | Close
    | Refused
    | Observe
    | OperationNotice
    | Forget
    | RequestApproval
)
