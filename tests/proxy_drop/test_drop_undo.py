"""Undo of DROPs made through softguard (DESIGN.md §3-§4, decision 0005).

After a DROP through the proxy and `SELECT softguard.undo_op(N)` run directly as the
superuser, the database equals the original: schema dump (softguard's schemas excluded),
per-table checksums, sequence values, comments, grants, RLS policies, triggers.
Then the issue's Done-when scenario end to end.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support.drop_harness import check_softguard_notice, compare_runs, run

UNDO_CASES: dict[str, list[str]] = {
    "table": ["DROP TABLE big_refs"],
    "table_list": ["DROP TABLE big_refs, billing.refunds"],
    "table_with_fk_target_cascade": ["DROP TABLE big CASCADE"],
    "table_cascade_view_fk_trigger": ["DROP TABLE reservations CASCADE"],
    "table_rls_grants_comments_cascade": ["DROP TABLE customers CASCADE"],
    "table_partitioned": ["DROP TABLE events"],
    "table_partition": ["DROP TABLE events_2025"],
    "table_inherit_parent_cascade": ["DROP TABLE vehicle_notes CASCADE"],
    "table_inherit_child": ["DROP TABLE damage_notes"],
    "table_quoted_cascade": ['DROP TABLE "Fleet Audit" CASCADE'],
    "table_via_search_path": ["SET search_path = billing, public; DROP TABLE payments CASCADE"],
    "schema_cascade": ["DROP SCHEMA billing CASCADE"],
    "view": ["DROP VIEW active_reservations"],
    "matview": ["DROP MATERIALIZED VIEW billing.revenue_by_month"],
    "sequence": ["DROP SEQUENCE invoice_no"],
    "index": ["DROP INDEX customers_lower_name_idx"],
    "function": ["DROP FUNCTION add_tax(numeric)"],
    "function_cascade_trigger": ["DROP FUNCTION touch_updated_at() CASCADE"],
    "procedure": ["DROP PROCEDURE cancel_stale(int)"],
    "type": ["DROP TYPE fuel, money_range"],
    "domain": ["DROP DOMAIN plate_code"],
    "two_in_one_string": ["DROP VIEW active_reservations; DROP TABLE customers CASCADE"],
    "several_statements": [
        "DROP TABLE reservations CASCADE",
        "DROP FUNCTION touch_updated_at()",
        "DROP TYPE reservation_status",
        "DROP TABLE customers",
    ],
}


def assert_same_state(got: Any, want: Any) -> None:
    dump, data, extras = got
    want_dump, want_data, want_extras = want
    assert dump == want_dump, "schema differs from the original"
    assert data == want_data, "table contents / sequence values differ from the original"
    assert extras == want_extras, "comments / grants / policies / triggers differ"


@pytest.mark.parametrize("name", list(UNDO_CASES))
def test_undo_restores_original(proxy: Any, sg: Any, twins: Any, pristine: Any, name: str) -> None:
    (db,) = twins(1)
    notices: list[str] = []
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.add_notice_handler(
            lambda d: (
                notices.append(d.message_primary)
                if (d.message_primary or "").startswith("softguard:")
                else None
            )
        )
        for stmt in UNDO_CASES[name]:
            c.execute(stmt.encode())
    ops = sg.active_ops(db)
    assert ops, "no operation recorded"
    assert sorted(int(check_softguard_notice(n, ops)["op"]) for n in notices) == ops
    assert sg.schema_dump(db) != pristine[0], "the DROP changed nothing?"
    for op in sorted(ops, reverse=True):
        lines = sg.undo(db, op)
        assert lines and all(f"operation {op}" in line for line in lines), lines
    states = {o["id"]: o["state"] for o in sg.operations(db)}
    assert all(states[op] == "undone" for op in ops), states
    assert_same_state(sg.snapshot(db), pristine)


def test_undo_restores_sequence_values_and_allows_writes(proxy: Any, sg: Any, twins: Any) -> None:
    """Sequence values after use, and the restored table accepts writes with the next id."""
    (db,) = twins(1)
    sg.execute(db, "SELECT nextval('invoice_no')", "SELECT nextval('customers_id_seq')")
    before = sg.snapshot(db)
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute(b"DROP SEQUENCE invoice_no")
        c.execute(b"DROP TABLE customers CASCADE")
    for op in sorted(sg.active_ops(db), reverse=True):
        sg.undo(db, op)
    assert_same_state(sg.snapshot(db), before)
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        assert c.execute(b"SELECT nextval('invoice_no')").fetchone() == (1091,)
        row = c.execute(
            b"INSERT INTO customers (email, full_name) VALUES ('z@example.com', 'Z') RETURNING id"
        ).fetchone()
        assert row == (2002,)
        # the re-added foreign key constrains again
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute(
                b"INSERT INTO reservations (customer_id, vehicle_id, starts_on, ends_on) "
                b"VALUES (999999, 1, '2025-01-01', '2025-01-02')"
            )


DONE_WHEN = [
    "DROP TABLE reservations CASCADE",
    "DROP FUNCTION touch_updated_at()",
    "DROP SCHEMA billing CASCADE",
    "DROP INDEX customers_lower_name_idx",
    "DROP VIEW active_reservations",  # already gone with reservations: 42P01 as direct
]
NEW_CUSTOMER = (
    "INSERT INTO customers (email, full_name, phone, created_at, tags) "
    "VALUES ('new.customer@example.com', 'New Customer', '+4900', '2025-05-05 10:00+00', "
    "'{vip}') RETURNING id, email"
)


def test_done_when(proxy: Any, sg: Any, twins: Any) -> None:
    """The issue's Done-when: the five DROPs through softguard behave as direct; a
    customer is inserted; every operation undone newest first -> the original database
    plus that customer."""
    direct_db, guarded_db, reference_db = twins(3)
    # 1. the DROPs, compared with a twin run directly
    direct = run(sg.dsn(direct_db), DONE_WHEN, "simple")
    proxied = run(proxy.dsn(guarded_db), DONE_WHEN, "simple")
    assert [s.error.sqlstate if s.error else None for s in direct] == [None] * 4 + ["42P01"]
    compare_runs(direct, proxied, [1, 1, 1, 1, 0], DONE_WHEN)
    assert sg.schema_dump(guarded_db) == sg.schema_dump(direct_db)
    assert sg.data(guarded_db) == sg.data(direct_db)
    ops = sg.active_ops(guarded_db)
    assert len(ops) == 4, sg.operations(guarded_db)

    # 2. life goes on: a new customer (through softguard; directly on the others)
    got = run(proxy.dsn(guarded_db), [NEW_CUSTOMER], "simple")
    for db in (direct_db, reference_db):
        want = run(sg.dsn(db), [NEW_CUSTOMER], "simple")
        compare_runs(want, got, [0], [NEW_CUSTOMER])
    assert sg.schema_dump(guarded_db) == sg.schema_dump(direct_db)
    assert sg.data(guarded_db) == sg.data(direct_db)

    # 3. undo everything, newest first
    for op in sorted(ops, reverse=True):
        assert sg.undo(guarded_db, op)
    assert_same_state(sg.snapshot(guarded_db), sg.snapshot(reference_db))
    states = {o["id"]: (o["kind"], o["state"]) for o in sg.operations(guarded_db)}
    assert all(states[op][1] == "undone" for op in ops), states
    assert sorted(k for k, _ in states.values()).count("UNDO") == len(ops), states
