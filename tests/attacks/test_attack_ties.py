"""Attacks on what ledger version 12 (section ties) added, as the application's role
through softguard: DROP OPERATOR is kept (decision 0036), the operator moved under its own
name into a schema of its own. The attacker tries to use that path to lose kept data or
the operator for good (a kept table's CHECK uses it), or to have softguard run its code
with softguard's rights. Each attempt gets the arena's verdict (refused with everything
intact, or recorded and undone exactly), on a snapshot that also holds the operators,
constraints, indexes and views of the schema.

softguard's names are built at run time ('soft' || 'guard'), as in test_attack_v9.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, Outcome, fixtures

arena_template, arena = fixtures()

SETUP = [
    "CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
    "CREATE TABLE tk (id int PRIMARY KEY, x text CHECK (x OPERATOR(public.===) x))",
    "INSERT INTO tk VALUES (1, 'a'), (2, 'b')",
    "CREATE TABLE tl (id int PRIMARY KEY, x text)",
    "INSERT INTO tl VALUES (1, 'a'), (2, 'b')",
    "CREATE VIEW tl_v AS SELECT id FROM tl WHERE x OPERATOR(public.===) 'a'",
]
KEEP_TABLE = "DROP TABLE tk"
KEEP_USERS = ["DROP VIEW tl_v", KEEP_TABLE]  # then only kept objects use the operator
DROP = "DROP OPERATOR === (text, text)"
CASCADE = DROP + " CASCADE"


def extras(arena: Arena) -> dict[str, Any]:
    """What the arena's snapshot leaves out: operators, constraints, indexes and views of
    the public schema, and every schema (a kept operator's is softguard's)."""
    return {
        "operators": arena.direct(
            "SELECT oid::regoperator::text, oprowner::regrole::text, oprcode::text"
            " FROM pg_operator WHERE oprnamespace = 'public'::regnamespace ORDER BY 1"
        ),
        "constraints": arena.direct(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
        ),
        "views": arena.direct(
            "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c"
            " WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace ORDER BY 1"
        ),
        "schemas": arena.direct(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^softguard_q' ORDER BY 1"
        ),
    }


def setup(arena: Arena) -> None:
    with arena.connect("owner", via="direct") as c:
        for s in SETUP:
            c.execute(s.encode())
        c.execute(f'GRANT SELECT ON tl_v TO "{arena.other}"'.encode())


def attempt(arena: Arena, steps: list[Any], who: str = "owner") -> Outcome:
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(steps, who)
    arena.direct("DROP FUNCTION IF EXISTS wipe_op()")
    arena.verdict(before, last, out)
    assert extras(arena) == more
    return out


def kept_operator(c: psycopg.Connection[Any]) -> str:
    """The kept operator's identity, found in pg_operator as any role can."""
    row = c.execute(
        b"SELECT oid::regoperator::text FROM pg_operator"
        b" WHERE oprnamespace::regnamespace::text ~ '^softguard_q[0-9]+_pg_'"
        b" ORDER BY oid DESC LIMIT 1"
    ).fetchone()
    assert row is not None, "no operator in quarantine"
    return str(row[0])


def _drop_kept(c: psycopg.Connection[Any]) -> None:
    c.execute(f"DROP OPERATOR {kept_operator(c)} CASCADE".encode())


def _drop_kept_schema(c: psycopg.Connection[Any]) -> None:
    schema = kept_operator(c).split(".")[0]
    c.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def _move_kept_back(c: psycopg.Connection[Any]) -> None:
    c.execute(f"ALTER OPERATOR {kept_operator(c)} SET SCHEMA public".encode())


def _use_kept(c: psycopg.Connection[Any]) -> None:
    # a live object made to use the kept operator, for purge's CASCADE to take along
    name = kept_operator(c).split("(")[0]
    c.execute(f"CREATE VIEW grab AS SELECT 'a' OPERATOR({name}) 'a' AS same".encode())


ATTACKS: dict[str, list[Any]] = {
    # the kept operator, found in pg_operator, dropped again (it belongs to softguard now)
    "drop_kept_operator": [*KEEP_USERS, DROP, _drop_kept],
    # its schema dropped with everything in it
    "drop_kept_schema": [*KEEP_USERS, DROP, _drop_kept_schema],
    # moved back out of quarantine by its former owner
    "move_kept_back": [*KEEP_USERS, DROP, _move_kept_back],
    # a live view made to use it
    "use_kept_operator": [*KEEP_USERS, DROP, _use_kept],
    # the CASCADE in a DO block: reaching the live view, the backstop refuses it
    "do_block_cascade": [f"DO $$ BEGIN EXECUTE '{CASCADE}'; END $$"],
    # in a DO block once only the kept table uses it: its guard refuses the CASCADE
    "do_block_cascade_into_quarantine": [*KEEP_USERS, f"DO $$ BEGIN EXECUTE '{CASCADE}'; END $$"],
    # in a function of its own
    "function": [
        f"CREATE FUNCTION wipe_op() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN {CASCADE}; END $f$",
        "SELECT wipe_op()",
    ],
    # prepared (extended protocol): kept as the simple one, the view with it
    "prepared": [lambda c: c.execute(CASCADE.encode(), prepare=True)],
    # the plain ones: kept, undone by the verdict
    "plain_cascade": [CASCADE],
    "after_the_table": [*KEEP_USERS, DROP],
}

EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "after_the_table": (None, None),
    "do_block_cascade": (0, "0A000"),
    "do_block_cascade_into_quarantine": (2, "42501"),
    "drop_kept_operator": (3, "42501"),
    "drop_kept_schema": (3, "42501"),
    "function": (1, "0A000"),
    "move_kept_back": (3, "42501"),
    "plain_cascade": (None, None),
    "prepared": (None, None),
    "use_kept_operator": (3, "42501"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_kept_operators_are_never_lost(arena: Arena, name: str) -> None:
    out = attempt(arena, ATTACKS[name])
    assert (out.failed_step, out.sqlstate) == EXPECTED[name], out.describe()


def test_a_second_role_cannot_drop_the_owners_operator(arena: Arena) -> None:
    """The second role may read the view but owns nothing: its DROP ... CASCADE is
    refused by PostgreSQL (must be owner), before softguard keeps anything."""
    out = attempt(arena, [CASCADE], who="other")
    assert (out.failed_step, out.sqlstate) == (0, "42501"), out.describe()


def test_a_second_roles_operator_reaching_the_owners_view(arena: Arena) -> None:
    """An operator of the second role used by the owner's view: PostgreSQL's CASCADE takes
    the view whoever owns it; kept with the operator, both come back to their owners."""
    setup(arena)
    arena.direct(
        "CREATE OPERATOR public.=~= (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq);"
        f' ALTER OPERATOR public.=~= (text, text) OWNER TO "{arena.other}";'
        "CREATE VIEW public.tl_w AS SELECT id FROM public.tl WHERE x OPERATOR(public.=~=) 'b';"
        f' ALTER VIEW public.tl_w OWNER TO "{arena.owner}"'
    )
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(["DROP OPERATOR =~= (text, text) CASCADE",
                        "SELECT to_regclass('tl_w')"], "other")  # fmt: skip
    assert out.error is None and out.results[-1] == [(None,)], out.describe()
    arena.verdict(before, last, out)
    assert extras(arena) == more


def test_undo_and_purge_in_a_bad_order_change_nothing(arena: Arena) -> None:
    """The table kept first, then its operator: undo of the table first would give back a
    CHECK on a kept operator, purge of the operator first would take the kept CHECK: both
    are refused (55006) and change nothing; in the right order both go through."""
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(["DROP VIEW tl_v", KEEP_TABLE, DROP])
    assert out.error is None, out.describe()
    view, table, tie = [o["id"] for o in arena.ops_since(last)]
    r = arena.cli("undo", str(table), "--yes")
    assert r.returncode != 0 and f"held by operation {tie}" in r.stdout + r.stderr, r.stdout
    with pytest.raises(psycopg.errors.ObjectInUse, match=f"held by operation {table}"):
        arena.direct(f"SELECT softguard.purge_op({tie})")
    states = arena.direct(
        "SELECT state FROM softguard.operations WHERE id > %s ORDER BY id", [last]
    )
    assert states == [("active",)] * 3
    r = arena.undo([view, table, tie])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    assert extras(arena) == more


# The owner's own function behind its operator: run by a CHECK, it records who ran it.
SPY = [
    "CREATE TABLE spied (who text, super boolean)",
    "GRANT INSERT ON spied TO PUBLIC",
    "CREATE FUNCTION spy(text, text) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN"
    " INSERT INTO public.spied SELECT current_user, rolsuper FROM pg_roles"
    " WHERE rolname = current_user; RETURN $1 = $2; END $f$",
    "CREATE OPERATOR ==? (LEFTARG = text, RIGHTARG = text, FUNCTION = spy)",
    "CREATE TABLE sk (id int PRIMARY KEY, x text CHECK (x OPERATOR(public.==?) x))",
    "INSERT INTO sk VALUES (1, 'a'), (2, 'b')",
]


def test_an_operator_of_the_apps_function_never_runs_with_undos_rights(arena: Arena) -> None:
    """Rows deleted from a table whose CHECK calls the application's function through an
    operator: undo would run it as the role undo writes as. Undo refuses (42501, naming
    the function) and changes nothing, as for a CHECK calling the function directly."""
    with arena.connect("owner", via="direct") as c:
        for s in SPY:
            c.execute(s.encode())
    last = arena.last_op()
    out = arena.attack(["DELETE FROM sk"])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    arena.direct("TRUNCATE spied")
    r = arena.undo([op])
    assert r.returncode != 0 and "spy(text,text)" in r.stdout + r.stderr, r.stdout + r.stderr
    assert arena.direct("SELECT count(*) FROM sk") == [(0,)]
    assert arena.direct("SELECT * FROM spied WHERE super") == []


def test_an_operator_made_again_makes_undo_wait(arena: Arena) -> None:
    """After the DROP the name is free, as directly: the owner makes the operator again.
    Undo then refuses (42710, nothing changed; an operator cannot take another name) until
    the new one is gone, then gives back exactly what was there."""
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    remake = SETUP[0]
    out = arena.attack([CASCADE, remake])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    with pytest.raises(psycopg.errors.DuplicateObject, match="already exists"):
        arena.direct(f"SELECT * FROM softguard.undo_op({op})")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot be renamed"):
        arena.direct(f"SELECT * FROM softguard.undo_op({op}, 'other')")
    assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
        ("active",)
    ]
    arena.direct("DROP OPERATOR public.=== (text, text)")
    r = arena.undo([op])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    assert extras(arena) == more
