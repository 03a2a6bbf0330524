"""Attacks on what ledger version 9 added, as the application's role through softguard.

Targets (decisions 0029, 0022 "Restore forms", 0008 / 0021 "Since then"): the backstop's
exemptions for softguard's own DDL (DROP TYPE / DOMAIN ... CASCADE keeping columns, shell
types, the probe), restore forms of enum / reg* values, the soft-delete setting checked
against the transition tables, categories denied outright in opaque code, and spellings
of softguard's names the proxy's text check must decode. Each attempt gets the arena's
verdict: refused with the data intact, or recorded and undone exactly.

Names of softguard's settings and functions are built at run time here ('soft' ||
'guard.'), as an attacker would to get past the proxy's text check (a documented limit,
threat model G15): what is under test is the database side behind it.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, deny_arena_fixture, fixtures

arena_template, arena = fixtures()

SG = "'soft' || 'guard.'"  # softguard's schema / setting prefix, spelled at run time


def frame(fn: str) -> str:
    """SQL text (an expression) that reads, in the PL/pgSQL context stack, like a frame of
    softguard's function `fn` running EXECUTE: a line of its own inside a comment."""
    return f"chr(10) || 'PL/pgSQL function soft' || 'guard.{fn} line 1 at EXECUTE' || chr(10)"


def do_execute(ddl: str, fn: str) -> str:
    """A DO block running `ddl` (no single quotes) with a comment forging `fn`'s frame."""
    return f"DO $$ BEGIN EXECUTE '{ddl} /*' || {frame(fn)} || '*/'; END $$"


def run(arena: Arena, steps: list[str], setup: list[str] = (), cleanup: list[str] = ()) -> Any:
    """Set up directly as the owner (not under attack), attack through softguard, clean
    the attacker's helpers up directly, then the verdict."""
    if setup:
        with arena.connect("owner", via="direct") as c:
            for s in setup:
                c.execute(s.encode())
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(steps)
    for s in cleanup:
        try:
            arena.direct(s)
        except psycopg.Error:
            pass
    return out, arena.verdict(before, last, out)


# -- 1. the backstop's exemptions for softguard's own DDL -------------------------------------

USING_F = (
    "CREATE FUNCTION leave_probe(v text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN "
    f"PERFORM set_config({SG} || 'probe', 'off', true); RETURN left(v, 1); END $f$"
)

BACKSTOP = {
    # text reading like _probe's frame in the ALTER's own comment: the rewrite passed (hole)
    "retype_forged_probe_frame": [
        do_execute("ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1)",
                   "_probe(text)")],
    # probe mode set by the client: ddl_command_end aborts the statement
    "retype_forged_probe_setting": [
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1); END $$"],
    # probe mode set by the client and switched off by its USING expression mid-rewrite
    "retype_probe_left_by_using": [
        USING_F,
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "ALTER TABLE big ALTER COLUMN payload TYPE text USING leave_probe(payload); END $$"],
    # ... and caught in the block, so the DO block itself succeeds
    "retype_probe_left_by_using_caught": [
        USING_F,
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "BEGIN ALTER TABLE big ALTER COLUMN payload TYPE text USING leave_probe(payload); "
        "EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'caught %', SQLERRM; END; END $$"],
    "retype_forged_alter_op_frame": [
        do_execute("ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1)",
                   "alter_op(text,jsonb,text)")],
    "drop_column_forged_alter_op_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "alter_op(text,jsonb,text)")],
    "drop_column_forged_drop_kept_column_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "_drop_kept_column(oid,integer)")],
    "drop_column_forged_drop_shell_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "_drop_shell(oid)")],
    # a domain whose CASCADE takes a column, with the shell frame forged: the column refuses
    "drop_domain_cascade_forged_shell_frame": [
        do_execute("DROP DOMAIN short_text CASCADE", "_drop_shell(oid)")],
    # the type itself (a definition drop_op keeps) with the shell frame forged (hole)
    "drop_type_forged_shell_frame": [do_execute("DROP TYPE mood", "_drop_shell(oid)")],
    "drop_type_cascade_forged_shell_frame": [
        do_execute("DROP TYPE mood CASCADE", "_drop_shell(oid)")],
    # a function of the client's whose very name is the frame's text (63 bytes, newline first)
    "drop_type_function_named_as_shell_frame": [
        "DO $$ DECLARE f text := format('%I', chr(10) || 'PL/pgSQL function soft' || "
        "'guard._drop_shell(oid) line 1 at EXECUTE'); BEGIN "
        "EXECUTE 'CREATE FUNCTION ' || f || '() RETURNS void LANGUAGE plpgsql AS "
        "$f$ BEGIN EXECUTE $d$DROP TYPE mood$d$; END $f$'; "
        "EXECUTE 'SELECT ' || f || '()'; END $$"],
    # softguard's marker for shell drops, called by the client on a real type: not marked
    "shell_mark_on_real_type": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_shell_drop_mark($1, true)' "
        "USING 'mood'::regtype::oid; DROP TYPE mood; END $$"],
    # ... on a shell it then defines as a range: the range's array and multirange go too
    "shell_mark_then_range": [
        "CREATE TYPE fill_me",
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_shell_drop_mark($1, true)' "
        "USING 'fill_me'::regtype::oid; "
        "CREATE TYPE fill_me AS RANGE (subtype = int4); DROP TYPE fill_me; END $$"],
    # the real thing, not run by the client: not PUBLIC
    "call_drop_kept_column": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_drop_kept_column($1, 2)' "
        "USING 'parent'::regclass; END $$"],
    "call_keep_column": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_keep_column(1, $1, 2, $2)' "
        "USING 'parent'::regclass, '{}'::text[]; END $$"],
    # its own _drop_kept_column, reached by search_path: printed unqualified
    "own_drop_kept_column_by_search_path": [
        "CREATE FUNCTION _drop_kept_column(r oid, n integer) RETURNS void LANGUAGE plpgsql AS "
        "$f$ BEGIN EXECUTE format($x$ALTER TABLE %s DROP COLUMN name$x$, r::regclass); END $f$",
        "SELECT _drop_kept_column('parent'::regclass, 2)"],
    # a drop_op call the proxy did not make, from a DO block (decision 0028's mark)
    "call_drop_op_from_do": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || 'drop_op($1, $2)' "
        "USING 'DROP DOMAIN short_text CASCADE', '{}'::jsonb; END $$"],
    # the v9 feature itself, top level: kept and undone exactly
    "drop_domain_cascade_top_level": ["DROP DOMAIN short_text CASCADE"],
    "drop_type_cascade_top_level": ["DROP TYPE mood CASCADE"],
}

