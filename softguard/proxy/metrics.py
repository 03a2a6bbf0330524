"""Prometheus metrics and the per-operation log line of one proxy process.

One ``Metrics`` per process, passed explicitly (``ProxyServer.metrics``), with its own
``CollectorRegistry``: nothing is registered in prometheus-client's global registry.
``softguard serve --metrics HOST:PORT`` serves it over HTTP (worker i of N on PORT+i).

Costs on the relay path: a SAFE Query/Parse text is one integer increment; connection
gauges are read at scrape time; a NoticeResponse is checked with one bytes search.
Everything else (operations, rewritten statements, refusals) is rare.

Operations are counted, and logged, when the proxy sees softguard's NOTICE "... is
reversible as operation N until D" go to the client. That NOTICE is sent inside the
client's transaction, so an operation that is rolled back afterwards is counted all the
same; the ledger gauges (``softguard_ledger_operations``, read from ``softguard.operations``)
are the authoritative numbers.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from softguard import contract
from softguard.policy import PROTECTABLE_DROPS, SessionInfo
from softguard.speedups import CounterBase
from softguard.wire import ProtocolViolation, parse_fields

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from softguard.proxy.ledger_gate import LedgerGate

log = logging.getLogger("softguard.metrics")
oplog = logging.getLogger("softguard.operations")

CLASSIFICATIONS = ("safe", "destructive", "opaque", "unparseable")
ACTIONS = ("allow", "protect", "deny")
REFUSAL_REASONS = ("max_client_conn", "protocol", "upstream", "ledger", "auth")
# What softguard's NOTICE says first -> the ledger's ``kind`` (bounded label values).
_NOTICE_KINDS: tuple[tuple[str, str], ...] = (
    ("DELETE FROM ", "DELETE"),
    ("MERGE INTO ", "MERGE"),
    ("UPDATE ", "UPDATE"),
    ("TRUNCATE TABLE ", "TRUNCATE"),
    ("ALTER TABLE ", "ALTER TABLE"),
    *((f"{kind} ", kind) for kind in (*contract.DEFINITION_KINDS, contract.SEQUENCE_KIND)),
    *((f"{kind} ", kind) for kind in sorted(PROTECTABLE_DROPS, key=len, reverse=True)),
)
# Seconds: PostgreSQL round trips on a LAN up to slow DDL under lock waits.
_CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STATEMENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LEDGER_CACHE_SECONDS = 10.0
LEDGER_TIMEOUT = 3.0


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served; the message says where and why."""


@dataclass(frozen=True, slots=True)
class OperationNotice:
    id: int
    kind: str  # the ledger's kind, or "other"
    objects: str
    expires: str


def parse_operation_notice(body: bytes) -> OperationNotice | None:
    """The operation a NoticeResponse body announces, or None if it announces none."""
    try:
        message = parse_fields(body).get("M", "")
    except ProtocolViolation:
        return None
    announced = contract.parse_operation_notice(message)
    if announced is None:
        return None
    what, op_id, expires = announced.what, announced.op, announced.expires
    kind, objects = "other", what
    for prefix, ledger_kind in _NOTICE_KINDS:
        if what.startswith(prefix):
            kind, objects = ledger_kind, what[len(prefix) :]
            break
    return OperationNotice(int(op_id), kind, objects, expires)


# What a bare logfmt value may not hold (a search in C rather than a test per character).
_NEEDS_QUOTES = re.compile(r'[ ="\\\n\r\t]')


