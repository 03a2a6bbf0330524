"""Issue 11: what the proxy cannot see must still be reversible or refused.

DO blocks, functions and procedures that drop or truncate; DROP kinds outside the
protected list whose CASCADE removes columns or tables; range types and their
multiranges; large objects; definitions and sequence state replaced in place.
"""

from __future__ import annotations

import psycopg
import pytest
from attacker import Arena, deny_arena_fixture, fixtures

arena_template, arena = fixtures()

HIDDEN_DROP = {
    "do_execute": "DO $$ BEGIN EXECUTE 'DROP TABLE big'; END $$",
    "do_format": "DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'big'); END $$",
    "do_concat": "DO $$ BEGIN EXECUTE concat('DROP ', 'TABLE ', 'big'); END $$",
    "do_cascade": "DO $$ BEGIN EXECUTE 'DROP TABLE parent CASCADE'; END $$",
    "do_schema": "DO $$ BEGIN EXECUTE 'DROP SCHEMA public CASCADE'; END $$",
    "do_drop_column": "DO $$ BEGIN EXECUTE 'ALTER TABLE parent DROP COLUMN name'; END $$",
    # a type change converts the values in place and no event trigger names the column:
    # the table_rewrite backstop refuses it (threat model G11)
    "do_retype": (
        "DO $$ BEGIN EXECUTE 'ALTER TABLE big ALTER COLUMN payload TYPE int USING 0'; END $$"
    ),
    "do_retype_same_type": (
        "DO $$ BEGIN EXECUTE $q$ALTER TABLE big ALTER COLUMN payload TYPE text USING ''$q$; END $$"
    ),
    "function_retype": [
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS "
        "$$ ALTER TABLE parent ALTER COLUMN name TYPE varchar(1) USING left(name, 1) $$",
        "SELECT wipe()",
    ],
    "function": [
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN EXECUTE 'DROP TABLE big'; END $$",
        "SELECT wipe()",
    ],
    "procedure": [
        "CREATE PROCEDURE wipe() LANGUAGE plpgsql AS $$ BEGIN DROP TABLE big; END $$",
        "CALL wipe()",
    ],
    "sql_function": [
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS $$ DROP TABLE big $$",
        "SELECT wipe()",
    ],
    "trigger_later": [
        "CREATE FUNCTION wipe() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN EXECUTE 'DROP TABLE big'; RETURN NULL; END $$",
        "CREATE TRIGGER wipe AFTER INSERT ON nokey FOR EACH STATEMENT EXECUTE FUNCTION wipe()",
        "INSERT INTO nokey VALUES (9, 'go')",
    ],
}


def _cleanup_steps(arena: Arena) -> None:
    """Drop the attacker's helpers (directly) so the snapshot compares data only."""
    for stmt in (
        "DROP TRIGGER IF EXISTS wipe ON nokey",
        "DROP ROUTINE IF EXISTS wipe()",
        "DELETE FROM nokey WHERE a = 9",
    ):
        try:
            arena.direct(stmt)
        except psycopg.Error:
            pass  # the attack took the table with it


@pytest.mark.parametrize("name", sorted(HIDDEN_DROP))
def test_hidden_drop_is_reversible_or_refused(arena: Arena, name: str) -> None:
    steps = HIDDEN_DROP[name]
    steps = [steps] if isinstance(steps, str) else steps
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(steps)
    _cleanup_steps(arena)
    arena.verdict(before, last, out)


HIDDEN_TRUNCATE = {
    "do": ["DO $$ BEGIN TRUNCATE big; END $$"],
    "do_execute": ["DO $$ BEGIN EXECUTE 'TRUNCATE big, typed'; END $$"],
    "sql_function": [
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS $$ TRUNCATE big $$",
        "SELECT wipe()",
    ],
    "plpgsql_function": [
        "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS $$ BEGIN TRUNCATE big; END $$",
        "SELECT wipe()",
    ],
    "procedure": ["CREATE PROCEDURE wipe() LANGUAGE sql AS $$ TRUNCATE big $$", "CALL wipe()"],
    "cascade": ["DO $$ BEGIN EXECUTE 'TRUNCATE parent CASCADE'; END $$"],
    "restart_identity": ["DO $$ BEGIN TRUNCATE big RESTART IDENTITY; END $$"],
}