BACKSTOP_SETUP = [
    "CREATE TYPE mood AS ENUM ('calm', 'angry')",
    "CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 50)",
    "CREATE TABLE labelled (id int PRIMARY KEY, t short_text, m mood)",
    "INSERT INTO labelled VALUES (1, 'one', 'calm'), (2, 'two', 'angry')",
]
BACKSTOP_CLEANUP = [
    "DROP FUNCTION IF EXISTS leave_probe(text)",
    "DROP FUNCTION IF EXISTS _drop_kept_column(oid, integer)",
    "DROP TYPE IF EXISTS fill_me",
    "DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT p.oid FROM pg_proc p "
    "WHERE p.proname LIKE E'\\n%' LOOP EXECUTE 'DROP FUNCTION ' || f; END LOOP; END $$",
]
# the type itself is the target here: the clean-up must not put it back
TYPE_TARGETS = {"drop_type_forged_shell_frame", "drop_type_function_named_as_shell_frame",
                "shell_mark_on_real_type"}


@pytest.mark.parametrize("name", sorted(BACKSTOP))
def test_backstop_exemptions_cannot_be_forged(arena: Arena, name: str) -> None:
    setup = list(BACKSTOP_SETUP)
    if name in TYPE_TARGETS:
        setup = ["CREATE TYPE mood AS ENUM ('calm', 'angry')"]
    if name == "drop_type_cascade_forged_shell_frame":
        setup = BACKSTOP_SETUP[:1] + ["CREATE TABLE moody (id int PRIMARY KEY, m mood)",
                                      "INSERT INTO moody VALUES (1, 'calm')"]
    out, _ = run(arena, BACKSTOP[name], setup, BACKSTOP_CLEANUP)
    if name.endswith("_caught"):
        assert "cannot be made reversible" in " ".join(out.notices), out.describe()
    elif name.startswith(("retype", "drop_column", "drop_type_f", "drop_domain_cascade_f",
                        "shell_mark", "call_", "own_")):
        assert out.error is not None, f"{name}: {out.describe()}"


def test_dropped_domain_column_name_taken_undo_refuses_whole(arena: Arena) -> None:
    """A column of the kept column's name added since: undo refuses with nothing changed,
    and once the name is free again puts the column back exactly."""
    with arena.connect("owner", via="direct") as c:
        for s in BACKSTOP_SETUP:
            c.execute(s.encode())
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["DROP DOMAIN short_text CASCADE",
                        "ALTER TABLE labelled ADD COLUMN t text DEFAULT 'squatter'"])
    assert out.error is None, out.describe()
    ops = [o["id"] for o in arena.ops_since(last) if o["kind"].startswith("DROP")]
    assert len(ops) == 1, arena.ops_since(last)
    squatted = arena.snapshot()
    r = arena.undo(ops)
    assert r.returncode != 0, r.stdout
    assert arena.snapshot() == squatted, "a refused undo changed something"
    arena.direct("ALTER TABLE labelled DROP COLUMN t")
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    after = arena.snapshot()
    # undo adds the column back as the table's last (decision 0029): compare by name
    assert after == before


# -- 2. restore forms: enum and reg* values put back by identity --------------------------------