def logfmt_value(value: str) -> str:
    """A logfmt value: bare when it can be, else double-quoted with \\, " and newlines escaped."""
    if value and _NEEDS_QUOTES.search(value) is None:
        return value
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def operation_line(
    notice: OperationNotice, info: SessionInfo, client: str, statement: str | None
) -> str:
    """``operation id=42 kind="DROP TABLE" objects=... db=... user=... ... expires=...``."""
    fields: list[tuple[str, str]] = [
        ("id", str(notice.id)),
        ("kind", notice.kind),
        ("objects", notice.objects),
        ("db", info.database),
        ("user", info.user),
        ("app", info.application_name),
        ("client", client),
    ]
    if statement is not None:
        fields.append(("statement", statement))
    fields.append(("expires", notice.expires))
    return "operation " + " ".join(f"{k}={logfmt_value(v)}" for k, v in fields)


_CATEGORY_OF_KIND = {
    "DELETE": "delete",
    "MERGE": "delete",
    "UPDATE": "update",
    "TRUNCATE": "truncate",
    "ALTER TABLE": "alter",
    **{kind: "drop" for kind in PROTECTABLE_DROPS},
}
_MAX_LOGGED_STATEMENT = 2000


def pair_statement(notice: OperationNotice, protected: list[tuple[str, str]]) -> str | None:
    """The client's statement that made ``notice``'s operation, when it can be told.

    ``protected`` holds, in order, the statements of the session made reversible and not
    yet paired. A statement that made no operation (an error, a DELETE of no rows, DROP
    IF EXISTS of nothing) is skipped over by checking that the operation's first object
    is named in the text; when nothing fits, the statement is left out (None) rather
    than guessed. Paired and skipped entries are removed.
    """
    category = _CATEGORY_OF_KIND.get(notice.kind)
    first = notice.objects.split(", ")[0].rpartition(".")[2].strip('"')
    if not first:
        return None
    named = re.compile(rf"(?<![\w$]){re.escape(first)}(?![\w$])", re.IGNORECASE)
    verb = None
    if category == "drop":  # the statement must say which kind it drops
        verb = re.compile(r"\s*" + notice.kind.replace(" ", r"\s+") + r"\b", re.IGNORECASE)
    for i, (entry_category, text) in enumerate(protected):
        if entry_category != category or (verb is not None and not verb.match(text)):
            continue
        if named.search(text):
            del protected[: i + 1]
            if len(text) > _MAX_LOGGED_STATEMENT:
                text = text[:_MAX_LOGGED_STATEMENT] + "..."
            return text
    return None


def log_operation(
    metrics: Metrics, body: bytes, info: SessionInfo, protected: list[tuple[str, str]]
) -> None:
    """A NoticeResponse with the operation marker went to the client: count and log it."""
    notice = parse_operation_notice(body)
    if notice is None:
        return
    metrics.operation_seen(notice.kind)
    if oplog.isEnabledFor(logging.INFO):
        client = info.client_addr.rpartition(":")[0] or info.client_addr
        oplog.info(operation_line(notice, info, client, pair_statement(notice, protected)))


