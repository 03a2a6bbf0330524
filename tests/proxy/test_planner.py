"""plan_message as a pure function: a message and PlanInputs in, a Planned out."""

from __future__ import annotations

import struct

import pytest

from softguard.policy import Policy, PolicyConfig, SessionInfo
from softguard.proxy.statements import (
    SAFE,
    FixedLedger,
    NeedLedger,
    PlanInputs,
    Planned,
    SoftSession,
    plan_message,
)
from softguard.sql import Classifier
from softguard.sql.soft_delete import TAG_MARKER, SoftDeleteTables, SoftTarget
from softguard.wire import Framer, Message, parse_query_text

SESSION = SessionInfo("alice", "shop", "psql", "10.0.0.7:50000")
CUSTOMERS = SoftTarget(
    "public", "customers", "deleted_at", "timestamp with time zone", "timestamp", "now()", ("id",)
)


def message(mtype: bytes, body: bytes) -> Message:
    _, msgs, _ = Framer(want=None).feed(mtype + struct.pack("!I", len(body) + 4) + body)
    return msgs[0]


def query(sql: str) -> Message:
    return message(b"Q", sql.encode() + b"\0")


def parse(name: str, sql: str, types: bytes = b"\0\0") -> Message:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + types)


def inputs(ledger: FixedLedger | None = None, **policy: object) -> PlanInputs:
    return PlanInputs(Classifier(), Policy(PolicyConfig(**policy)), ledger or FixedLedger())  # type: ignore[arg-type]


def sent_text(planned: Planned) -> str:
    assert planned.raw is not None
    return parse_query_text(planned.raw[0], planned.raw[5:]).decode()


def test_harmless_text_is_the_shared_safe_answer() -> None:
    assert plan_message(inputs(), SESSION, query("select * from t where id = 7")) is SAFE


def test_drop_becomes_a_procedure_call_and_is_named_for_the_log() -> None:
    planned = plan_message(inputs(), SESSION, query("select 1; drop table t"))
    assert isinstance(planned, Planned)
    # The client's text travels ahead of the rewrite, for the ledger (decision 0012).
    marker = "/*softguard:text=" + b"select 1; drop table t".hex() + "*/"
    assert sent_text(planned).startswith(marker + "select 1; CALL softguard.drop_op($")
    assert (planned.kind, planned.action) == ("destructive", "protect")
    assert planned.protected == (("drop", "drop table t"),)
    assert planned.plan is not None and planned.plan.original_position(1) == 1
    assert '"client_addr":"10.0.0.7"' in sent_text(planned)


def test_delete_passes_as_sent_and_is_captured() -> None:
    planned = plan_message(inputs(), SESSION, query("delete from t where id = 1"))
    assert isinstance(planned, Planned)
    assert planned.raw is None
    assert planned.protected == (("delete", "delete from t where id = 1"),)


def test_allowed_statements_share_one_answer() -> None:
    one = plan_message(inputs(), SESSION, query("update t set a = 1"))
    two = plan_message(inputs(), SESSION, query("update u set b = 2 where c = 3"))
    assert one is two
    assert isinstance(one, Planned) and (one.raw, one.kind, one.action) == (
        None,
        "destructive",
        "allow",
    )


def test_denied_statement_is_refused_with_42501() -> None:
    planned = plan_message(inputs(drop="deny"), SESSION, query("drop table t"))
    assert isinstance(planned, Planned) and planned.action == "deny"
    # Behind the approval gate (decision 0020): it raises 42501 unless a person approved.
    text = sent_text(planned)
    assert "softguard._approval_gate(E'" in text and "E'42501'" in text
    assert "(approval id " in text
    assert "CALL softguard.drop_op(" in text  # approved, it runs reversibly
    assert planned.protected == ()
    assert planned.approval is not None and planned.approval[0] == "drop table t"
    # With parameters (a Parse) there is no gate: refused as before.
    parsed = plan_message(inputs(drop="deny"), SESSION, parse("", "drop table t"))
    assert isinstance(parsed, Planned) and "ERRCODE = '42501'" in sent_text(parsed)
    assert parsed.approval is None


