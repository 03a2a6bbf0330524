"""Attacks on what ledger version 12 (section langsrv) added, as the application's role
through softguard: DROP LANGUAGE is kept (decision 0036, since then), the language renamed
softguard_q<id>_<name> in place and given to softguard_keeper, its USAGE grants (PUBLIC's
default one among them) recorded and revoked. A superuser made the language (one that is
no extension's: plpgsql's handler) and gave it to the owner, whose function in it is kept
by DROP FUNCTION, after which, directly, the language can be dropped. The attacker tries
to get the kept language back into use, or lost for good while its function is kept.
Each attempt gets the arena's verdict (refused with everything intact, or recorded and
undone exactly), on a snapshot that also holds the languages and the routines in them.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, Outcome, fixtures

arena_template, arena = fixtures()

FUNCTION = "CREATE FUNCTION lf() RETURNS int LANGUAGE pl2 AS 'BEGIN RETURN 1; END'"
KEEP_USERS = ["DROP FUNCTION lf()"]  # then only a kept routine is written in it
DROP = "DROP LANGUAGE pl2"
CASCADE = DROP + " CASCADE"


def extras(arena: Arena) -> dict[str, Any]:
    """What the arena's snapshot leaves out: languages (owner, grants) and the routines
    written in them."""
    return {
        "languages": arena.direct(
            "SELECT lanname, lanowner::regrole::text, coalesce(lanacl::text, '')"
            " FROM pg_language WHERE oid >= 16384 ORDER BY 1"
        ),
        "routines": arena.direct(
            "SELECT p.oid::regprocedure::text, l.lanname FROM pg_proc p"
            " JOIN pg_language l ON l.oid = p.prolang WHERE l.oid >= 16384 ORDER BY 1"
        ),
    }


def setup(arena: Arena) -> None:
    arena.direct("CREATE TRUSTED LANGUAGE pl2 HANDLER plpgsql_call_handler")
    arena.direct(f'ALTER LANGUAGE pl2 OWNER TO "{arena.owner}"')
    arena.direct(f'GRANT USAGE ON LANGUAGE pl2 TO "{arena.other}"')
    with arena.connect("owner", via="direct") as c:
        c.execute(FUNCTION.encode())


def attempt(arena: Arena, steps: list[Any], who: str = "owner") -> Outcome:
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(steps, who)
    arena.verdict(before, last, out)
    assert extras(arena) == more
    return out


def kept_language(c: psycopg.Connection[Any]) -> str:
    """The kept language's name, found in pg_language as any role can."""
    row = c.execute(
        b"SELECT quote_ident(lanname) FROM pg_language"
        b" WHERE lanname ~ '^softguard_q[0-9]+_' ORDER BY oid DESC LIMIT 1"
    ).fetchone()
    assert row is not None, "no language in quarantine"
    return str(row[0])


def _on_kept(template: str, do_block: bool = False) -> Any:
    """A step running `template` with {k} the kept language (in a DO block: unseen by
    the proxy's policy, PostgreSQL's privileges alone decide)."""

    def step(c: psycopg.Connection[Any]) -> None:
        stmt = template.format(k=kept_language(c))
        if do_block:
            stmt = f"DO $d$ BEGIN EXECUTE $q${stmt}$q$; END $d$"
        c.execute(stmt.encode())

    return step