class Metrics(CounterBase):
    """The counters, gauges and histograms of one proxy process. ``safe_statements``,
    ``_statements`` and ``count_statement`` live in ``CounterBase``, where the compiled
    fast path counts statements (softguard/speedups.py)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.client_connections = Gauge(
            "softguard_client_connections", "Client connections open now", registry=r
        )
        # Not softguard_client_connections_total: a counter's family name may not be a
        # gauge's (OpenMetrics), so the gauge keeps the short name.
        self.client_connections_total = Counter(
            "softguard_client_connections_accepted", "Client connections accepted", registry=r
        )
        self.client_connections_refused = Counter(
            "softguard_client_connections_refused",
            "Client connections refused or ended before the session was up, by reason",
            ["reason"],
            registry=r,
        )
        self.refused = {
            reason: self.client_connections_refused.labels(reason) for reason in REFUSAL_REASONS
        }
        # softguard_statements_total: plain ints, written by the event loop only and read
        # at scrape time. A SAFE text costs ``metrics.safe_statements += 1`` (~12 ns);
        # a prometheus-client Counter child's inc() takes a lock (~225 ns).
        self.safe_statements = 0
        self._statements = dict.fromkeys(
            ((c, a) for c in CLASSIFICATIONS for a in ACTIONS if (c, a) != ("safe", "allow")), 0
        )
        r.register(_StatementsCollector(self))
        # Plain ints too (the relay writes them): messages ending in a ReadyForQuery sent
        # while their session's answers were filtered (the fast paths step aside for them),
        # and result filters dropped (sessions back on the fast paths).
        self.filtered_statements = 0
        self.filters_released = 0
        r.register(_FilterCollector(self))
        self.operations_total = Counter(
            "softguard_operations",
            "Reversible operations created through this proxy (seen by their NOTICE)",
            ["kind"],
            registry=r,
        )
        self._operations_by_kind: dict[str, Any] = {}
        self.purge_runs = Counter("softguard_purge_runs", "Purge runs completed", registry=r)
        self.relay_links = Counter(
            "softguard_relay_links",
            "Connections moved off the event loop's transport onto softguard's own socket "
            "reads and writes once their session was ready (plain TCP or Unix sockets)",
            ["side"],
            registry=r,
        )
        self.upstream_connect_seconds = Histogram(
            "softguard_upstream_connect_seconds",
            "From connecting to the upstream until the first ReadyForQuery (startup and "
            "authentication included)",
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.rewritten_statement_seconds = Histogram(
            "softguard_rewritten_statement_seconds",
            "From sending a rewritten statement to its ReadyForQuery",
            buckets=_STATEMENT_BUCKETS,
            registry=r,
        )
        self.ledger_scrape_errors = Counter(
            "softguard_ledger_scrape_errors",
            "Ledger reads for the operation gauges that failed or timed out",
            registry=r,
        )
        self._http: WSGIServer | None = None

    def statement_counts(self) -> dict[tuple[str, str], int]:
        counts = dict(self._statements)
        counts["safe", "allow"] = self.safe_statements
        return counts

    def operation_seen(self, kind: str) -> None:
        # The labelled child, looked up once per kind (labels() validates and locks).
        child = self._operations_by_kind.get(kind)
        if child is None:
            child = self._operations_by_kind[kind] = self.operations_total.labels(kind)
        child.inc()

    def track_sessions(self, count: Callable[[], int]) -> None:
        """The open-connections gauge reads ``count()`` at scrape time."""
        self.client_connections.set_function(count)

    def watch_ledger(self, gate: LedgerGate) -> None:
        """Export ``softguard_ledger_operations`` and ``softguard_quarantine_bytes`` from the
        ledgers of the databases ``gate`` has found ready."""
        self.registry.register(LedgerCollector(gate, self.ledger_scrape_errors))

    # -- the endpoint

    def serve(self, host: str, port: int) -> None:
        try:
            self._http, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {_hostport(host, port)}: {exc.strerror or exc}"
            ) from None
        log.info("metrics on http://%s/metrics", _hostport(host, port))

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _FilterCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Any]:
        return list(self._families())

    def collect(self) -> Iterator[CounterMetricFamily]:
        filtered, released = self._families()
        filtered.add_metric([], self._metrics.filtered_statements)
        released.add_metric([], self._metrics.filters_released)
        yield filtered
        yield released

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "softguard_filtered_statements",
                "Queries, Syncs and FunctionCalls sent while their session's answers were "
                "filtered (a rewritten statement in flight, or prepared): off the fast paths",
            ),
            CounterMetricFamily(
                "softguard_result_filters_released",
                "Sessions whose result filter was dropped: back on the fast paths",
            ),
        )


class _StatementsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Any]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for (classification, action), n in sorted(self._metrics.statement_counts().items()):
            family.add_metric([classification, action], n)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "softguard_statements",
            "Query/Parse texts inspected, by classification and the strictest action taken",
            labels=["classification", "action"],
        )


def metrics_port(port: int, worker: int) -> int:
    """Worker ``i`` of N serves its metrics on PORT+i."""
    return port + worker if port else 0


def check_metrics_address(host: str, port: int, workers: int) -> None:
    """Fail early (before forking workers) if the metrics ports cannot be bound."""
    for i in range(workers):
        p = metrics_port(port, i)
        try:
            infos = socket.getaddrinfo(host, p, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {_hostport(host, p)}: {exc.strerror or exc}"
            ) from None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------- ledger gauges

_LEDGER_QUERY = """
SELECT o.kind, o.state, count(*),
       coalesce(sum(softguard.op_size(o.id)) FILTER (WHERE o.state = 'active'), 0)
  FROM softguard.operations o
 GROUP BY o.kind, o.state
