"""Issue 11 items 1 and 3: a CASCADE from any object kind that reaches data is refused
(0A000 with a HINT) or made reversible, through the proxy, as the table owner and as a
superuser; where nothing that holds data goes with it, the statement runs as PostgreSQL runs
it. The table of kinds: softguard/sql/drop_kinds.py, docs/drop-kinds.md.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, fixtures

arena_template, arena = fixtures()

RANGE_SUBDIFF = [
    "CREATE FUNCTION fdiff(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE "
    "AS 'SELECT $1 - $2'",
    "CREATE TYPE frange AS RANGE (subtype = float8, subtype_diff = fdiff)",
    "CREATE TABLE rt (id int PRIMARY KEY, r frange)",
    "INSERT INTO rt VALUES (1, '[1.5,2.5)'), (2, 'empty')",
]
CITEXT = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE TABLE ci (id int PRIMARY KEY, email citext)",
    "INSERT INTO ci VALUES (1, 'A@b.c')",
]
COLLATION = [
    'CREATE COLLATION mycoll FROM "C"',
    "CREATE TABLE coll (id int PRIMARY KEY, t text COLLATE mycoll)",
    "INSERT INTO coll VALUES (1, 'keep me')",
]
COMPOSITE = [
    "CREATE TYPE addr AS (street text, zip text)",
    "CREATE TABLE addrs OF addr",
    "INSERT INTO addrs VALUES ('Main St', '12345')",
]
COMPOSITE_COLUMN = [
    "CREATE TYPE addr AS (street text, zip text)",
    "CREATE TABLE homes (id int PRIMARY KEY, a addr)",
    "INSERT INTO homes VALUES (1, ('Main St', '12345'))",
]
TS_CONFIG = [
    "CREATE TEXT SEARCH CONFIGURATION mycfg (COPY = simple)",
    "CREATE TABLE docs (id int PRIMARY KEY, body text, "
    "tsv tsvector GENERATED ALWAYS AS (to_tsvector('mycfg'::regconfig, body)) STORED)",
    "INSERT INTO docs (id, body) VALUES (1, 'kept words')",
]
CAST = [
    "CREATE TYPE temp_c AS (v float8)",
    "CREATE TYPE temp_f AS (v float8)",
    "CREATE FUNCTION c2f(temp_c) RETURNS temp_f LANGUAGE sql IMMUTABLE "
    "AS 'SELECT ROW(($1).v * 9 / 5 + 32)::temp_f'",
    "CREATE CAST (temp_c AS temp_f) WITH FUNCTION c2f(temp_c)",
    "CREATE TABLE temps (id int PRIMARY KEY, c temp_c)",
    "INSERT INTO temps VALUES (1, ROW(21.5))",
    "CREATE VIEW temps_f AS SELECT id, c::temp_f AS f FROM temps",
]
OPCLASS = [
    "CREATE OPERATOR CLASS myops FOR TYPE int USING btree AS OPERATOR 1 <, "
    "OPERATOR 3 =, FUNCTION 1 btint4cmp(int, int)",
    "CREATE INDEX big_myops ON big (id myops)",
]
FDW = [
    "CREATE FOREIGN DATA WRAPPER nowhere",
    "CREATE SERVER faraway FOREIGN DATA WRAPPER nowhere",
    "CREATE FOREIGN TABLE remote_rows (id int) SERVER faraway",
]
LANGUAGE = [
    "CREATE LANGUAGE plmine HANDLER plpgsql_call_handler",
    "CREATE FUNCTION in_mine() RETURNS int LANGUAGE plmine AS 'BEGIN RETURN 1; END'",
]
AGGREGATE = [
    "CREATE AGGREGATE mysum(int) (sfunc = int4pl, stype = int)",
    "CREATE MATERIALIZED VIEW sums AS SELECT mysum(id) AS s FROM big",
]

# name -> (setup, attack, who, expected): "refused" (0A000 with a HINT, nothing lost),
# "kept" (reversible: an operation, undone exactly) or "runs" (nothing holding data goes).
CASES: dict[str, tuple[list[str], str, str, str]] = {
    "extension_cascade": (CITEXT, "DROP EXTENSION citext CASCADE", "owner,super", "refused"),
    "extension_alone": (CITEXT[:1], "DROP EXTENSION citext", "owner,super", "runs"),
    # reversible since ledger 11 (decision 0033): the column kept as DROP COLUMN keeps it
    "collation_cascade": (COLLATION, "DROP COLLATION mycoll CASCADE", "owner,super", "kept"),
    "collation_alone": (COLLATION[:1], "DROP COLLATION mycoll", "owner,super", "kept"),
    "routine_plain": (
        ["CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'"],
        "DROP ROUTINE f(int)",
        "owner,super",
        "kept",
    ),
    "routine_procedure": (
        ["CREATE PROCEDURE p(int) LANGUAGE sql AS 'SELECT $1'"],
        "DROP ROUTINE p",
        "owner,super",
        "kept",
    ),
    "routine_range_subdiff": (
        RANGE_SUBDIFF,
        "DROP ROUTINE fdiff(float8, float8) CASCADE",
        "owner,super",
        "kept",  # the range type and its column rt.r too (decision 0029)
    ),
    "access_method_cascade": (
        [
            "CREATE ACCESS METHOD myheap TYPE TABLE HANDLER heap_tableam_handler",
            "CREATE TABLE amt (id int PRIMARY KEY, v text) USING myheap",
            "INSERT INTO amt VALUES (1, 'keep')",
        ],
        "DROP ACCESS METHOD myheap CASCADE",
        "super",
        "refused",
    ),
    "drop_attribute_typed": (
        COMPOSITE,
        "ALTER TYPE addr DROP ATTRIBUTE zip CASCADE",
        "owner,super",
        "refused",
    ),
    "drop_attribute_column_of_type": (
        COMPOSITE_COLUMN,
        "ALTER TYPE addr DROP ATTRIBUTE zip",
        "owner,super",
        "refused",
    ),
    "drop_attribute_unused": (
        COMPOSITE[:1],
        "ALTER TYPE addr DROP ATTRIBUTE zip",
        "owner,super",
        "runs",
    ),
    "opclass_cascade_index": (
        OPCLASS,
        "DROP OPERATOR CLASS myops USING btree CASCADE",
        "super",
        "runs",
    ),
    "opfamily_cascade_index": (
        OPCLASS,
        "DROP OPERATOR FAMILY myops USING btree CASCADE",
        "super",
        "kept",  # with its class, the index by its definition (decision 0036)
    ),
    # an operator of an operator class: its entry in the family cannot be kept apart
    # from the family (decision 0036)
    "operator_cascade_opclass_entry": (
        [
            "CREATE OPERATOR <<< (LEFTARG = int, RIGHTARG = int, FUNCTION = int4lt)",
            "CREATE OPERATOR CLASS myops2 FOR TYPE int USING btree AS OPERATOR 1 <<<, "
            "OPERATOR 3 =, FUNCTION 1 btint4cmp(int, int)",
        ],
        "DROP OPERATOR <<< (int, int) CASCADE",
        "super",
        "refused",
    ),
    # kept since ledger 12 (decision 0036, since then): the foreign table with it
    "server_cascade_foreign_table": (FDW, "DROP SERVER faraway CASCADE", "super", "kept"),
    "fdw_cascade_foreign_table": (
        FDW,
        "DROP FOREIGN DATA WRAPPER nowhere CASCADE",
        "super",
        "runs",
    ),
    "text_search_config_generated_column": (
        TS_CONFIG,
        "DROP TEXT SEARCH CONFIGURATION mycfg CASCADE",
        "owner,super",
        "kept",  # the generated column too, by its expression (decisions 0029, 0033)
    ),
    # expressions depend on the cast's function, not on the cast: nothing goes with it
    "cast_cascade": (CAST, "DROP CAST (temp_c AS temp_f) CASCADE", "owner,super", "runs"),
    "language_cascade_function": (LANGUAGE, "DROP LANGUAGE plmine CASCADE", "super", "kept"),
    "domain_cascade": (
        [
            "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
            "CREATE TABLE dom (id int PRIMARY KEY, v posint)",
            "INSERT INTO dom VALUES (1, 7)",
        ],
        "DROP DOMAIN posint CASCADE",
        "owner,super",
        "kept",  # with its column dom.v (decision 0029)
    ),
    "aggregate_plain": (AGGREGATE[:1], "DROP AGGREGATE mysum(int)", "owner,super", "kept"),
    "aggregate_cascade_matview": (
        AGGREGATE,
        "DROP AGGREGATE mysum(int) CASCADE",
        "owner,super",
        "kept",
    ),
    # the same through SQL the proxy does not read: the database refuses it
    "do_block_extension_cascade": (
        CITEXT,
        "DO $$ BEGIN EXECUTE 'DROP EXTENSION citext CASCADE'; END $$",
        "owner,super",
        "refused",
    ),
    "do_block_routine": (
        ["CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'"],
        "DO $$ BEGIN DROP ROUTINE f(int); END $$",
        "owner,super",
        "refused",
    ),
    "do_block_aggregate": (
        AGGREGATE[:1],
        "DO $$ BEGIN DROP AGGREGATE mysum(int); END $$",
        "owner,super",
        "refused",
    ),
    "function_collation_cascade": (
        [
            *COLLATION,
            "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS "
            "$$ BEGIN DROP COLLATION mycoll CASCADE; END $$",
        ],
        "SELECT wipe()",
        "owner,super",
        "refused",
    ),
    "do_block_drop_attribute_column_of_type": (
        COMPOSITE_COLUMN,
        "DO $$ BEGIN ALTER TYPE addr DROP ATTRIBUTE zip; END $$",
        "owner,super",
        "refused",
    ),
}


def _cases() -> list[tuple[str, str]]:
    """(case, who): the superuser always; the table owner where PostgreSQL lets it create the
    objects (then they are the owner's, and the superuser drops the owner's objects)."""
    return [(name, who) for name in sorted(CASES) for who in CASES[name][2].split(",")]


@pytest.mark.parametrize(("name", "who"), _cases())
def test_cascade_from_any_kind(arena: Arena, name: str, who: str) -> None:
    setup, attack, whos, expected = CASES[name]
    maker = "owner" if "owner" in whos else "super"
    if "EXTENSION" in attack and maker == "owner":
        arena.direct(f"GRANT CREATE ON DATABASE {arena.db} TO {arena.owner}")
    made = arena.attack(setup, who=maker, via="direct")
    assert made.error is None, made.describe()
    if expected == "runs":
        before, last = arena.snapshot(), arena.last_op()
        out = arena.attack([attack], who=who)
        assert out.error is None, out.describe()
        assert arena.ops_since(last) == []
        after = arena.snapshot()
        rows = {k: v for k, v in before.items() if k.startswith("rows ")}
        assert rows == {k: after.get(k) for k in rows}, "rows lost"
        return
    out, ops = arena.attempt([attack], who=who)
    if expected == "refused":
        assert out.sqlstate == "0A000", out.describe()
        assert out.error is not None and out.error.diag.message_hint, out.describe()
        assert not ops, ops
    else:
        assert out.error is None, out.describe()
        assert len(ops) == 1 and attack.startswith(ops[0]["kind"] + " "), ops


# -- companion objects (issue 11 item 4) -------------------------------------------------------

LIVE = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
    "AND n.nspname NOT LIKE 'softguard%' AND n.nspname NOT LIKE 'pg_temp%' "
    "AND n.nspname NOT LIKE 'pg_toast_temp%'"
)
LIVE_QUERIES = {
    "types": "SELECT n.nspname, t.typname, t.typtype FROM pg_type t "
    f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {LIVE} ORDER BY 1, 2",
    "relations": "SELECT n.nspname, c.relname, c.relkind, c.reltoastrelid <> 0 FROM pg_class c "
    f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {LIVE} ORDER BY 1, 2",
    "constraints": "SELECT n.nspname, c.conname, c.contype FROM pg_constraint c "
    f"JOIN pg_namespace n ON n.oid = c.connamespace WHERE {LIVE} ORDER BY 1, 2",
    "routines": "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) "
    f"FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {LIVE} ORDER BY 1, 2, 3",
    # toast tables of live relations (those of quarantined tables stay with them)
    "toast": "SELECT count(*) FROM pg_class t WHERE t.relkind = 't' AND EXISTS (SELECT FROM "
    f"pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {LIVE} "
    "AND c.reltoastrelid = t.oid)",
}


def live_schema(c: psycopg.Connection[Any]) -> dict[str, Any]:
    return {k: c.execute(q).fetchall() for k, q in LIVE_QUERIES.items()}


def direct_drop_leaves(arena: Arena, stmt: str) -> dict[str, Any]:
    """What a real DROP leaves: run it directly (unregistered session), look, roll back."""
    with psycopg.connect(arena.direct_dsn()) as c:
        c.execute(stmt.encode())
        seen = live_schema(c)
        c.rollback()
    return seen


RANGE = ["CREATE TYPE intr AS RANGE (subtype = int4)"]
COMPANIONS: dict[str, tuple[list[str], str]] = {
    "range": (RANGE, "DROP TYPE intr"),
    "range_and_its_domain": ([*RANGE, "CREATE DOMAIN intr_d AS intr"], "DROP TYPE intr CASCADE"),
    "domain_over_range": ([*RANGE, "CREATE DOMAIN intr_d AS intr"], "DROP DOMAIN intr_d"),
    "range_with_subdiff": (RANGE_SUBDIFF[:2], "DROP TYPE frange"),
    "table_serial_identity_toast_constraints": (
        [
            "CREATE TABLE comp (id serial PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, "
            "code text UNIQUE, body text, EXCLUDE USING btree (n WITH =))",
            "INSERT INTO comp (code, body) VALUES ('a', repeat('x', 10000))",
        ],
        "DROP TABLE comp",
    ),
    "composite_type": (COMPOSITE[:1], "DROP TYPE addr"),
    "enum_type": (["CREATE TYPE mood AS ENUM ('ok', 'sad')"], "DROP TYPE mood"),
}


@pytest.mark.parametrize("name", sorted(COMPANIONS))
@pytest.mark.parametrize("who", ["owner", "super"])
def test_drop_leaves_the_live_schema_as_postgresql(arena: Arena, name: str, who: str) -> None:
    setup, stmt = COMPANIONS[name]
    made = arena.attack(setup, via="direct")
    assert made.error is None, made.describe()
    with psycopg.connect(arena.direct_dsn()) as c:
        before = live_schema(c)
    want = direct_drop_leaves(arena, stmt)
    last = arena.last_op()
    out = arena.attack([stmt], who=who)
    assert out.error is None, out.describe()
    with psycopg.connect(arena.direct_dsn()) as c:
        assert live_schema(c) == want
    ops = [o["id"] for o in arena.ops_since(last)]
    assert len(ops) == 1, ops
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(arena.direct_dsn()) as c:
        assert live_schema(c) == before


def test_range_type_can_be_created_again(arena: Arena) -> None:
    out = arena.attack([*RANGE, "DROP TYPE intr", "CREATE TYPE intr AS RANGE (subtype = int4)"])
    assert out.error is None, out.describe()


def test_drop_shell_type_as_postgresql(arena: Arena) -> None:
    """A shell type holds nothing: PostgreSQL drops it without a word; so does softguard."""
    steps = ["CREATE TYPE sh", "DROP TYPE sh", "CREATE TYPE sh", "DROP TYPE sh"]
    out = arena.attack(steps, who="super")
    assert out.error is None, out.describe()
    again = arena.attack(["DROP TYPE sh"], who="super")
    direct = arena.attack(["DROP TYPE sh"], via="direct", who="super")
    assert again.sqlstate == direct.sqlstate == "42704", (again.describe(), direct.describe())
    assert str(again.error) == str(direct.error)


# -- column order (issue 11 item 8) -----------------------------------------------------------


def test_drop_column_says_it_comes_back_last(arena: Arena) -> None:
    last = arena.last_op()
    out = arena.attack(["ALTER TABLE child DROP COLUMN parent_id"])
    assert out.error is None, out.describe()
    (notice,) = [n for n in out.notices if "reversible as operation" in n]
    assert "ALTER TABLE DROP COLUMN public.child.parent_id (restored as the last column)" in notice
    (op,) = arena.ops_since(last)
    shown = arena.cli("show", str(op["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "table column public.child.parent_id (restored as the last column)" in shown.stdout
    details = arena.cli("show", str(op["id"]), "--details")
    assert "table column public.child.parent_id [named]: kept; restored as the last column" in (
        details.stdout
    )
    assert arena.undo([op["id"]]).returncode == 0
    cols = arena.direct(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'child'::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum"
    )
    assert [c[0] for c in cols] == ["id", "note", "parent_id"]
