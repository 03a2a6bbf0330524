"""softguard.drop_op against the same statement run directly on a twin database.

Each case: the same setup on two copies of the rental database; the statement through
drop_op on one and directly on the other; then the client-visible outcome (SQLSTATE,
message, notices) and the live schema and data must match. Then undo_op must bring the
first copy back to exactly its state before the statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)


@dataclass
class Case:
    stmt: str
    setup: list[str] = field(default_factory=list)  # run directly on both copies
    setup_drops: list[str] = field(default_factory=list)  # via drop_op / directly
    refused: str | None = None  # SQLSTATE softguard answers where PostgreSQL would not
    records: bool = True  # False: succeeds without dropping anything (IF EXISTS)


INHERIT = [
    "CREATE TABLE animals (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE dogs (bark text) INHERITS (animals)",
    "INSERT INTO animals VALUES (1, 'cat')",
    "INSERT INTO dogs VALUES (2, 'rex', 'woof')",
]
MIXED = [
    'CREATE TABLE "Mixed Case" (id serial PRIMARY KEY, "Some Col" text)',
    """INSERT INTO "Mixed Case" ("Some Col") VALUES ('a'), ('b')""",
    'CREATE VIEW "Mixed View" AS SELECT * FROM "Mixed Case"',
    """COMMENT ON TABLE "Mixed Case" IS 'quoted'""",
]

CASES = {
    "table_cascade": Case("DROP TABLE reservations CASCADE"),
    "table_restrict_fails": Case("DROP TABLE customers"),
    "if_exists_missing": Case("DROP TABLE IF EXISTS nosuch", records=False),
    "if_exists_list": Case("DROP TABLE IF EXISTS nosuch, billing.refunds"),
    "missing": Case("DROP TABLE nosuch"),
    "table_list": Case("DROP TABLE locations, vehicles CASCADE"),
    "partitioned": Case("DROP TABLE events"),
    "partition": Case("DROP TABLE events_2025"),
    "schema": Case("DROP SCHEMA billing CASCADE"),
    "schema_restrict_fails": Case("DROP SCHEMA billing"),
    "view": Case("DROP VIEW active_reservations"),
    "matview": Case("DROP MATERIALIZED VIEW billing.revenue_by_month"),
    "sequence": Case(
        "DROP SEQUENCE invoice_no",
        setup=[
            "CREATE SEQUENCE invoice_no START 100",
            "SELECT nextval('invoice_no')",
            "COMMENT ON SEQUENCE invoice_no IS 'invoice numbers'",
            "GRANT USAGE ON SEQUENCE invoice_no TO rental_app",
        ],
    ),
    "sequence_used_by_default": Case(
        "DROP SEQUENCE ticket_seq CASCADE",
        setup=[
            "CREATE SEQUENCE ticket_seq",
            "ALTER TABLE vehicles ADD COLUMN ticket bigint DEFAULT nextval('ticket_seq')",
        ],
    ),
    "index": Case("DROP INDEX customers_lower_name_idx"),
    "function_in_use": Case("DROP FUNCTION touch_updated_at()"),
    "function_after_its_table": Case(
        "DROP FUNCTION touch_updated_at()", setup_drops=["DROP TABLE reservations CASCADE"]
    ),
    "type_after_its_table": Case(
        "DROP TYPE reservation_status", setup_drops=["DROP TABLE reservations CASCADE"]
    ),
    # the columns a type's CASCADE takes are kept (decision 0029), and a view reading one
    # (since ledger 11)
    # (tests/proxy_drop/test_drop_type_cascade.py has more cases)
    "domain_cascade_view": Case(
        "DROP DOMAIN score CASCADE",
        setup=[
            "CREATE DOMAIN score AS int CHECK (VALUE >= 0)",
            # the last column: undo adds it back as the last one (decision 0029)
            "CREATE TABLE ratings (id int PRIMARY KEY, s score)",
            "INSERT INTO ratings VALUES (1, 3), (2, 5)",
            "CREATE VIEW good_ratings AS SELECT id, s FROM ratings WHERE s > 3",
        ],
    ),
    # a materialized view reading one is dropped and re-made by undo (decision 0035)
    "domain_cascade_matview": Case(
        "DROP DOMAIN score CASCADE",
        setup=[
            "CREATE DOMAIN score AS int CHECK (VALUE >= 0)",
            "CREATE TABLE ratings (id int PRIMARY KEY, s score)",
            "INSERT INTO ratings VALUES (1, 3), (2, 5)",
            "CREATE MATERIALIZED VIEW good_ratings AS SELECT id, s FROM ratings WHERE s > 3",
            "CREATE INDEX good_ratings_s ON good_ratings (s)",
        ],
    ),
    "inheritance_child": Case("DROP TABLE dogs", setup=INHERIT),
    "inheritance_parent_fails": Case("DROP TABLE animals", setup=INHERIT),
    "inheritance_parent_cascade": Case("DROP TABLE animals CASCADE", setup=INHERIT),
    "mixed_case": Case('DROP TABLE "Mixed Case" CASCADE', setup=MIXED),
    "view_then_table": Case(
        "DROP TABLE reservations", setup_drops=["DROP VIEW active_reservations"]
    ),
}


def _prepare(ledger: Ledger, db: str, twin: str, case: Case) -> None:
    for stmt in case.setup:
        for name in (db, twin):
            assert ledger.execute(name, stmt).error is None, stmt
    for stmt in case.setup_drops:
        assert ledger.drop(db, stmt).error is None, stmt
        assert ledger.execute(twin, stmt).error is None, stmt


@pytest.mark.parametrize("name", list(CASES))
def test_drop_like_postgres_then_undo(
    name: str, ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    case = CASES[name]
    db, twin = rental_db(), rental_db()
    _prepare(ledger, db, twin, case)
    before = ledger.snapshot(db)
    ops_before = len(ledger.operations(db))

    via = ledger.drop(db, case.stmt)
    direct = ledger.execute(twin, case.stmt)

    if case.refused:
        assert via.sqlstate == case.refused, via
        assert direct.error is None
        assert len(ledger.operations(db)) == ops_before
        assert ledger.snapshot(db) == before
        return

    assert via.error == direct.error
    assert via.public_notices() == direct.notices
    assert via.notices[0][0] == "SGBEG"
    if via.error is None:
        assert via.notices[-1] == ("SGEND", ledger.action(case.stmt))
    assert ledger.schema_dump(db) == ledger.schema_dump(twin)
    assert ledger.data(db) == ledger.data(twin)

    ops = ledger.operations(db)
    if via.error is not None or not case.records:
        assert len(ops) == ops_before, ops
        assert via.softguard_notice() is None
        assert ledger.snapshot(db) == before
        return

    assert len(ops) == ops_before + 1
    op = ops[-1]
    assert op["state"] == "active" and op["statement"] == case.stmt
    assert op["kind"] == ledger.action(case.stmt)
    notice = via.softguard_notice()
    assert notice is not None
    assert re.fullmatch(
        rf"softguard: {re.escape(ledger.action(case.stmt))} .+ is reversible as operation "
        rf"{op['id']} until \d{{4}}-\d{{2}}-\d{{2}}",
        notice,
    ), notice

    lines = ledger.undo(db, op["id"])
    assert lines, "undo reports what it restored"
    after = ledger.snapshot(db)
    assert after[0] == before[0]
    assert after[1] == before[1]


def test_notice_names_objects_and_expiry(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        r = ledger.drop_via_softguard(
            c, "DROP TABLE locations, vehicles CASCADE", retention_seconds=86400
        )
        expiry = c.execute("SELECT to_char(now() + interval '1 day', 'YYYY-MM-DD')").fetchone()
    assert expiry is not None
    op = ledger.last_op(db)
    assert r.softguard_notice() == (
        f"softguard: DROP TABLE public.locations, public.vehicles is reversible as operation "
        f"{op} until {expiry[0]}"
    )


def test_ledger_row(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    ledger.drop(db, "DROP TABLE reservations CASCADE", application_name="agent-7")
    (op,) = ledger.operations(db)
    assert op["db_role"] == ledger.server.superuser
    assert op["application_name"] == "agent-7"
    assert op["row_counts"] == {"estimate": True, "tables": {"public.reservations": 10000}}
    originals = [o for o in op["objects"] if o["original"]]
    assert [(o["type"], o["identity"]) for o in originals] == [("table", "public.reservations")]
    assert originals[0]["quarantined_as"].startswith("softguard_quarantine.op")
    view = next(o for o in op["objects"] if o["identity"] == "public.active_reservations")
    assert view["type"] == "view" and view["quarantined_as"].startswith("softguard_quarantine.")
    assert op["restore"], "the restore plan is recorded"
    assert op["txid"] is not None


def test_non_owner_gets_postgres_error(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db, twin = rental_db(), rental_db()
    kw = ledger.nonowner
    via = ledger.drop(db, "DROP TABLE customers CASCADE", **kw)
    direct = ledger.execute(twin, "DROP TABLE customers CASCADE", **kw)
    assert via.sqlstate == "42501"
    assert via.error == direct.error
    assert ledger.operations(db) == []


def test_non_superuser_owner_can_drop_and_cannot_read_ledger(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    kw = ledger.nonowner
    assert ledger.execute(db, "CREATE TABLE mine (x int)", **kw).error is None
    assert ledger.execute(db, "INSERT INTO mine VALUES (1), (2)", **kw).error is None
    r = ledger.drop(db, "DROP TABLE mine", **kw)
    assert r.error is None and r.softguard_notice() is not None
    for stmt in (
        "SELECT * FROM softguard.operations",
        "SELECT * FROM softguard_quarantine.op1_1_mine",
        "SELECT softguard.undo_op(1)",
    ):
        assert ledger.execute(db, stmt, **kw).sqlstate == "42501", stmt
    # a forged list naming someone else's table is refused
    forged = ledger.execute(
        db,
        "SELECT softguard._quarantine(jsonb_build_array(jsonb_build_object("
        "'classid', 'pg_class'::regclass::oid, 'objid', 'customers'::regclass::oid,"
        " 'objsubid', 0, 'original', true, 'object_type', 'table',"
        " 'object_identity', 'public.customers')), 'x', '{}', 'x')",
        **kw,
    )
    assert forged.sqlstate == "42501"
    assert ledger.undo(db, 1)
    assert ledger.data(db)["public.mine"][0] == 2


def test_temporary_table_dropped_for_real(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE TEMP TABLE scratch (x int)")
        r = ledger.drop_via_softguard(c, "DROP TABLE scratch")
        assert r.error is None and r.softguard_notice() is None
        assert c.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
        c.execute("CREATE TEMP TABLE scratch2 (x int)")
        # with permanent objects (issue 16): the temporary ones go for real, the rest is kept
        mixed = ledger.drop_via_softguard(c, "DROP TABLE scratch2, locations CASCADE")
        assert mixed.error is None and mixed.softguard_notice() is not None
        assert c.execute("SELECT to_regclass('pg_temp.scratch2')").fetchone() == (None,)
    assert [o["statement"] for o in ledger.operations(db)] == [
        "DROP TABLE scratch2, locations CASCADE"
    ]


def test_rollback_keeps_nothing(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    before = ledger.snapshot(db)
    with ledger.connect(db, autocommit=False) as c:
        assert ledger.drop_via_softguard(c, "DROP TABLE reservations CASCADE").error is None
        c.rollback()
        c.execute("SAVEPOINT s")
        assert ledger.drop_via_softguard(c, "DROP SCHEMA billing CASCADE").error is None
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.commit()
    assert ledger.operations(db) == []
    assert ledger.snapshot(db) == before
    # a failed statement inside a transaction: the transaction is aborted, nothing recorded
    with ledger.connect(db, autocommit=False) as c:
        assert ledger.drop_via_softguard(c, "DROP TABLE customers").sqlstate == "2BP01"
    assert ledger.operations(db) == []


def test_capture_trigger_must_fire(ledger: Ledger, rental_db: Callable[[], str]) -> None:
    db = rental_db()
    with ledger.connect(db, autocommit=False) as c:
        c.execute("SET session_replication_role = replica")  # ENABLE ALWAYS still fires
        assert ledger.drop_via_softguard(c, "DROP VIEW active_reservations").error is None
        c.commit()
        c.execute("ALTER EVENT TRIGGER softguard_capture_sql_drop DISABLE")
        c.execute("ALTER EVENT TRIGGER softguard_capture_ddl_end DISABLE")
        r = ledger.drop_via_softguard(c, "DROP TABLE locations CASCADE")
        assert r.sqlstate == "XX000"
        assert r.error is not None and "capture trigger did not fire" in (r.error[1] or "")
    assert len(ledger.operations(db)) == 1
    assert "public.locations" in ledger.data(db)
