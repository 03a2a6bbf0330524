"""The session core without sockets: bytes and events in, bytes and controls out."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

from softguard.policy import Policy, PolicyConfig
from softguard.proxy import commands as cmd
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import FixedLedger, LedgerState, PlanInputs
from softguard.sql import Classifier
from softguard.sql.soft_delete import SoftDeleteTables
from softguard.wire import parse_fields


def msg(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def notice(code: str, text: str) -> bytes:
    return msg(b"N", b"SNOTICE\0VNOTICE\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


def complete(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


READY_IDLE, READY_TX = msg(b"Z", b"I"), msg(b"Z", b"T")
STARTUP = b"".join(
    (
        struct.pack("!I", 196608),
        b"user\0alice\0database\0shop\0application_name\0psql\0\0",
    )
)
STARTUP = struct.pack("!I", len(STARTUP) + 4) + STARTUP
SERVER_HELLO = (
    msg(b"R", struct.pack("!I", 0))
    + msg(b"S", b"server_version\x0017\0")
    + msg(b"K", struct.pack("!I", 4242) + b"\1\2\3\4")
    + READY_IDLE
)
# The server's answers to the session's registration (BEGIN; SELECT ...; COMMIT).
REGISTERED = (
    complete("BEGIN")
    + msg(b"T", b"\0\1register_session\0" + bytes(18))
    + msg(b"D", b"\0\1\0\0\0\0")
    + complete("SELECT 1")
    + complete("COMMIT")
    + READY_IDLE
)


@dataclass
class Counter:
    safe_statements: int = 0
    filtered_statements: int = 0
    filters_released: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def count_statement(self, classification: str, action: str) -> None:
        key = (classification, action)
        self.counts[key] = self.counts.get(key, 0) + 1


@dataclass
class Ledger:
    """A ledger view whose answers a test changes (as a ledger check would)."""

    ready: LedgerState | None = True
    tables: SoftDeleteTables | None = None
    soft_delete_rules: tuple[object, ...] = ()

    def state(self, database: str, user: str) -> LedgerState | None:
        return self.ready

    def soft_delete_tables(self, database: str) -> SoftDeleteTables | None:
        return self.tables

    def lacks_event_triggers(self, database: str) -> bool:
        return False


@dataclass
class Out:
    to_server: bytes
    to_client: bytes
    controls: list[cmd.Control]


class Core(SessionCore):
    """A SessionCore whose bytes land in lists (until ``drain``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent_server: list[bytes] = []
        self.sent_client: list[bytes] = []
        super().__init__(
            *args, to_server=self.sent_server.append, to_client=self.sent_client.append, **kwargs
        )


def drain(core: Core) -> Out:
    out = Out(b"".join(core.sent_server), b"".join(core.sent_client), core.controls)
    core.sent_server.clear()
    core.sent_client.clear()
    core.controls = []
    return out


def make_core(
    ledger: Ledger | FixedLedger | None = None,
    policy: PolicyConfig | None = None,
    **config: object,
) -> tuple[Core, Counter]:
    counter = Counter()
    inputs = PlanInputs(Classifier(), Policy(policy), ledger or FixedLedger())
    core = Core(CoreConfig(**config), inputs, counter, peer="10.0.0.7:50000")  # type: ignore[arg-type]
    return core, counter


def ready_core(
    ledger: Ledger | FixedLedger | None = None,
    policy: PolicyConfig | None = None,
    **config: object,
) -> tuple[Core, Counter]:
    core, counter = make_core(ledger, policy, **config)
    core.start()
    core.client_data(STARTUP)
    core.upstream_connected()
    core.server_data(SERVER_HELLO)
    core.server_data(REGISTERED)
    assert core.state is State.READY
    drain(core)
    return core, counter


def fatal(out: Out) -> dict[str, str]:
    """The fields of the FATAL error the core closes with."""
    closes = [c for c in out.controls if isinstance(c, cmd.Close)]
    assert len(closes) == 1, out.controls
    farewell = closes[0].farewell
    assert farewell[:1] == b"E"
    return parse_fields(farewell[5:])


# ---------------------------------------------------------------------- startup


def test_startup_connects_with_capture_settings_and_relays_auth() -> None:
    core, _ = make_core()
    core.start()
    assert drain(core).controls == [cmd.SetTimer(cmd.Timer.STARTUP, 60.0)]
    core.client_data(STARTUP[:7])
    assert drain(core) == Out(b"", b"", [])
    core.client_data(STARTUP[7:])
    out = drain(core)
    assert out.controls == [cmd.ClientReading(paused=True), cmd.Connect()]
    assert core.state is State.CONNECTING
    assert (core.info.user, core.info.database, core.info.application_name) == (
        "alice",
        "shop",
        "psql",
    )
    core.upstream_connected()
    out = drain(core)
    assert b"softguard.capture\0delete\0" in out.to_server
    assert out.controls == [cmd.ClientReading(paused=False)]
    core.server_data(SERVER_HELLO)
    out = drain(core)
    # The first ReadyForQuery waits for the session's registration (decision 0012).
    assert out.to_client == SERVER_HELLO[: -len(READY_IDLE)]
    assert out.to_server == query(
        "BEGIN READ WRITE; SELECT softguard.register_session("
        "'delete,drop,truncate,alter', 604800, '10.0.0.7'), softguard.session_key(), "
        "pg_catalog.inet_client_port(); COMMIT"
    )
    assert core.state is State.REGISTERING and core.cancel_key == (4242, b"\1\2\3\4")
    assert out.controls == [cmd.SetTimer(cmd.Timer.STARTUP, None)]  # softguard's time now
    core.server_data(REGISTERED)
    out = drain(core)
    assert out.to_client == READY_IDLE  # none of the registration's answers
    assert [type(c) for c in out.controls] == [cmd.Observe]
    assert core.state is State.READY


def test_statements_sent_before_the_session_is_registered_wait_for_it() -> None:
    core, _ = make_core()
    core.client_data(STARTUP)
    core.upstream_connected()
    drain(core)
    # A client that sends its statement with (or right after) its password: the server
    # must not run it before the registration.
    core.client_data(msg(b"p", b"secret\0") + query("DELETE FROM t"))
    out = drain(core)
    assert out.to_server == msg(b"p", b"secret\0")
    assert cmd.ClientReading(paused=True) in out.controls
    core.server_data(SERVER_HELLO)
    core.client_data(query("SELECT 2"))
    out = drain(core)
    assert b"softguard.register_session(" in out.to_server
    assert b"DELETE" not in out.to_server and b"SELECT 2" not in out.to_server
    core.server_data(REGISTERED)
    out = drain(core)
    assert out.to_client == READY_IDLE
    assert out.to_server == query("DELETE FROM t") + query("SELECT 2")
    assert out.controls[-1] == cmd.ClientReading(paused=False)


def test_failed_registration_refuses_the_session() -> None:
    core, _ = make_core()
    core.client_data(STARTUP)
    core.upstream_connected()
    core.server_data(SERVER_HELLO)
    drain(core)
    error = msg(b"E", b"SERROR\0C42501\0Mpermission denied\0\0")
    core.server_data(complete("BEGIN") + error + complete("ROLLBACK") + READY_IDLE)
    out = drain(core)
    assert READY_IDLE not in out.to_client
    assert fatal(out)["C"] == "55000" and "permission denied" in fatal(out)["M"]
    assert cmd.Refused("ledger") in out.controls and core.state is State.CLOSED


def test_registration_finding_no_ledger_forgets_the_ledger_check() -> None:
    core, _ = make_core()
    core.client_data(STARTUP)
    core.upstream_connected()
    core.server_data(SERVER_HELLO)
    drain(core)
    error = msg(b"E", b'SERROR\0C3F000\0Mschema "softguard" does not exist\0\0')
    core.server_data(complete("BEGIN") + error + complete("ROLLBACK") + READY_IDLE)
    out = drain(core)
    assert fatal(out)["C"] == "55000"
    assert cmd.Forget(cmd.Cache.LEDGER, "shop") in out.controls


def test_registration_waits_for_the_ledger_check() -> None:
    ledger = Ledger(ready=None)
    core, _ = make_core(ledger)
    core.client_data(STARTUP)
    core.upstream_connected()
    drain(core)
    core.server_data(SERVER_HELLO)
    out = drain(core)
    assert out.controls[-1] == cmd.WaitLedger("shop", "alice") and out.to_server == b""
    ledger.ready = True
    core.ledger_known()
    assert b"register_session" in drain(core).to_server
    core.server_data(REGISTERED)
    assert core.state is State.READY


def test_database_without_a_ledger_is_not_registered() -> None:
    core, _ = make_core(Ledger(ready="softguard: no ledger here"))
    core.client_data(STARTUP)
    core.upstream_connected()
    drain(core)
    core.server_data(SERVER_HELLO)
    out = drain(core)
    assert out.to_server == b"" and out.to_client.endswith(READY_IDLE)
    assert core.state is State.READY


def test_scram_plus_is_withdrawn_from_the_offer() -> None:
    core, _ = make_core()
    core.client_data(STARTUP)
    core.upstream_connected()
    drain(core)
    offer = struct.pack("!I", 10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    core.server_data(msg(b"R", offer))
    assert drain(core).to_client == msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0")


def test_client_bytes_during_connect_are_held_then_relayed() -> None:
    core, _ = make_core()
    core.client_data(STARTUP + query("select 1")[:3])
    core.client_data(query("select 1")[3:])
    assert drain(core).to_server == b""
    core.upstream_connected()
    assert query("select 1") not in drain(core).to_server  # not before the registration
    core.server_data(SERVER_HELLO)
    drain(core)
    core.server_data(REGISTERED)
    assert drain(core).to_server == query("select 1")


def test_ssl_request_answered_no_without_tls_and_yes_with() -> None:
    ssl_request = struct.pack("!II", 8, 80877103)
    core, _ = make_core()
    core.client_data(ssl_request)
    assert drain(core).to_client == b"N"
    core, _ = make_core(tls=True)
    core.client_data(ssl_request)
    out = drain(core)
    assert (out.to_client, out.controls, core.state) == (b"S", [cmd.StartTLS()], State.TLS)
    core.tls_started()
    core.client_data(ssl_request)
    assert fatal(drain(core))["M"] == "softguard: SSL negotiation requested twice"


def test_cancel_request_is_forwarded_and_the_connection_closed() -> None:
    core, _ = make_core()
    core.client_data(struct.pack("!IIII", 16, 80877102, 4242, 7))
    out = drain(core)
    assert isinstance(out.controls[0], cmd.ForwardCancel)
    assert out.controls[0].request.pid == 4242
    assert out.controls[1] == cmd.Close(terminate_upstream=False)


def test_bad_startup_packet_is_a_fatal_protocol_violation() -> None:
    core, _ = make_core()
    core.client_data(struct.pack("!II", 3, 196608))
    out = drain(core)
    assert fatal(out)["C"] == "08P01" and fatal(out)["S"] == "FATAL"
    assert cmd.Refused("protocol") in out.controls
    assert core.state is State.CLOSED


def test_too_many_clients_are_refused() -> None:
    counter = Counter()
    inputs = PlanInputs(Classifier(), Policy(), FixedLedger())
    core = Core(CoreConfig(max_client_conn=3), inputs, counter, over_capacity=lambda: True)
    core.client_data(STARTUP)
    out = drain(core)
    assert fatal(out)["C"] == "53300" and "max_client_conn = 3" in fatal(out)["M"]
    assert out.controls[0] == cmd.Refused("max_client_conn")


def test_startup_timeout_and_upstream_failure_are_fatal() -> None:
    core, _ = make_core()
    core.client_data(STARTUP)
    drain(core)
    core.startup_timed_out()
    assert fatal(drain(core))["C"] == "08P01"
    core, _ = make_core()
    core.client_data(STARTUP)
    drain(core)
    core.upstream_failed("softguard: connection refused")
    out = drain(core)
    assert fatal(out) == {**fatal(out), "C": "08006", "M": "softguard: connection refused"}
    assert out.controls[0] == cmd.Refused("upstream")


# ---------------------------------------------------------------------- relaying


def test_harmless_query_travels_as_the_same_bytes_object() -> None:
    core, counter = ready_core()
    chunk = query("select * from orders where id = 1")
    core.client_data(chunk)
    assert len(core.sent_server) == 1 and core.sent_server[0] is chunk
    assert core.pending == 1 and counter.safe_statements == 1
    answer = msg(b"T", b"\0\0") + complete("SELECT 0") + READY_IDLE
    drain(core)
    core.server_data(answer)
    assert len(core.sent_client) == 1 and core.sent_client[0] is answer
    assert core.pending == 0 and core.is_idle


def test_extended_protocol_pipelined_across_chunks() -> None:
    core, counter = ready_core()
    one = (
        msg(b"P", b"s1\0update t set a = 1 where id = $1\0\0\0")
        + msg(b"B", b"\0s1\0\0\0\0\0\0\0")
        + msg(b"E", b"\0\0\0\0\0")
        + msg(b"S")
    )
    two = msg(b"P", b"\0select 1\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"S")
    stream = one + two
    for cut in (3, 20, len(one) + 2):
        core.client_data(stream[:cut])
        core.client_data(stream[cut:])
        assert drain(core).to_server == stream
        assert core.pending == 2
        core.server_data(msg(b"1") + msg(b"2") + complete("UPDATE 1") + READY_TX)
        core.server_data(msg(b"1") + msg(b"2") + msg(b"D", b"\0\1\0\0\0\1" + b"1"))
        assert core.pending == 1
        core.server_data(complete("SELECT 1") + READY_IDLE)
        assert core.pending == 0 and core.is_idle
        drain(core)
    assert counter.counts == {("destructive", "allow"): 3}
    assert counter.safe_statements == 3


def test_rewritten_drop_is_sent_as_a_call_and_answered_as_the_drop() -> None:
    core, _ = ready_core()
    core.client_data(query("select 1; drop table t"))
    sent = drain(core).to_server
    assert sent.startswith(b"Q") and b"select 1; CALL softguard.drop_op(" in sent
    answer = (
        msg(b"T", b"\0\0")
        + complete("SELECT 1")
        + notice("SGBEG", "10")
        + notice("00000", "softguard: DROP TABLE t is reversible as operation 5 until 2030-01-01")
        + notice("SGEND", "DROP TABLE")
        + complete("CALL")
        + READY_IDLE
    )
    core.server_data(answer)
    out = drain(core)
    assert b"SGBEG" not in out.to_client and b"SGEND" not in out.to_client
    assert out.to_client.endswith(complete("DROP TABLE") + READY_IDLE)
    notices = [c for c in out.controls if isinstance(c, cmd.OperationNotice)]
    assert len(notices) == 1 and notices[0].protected == [("drop", "drop table t")]


def test_error_position_inside_a_rewritten_query_is_mapped_back() -> None:
    core, _ = ready_core()
    text = "drop table t; selec 1"
    core.client_data(query(text))
    sent = drain(core).to_server[5:]
    # The server reports positions in the text it was sent.
    position = str(sent.index(b"selec") + 1).encode()
    body = b"SERROR\0VERROR\0C42601\0Msyntax error\0P" + position + b"\0\0"
    core.server_data(msg(b"E", body) + READY_IDLE)
    out = drain(core).to_client
    assert out.endswith(READY_IDLE)
    assert parse_fields(out[5 : -len(READY_IDLE)])["P"] == str(text.index("selec") + 1)


def test_denied_statement_is_replaced_by_a_refusal() -> None:
    core, counter = ready_core()
    core.client_data(query("drop database d"))
    sent = drain(core).to_server
    assert b"RAISE EXCEPTION" in sent and b"42501" in sent
    assert counter.counts == {("destructive", "deny"): 1}


def test_ledger_wait_holds_the_stream_then_resumes_it_in_order() -> None:
    ledger = Ledger(ready=None)
    core, counter = ready_core(ledger)
    before = query("select 1")
    chunk = before + query("drop table t") + query("select 2")
    core.client_data(chunk)
    out = drain(core)
    assert out.to_server == before
    assert out.controls == [cmd.ClientReading(paused=True), cmd.WaitLedger("shop", "alice")]
    assert core.pending == 1  # the held Query is not owed yet
    ledger.ready = True
    core.ledger_known()
    out = drain(core)
    assert b"CALL softguard.drop_op(" in out.to_server
    assert out.to_server.endswith(query("select 2"))
    assert out.controls == [cmd.ClientReading(paused=False)]
    assert core.pending == 3
    assert counter.counts == {("destructive", "protect"): 1}  # counted once, not again


def test_large_text_is_classified_off_the_loop_then_planned_with_that_result() -> None:
    core, counter = ready_core(offload_bytes=64)
    small = query("select 1")
    big = "drop table t /* " + "x" * 100 + " */"
    chunk = small + query(big) + query("select 2")
    core.client_data(chunk)
    out = drain(core)
    assert out.to_server == small  # the large text waits; nothing after it overtakes it
    assert out.controls == [
        cmd.ClientReading(paused=True),
        cmd.ClassifyOffLoop(big.encode(), "UTF8"),
    ]
    core.classified(Classifier().classify_bytes(big.encode()))  # what the worker answers
    out = drain(core)
    assert b"CALL softguard.drop_op(" in out.to_server
    assert out.to_server.endswith(query("select 2"))
    assert out.controls == [cmd.ClientReading(paused=False)]
    assert counter.counts == {("destructive", "protect"): 1}


def test_large_harmless_text_stays_on_the_loop() -> None:
    core, _ = ready_core(offload_bytes=64)
    chunk = query("select '" + "x" * 100 + "'")
    core.client_data(chunk)
    out = drain(core)
    assert out.to_server == chunk and out.controls == []


def test_ledger_refusal_is_sent_instead_of_the_statement() -> None:
    core, _ = ready_core(FixedLedger(ready="softguard: no ledger here"))
    core.client_data(query("truncate t"))
    sent = drain(core).to_server
    assert b"55000" in sent and b"no ledger here" in sent


def test_malformed_frame_from_client_is_fatal_08p01() -> None:
    core, _ = ready_core()
    core.client_data(b"\x00\x00\x00\x00\x08")
    out = drain(core)
    assert fatal(out)["C"] == "08P01"
    assert "invalid message type" in fatal(out)["M"]
    assert core.state is State.CLOSED
    core.client_data(query("select 1"))  # nothing more is relayed
    assert drain(core) == Out(b"", b"", [])


def test_function_call_refused_by_policy_becomes_a_server_raised_refusal() -> None:
    core, counter = ready_core()
    before = query("select 1")
    call = msg(b"F", struct.pack("!IhhhI", 2096, 0, 1, 0, 0))  # pg_terminate_backend
    core.client_data(before + call)
    out = drain(core)
    assert out.to_server.startswith(before)
    refused = out.to_server[len(before) :]
    assert refused[:1] == b"Q" and b"42501" in refused and b"FunctionCall" in refused
    assert core.pending == 2  # one ReadyForQuery each, in order
    assert counter.counts == {("function_call", "deny"): 1}


def test_truncated_function_call_is_fatal_and_nothing_follows() -> None:
    core, _ = ready_core()
    core.client_data(msg(b"F", b"\x00\x01") + query("drop table t"))
    out = drain(core)
    assert fatal(out)["C"] == "08P01"
    assert b"drop table" not in out.to_server


def test_malformed_frame_from_server_is_relayed_then_fatal() -> None:
    core, _ = ready_core()
    core.client_data(query("select 1"))
    drain(core)
    bad = complete("SELECT 1") + b"D\x00\x00\x00\x01"
    core.server_data(bad)
    out = drain(core)
    assert out.to_client == bad
    assert fatal(out)["C"] == "08P01" and "invalid message length" in fatal(out)["M"]
    assert core.state is State.CLOSED


def test_upstream_lost_at_a_boundary_tells_the_client() -> None:
    core, _ = ready_core()
    core.server_lost()
    assert fatal(drain(core))["C"] == "08006"


def test_stalled_client_is_cut_off() -> None:
    core, _ = ready_core()
    chunk = query("select 1")
    core.client_data(chunk[:4])
    assert drain(core).controls == [cmd.SetTimer(cmd.Timer.STALL, 60.0)]
    core.client_data(chunk[4:6])
    core.stall_check()  # bytes came since: armed again
    assert drain(core).controls == [cmd.SetTimer(cmd.Timer.STALL, 60.0)]
    core.stall_check()
    out = drain(core)
    assert fatal(out)["C"] == "08P01" and "stalled" in fatal(out)["M"]


def test_shutdown_waits_for_the_transaction_to_end() -> None:
    core, _ = ready_core()
    core.client_data(query("begin"))
    core.server_data(complete("BEGIN") + READY_TX)
    drain(core)
    core.begin_shutdown()
    assert drain(core).controls == []
    core.client_data(query("commit"))
    core.server_data(complete("COMMIT") + READY_IDLE)
    out = drain(core)
    assert out.to_client == complete("COMMIT") + READY_IDLE
    assert fatal(out)["C"] == "57P01"
    last = out.controls[-1]
    assert isinstance(last, cmd.Close) and last.terminate_upstream


def test_a_half_closed_client_gets_its_answers_then_the_session_ends() -> None:
    """End of file from the client with two Queries unanswered: the connection stays open
    (client_eof is True) until both ReadyForQuery went by, then the core closes, telling
    the upstream; one with nothing owed closes at once."""
    core, _ = ready_core()
    core.client_data(query("select 1") + query("select 2"))
    drain(core)
    assert core.client_eof() is True
    assert drain(core).controls == []
    answer = complete("SELECT 1") + READY_IDLE
    core.server_data(answer)
    out = drain(core)
    assert out.to_client == answer and out.controls == []
    core.server_data(answer)
    out = drain(core)
    assert out.to_client == answer
    assert out.controls == [cmd.Close(terminate_upstream=True)]
    idle, _ = ready_core()
    assert idle.client_eof() is False
    assert drain(idle).controls == [cmd.Close(terminate_upstream=True)]
    starting, _ = make_core()  # its startup packet will never come: nothing waits for it
    starting.start()
    drain(starting)
    assert starting.client_eof() is False and starting.state is State.CLOSED


@pytest.mark.parametrize("at_boundary", [True, False])
def test_client_gone_tells_the_upstream_only_at_a_boundary(at_boundary: bool) -> None:
    core, _ = ready_core()
    core.client_data(query("select 1") if at_boundary else query("select 1")[:3])
    drain(core)
    core.client_lost()
    assert drain(core).controls[-1] == cmd.Close(terminate_upstream=at_boundary)