RESTORE_SETUP = [
    "CREATE TYPE mood AS ENUM ('calm', 'angry', 'sad')",
    "CREATE TABLE feel (id int PRIMARY KEY, m mood, r regclass, n regnamespace, k text)",
    "CREATE TABLE feel_nokey (m mood, r regclass, k text)",
    "CREATE SCHEMA app",
    "CREATE TABLE app.target (id int)",
    "INSERT INTO feel VALUES (1, 'calm', 'big', 'app', 'a'), (2, 'angry', 'app.target', "
    "'public', 'b'), (3, 'sad', 'parent', 'app', 'c')",
    "INSERT INTO feel_nokey VALUES ('calm', 'big', 'a'), ('angry', 'app.target', 'b')",
]


def _restore_setup(arena: Arena) -> None:
    # the application owns its database here (it may create schemas)
    arena.direct(f'GRANT CREATE ON DATABASE "{arena.db}" TO "{arena.owner}"')
    with arena.connect("owner", via="direct") as c:
        for s in RESTORE_SETUP:
            c.execute(s.encode())


def _identities(arena: Arena, table: str) -> list[tuple[Any, ...]]:
    """The rows as identities: enum label oids and reg* oids, never their text."""
    return sorted(arena.direct(
        f"SELECT k, (SELECT e.oid FROM pg_enum e WHERE e.enumtypid = 'mood'::regtype "
        f"AND e.enumlabel = t.m::text)::bigint, t.r::oid::bigint FROM {table} t"))


RESTORE_MOVES = {
    # labels swapped after the DELETE: undo writes the label oids the rows held
    "enum_labels_swapped": [
        "ALTER TYPE mood RENAME VALUE 'calm' TO 'x'",
        "ALTER TYPE mood RENAME VALUE 'angry' TO 'calm'",
        "ALTER TYPE mood RENAME VALUE 'x' TO 'angry'"],
    # a new label with the old text: not the value the row held
    "enum_label_renamed_and_reused": [
        "ALTER TYPE mood RENAME VALUE 'calm' TO 'old_calm'",
        "ALTER TYPE mood ADD VALUE 'calm'"],
    # the table a regclass named renamed away, a new one given its name
    "regclass_renamed_and_replaced": [
        "ALTER TABLE big RENAME TO big_was", "CREATE TABLE big (id int)"],
    # the schema renamed and a new schema of that name with a table of that name
    "schema_renamed_and_replaced": [
        "ALTER SCHEMA app RENAME TO app_was", "CREATE SCHEMA app",
        "CREATE TABLE app.target (id int)"],
    # search_path and a same-named table first on it
    "search_path_shadow": [
        "CREATE TABLE app.big (id int)", "SET search_path = app, public"],
}


@pytest.mark.parametrize("table", ["feel", "feel_nokey"])
@pytest.mark.parametrize("move", sorted(RESTORE_MOVES))
def test_restore_by_identity_not_by_name(arena: Arena, move: str, table: str) -> None:
    """DELETE through softguard, then the attacker renames and re-creates what the captured
    values named; undo must write the very enum labels and relations the rows held."""
    _restore_setup(arena)
    held = _identities(arena, table)
    last = arena.last_op()
    with arena.connect("owner") as c:
        for s in RESTORE_MOVES[move] if move == "search_path_shadow" else ():
            c.execute(s.encode())
        c.execute(f"DELETE FROM {table}".encode())
        for s in () if move == "search_path_shadow" else RESTORE_MOVES[move]:
            c.execute(s.encode())
    ops = [o["id"] for o in arena.ops_since(last)]
    assert ops, "the DELETE was not recorded"
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _identities(arena, table) == held


def test_restore_refused_half_way_changes_nothing(arena: Arena) -> None:
    """A DELETE that cascades to two tables; the attacker puts a row with a captured key
    back in the second: undo refuses and the first is not restored alone."""
    before_parent = arena.direct("SELECT count(*) FROM parent")[0][0]
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("DELETE FROM parent WHERE id = 1")
        c.execute("INSERT INTO parent VALUES (1, 'squatter')")
        c.execute("INSERT INTO child VALUES (5, 1, 'squatter')")
    ops = [o["id"] for o in arena.ops_since(last)]
    mid = arena.snapshot()
    r = arena.undo(ops)
    if r.returncode == 0:
        # undo chose a policy for conflicts: then the captured rows must be there exactly
        assert arena.direct("SELECT count(*) FROM parent")[0][0] == before_parent
    else:
        assert arena.snapshot() == mid, "a refused undo changed something"


def test_restore_domain_check_added_since_refuses_whole(arena: Arena) -> None:
    """An enum value the attacker's new CHECK (NOT VALID) rejects: undo refuses whole."""
    _restore_setup(arena)
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("DELETE FROM feel")
        c.execute("DELETE FROM parent WHERE id = 2")
        c.execute("ALTER TABLE feel ADD CONSTRAINT no_sad CHECK (m <> 'sad') NOT VALID")
    ops = [o["id"] for o in arena.ops_since(last)]
    mid = arena.snapshot()
    r = arena.undo(ops)
    assert r.returncode != 0, r.stdout
    assert arena.snapshot() == mid, "a refused undo changed something"