ATTACKS: dict[str, list[Any]] = {
    # the kept language renamed back, given back, used again by its former owner
    "rename_back": [*KEEP_USERS, DROP, _on_kept("ALTER LANGUAGE {k} RENAME TO pl2")],
    "rename_back_in_do": [*KEEP_USERS, DROP, _on_kept("ALTER LANGUAGE {k} RENAME TO pl2", True)],
    "owner_back": [*KEEP_USERS, DROP, _on_kept("ALTER LANGUAGE {k} OWNER TO CURRENT_USER")],
    "regrant_usage": [*KEEP_USERS, DROP, _on_kept("GRANT USAGE ON LANGUAGE {k} TO PUBLIC")],
    # a new routine in it, for purge's CASCADE to take along
    "new_routine": [
        *KEEP_USERS,
        DROP,
        _on_kept("CREATE FUNCTION grab() RETURNS int LANGUAGE {k} AS 'BEGIN RETURN 2; END'"),
    ],
    # the kept language dropped again, through softguard and in a DO block
    "drop_kept": [*KEEP_USERS, DROP, _on_kept("DROP LANGUAGE {k} CASCADE")],
    "drop_kept_in_do": [*KEEP_USERS, DROP, _on_kept("DROP LANGUAGE {k} CASCADE", True)],
    # the CASCADE in a DO block: over the live function the backstop refuses it; once
    # only the kept function is written in it, the quarantine's guard does
    "do_block_cascade": [f"DO $$ BEGIN EXECUTE '{CASCADE}'; END $$"],
    "do_block_cascade_into_quarantine": [*KEEP_USERS, f"DO $$ BEGIN EXECUTE '{CASCADE}'; END $$"],
    # the plain ones: kept, undone by the verdict
    "after_the_function": [*KEEP_USERS, DROP],
    "plain_cascade": [CASCADE],  # the live function kept with it
}

EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "after_the_function": (None, None),
    "do_block_cascade": (0, "0A000"),
    "do_block_cascade_into_quarantine": (1, "42501"),
    "drop_kept": (2, "42501"),
    "drop_kept_in_do": (2, "42501"),
    "new_routine": (2, "42501"),
    "owner_back": (2, "42501"),
    "plain_cascade": (None, None),
    "regrant_usage": (2, "42501"),
    "rename_back": (2, "42501"),
    "rename_back_in_do": (2, "42501"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_kept_languages_are_never_lost_nor_used(arena: Arena, name: str) -> None:
    out = attempt(arena, ATTACKS[name])
    assert (out.failed_step, out.sqlstate) == EXPECTED[name], out.describe()


def test_undo_and_purge_of_a_language_in_a_bad_order_change_nothing(arena: Arena) -> None:
    """The function kept first, then its language: undo of the function first would give
    back a routine in a kept language, purge of the language first would take the kept
    function: both are refused (55006) and change nothing; in the right order both go."""
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack([*KEEP_USERS, DROP])
    assert out.error is None, out.describe()
    function, tie = [o["id"] for o in arena.ops_since(last)]
    r = arena.cli("undo", str(function), "--yes")
    assert r.returncode != 0 and f"held by operation {tie}" in r.stdout + r.stderr, r.stdout
    with pytest.raises(psycopg.errors.ObjectInUse, match=f"held by operation {function}"):
        arena.direct(f"SELECT softguard.purge_op({tie})")
    states = arena.direct(
        "SELECT state FROM softguard.operations WHERE id > %s ORDER BY id", [last]
    )
    assert states == [("active",)] * 2
    r = arena.undo([function, tie])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    assert extras(arena) == more


def test_a_language_made_again_makes_undo_wait(arena: Arena) -> None:
    """After the DROP the name is free, as directly: a superuser makes the language again.
    Undo then refuses (42710, nothing changed) and, under another name, gives the kept
    language back with its owner and grants, its function in it."""
    setup(arena)
    more, last = extras(arena), arena.last_op()
    out = arena.attack([CASCADE])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    arena.direct("CREATE TRUSTED LANGUAGE pl2 HANDLER plpgsql_call_handler")
    with pytest.raises(psycopg.errors.DuplicateObject, match="already exists"):
        arena.direct(f"SELECT * FROM softguard.undo_op({op})")
    assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
        ("active",)
    ]
    arena.direct(f"SELECT * FROM softguard.undo_op({op}, 'pl2_back')")
    (was,) = more["languages"]
    me = arena.direct("SELECT current_user")[0][0]
    assert extras(arena) == {
        "languages": [("pl2", me, ""), ("pl2_back", *was[1:])],
        "routines": [("lf()", "pl2_back")],
    }
