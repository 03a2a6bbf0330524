"""Publications and kept objects (issue 16, docs/decisions/0038-publications-and-kept-objects.md).

A direct DROP TABLE takes the table out of every publication that lists it; DROP SCHEMA
... CASCADE takes the schema out of every FOR TABLES IN SCHEMA publication; a DROP that
takes a column of a column list or row filter (DROP TYPE/DOMAIN ... CASCADE, ALTER TABLE
... DROP COLUMN ... CASCADE) takes the table's membership out of that publication. What
any role can read afterwards (pg_publication_tables, the catalogs) must be the same
through softguard, where the table, schema or column is kept; undo puts each membership
back exactly (column list, row filter), purge forgets it. A publication FOR ALL TABLES
still lists a kept table (no way out of it short of a copy of the table): strict xfail."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fidelity.harness import APP_PW, APP_ROLE, Case, app_role, check, grant_create, install_ledger

__all__ = ["app_role"]  # the fixture

# what every role reads: the publications' tables (with column lists and row filters),
# the memberships by table and by schema as the catalogs hold them
PUBS = (
    "SELECT pubname, schemaname, tablename, attnames, rowfilter FROM pg_publication_tables"
    " ORDER BY 1, 2, 3"
)
PUB_RELS = (
    "SELECT p.pubname, pr.prrelid::regclass::text, (SELECT array_agg(a.attname ORDER BY"
    " a.attnum) FROM pg_attribute a WHERE a.attrelid = pr.prrelid"
    " AND a.attnum = ANY (pr.prattrs::smallint[])),"
    " pg_get_expr(pr.prqual, pr.prrelid) FROM pg_publication_rel pr"
    " JOIN pg_publication p ON p.oid = pr.prpubid ORDER BY 1, 2"
)
PUB_NSPS = (
    "SELECT p.pubname, n.nspname FROM pg_publication_namespace pn"
    " JOIN pg_publication p ON p.oid = pn.pnpubid JOIN pg_namespace n ON n.oid = pn.pnnspid"
    " ORDER BY 1, 2"
)

TABLE = [
    "CREATE TABLE pm_t (k int PRIMARY KEY, a int, b text)",
    "INSERT INTO pm_t VALUES (1, 1, 'one'), (2, -2, 'two')",
    "CREATE TABLE pm_other (k int PRIMARY KEY)",
    "CREATE PUBLICATION pm_cols FOR TABLE pm_t (k, a) WHERE (a > 0) WITH (publish = 'insert')",
    "CREATE PUBLICATION pm_whole FOR TABLE pm_t",
    "CREATE PUBLICATION pm_two FOR TABLE pm_other, pm_t",
]
PARTITIONED = [
    "CREATE TABLE pm_p (k int, a int) PARTITION BY RANGE (k)",
    "CREATE TABLE pm_p1 PARTITION OF pm_p FOR VALUES FROM (0) TO (10)",
    "CREATE TABLE pm_p2 PARTITION OF pm_p FOR VALUES FROM (10) TO (20)",
    "INSERT INTO pm_p VALUES (1, 1), (15, 2)",
    "CREATE PUBLICATION pm_root FOR TABLE pm_p WITH (publish_via_partition_root = true)",
    "CREATE PUBLICATION pm_leaf FOR TABLE pm_p2 (k) WHERE (k > 12)",
]
# a table of a dropped schema in a publication FOR TABLE (an application role may do this)
SCHEMA_TABLES = [
    "CREATE SCHEMA pm_s",
    "CREATE TABLE pm_s.t (a int PRIMARY KEY, b int)",
    "INSERT INTO pm_s.t VALUES (1, 2)",
    "CREATE PUBLICATION pm_st FOR TABLE pm_s.t (a) WHERE (b > 1) WITH (publish = 'insert')",
]
# a schema in a publication FOR TABLES IN SCHEMA (PostgreSQL 15: superuser only)
SCHEMA_IN_PUB = [
    *SCHEMA_TABLES,
    "CREATE SCHEMA pm_s2",
    "CREATE TABLE pm_s2.u (a int)",
    "CREATE PUBLICATION pm_ns FOR TABLES IN SCHEMA pm_s, pm_s2",
    "CREATE PUBLICATION pm_ns_only FOR TABLES IN SCHEMA pm_s",
    "CREATE PUBLICATION pm_both FOR TABLES IN SCHEMA pm_s, TABLE pm_s.t",  # both memberships
]
# the kept column is the last of its table (undo adds it back as the last one)
DOMAIN_COLUMN = [
    "CREATE DOMAIN pm_pos AS int CHECK (VALUE > 0)",
    "CREATE TABLE pm_c (k int PRIMARY KEY, note text, d pm_pos)",
    "INSERT INTO pm_c VALUES (1, 'one', 5), (2, 'two', 6)",
    "CREATE PUBLICATION pm_cl FOR TABLE pm_c (k, d) WHERE (k > 0) WITH (publish = 'insert')",
    "CREATE PUBLICATION pm_keep FOR TABLE pm_c (k, note)",  # no kept column: stays
    "CREATE PUBLICATION pm_whole FOR TABLE pm_c",  # no column list: stays
]
# a row filter reading the column (row filters take built-in types only)
ALTER_COLUMN = [
    "CREATE TABLE pm_c (k int PRIMARY KEY, note text, e int)",
    "INSERT INTO pm_c VALUES (1, 'one', 5), (2, 'two', NULL)",
    "CREATE PUBLICATION pm_rf FOR TABLE pm_c WHERE (e > 0 AND k < 100) WITH (publish = 'insert')",
    "CREATE PUBLICATION pm_cl FOR TABLE pm_c (k, e)",
    "CREATE PUBLICATION pm_keep FOR TABLE pm_c (k, note)",
]

CASES: dict[str, Case] = {
    "table": Case(
        TABLE,
        ["DROP TABLE pm_t", PUBS, PUB_RELS, "CREATE TABLE pm_t (k int)", PUBS],
        [1, 0, 0, 0, 0],
    ),
    "partitioned": Case(PARTITIONED, ["DROP TABLE pm_p", PUBS, PUB_RELS], [1, 0, 0]),
    "partition": Case(PARTITIONED, ["DROP TABLE pm_p2", PUBS, PUB_RELS], [1, 0, 0]),
    "schema_tables": Case(SCHEMA_TABLES, ["DROP SCHEMA pm_s CASCADE", PUBS, PUB_RELS], [1, 0, 0]),
    "schema_in_publication": Case(
        SCHEMA_IN_PUB,
        ["DROP SCHEMA pm_s CASCADE", PUBS, PUB_RELS, PUB_NSPS, "CREATE SCHEMA pm_s", PUB_NSPS],
        [1, 0, 0, 0, 0, 0],
        roles=("superuser",),
    ),
    "domain_column_list": Case(
        DOMAIN_COLUMN,
        ["DROP DOMAIN pm_pos CASCADE", PUBS, PUB_RELS, "SELECT * FROM pm_c ORDER BY 1"],
        [1, 0, 0, 0],
    ),
    "rolled_back": Case(
        TABLE, ["BEGIN", "DROP TABLE pm_t", "ROLLBACK", PUBS, PUB_RELS], [0, 1, 0, 0, 0]
    ),
    "alter_drop_column_cascade": Case(
        ALTER_COLUMN,
        [
            "ALTER TABLE pm_c DROP COLUMN e",
            "ALTER TABLE pm_c DROP COLUMN e CASCADE",
            PUBS,
            PUB_RELS,
        ],
        [0, 1, 0, 0],
    ),
}


@pytest.mark.parametrize(
    ("name", "role"), [(name, role) for name, case in CASES.items() for role in case.roles]
)
def test_like_direct(proxy: Any, sg: Any, twins: Any, app_role: str, name: str, role: str) -> None:
    check(proxy, sg, twins, CASES[name], role)


def _pubs(sg: Any, db: str) -> list[Any]:
    with sg.connect(db) as c:
        return [c.execute(q).fetchall() for q in (PUBS, PUB_RELS, PUB_NSPS)]


UNDO = {
    "table": (TABLE, "DROP TABLE pm_t"),
    "partitioned": (PARTITIONED, "DROP TABLE pm_p"),
    "partition": (PARTITIONED, "DROP TABLE pm_p2"),
    "schema_in_publication": (SCHEMA_IN_PUB, "DROP SCHEMA pm_s CASCADE"),
    "domain_column_list": (DOMAIN_COLUMN, "DROP DOMAIN pm_pos CASCADE"),
    "alter_drop_column_cascade": (ALTER_COLUMN, "ALTER TABLE pm_c DROP COLUMN e CASCADE"),
}


@pytest.mark.parametrize("name", list(UNDO))
def test_undo_puts_memberships_back(proxy: Any, sg: Any, twins: Any, name: str) -> None:
    """Undo re-adds each membership with its column list and row filter; everything else
    is as before (pg_dump, data, extras)."""
    setup, drop = UNDO[name]
    (b,) = twins(1)
    sg.execute(b, *setup)
    before, pubs = sg.snapshot(b), _pubs(sg, b)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(drop.encode())
    assert _pubs(sg, b) != pubs
    (op,) = sg.active_ops(b)
    lines = sg.undo(b, op)
    assert any("publication" in line for line in lines), lines
    assert _pubs(sg, b) == pubs
    assert sg.snapshot(b) == before


@pytest.mark.parametrize("name", ["table", "domain_column_list"])
def test_purge_forgets_memberships(proxy: Any, sg: Any, twins: Any, name: str) -> None:
    """After purge the publications are what a direct DROP left."""
    setup, drop = UNDO[name]
    a, b = twins()
    for db in (a, b):
        sg.execute(db, *setup)
    sg.execute(a, drop)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(drop.encode())
    (op,) = sg.active_ops(b)
    with sg.connect(b) as c:
        c.execute("SELECT softguard.purge_op(%s)", [op])
    assert _pubs(sg, b) == _pubs(sg, a)


def test_undo_of_a_table_with_the_applications_code(
    proxy: Any, sg: Any, twins: Any, app_role: str
) -> None:
    """Re-adding a membership writes no row, so the application's function in an index
    of its table (which undo refuses to run when it writes rows back) does not stop it."""
    (b,) = twins(1)
    grant_create(sg, b)
    install_ledger(sg, b)
    with psycopg.connect(sg.server.dsn(b, user=APP_ROLE, password=APP_PW), autocommit=True) as c:
        c.execute("CREATE FUNCTION pm_f(i int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT i'")
        c.execute("CREATE TABLE pm_t (k int PRIMARY KEY, a int)")
        c.execute("CREATE INDEX pm_t_f ON pm_t (pm_f(a))")
    sg.execute(b, "CREATE PUBLICATION pm_cols FOR TABLE pm_t (k, a) WHERE (a > 0)")
    pubs = _pubs(sg, b)
    with psycopg.connect(proxy.dsn(b, user=APP_ROLE, password=APP_PW), autocommit=True) as c:
        c.execute(b"DROP TABLE pm_t")
    (op,) = sg.active_ops(b)
    sg.undo(b, op)
    assert _pubs(sg, b) == pubs


def test_undo_refuses_when_the_publication_is_gone(proxy: Any, sg: Any, twins: Any) -> None:
    """A publication dropped since: undo refuses (55000, HINT), nothing changes; once the
    publication exists again (same name, same owner), undo adds the table back to it."""
    (b,) = twins(1)
    sg.execute(b, *TABLE)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(b"DROP TABLE pm_t")
    (op,) = sg.active_ops(b)
    sg.execute(b, "DROP PUBLICATION pm_cols")
    before = sg.snapshot(b), _pubs(sg, b)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        sg.undo(b, op)
    assert "pm_cols" in str(e.value) and e.value.diag.message_hint
    assert (sg.snapshot(b), _pubs(sg, b)) == before
    assert sg.active_ops(b) == [op]
    sg.execute(b, "CREATE PUBLICATION pm_cols")
    sg.undo(b, op)
    with sg.connect(b) as c:
        assert c.execute(
            "SELECT attnames, rowfilter FROM pg_publication_tables WHERE pubname = 'pm_cols'"
        ).fetchall() == [(["k", "a"], "(a > 0)")]


def test_undo_refuses_when_the_table_is_back_in_it(proxy: Any, sg: Any, twins: Any) -> None:
    """The table was added to the publication again some other way: undo refuses (42710,
    HINT) rather than choose between two column lists; nothing changes."""
    (b,) = twins(1)
    sg.execute(b, *DOMAIN_COLUMN)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(b"DROP DOMAIN pm_pos CASCADE")
    (op,) = sg.active_ops(b)
    sg.execute(b, "ALTER PUBLICATION pm_cl ADD TABLE pm_c (k)")
    before = sg.snapshot(b), _pubs(sg, b)
    with pytest.raises(psycopg.errors.DuplicateObject) as e:
        sg.undo(b, op)
    assert "pm_cl" in str(e.value) and e.value.diag.message_hint
    assert (sg.snapshot(b), _pubs(sg, b)) == before
    sg.execute(b, "ALTER PUBLICATION pm_cl DROP TABLE pm_c")
    sg.undo(b, op)
    with sg.connect(b) as c:
        assert c.execute(
            "SELECT attnames, rowfilter FROM pg_publication_tables WHERE pubname = 'pm_cl'"
        ).fetchall() == [(["k", "d"], "(k > 0)")]


@pytest.mark.xfail(
    strict=True,
    reason="decision 0038: a kept table stays in a publication FOR ALL TABLES (listed under"
    " its quarantine name); leaving it would take a copy of the table (SET UNLOGGED)",
)
def test_for_all_tables_still_lists_a_kept_table(proxy: Any, sg: Any, twins: Any) -> None:
    case = Case(
        ["CREATE TABLE pm_t (k int)", "CREATE PUBLICATION pm_everything FOR ALL TABLES"],
        [
            "DROP TABLE pm_t",
            "SELECT schemaname, tablename FROM pg_publication_tables"
            " WHERE schemaname NOT IN ('softguard', 'softguard_rows') ORDER BY 1, 2",
        ],
        [1, 0],
        roles=("superuser",),
    )
    check(proxy, sg, twins, case, "superuser")


def test_show_says_what_undo_does(proxy: Any, sg: Any, twins: Any) -> None:
    """The restore plan in words (softguard show): the memberships come back last."""
    from softguard.cli.show_text import _step_text

    (b,) = twins(1)
    sg.execute(b, *SCHEMA_IN_PUB)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(b"DROP SCHEMA pm_s CASCADE")
    (op,) = sg.active_ops(b)
    with sg.connect(b) as c:
        row = c.execute("SELECT restore FROM softguard.operations WHERE id = %s", [op]).fetchone()
    assert row is not None
    restore = row[0]
    assert restore[0]["step"] == "publications"  # first in the plan: undone last
    assert _step_text(restore[0]) == (
        "add table pm_s.t, schema pm_s back to their publications"
        " (with column lists and row filters)"
    )