@pytest.mark.parametrize("name", sorted(HIDDEN_TRUNCATE))
def test_hidden_truncate_is_captured(arena: Arena, name: str) -> None:
    """Issue 11 item 2: captured like a top-level TRUNCATE, undone exactly."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(HIDDEN_TRUNCATE[name])
    _cleanup_steps(arena)
    assert out.error is None, out.describe()
    ops = arena.ops_since(last)
    assert [o["kind"] for o in ops] == ["TRUNCATE"], ops
    assert all(obj["nested"] for obj in ops[0]["objects"]), ops
    assert any("is reversible as operation" in n for n in out.notices), out.notices
    arena.verdict(before, last, out)


def test_hidden_delete_is_captured(arena: Arena) -> None:
    """Control: DELETEs inside a DO block are captured by the triggers."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["DO $$ BEGIN EXECUTE 'DELETE FROM parent WHERE id < 3'; END $$"])
    assert arena.ops_since(last)
    arena.verdict(before, last, out)


# -- DROP kinds whose CASCADE reaches data ---------------------------------------------------

CASCADES = {
    "drop_routine_plain": (
        ["CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'"],
        "DROP ROUTINE f(int)",
        "owner",
    ),
    "drop_routine_range_subdiff": (
        [
            "CREATE FUNCTION fdiff(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE "
            "AS 'SELECT $1 - $2'",
            "CREATE TYPE frange AS RANGE (subtype = float8, subtype_diff = fdiff)",
            "CREATE TABLE rt (id int PRIMARY KEY, r frange)",
            "INSERT INTO rt VALUES (1, '[1.5,2.5)'), (2, 'empty')",
        ],
        "DROP ROUTINE fdiff(float8, float8) CASCADE",
        "owner",
    ),
    "drop_function_range_subdiff": (
        [
            "CREATE FUNCTION fdiff(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE "
            "AS 'SELECT $1 - $2'",
            "CREATE TYPE frange AS RANGE (subtype = float8, subtype_diff = fdiff)",
            "CREATE TABLE rt (id int PRIMARY KEY, r frange)",
            "INSERT INTO rt VALUES (1, '[1.5,2.5)')",
        ],
        "DROP FUNCTION fdiff(float8, float8) CASCADE",
        "owner",
    ),
    "drop_collation": (
        [
            'CREATE COLLATION mycoll FROM "C"',
            "CREATE TABLE coll (id int PRIMARY KEY, t text COLLATE mycoll)",
            "INSERT INTO coll VALUES (1, 'keep me')",
        ],
        "DROP COLLATION mycoll CASCADE",
        "owner",
    ),
    "alter_type_drop_attribute": (
        [
            "CREATE TYPE addr AS (street text, zip text)",
            "CREATE TABLE addrs OF addr",
            "INSERT INTO addrs VALUES ('Main St', '12345')",
        ],
        "ALTER TYPE addr DROP ATTRIBUTE zip CASCADE",
        "owner",
    ),
    "drop_extension_owner": (
        [
            "CREATE EXTENSION IF NOT EXISTS citext",
            "CREATE TABLE ci (id int PRIMARY KEY, email citext)",
            "INSERT INTO ci VALUES (1, 'A@b.c')",
        ],
        "DROP EXTENSION citext CASCADE",
        "owner",
    ),
    "drop_extension_super": (
        [
            "CREATE EXTENSION IF NOT EXISTS citext",
            "CREATE TABLE ci (id int PRIMARY KEY, email citext)",
            "INSERT INTO ci VALUES (1, 'A@b.c')",
        ],
        "DROP EXTENSION citext CASCADE",
        "super",
    ),
    "drop_access_method": (
        [
            "CREATE ACCESS METHOD myheap TYPE TABLE HANDLER heap_tableam_handler",
            "CREATE TABLE amt (id int PRIMARY KEY, v text) USING myheap",
            "INSERT INTO amt VALUES (1, 'keep')",
        ],
        "DROP ACCESS METHOD myheap CASCADE",
        "super",
    ),
    "drop_domain_cascade": (
        [
            "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
            "CREATE TABLE dom (id int PRIMARY KEY, v posint)",
            "INSERT INTO dom VALUES (1, 7)",
        ],
        "DROP DOMAIN posint CASCADE",
        "owner",
    ),
    "drop_type_enum_cascade": (
        [
            "CREATE TYPE mood AS ENUM ('ok', 'sad')",
            "CREATE TABLE moods (id int PRIMARY KEY, m mood)",
            "INSERT INTO moods VALUES (1, 'ok')",
        ],
        "DROP TYPE mood CASCADE",
        "owner",
    ),
    "drop_operator_class_cascade": (
        [
            "CREATE TABLE ops (id int PRIMARY KEY, v int)",
            "INSERT INTO ops VALUES (1, 1)",
            "CREATE OPERATOR CLASS myops FOR TYPE int USING btree AS OPERATOR 1 <, "
            "OPERATOR 3 =, FUNCTION 1 btint4cmp(int, int)",
            "CREATE INDEX ops_v ON ops (v myops)",
        ],
        "DROP OPERATOR CLASS myops USING btree CASCADE",
        "super",
    ),
}


