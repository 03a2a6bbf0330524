"""A DROP through softguard looks to the client exactly like the DROP run directly
(DESIGN.md §2, docs/decisions/0005-reversible-drop.md).

Each case runs on two fresh copies of the rental database: directly on twin A, through the
proxy on twin B (whose ledger the proxy installs on the first DROP). Step by step the
client must see the same values (command tags, rows), errors (SQLSTATE, message, detail,
hint, position, context...), notices (the proxied ones minus exactly the expected
`softguard:` notices) and transaction status; afterwards the live schema (pg_dump
--schema-only without softguard's schemas) and data of the twins must be equal, and
twin B's ledger must hold exactly the operations that committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from support.drop_harness import Step, check_softguard_notice, compare_runs, run, run_asyncpg


@dataclass
class Case:
    steps: Sequence[Step]
    sg: Sequence[int] | None = None  # softguard notices per step (default: 1 per step)
    ops: int | None = None  # operations committed in the end (default: sum(sg))
    setup: Sequence[str] = ()  # run directly on both twins first
    autocommit: bool = True
    expect_error: str | None = None  # SQLSTATE some step must fail with (sanity check)

    def notices(self) -> Sequence[int]:
        return self.sg if self.sg is not None else [1] * len(self.steps)

    def n_ops(self) -> int:
        return self.ops if self.ops is not None else sum(self.notices())


def _commit(conn: psycopg.Connection[Any]) -> str:
    conn.commit()
    return "committed"


def _pipeline(*stmts: str) -> Callable[[psycopg.Connection[Any]], Any]:
    def pipeline(conn: psycopg.Connection[Any]) -> Any:
        curs = []
        with conn.pipeline():
            for s in stmts:
                curs.append(conn.execute(s.encode()))
        return [(c.statusmessage, c.fetchall() if c.description else None) for c in curs]

    return pipeline


BAD_FK_INSERT = (
    "INSERT INTO reservations (customer_id, vehicle_id, starts_on, ends_on, updated_at) "
    "VALUES (999999, 1, '2025-01-01', '2025-01-02', '2025-01-01') RETURNING id, customer_id"
)

CASES: dict[str, Case] = {
    # --- DROP TABLE forms
    "table_single": Case(["DROP TABLE big_refs"]),
    "table_list": Case(["DROP TABLE big_refs, billing.refunds"]),
    "table_if_exists_missing": Case(["DROP TABLE IF EXISTS nosuch"], sg=[0]),
    "table_if_exists_present": Case(["DROP TABLE IF EXISTS nosuch, vehicle_notes CASCADE"]),
    "table_missing": Case(["DROP TABLE nosuch"], sg=[0], expect_error="42P01"),
    "table_missing_in_list": Case(["DROP TABLE big_refs, nosuch"], sg=[0], expect_error="42P01"),
    "table_cascade": Case(["DROP TABLE reservations CASCADE"]),
    "table_restrict_fails": Case(["DROP TABLE customers RESTRICT"], sg=[0], expect_error="2BP01"),
    "table_partitioned": Case(["DROP TABLE events"]),
    "table_partition": Case(["DROP TABLE events_2025", "SELECT count(*) FROM events"], sg=[1, 0]),
    "table_inherit_parent_fails": Case(["DROP TABLE vehicle_notes"], sg=[0], expect_error="2BP01"),
    "table_inherit_parent_cascade": Case(["DROP TABLE vehicle_notes CASCADE"]),
    "table_inherit_child": Case(
        ["DROP TABLE damage_notes", "SELECT * FROM vehicle_notes ORDER BY id"], sg=[1, 0]
    ),
    "table_quoted_mixed_case": Case(['DROP TABLE "Fleet Audit" CASCADE']),
    "table_schema_qualified": Case(["DROP TABLE billing.refunds"]),
    "table_via_search_path": Case(
        [
            "SET search_path = billing, public; DROP TABLE payments CASCADE",
            "SHOW search_path",
            "SELECT count(*) FROM refunds",
        ],
        sg=[1, 0, 0],
    ),
    # --- other DROP kinds
    "schema_cascade": Case(["DROP SCHEMA billing CASCADE"]),
    "schema_restrict_fails": Case(["DROP SCHEMA billing"], sg=[0], expect_error="2BP01"),
    "view": Case(["DROP VIEW active_reservations"]),
    "view_quoted": Case(['DROP VIEW "Fleet Audit Failures"']),
    "matview": Case(["DROP MATERIALIZED VIEW billing.revenue_by_month"]),
    "sequence": Case(["DROP SEQUENCE invoice_no"]),
    "sequence_owned_fails": Case(["DROP SEQUENCE customers_id_seq"], sg=[0], expect_error="2BP01"),
    "index": Case(["DROP INDEX customers_lower_name_idx"]),
    "index_of_constraint_fails": Case(
        ["DROP INDEX reservations_pkey"], sg=[0], expect_error="2BP01"
    ),
    "function": Case(["DROP FUNCTION add_tax(numeric)", "SELECT add_tax(1)"], sg=[1, 0]),
    "function_with_trigger_fails": Case(
        ["DROP FUNCTION touch_updated_at()"], sg=[0], expect_error="2BP01"
    ),
    "function_cascade_drops_trigger": Case(
        [
            "DROP FUNCTION touch_updated_at() CASCADE",
            "UPDATE reservations SET status = 'active' WHERE id = 1 "
            "RETURNING updated_at = '2025-01-01 00:00:01+00'::timestamptz",
        ],
        sg=[1, 0],
    ),
    "function_bad_argtype": Case(
        ["select 1; DROP FUNCTION add_tax(nosuchtype)"], sg=[0], expect_error="42704"
    ),
    "procedure": Case(["DROP PROCEDURE cancel_stale(int)", "CALL cancel_stale(1)"], sg=[1, 0]),
    "type_enum": Case(["DROP TYPE fuel"]),
    "type_composite": Case(["DROP TYPE money_range"]),
    "type_used_fails": Case(["DROP TYPE reservation_status"], sg=[0], expect_error="2BP01"),
    "domain": Case(["DROP DOMAIN plate_code"]),
    "domain_used_fails": Case(["DROP DOMAIN email"], sg=[0], expect_error="2BP01"),
    # --- multi-statement strings
    "multi_ok": Case(["select 1; drop table big_refs; select 2"]),
    "multi_two_drops": Case(["drop table big_refs; drop view active_reservations"], sg=[2]),
    "multi_error_after_drop": Case(
        # the notice was sent, but the implicit transaction rolls back: no operation
        ["select 1; drop table big_refs; select nosuch"],
        sg=[1],
        ops=0,
        expect_error="42703",
    ),
    "multi_error_position_non_ascii": Case(
        ["select 'ünïcødé €'; drop table big_refs; select nosuch"],
        sg=[1],
        ops=0,
        expect_error="42703",
    ),
    "multi_syntax_error": Case(
        # unparseable: PostgreSQL refuses the whole string, nothing runs
        ["select 1; drop table big_refs; selec 2"],
        sg=[0],
        expect_error="42601",
    ),
    "comments_and_semicolon": Case(["/* why */ DROP TABLE big_refs; -- bye"]),
    # --- transactions
    "begin_rollback": Case(
        [
            "BEGIN",
            "DROP TABLE reservations CASCADE",
            "SELECT count(*) FROM billing.payments",
            "ROLLBACK",
            "SELECT count(*) FROM reservations",
        ],
        sg=[0, 1, 0, 0, 0],
        ops=0,
    ),
    "savepoint_rolled_back": Case(
        [
            "BEGIN",
            "SAVEPOINT s1",
            "DROP TABLE locations CASCADE",
            "ROLLBACK TO SAVEPOINT s1",
            "SELECT count(*) FROM locations",
            "DROP VIEW active_reservations",
            "RELEASE SAVEPOINT s1",
            "COMMIT",
        ],
        sg=[0, 0, 1, 0, 0, 1, 0, 0],
        ops=1,
    ),
    "failed_transaction": Case(
        [
            "BEGIN",
            "SELECT nosuch",
            "DROP TABLE big_refs",
            "ROLLBACK",
            "SELECT count(*) FROM big_refs",
        ],
        sg=[0, 0, 0, 0, 0],
        expect_error="25P02",
    ),
    "failing_drop_in_transaction": Case(
        ["BEGIN", "DROP TABLE nosuch", "SELECT 1", "ROLLBACK"], sg=[0, 0, 0, 0]
    ),
    "driver_transaction_commit": Case(
        ["DROP VIEW active_reservations", _commit], sg=[1, 0], autocommit=False
    ),
    # --- the live schema afterwards
    "name_free_after_drop": Case(
        [
            "DROP TABLE big_refs",
            "CREATE TABLE big_refs (id int PRIMARY KEY, note text)",
            "INSERT INTO big_refs VALUES (1, 'new') RETURNING *",
            "SELECT * FROM big_refs",
        ],
        sg=[1, 0, 0, 0],
    ),
    "cascade_removes_view_and_fk": Case(
        [
            "DROP TABLE customers CASCADE",
            "SELECT * FROM active_reservations",
            BAD_FK_INSERT,
        ],
        sg=[1, 0, 0],
    ),
    # --- after an earlier DROP: objects in quarantine must not count as still there
    "type_after_its_table": Case(
        ["DROP TABLE reservations CASCADE", "DROP TYPE reservation_status"]
    ),
    "type_still_used_after_view_dropped": Case(
        # the enum is still used by reservations.status: 2BP01 as direct, and the DETAIL
        # must list only what PostgreSQL would list (not the quarantined view)
        ["DROP TABLE customers CASCADE", "DROP TYPE reservation_status"],
        sg=[1, 0],
        expect_error="2BP01",
    ),
    "function_after_its_trigger_table": Case(
        ["DROP TABLE reservations CASCADE", "DROP FUNCTION touch_updated_at()"]
    ),
    "owned_sequence_gone_with_table": Case(
        ["DROP TABLE customers CASCADE", "DROP SEQUENCE customers_id_seq"],
        sg=[1, 0],
        expect_error="42P01",
    ),
    "cascade_after_dependent_view_quarantined": Case(
        # the view that depends on both tables went with the first DROP: the second
        # cascades only to what is still live (notice text and detail as direct)
        ["DROP TABLE customers CASCADE", "DROP TABLE vehicles CASCADE"]
    ),
    "restrict_ok_once_dependents_quarantined": Case(
        ["DROP TABLE reservations CASCADE", "DROP TABLE customers"]
    ),
    "restrict_after_schema_dropped": Case(
        ["DROP SCHEMA billing CASCADE", "DROP TABLE reservations"],
        sg=[1, 0],
        expect_error="2BP01",
    ),
    "drop_twice": Case(["DROP TABLE big_refs", "DROP TABLE big_refs"], sg=[1, 0]),
    # --- pipeline
    "pipeline": Case([_pipeline("select 1", "DROP TABLE big_refs", "select 2")]),
    "pipeline_failing_drop": Case(
        [_pipeline("select 1", "DROP TABLE nosuch", "select 2"), "SELECT 1"], sg=[0, 0]
    ),
}


def group(*names: str) -> Case:
    """Several cases touching different objects, one after the other on one pair of twins
    (each step is still compared on its own)."""
    steps: list[Step] = []
    sg: list[int] = []
    ops = 0
    for name in names:
        case = CASES[name]
        assert not case.setup and case.autocommit
        steps.extend(case.steps)
        sg.extend(case.notices())
        ops += case.n_ops()
    return Case(steps, sg=sg, ops=ops)


# The extended protocol (psycopg named prepared statements and unnamed statements,
# asyncpg): the cases in groups, to keep the number of database copies down.
GROUPS = {
    "objects": (
        "table_single",
        "table_if_exists_missing",
        "table_missing",
        "table_restrict_fails",
        "table_partition",
        "table_quoted_mixed_case",
        "index",
        "function",
        "domain_used_fails",
        "sequence",
        "type_enum",
        "matview",
    ),
    "transactions": (
        "begin_rollback",
        "savepoint_rolled_back",
        "failed_transaction",
        "name_free_after_drop",
        "drop_twice",
        "table_cascade",
        "schema_cascade",
    ),
    "cascades": (
        "type_used_fails",
        "function_with_trigger_fails",
        "cascade_removes_view_and_fk",
        "table_partitioned",
        "table_inherit_parent_fails",
        "table_inherit_parent_cascade",
    ),
}

PARAMS = [pytest.param(name, "simple", id=f"simple-{name}") for name in CASES] + [
    pytest.param(group_name, mode, id=f"{mode}-{group_name}")
    for mode in ("prepared", "unnamed", "asyncpg")
    for group_name in GROUPS
]


def check_twins(proxy: Any, sg: Any, twins: Any, case: Case, mode: str) -> None:
    a, b = twins()
    for db in (a, b):
        if case.setup:
            sg.execute(db, *case.setup)
    direct = run(sg.dsn(a), case.steps, mode, case.autocommit)
    proxied = run(proxy.dsn(b), case.steps, mode, case.autocommit)
    if case.expect_error:
        assert any(s.error and s.error.sqlstate == case.expect_error for s in direct), direct
    notices = compare_runs(direct, proxied, case.notices(), case.steps)

    ops = sg.operations(b)
    active = [o["id"] for o in ops if o["state"] == "active"]
    assert len(ops) == len(active) == case.n_ops(), (
        f"expected {case.n_ops()} recorded operation(s), ledger has {ops}"
    )
    announced = [int(check_softguard_notice(n, active)["op"]) for n in notices]
    # every recorded operation was announced (some announced ones rolled back)
    assert set(active) <= set(announced), (announced, active)
    if case.n_ops() == sum(case.notices()):
        assert sorted(announced) == active, (announced, active)
    # The ledger keeps the client's own statement text (a single DROP step: all of it).
    drops = {s for s in case.steps if isinstance(s, str) and s.upper().startswith("DROP")}
    for op in ops:
        if all(";" not in s for s in case.steps if isinstance(s, str)) and drops:
            assert op["statement"] in drops, (op["statement"], drops)
        assert op["db_role"] == sg.server.superuser

    dump_a, dump_b = sg.schema_dump(a), sg.schema_dump(b)
    assert dump_b == dump_a, "live schema differs from the direct twin"
    assert sg.data(b) == sg.data(a)


@pytest.mark.parametrize(("name", "mode"), PARAMS)
def test_drop_like_direct(proxy: Any, sg: Any, twins: Any, name: str, mode: str) -> None:
    case = CASES[name] if mode == "simple" else group(*GROUPS[name])
    check_twins(proxy, sg, twins, case, mode)


def test_prepared_drop_executed_twice(proxy: Any, sg: Any, twins: Any) -> None:
    """psycopg prepare=True: the second execute reuses the named statement (no new Parse)."""
    check_twins(
        proxy,
        sg,
        twins,
        Case(["DROP VIEW active_reservations", "DROP VIEW active_reservations"], sg=[1, 0]),
        "prepared",
    )


def test_asyncpg_prepared_drop_describes_like_direct(proxy: Any, sg: Any, twins: Any) -> None:
    """conn.prepare("DROP …"): Describe answers NoData (no attributes, no parameters)."""
    a, b = twins()

    async def describe_then_run(conn: Any) -> Any:
        stmt = await conn.prepare("DROP TABLE billing.refunds")
        described = (list(stmt.get_parameters()), list(stmt.get_attributes()))
        assert described == ([], [])
        await stmt.fetch()
        first = stmt.get_statusmsg()
        # the same prepared statement again: the table is gone now
        try:
            await stmt.fetch()
        except Exception as e:
            second = (type(e).__name__, getattr(e, "sqlstate", None), str(e))
        else:  # pragma: no cover
            second = ("no error", None, stmt.get_statusmsg())
        return described, first, second

    steps = [describe_then_run]
    direct = run_asyncpg(sg.dsn(a), steps)
    proxied = run_asyncpg(proxy.dsn(b), steps)
    compare_runs(direct, proxied, [1], steps)
    assert direct[0].value[1] == "DROP TABLE"
    assert direct[0].value[2][1] == "42P01"
    assert len(sg.active_ops(b)) == 1
    assert sg.schema_dump(a) == sg.schema_dump(b)


def test_psycopg_uses_the_protocols_we_think(proxy: Any, sg: Any, twins: Any) -> None:
    """Sanity check of the harness: prepare=False without params is a simple Query (several
    statements allowed), prepare=True / binary=True are extended (one statement only)."""
    (a,) = twins(1)
    with psycopg.connect(sg.dsn(a), autocommit=True) as c:
        c.execute(b"select 1; select 2", prepare=False)
        for kw in ({"prepare": True}, {"binary": True}):
            with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
                c.execute(b"select 1; select 2", **kw)  # type: ignore[arg-type]
