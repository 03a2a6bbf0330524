"""Class 2 of issue 16: forms PostgreSQL runs that softguard refused. Each runs through
softguard and directly on twins; what is still refused by design is xfail(strict) with
the reason (README "Known limits")."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fidelity.harness import Case, check

CASES: dict[str, Case] = {
    "drop_column_no_key": Case(
        [
            "CREATE TABLE fid_nokey (a int, b text)",
            "INSERT INTO fid_nokey VALUES (1, 'x'), (1, 'x')",
        ],
        ["ALTER TABLE fid_nokey DROP COLUMN b", "SELECT * FROM fid_nokey"],
        [1, 0],
    ),
    "alter_type_no_key": Case(
        ["CREATE TABLE fid_nokey (a int, b text)", "INSERT INTO fid_nokey VALUES (1, '2')"],
        ["ALTER TABLE fid_nokey ALTER COLUMN b TYPE int USING b::int", "SELECT * FROM fid_nokey"],
        [1, 0],
    ),
    "drop_temp_and_permanent": Case(
        [],
        ["CREATE TEMP TABLE fid_tmp (a int)", "DROP TABLE fid_tmp, big_refs", "SELECT 1"],
        [0, 1, 0],
    ),
    "drop_cascades_to_temporary_view": Case(
        [],
        [
            "CREATE TEMP VIEW fid_tv AS SELECT * FROM big_refs",
            "DROP TABLE big_refs CASCADE",
            "SELECT count(*) FROM pg_class WHERE relname IN ('fid_tv', 'big_refs')",
        ],
        [0, 1, 0],
    ),
    "drop_temporary_and_permanent_views": Case(
        [],
        [
            "CREATE TEMP VIEW fid_tv AS SELECT 1 AS one",
            "DROP VIEW fid_tv, active_reservations",
            "CREATE TEMP TABLE fid_tt (a int)",
            "DROP TABLE big_refs, fid_tt, billing.refunds",
        ],
        [0, 1, 0, 1],
    ),
    "drop_identity_column": Case(
        [
            "CREATE TABLE fid_id (k int PRIMARY KEY, i int GENERATED ALWAYS AS IDENTITY, v text)",
            "INSERT INTO fid_id (k, v) VALUES (1, 'a')",
        ],
        ["ALTER TABLE fid_id DROP COLUMN i", "SELECT * FROM fid_id"],
        [1, 0],
    ),
    "drop_generated_column": Case(
        [
            "CREATE TABLE fid_g (k int PRIMARY KEY, g int GENERATED ALWAYS AS (k * 2) STORED)",
            "INSERT INTO fid_g VALUES (1)",
        ],
        ["ALTER TABLE fid_g DROP COLUMN g", "SELECT * FROM fid_g"],
        [1, 0],
    ),
    "drop_column_used_by_generated": Case(
        [
            "CREATE TABLE fid_g (k int PRIMARY KEY, a int,"
            " g int GENERATED ALWAYS AS (a * 2) STORED)",
            "INSERT INTO fid_g (k, a) VALUES (1, 2)",
        ],
        ["ALTER TABLE fid_g DROP COLUMN a CASCADE", "SELECT * FROM fid_g"],
        [1, 0],
    ),
    "drop_generated_column_no_key": Case(
        [
            "CREATE TABLE fid_gn (a int, g text GENERATED ALWAYS AS (a::text || 'x') STORED)",
            "INSERT INTO fid_gn (a) VALUES (1), (1), (2)",
        ],
        ["ALTER TABLE fid_gn DROP COLUMN g", "SELECT * FROM fid_gn ORDER BY a"],
        [1, 0],
    ),
    "drop_domain_cascade_columns": Case(
        [
            "CREATE DOMAIN fid_dom AS int CHECK (VALUE > 0)",
            "CREATE TABLE fid_dt (k int PRIMARY KEY, d fid_dom)",
            "INSERT INTO fid_dt VALUES (1, 5)",
        ],
        ["DROP DOMAIN fid_dom CASCADE", "SELECT * FROM fid_dt"],
        [1, 0],
    ),
    "drop_cast": Case(
        [
            "CREATE TYPE fid_ct AS (a int)",
            "CREATE FUNCTION fid_ct_text(fid_ct) RETURNS text LANGUAGE sql AS 'SELECT $1.a::text'",
            "CREATE CAST (fid_ct AS text) WITH FUNCTION fid_ct_text(fid_ct)",
        ],
        ["DROP CAST (fid_ct AS text)", "SELECT 1"],
        [0, 0],  # holds no data: runs as sent
    ),
    "drop_operator": Case(
        [
            "CREATE FUNCTION fid_eq(int, text) RETURNS bool LANGUAGE sql AS 'SELECT $1::text = $2'",
            "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = text, FUNCTION = fid_eq)",
        ],
        ["DROP OPERATOR === (int, text)", "SELECT 1"],
        [1, 0],  # kept: moved into a schema of its own (decision 0036)
    ),
    "drop_operator_cascade_to_view": Case(
        [
            "CREATE FUNCTION fid_eq(int, text) RETURNS bool LANGUAGE sql AS 'SELECT $1::text = $2'",
            "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = text, FUNCTION = fid_eq)",
            "CREATE VIEW fid_ov AS SELECT 1 === '1' AS same",
        ],
        ["DROP OPERATOR === (int, text) CASCADE", "SELECT 1"],
        [1, 0],  # the operator and the view kept by one operation (decision 0036)
    ),
}


# Still refused by design (README "Known limits", docs/drop-kinds.md): 0A000 with a HINT.
REFUSED: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=REFUSED[n]))
        if n in REFUSED
        else n
        for n in CASES
    ],
)
def test_form_like_direct(proxy: Any, sg: Any, twins: Any, name: str) -> None:
    check(proxy, sg, twins, CASES[name], "superuser")


def test_undo_of_a_drop_with_temporary_objects(proxy: Any, sg: Any, twins: Any) -> None:
    """The permanent objects of such a DROP come back; the temporary ones went for real."""
    (b,) = twins(1)
    before = sg.snapshot(b)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE fid_tt (a int)")
        c.execute("CREATE TEMP VIEW fid_tv AS SELECT * FROM big_refs")
        c.execute("DROP TABLE fid_tt, big_refs CASCADE")
        assert c.execute("SELECT to_regclass('fid_tv'), to_regclass('fid_tt')").fetchone() == (
            None,
            None,
        )
    (op,) = sg.active_ops(b)
    sg.undo(b, op)
    assert sg.snapshot(b) == before


@pytest.mark.parametrize(
    ("setup", "drop"),
    [
        (
            "CREATE TABLE fid_g (k int PRIMARY KEY, a int,"
            " g int GENERATED ALWAYS AS (a * 2) STORED, z text)",
            "ALTER TABLE fid_g DROP COLUMN g",
        ),
        (
            "CREATE TABLE fid_g (a int, g int GENERATED ALWAYS AS (a * 2) STORED)",
            "ALTER TABLE fid_g DROP COLUMN g",
        ),
        (
            "CREATE TABLE fid_g (k int PRIMARY KEY, a int,"
            " g int GENERATED ALWAYS AS (a * 2) STORED)",
            "ALTER TABLE fid_g DROP COLUMN a CASCADE",
        ),
    ],
)
def test_undo_of_a_dropped_generated_column(
    proxy: Any, sg: Any, twins: Any, setup: str, drop: str
) -> None:
    """It comes back generated, with values computed again (as the last column)."""
    (b,) = twins(1)
    sg.execute(
        b,
        setup,
        "INSERT INTO fid_g (a) VALUES (1), (2)"
        if "k int" not in setup
        else "INSERT INTO fid_g (k, a) VALUES (1, 1), (2, 2)",
    )
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(drop)
    (op,) = sg.active_ops(b)
    sg.undo(b, op)
    with sg.connect(b) as c:
        assert c.execute("SELECT a, g FROM fid_g ORDER BY a").fetchall() == [(1, 2), (2, 4)]
        c.execute(
            "INSERT INTO fid_g (a) VALUES (3)"
            if "k int" not in setup
            else "INSERT INTO fid_g (k, a) VALUES (3, 3)"
        )
        assert c.execute("SELECT g FROM fid_g WHERE a = 3").fetchone() == (6,)
        gen = c.execute(
            "SELECT attgenerated FROM pg_attribute WHERE attrelid = 'fid_g'::regclass"
            " AND attname = 'g'"
        ).fetchone()
        assert gen == ("s",)


# A form refused again by design belongs in REFUSED, with a test here that its refusal is
# 0A000 and a HINT saying what to do (none is refused since decision 0036: the REFUSED
# table is empty, and a test parametrized over it would be skipped, which CI refuses).