# Every one is refused now: the backstop (migrations/install/85_backstop.sql) refuses what
# a protected session's statement that softguard does not rewrite would drop.
@pytest.mark.parametrize("name", sorted(CASCADES))
def test_drop_cascade_of_other_kinds(arena: Arena, name: str) -> None:
    setup, attack, who = CASCADES[name]
    if "EXTENSION" in attack and who == "owner":
        arena.direct(f"GRANT CREATE ON DATABASE {arena.db} TO {arena.owner}")
    arena.attack(setup, who=who)
    arena.attempt([attack], who=who)


def test_drop_range_type_frees_its_multirange(arena: Arena) -> None:
    steps = [
        "CREATE TYPE intr AS RANGE (subtype = int4)",
        "DROP TYPE intr",
        "CREATE TYPE intr AS RANGE (subtype = int4)",
    ]
    out = arena.attack(steps)
    assert out.error is None, out.describe()
    live = arena.direct(
        "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace "
        "AND typname LIKE 'intr%' ORDER BY 1"
    )
    assert [r[0] for r in live] == ["intr", "intr_multirange"]


def test_drop_range_type_undo_restores_both(arena: Arena) -> None:
    arena.attack(["CREATE TYPE intr AS RANGE (subtype = int4)"])
    arena.attempt(["DROP TYPE intr"])


# -- large objects -------------------------------------------------------------------------

LO = 4242
LARGE_OBJECT = {
    "lo_put": [f"SELECT lo_put({LO}, 0, 'XXXXXXXX')"],
    "lo_unlink": [f"SELECT lo_unlink({LO})"],
    "lowrite": [f"BEGIN; SELECT lowrite(lo_open({LO}, 131072), 'overwritten'); COMMIT"],
    "lo_truncate": [f"BEGIN; SELECT lo_truncate(lo_open({LO}, 131072), 0); COMMIT"],
    "lo_unlink_in_do": [f"DO $$ BEGIN PERFORM lo_unlink({LO}); END $$"],
}


@pytest.mark.parametrize("name", sorted(LARGE_OBJECT))
def test_large_object_contents_survive(arena: Arena, name: str) -> None:
    arena.attempt(LARGE_OBJECT[name])


def test_superuser_cannot_delete_from_pg_largeobject(arena: Arena) -> None:
    arena.attempt([f"DELETE FROM pg_largeobject WHERE loid = {LO}"], who="super")


# -- definitions and sequence state -----------------------------------------------------------

STATE = {
    "replace_function": (
        ["CREATE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'"],
        ["CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'"],
    ),
    "replace_procedure": (
        ["CREATE PROCEDURE tidy() LANGUAGE sql AS 'SELECT 1'"],
        ["CREATE OR REPLACE PROCEDURE tidy() LANGUAGE sql AS 'SELECT 2'"],
    ),
    "replace_view": (
        ["CREATE VIEW names AS SELECT id, name FROM parent"],
        ["CREATE OR REPLACE VIEW names AS SELECT id, 'gone'::text AS name FROM parent"],
    ),
    "setval": ([], ["SELECT setval('counter', 1)"]),
    "setval_built_name": ([], ["SELECT setval(concat('coun', 'ter'), 1, false)"]),
    "alter_sequence_restart": ([], ["ALTER SEQUENCE counter RESTART"]),
    "alter_sequence_restart_with": ([], ["ALTER SEQUENCE counter RESTART WITH 1"]),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            k,
            marks=[
                pytest.mark.xfail(
                    strict=True,
                    reason="issue 11 item 6: setval() is a function call no trigger sees; "
                    "its old value is not kept (README limits, threat model G11)",
                )
            ]
            if k.startswith("setval")
            else [],
        )
        for k in sorted(STATE)
    ],
)
def test_definitions_and_sequence_state_are_operations(arena: Arena, name: str) -> None:
    setup, attack = STATE[name]
    arena.attack(setup)
    arena.attempt(attack)