@pytest.mark.parametrize(
    "text", ["/*softguard:text=41*/ delete from t", "  /*SOFTGUARD:x*/ select 1"]
)
def test_client_text_marker_from_a_client_is_refused(text: str) -> None:
    planned = plan_message(inputs(), SESSION, query(text))
    assert isinstance(planned, Planned) and "ERRCODE = '42501'" in sent_text(planned)


def test_naming_softguards_schemas_is_refused_whatever_the_policy() -> None:
    planned = plan_message(inputs(), SESSION, query("select * from softguard.operations"))
    assert isinstance(planned, Planned)
    assert (planned.kind, planned.action) == ("safe", "deny")
    assert "ERRCODE = '42501'" in sent_text(planned)
    unlogged = plan_message(
        inputs(), SESSION, query("select * from softguard.operations"), log_it=False
    )
    assert isinstance(unlogged, Planned) and unlogged.kind == ""  # not counted again


@pytest.mark.parametrize("log_it", [True, False])
def test_unknown_ledger_asks_to_wait(log_it: bool) -> None:
    planned = plan_message(
        inputs(FixedLedger(ready=None)), SESSION, query("truncate t"), log_it=log_it
    )
    assert planned == NeedLedger("destructive" if log_it else "", "protect")
    # a statement that needs no ledger does not wait for it
    assert plan_message(inputs(FixedLedger(ready=None)), SESSION, query("select 1")) is SAFE


def test_missing_ledger_refuses_protected_statements_with_its_reason() -> None:
    ledger = FixedLedger(ready="softguard: the ledger is not installed")
    planned = plan_message(inputs(ledger), SESSION, query("truncate t"))
    assert isinstance(planned, Planned)
    assert "ERRCODE = '55000'" in sent_text(planned)
    assert "the ledger is not installed" in sent_text(planned)


def test_parse_keeps_its_name_and_parameter_types() -> None:
    types = struct.pack("!HI", 1, 23)
    planned = plan_message(inputs(), SESSION, parse("s1", "drop table t", types))
    assert isinstance(planned, Planned) and planned.raw is not None
    assert planned.raw[5:8] == b"s1\0"
    assert planned.raw.endswith(b"\0" + types)


def test_a_refused_parse_types_only_its_unspecified_parameters() -> None:
    """The refusal uses no parameter: an unspecified one (0) becomes text, which reads any
    text-format value at Bind (bytea failed on a backslash); a declared one stays."""
    types = struct.pack("!HIII", 3, 0, 23, 0)
    msg = parse("s1", "select * from softguard.operations", types)
    planned = plan_message(inputs(), SESSION, msg)
    assert isinstance(planned, Planned) and planned.raw is not None
    assert planned.raw.endswith(b"\0" + struct.pack("!HIII", 3, 25, 23, 25))


def test_soft_delete_rewrites_and_retags() -> None:
    tables = SoftDeleteTables({("public", "customers"): CUSTOMERS})
    ledger = FixedLedger(tables=tables, soft_delete_rules=("customers",))
    planned = plan_message(inputs(ledger), SESSION, query("select 1; delete from customers"))
    assert isinstance(planned, Planned)
    assert sent_text(planned).split("*/", 1)[1].startswith("select 1; UPDATE customers SET")
    single = plan_message(inputs(ledger), SESSION, query("delete from customers"))
    assert isinstance(single, Planned)  # one statement: its own text is in the ledger
    assert sent_text(single).startswith("UPDATE customers SET")
    assert planned.retag == frozenset({1})
    parsed = plan_message(inputs(ledger), SESSION, parse("", "delete from customers"))
    assert isinstance(parsed, Planned)
    assert sent_text(parsed).startswith(TAG_MARKER)


def test_soft_delete_tables_not_read_yet_asks_to_wait() -> None:
    ledger = FixedLedger(tables=None, soft_delete_rules=("customers",))
    planned = plan_message(inputs(ledger), SESSION, query("delete from customers"))
    assert isinstance(planned, NeedLedger)