"""


@dataclass(frozen=True, slots=True)
class _LedgerRow:
    database: str
    kind: str
    state: str
    count: int
    bytes: int


class LedgerCollector(Collector):
    """Reads each ready ledger at scrape time, in threads, at most every 10 s (sooner
    when a database's ledger has become ready since).

    A database that fails or is slow is left out of that scrape and counted in
    ``softguard_ledger_scrape_errors_total``; its last good numbers are not kept, so a
    gauge that disappears means "unknown now", never stale.
    """

    def __init__(self, gate: LedgerGate, errors: Counter) -> None:
        self._gate = gate
        self._errors = errors
        self._lock = threading.Lock()
        self._cached: list[_LedgerRow] = []
        self._cached_at = -LEDGER_CACHE_SECONDS
        self._cached_for: set[str] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sg-ledger")

    def describe(self) -> Iterable[Any]:
        return []  # read at scrape time only; never at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._rows()
        ops = GaugeMetricFamily(
            "softguard_ledger_operations",
            "Operations in the ledger of each database this proxy protected, by kind and state",
            labels=["database", "kind", "state"],
        )
        size = GaugeMetricFamily(
            "softguard_quarantine_bytes",
            "Bytes active operations keep (quarantined relations and captured rows; estimated)",
            labels=["database"],
        )
        totals: dict[str, int] = {}
        for row in rows:
            ops.add_metric([row.database, row.kind, row.state], row.count)
            totals[row.database] = totals.get(row.database, 0) + row.bytes
        for database, value in sorted(totals.items()):
            size.add_metric([database], value)
        yield ops
        yield size

    def _rows(self) -> list[_LedgerRow]:
        with self._lock:  # one refresh at a time; concurrent scrapes share it
            databases = self._gate.ready_databases()
            fresh = time.monotonic() - self._cached_at < LEDGER_CACHE_SECONDS
            if fresh and databases.keys() == self._cached_for:
                return self._cached
            futures = {
                self._pool.submit(self._read, database, conninfo): database
                for database, conninfo in databases.items()
            }
            rows: list[_LedgerRow] = []
            done, late = concurrent.futures.wait(futures, timeout=LEDGER_TIMEOUT)
            for future in done:
                try:
                    rows.extend(future.result())
                except Exception as exc:
                    self._errors.inc()
                    log.warning("reading the ledger of %s failed: %s", futures[future], exc)
            for future in late:
                self._errors.inc()
                log.warning("reading the ledger of %s timed out", futures[future])
            rows.sort(key=lambda r: (r.database, r.kind, r.state))
            self._cached, self._cached_at = rows, time.monotonic()
            self._cached_for = set(databases)
            return rows

    @staticmethod
    def _read(database: str, conninfo: str) -> list[_LedgerRow]:
        import psycopg

        timeout_ms = int(LEDGER_TIMEOUT * 1000)
        with psycopg.connect(
            conninfo,
            autocommit=True,
            connect_timeout=max(1, int(LEDGER_TIMEOUT)),
            options=f"-c statement_timeout={timeout_ms}",
        ) as conn:
            result = conn.execute(_LEDGER_QUERY).fetchall()
        return [
            _LedgerRow(database, str(kind), str(state), int(n), int(size))
            for kind, state, n, size in result
        ]