def test_replace_function_through_psycopg_prepared(arena: Arena) -> None:
    """Sanity of the arena: the owner can replace its own function at all."""
    arena.attack(["CREATE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'"])
    with arena.connect() as c:
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute(
                "CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS %s",
                ["SELECT"],
                prepare=True,
            )


# -- the backstop for other roles and policies (decision 0012) -----------------------------

arena_allow = deny_arena_fixture('drop = "allow"\ntruncate = "allow"\nalter = "allow"\n')


@pytest.mark.parametrize("who", ["other", "super"])
def test_hidden_truncate_captured_and_drop_refused_for_every_role(arena: Arena, who: str) -> None:
    if who == "other":
        arena.direct(f"GRANT TRUNCATE ON big TO {arena.role('other')}")
    out, ops = arena.attempt(["DO $$ BEGIN EXECUTE 'TRUNCATE big'; END $$"], who=who)
    assert out.error is None, out.describe()
    assert [(o["kind"], o["row_counts"]["tables"]) for o in ops] == [
        ("TRUNCATE", {"public.big": 50})
    ]
    if who == "super":
        out, _ = arena.attempt(["DO $$ BEGIN EXECUTE 'DROP TABLE typed'; END $$"], who=who)
        assert out.sqlstate == "0A000", out.describe()


def test_hidden_drop_through_a_prepared_statement_in_a_function(arena: Arena) -> None:
    made = arena.attack(
        [
            "CREATE FUNCTION wipe(t text) RETURNS void LANGUAGE plpgsql AS "
            "$$ BEGIN EXECUTE format('DROP TABLE %I CASCADE', t); END $$"
        ]
    )
    assert made.error is None, made.describe()
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([lambda c: c.execute("SELECT wipe(%s)", ["parent"], prepare=True)])
    assert out.sqlstate == "0A000", out.describe()
    arena.verdict(before, last, out)


def test_backstop_follows_the_policy(arena_allow: Arena) -> None:
    """Control: a session whose policy allows DROP and TRUNCATE is not registered for them,
    so its DO blocks drop as PostgreSQL does (the policy said so)."""
    out = arena_allow.attack(
        ["DO $$ BEGIN EXECUTE 'TRUNCATE big'; EXECUTE 'DROP TABLE nokey'; END $$"]
    )
    assert out.error is None, out.describe()
    assert arena_allow.direct("SELECT count(*) FROM big") == [(0,)]
    assert arena_allow.direct("SELECT to_regclass('public.nokey') IS NULL") == [(True,)]


def test_hidden_changes_that_keep_the_values_still_run(arena: Arena) -> None:
    """The rewrite backstop refuses only type changes: a DO block's ADD COLUMN with a
    volatile default (a rewrite too) and SET UNLOGGED / LOGGED run as directly."""
    out = arena.attack(
        [
            "DO $$ BEGIN EXECUTE 'ALTER TABLE big ADD COLUMN stamp timestamptz"
            " DEFAULT clock_timestamp()'; END $$",
            "DO $$ BEGIN EXECUTE 'ALTER TABLE nokey SET UNLOGGED';"
            " EXECUTE 'ALTER TABLE nokey SET LOGGED'; END $$",
        ]
    )
    assert out.error is None, out.describe()
    assert arena.direct(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'stamp'"
    ) == [(1,)]


def test_type_change_with_a_drop_column_through_softguard_is_reversible(arena: Arena) -> None:
    """One ALTER TABLE that drops a column and retypes another comes through softguard's
    alter_op (whose probe runs the statement first): not refused, and undone exactly."""
    made = arena.attack(
        [
            "CREATE TABLE trio (k int PRIMARY KEY, a int, b text)",
            "INSERT INTO trio VALUES (1, 10, 'x'), (2, 20, NULL)",
        ]
    )
    assert made.error is None, made.describe()
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["ALTER TABLE trio DROP COLUMN b, ALTER COLUMN a TYPE bigint USING a * 2"])
    assert out.error is None, out.describe()
    assert arena.verdict(before, last, out)


def test_hidden_retype_follows_the_policy(arena_allow: Arena) -> None:
    """Control: a session whose policy allows ALTER is not registered for it: its DO
    block's type change runs as PostgreSQL runs it."""
    out = arena_allow.attack(
        [
            "DO $$ BEGIN EXECUTE 'ALTER TABLE big ALTER COLUMN payload TYPE varchar(3)"
            " USING left(payload, 3)'; END $$"
        ]
    )
    assert out.error is None, out.describe()