def test_table_ddl_asks_for_the_soft_delete_tables_again() -> None:
    ledger = FixedLedger(tables=SoftDeleteTables(), soft_delete_rules=("customers",))
    planned = plan_message(inputs(ledger), SESSION, query("create table x (id int)"))
    assert isinstance(planned, Planned) and planned.reread_soft_delete
    assert planned.raw is None
    # without soft delete configured, DDL changes nothing to read
    assert plan_message(inputs(), SESSION, query("create table x (id int)")) is SAFE


def test_prepared_soft_delete_is_tracked_in_the_session() -> None:
    tables = SoftDeleteTables({("public", "customers"): CUSTOMERS})
    ledger = FixedLedger(tables=tables, soft_delete_rules=("customers",))
    soft = SoftSession()
    plan_message(
        inputs(ledger),
        SESSION,
        query("prepare p as delete from customers where id = $1"),
        soft=soft,
    )
    assert soft.prepared == {"p"}
    planned = plan_message(inputs(ledger), SESSION, query("execute p(1)"), soft=soft)
    assert isinstance(planned, Planned) and planned.retag == frozenset({0})


def test_planning_twice_gives_the_same_answer() -> None:
    shared = inputs()
    first = plan_message(shared, SESSION, query("alter table t drop column c"))
    second = plan_message(shared, SESSION, query("alter table t drop column c"))
    assert isinstance(first, Planned) and isinstance(second, Planned)
    # the same but for the random dollar-quote tags
    assert (first.kind, first.action, first.protected) == (
        second.kind,
        second.action,
        second.protected,
    )
    assert first.raw is not None and second.raw is not None and len(first.raw) == len(second.raw)


# ---------------------------------------------------------------------------------------
# The allowed-shape memo (issue 13): a shape the policy let a session run is not decided
# again, but nothing the decision depends on may be skipped by it.


def _updates(shared: PlanInputs, session: SessionInfo, n: int = 3) -> list[Planned | NeedLedger]:
    return [
        plan_message(shared, session, query(f"update t set a = {i} where id = {i}"))
        for i in range(n)
    ]


def test_a_remembered_shape_is_decided_again_after_a_policy_reload() -> None:
    shared = inputs()
    assert all(isinstance(p, Planned) and p.action == "allow" for p in _updates(shared, SESSION))
    assert shared.allowed  # remembered
    shared.policy.config = PolicyConfig(update="deny")  # what SIGHUP does
    after = plan_message(shared, SESSION, query("update t set a = 9 where id = 9"))
    assert isinstance(after, Planned) and after.action == "deny"


def test_a_shape_allowed_for_one_session_is_decided_for_another() -> None:
    shared = inputs(rules=[{"role": "agent", "update": "deny"}])
    assert all(p.action == "allow" for p in _updates(shared, SESSION))  # type: ignore[union-attr]
    agent = SessionInfo("agent", "shop", "psql", "10.0.0.8:50000")
    assert all(p.action == "deny" for p in _updates(shared, agent))  # type: ignore[union-attr]
    # and the refusals did not displace alice's answer, nor become remembered themselves
    assert all(p.action == "allow" for p in _updates(shared, SESSION))  # type: ignore[union-attr]
    assert all(p.action == "deny" for p in _updates(shared, agent))  # type: ignore[union-attr]


def test_an_unbounded_shape_is_not_taken_for_a_bounded_one() -> None:
    shared = inputs(require_where=True)
    assert all(p.action == "allow" for p in _updates(shared, SESSION))  # type: ignore[union-attr]
    unbounded = plan_message(shared, SESSION, query("update t set a = 1"))
    assert isinstance(unbounded, Planned) and unbounded.action == "deny"


def test_every_allowed_statement_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    shared = inputs()
    with caplog.at_level("DEBUG", logger="softguard.policy"):
        _updates(shared, SESSION, 4)
    allowed = [r for r in caplog.records if r.getMessage().startswith("allow update")]
    assert len(allowed) == 4
    assert not shared.allowed  # at DEBUG nothing is remembered


def test_the_memo_is_bounded() -> None:
    from softguard.proxy import statements

    shared = inputs()
    for i in range(statements._ALLOWED_MEMO_SIZE + 10):
        # a distinct shape each time: the table name differs
        plan_message(shared, SESSION, query(f"update t{i} set a = 1 where id = 1"))
    assert len(shared.allowed) <= statements._ALLOWED_MEMO_SIZE
