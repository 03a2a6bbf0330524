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

import re
import time
from collections.abc import Sequence
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


def run(
    arena: Arena, steps: list[Any], setup: Sequence[str] = (), cleanup: Sequence[str] = ()
) -> Any:
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
        do_execute(
            "ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1)", "_probe(text)"
        )
    ],
    # probe mode set by the client: ddl_command_end aborts the statement
    "retype_forged_probe_setting": [
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1); END $$"
    ],
    # probe mode set by the client and switched off by its USING expression mid-rewrite
    "retype_probe_left_by_using": [
        USING_F,
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "ALTER TABLE big ALTER COLUMN payload TYPE text USING leave_probe(payload); END $$",
    ],
    # ... and caught in the block, so the DO block itself succeeds
    "retype_probe_left_by_using_caught": [
        USING_F,
        f"DO $$ BEGIN PERFORM set_config({SG} || 'probe', 'on', true); "
        "BEGIN ALTER TABLE big ALTER COLUMN payload TYPE text USING leave_probe(payload); "
        "EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'caught %', SQLERRM; END; END $$",
    ],
    "retype_forged_alter_op_frame": [
        do_execute(
            "ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1)",
            "alter_op(text,jsonb,text)",
        )
    ],
    "drop_column_forged_alter_op_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "alter_op(text,jsonb,text)")
    ],
    "drop_column_forged_drop_kept_column_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "_drop_kept_column(oid,integer)")
    ],
    "drop_column_forged_drop_shell_frame": [
        do_execute("ALTER TABLE parent DROP COLUMN name", "_drop_shell(oid)")
    ],
    # a domain whose CASCADE takes a column, with the shell frame forged: the column refuses
    "drop_domain_cascade_forged_shell_frame": [
        do_execute("DROP DOMAIN short_text CASCADE", "_drop_shell(oid)")
    ],
    # the type itself (a definition drop_op keeps) with the shell frame forged (hole)
    "drop_type_forged_shell_frame": [do_execute("DROP TYPE mood", "_drop_shell(oid)")],
    "drop_type_cascade_forged_shell_frame": [
        do_execute("DROP TYPE mood CASCADE", "_drop_shell(oid)")
    ],
    # a function of the client's whose very name is the frame's text (63 bytes, newline first)
    "drop_type_function_named_as_shell_frame": [
        "DO $$ DECLARE f text := format('%I', chr(10) || 'PL/pgSQL function soft' || "
        "'guard._drop_shell(oid) line 1 at EXECUTE'); BEGIN "
        "EXECUTE 'CREATE FUNCTION ' || f || '() RETURNS void LANGUAGE plpgsql AS "
        "$f$ BEGIN EXECUTE $d$DROP TYPE mood$d$; END $f$'; "
        "EXECUTE 'SELECT ' || f || '()'; END $$"
    ],
    # softguard's marker for shell drops, called by the client on a real type: not marked
    "shell_mark_on_real_type": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_shell_drop_mark($1, true)' "
        "USING 'mood'::regtype::oid; DROP TYPE mood; END $$"
    ],
    # ... on a shell it then defines as a range: the range's array and multirange go too
    "shell_mark_then_range": [
        "CREATE TYPE fill_me",
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_shell_drop_mark($1, true)' "
        "USING 'fill_me'::regtype::oid; "
        "CREATE TYPE fill_me AS RANGE (subtype = int4); DROP TYPE fill_me; END $$",
    ],
    # the real thing, not run by the client: not PUBLIC
    "call_drop_kept_column": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_drop_kept_column($1, 2)' "
        "USING 'parent'::regclass; END $$"
    ],
    "call_keep_column": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_keep_column(1, $1, 2, $2)' "
        "USING 'parent'::regclass, '{}'::text[]; END $$"
    ],
    # its own _drop_kept_column, reached by search_path: printed unqualified
    "own_drop_kept_column_by_search_path": [
        "CREATE FUNCTION _drop_kept_column(r oid, n integer) RETURNS void LANGUAGE plpgsql AS "
        "$f$ BEGIN EXECUTE format($x$ALTER TABLE %s DROP COLUMN name$x$, r::regclass); END $f$",
        "SELECT _drop_kept_column('parent'::regclass, 2)",
    ],
    # a drop_op call the proxy did not make, from a DO block (decision 0028's mark)
    "call_drop_op_from_do": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || 'drop_op($1, $2)' "
        "USING 'DROP DOMAIN short_text CASCADE', '{}'::jsonb; END $$"
    ],
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
TYPE_TARGETS = {
    "drop_type_forged_shell_frame",
    "drop_type_function_named_as_shell_frame",
    "shell_mark_on_real_type",
}


@pytest.mark.parametrize("name", sorted(BACKSTOP))
def test_backstop_exemptions_cannot_be_forged(arena: Arena, name: str) -> None:
    setup = list(BACKSTOP_SETUP)
    if name in TYPE_TARGETS:
        setup = ["CREATE TYPE mood AS ENUM ('calm', 'angry')"]
    if name == "drop_type_cascade_forged_shell_frame":
        setup = [
            *BACKSTOP_SETUP[:1],
            "CREATE TABLE moody (id int PRIMARY KEY, m mood)",
            "INSERT INTO moody VALUES (1, 'calm')",
        ]
    out, _ = run(arena, BACKSTOP[name], setup, BACKSTOP_CLEANUP)
    if name.endswith("_caught"):
        assert "cannot be made reversible" in " ".join(out.notices), out.describe()
    elif name.startswith(
        (
            "retype",
            "drop_column",
            "drop_type_f",
            "drop_domain_cascade_f",
            "shell_mark",
            "call_",
            "own_",
        )
    ):
        assert out.error is not None, f"{name}: {out.describe()}"


def test_dropped_domain_column_name_taken_undo_refuses_whole(arena: Arena) -> None:
    """A column of the kept column's name added since: undo refuses with nothing changed,
    and once the name is free again puts the column back exactly."""
    with arena.connect("owner", via="direct") as c:
        for s in BACKSTOP_SETUP:
            c.execute(s.encode())
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            "DROP DOMAIN short_text CASCADE",
            "ALTER TABLE labelled ADD COLUMN t text DEFAULT 'squatter'",
        ]
    )
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
    return sorted(
        arena.direct(
            f"SELECT k, (SELECT e.oid FROM pg_enum e WHERE e.enumtypid = 'mood'::regtype "
            f"AND e.enumlabel = t.m::text)::bigint, t.r::oid::bigint FROM {table} t"
        )
    )


RESTORE_MOVES = {
    # labels swapped after the DELETE: undo writes the label oids the rows held
    "enum_labels_swapped": [
        "ALTER TYPE mood RENAME VALUE 'calm' TO 'x'",
        "ALTER TYPE mood RENAME VALUE 'angry' TO 'calm'",
        "ALTER TYPE mood RENAME VALUE 'x' TO 'angry'",
    ],
    # a new label with the old text: not the value the row held
    "enum_label_renamed_and_reused": [
        "ALTER TYPE mood RENAME VALUE 'calm' TO 'old_calm'",
        "ALTER TYPE mood ADD VALUE 'calm'",
    ],
    # the table a regclass named renamed away, a new one given its name
    "regclass_renamed_and_replaced": [
        "ALTER TABLE big RENAME TO big_was",
        "CREATE TABLE big (id int)",
    ],
    # the schema renamed and a new schema of that name with a table of that name
    "schema_renamed_and_replaced": [
        "ALTER SCHEMA app RENAME TO app_was",
        "CREATE SCHEMA app",
        "CREATE TABLE app.target (id int)",
    ],
    # search_path and a same-named table first on it
    "search_path_shadow": ["CREATE TABLE app.big (id int)", "SET search_path = app, public"],
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


# -- 3. the soft-delete setting, forged ---------------------------------------------------------


def forge_sd(table: str, info: str) -> str:
    """SQL setting softguard.sd_<table oid> to `info` (JSON) for the transaction."""
    return f"PERFORM set_config({SG} || 'sd_' || '{table}'::regclass::oid::text, '{info}', true);"


SOFT_DELETE = {
    # a data column named as the mark column: its old values are captured and put back
    "column_is_data": [
        "DO $$ BEGIN "
        + forge_sd(
            "parent",
            '{"column": "name", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM parent"}',
        )
        + " UPDATE parent SET name = 'x' WHERE id <= 3; END $$"
    ],
    # a data column named as the "deleted by" column: unchecked by the shape, captured too
    "by_column_is_data": [
        "DO $$ BEGIN "
        + forge_sd(
            "child",
            '{"column": "note", "mark_kind": "expression", '
            '"mark": "gone", "by_column": "parent_id", '
            '"statement": "DELETE FROM child"}',
        )
        + " UPDATE child SET note = 'gone', parent_id = 1 WHERE id <= 6; END $$"
    ],
    # more than the mark changed: captured whole as the UPDATE it is
    "other_column_changed": [
        "DO $$ BEGIN "
        + forge_sd(
            "big",
            '{"column": "payload", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM big"}',
        )
        + " UPDATE big SET payload = 'x', id = id + 100 WHERE id = 5; END $$"
    ],
    # the mark column's value already set: must stay image-equal
    "already_marked_rewritten": [
        "DO $$ BEGIN "
        + forge_sd(
            "typed",
            '{"column": "n", "mark_kind": "timestamp", '
            '"mark": "1", "statement": "DELETE FROM typed"}',
        )
        + " UPDATE typed SET n = n * 1.000; END $$"
    ],
    # a floating-point value written back equal under = but not as bytes
    "float_negative_zero": [
        "UPDATE typed SET f = 0 WHERE id = 1",
        "DO $$ BEGIN "
        + forge_sd(
            "typed",
            '{"column": "d", "mark_kind": "timestamp", '
            '"mark": "2001-01-01", "statement": "DELETE FROM typed"}',
        )
        + " UPDATE typed SET f = -0.0::float8, d = NULL WHERE id = 1;"
        + forge_sd(
            "typed",
            '{"column": "d", "mark_kind": "timestamp", '
            '"mark": "2001-01-01", "statement": "DELETE FROM typed"}',
        )
        + " UPDATE typed SET d = '2001-01-01' WHERE id = 1; END $$",
    ],
    # a trigger of the client's changing another column after the "mark"
    "before_trigger_changes_more": [
        "CREATE FUNCTION more() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN NEW.note := 'trigger wrote this'; RETURN NEW; END $f$",
        "CREATE TRIGGER more BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION more()",
        "DO $$ BEGIN "
        + forge_sd(
            "child",
            '{"column": "parent_id", "mark_kind": "expression", '
            '"mark": "1", "statement": "DELETE FROM child"}',
        )
        + " UPDATE child SET parent_id = 1; END $$",
    ],
    # a rule of the client's rewriting the UPDATE into another table's
    "rule_redirects": [
        "CREATE RULE redirect AS ON UPDATE TO animal DO INSTEAD "
        "UPDATE big SET payload = 'ruled' WHERE id = NEW.id",
        "DO $$ BEGIN "
        + forge_sd(
            "animal",
            '{"column": "name", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM animal"}',
        )
        + forge_sd(
            "big",
            '{"column": "payload", "mark_kind": "expression", '
            '"mark": "ruled", "statement": "DELETE FROM big"}',
        )
        + " UPDATE animal SET name = 'x' WHERE id = 1; END $$",
    ],
    # the setting spelled in the client's text: the proxy's check
    "setting_in_text": [
        "SELECT set_config('softguard.sd_' || 'parent'::regclass::oid::text, "
        '\'{"column": "name", "mark": "x"}\', true)'
    ],
    "setting_by_set_command": ["SET \"softguard.sd_1\" = '{}'"],
    # soft_delete_begin called by the client itself: the UPDATE marks and is recorded
    "soft_delete_begin_by_hand": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || 'soft_delete_begin($1, $2, $3, $4)' "
        "USING 'parent'::regclass, 'public.parent', '{\"column\": \"name\", "
        '"mark_kind": "expression"}\'::jsonb, \'gone\'::text; '
        "UPDATE parent SET name = 'gone' WHERE id = 2; END $$"
    ],
}
# Sessions whose UPDATEs are captured: the forged setting would make less be kept.
arena_upd = deny_arena_fixture('update = "protect"\n')

SD_CLEANUP = ["DROP TRIGGER IF EXISTS more ON child", "DROP RULE IF EXISTS redirect ON animal"]


@pytest.mark.parametrize("name", sorted(SOFT_DELETE))
def test_soft_delete_setting_forged(arena_upd: Arena, name: str) -> None:
    arena = arena_upd
    steps = SOFT_DELETE[name]
    setup = [s for s in steps if not s.startswith("DO")]
    attack = [s for s in steps if s.startswith(("DO", "SELECT set_config", "SET "))]
    out, _ = run(arena, attack, setup, SD_CLEANUP)
    if name.startswith("setting_"):
        assert out.sqlstate == "42501", out.describe()


# -- 4. categories denied outright, in code the proxy does not read ----------------------------

arena_nodelete = deny_arena_fixture('delete = "deny"\nupdate = "protect"\n')
arena_noupdate = deny_arena_fixture('update = "deny"\n')
arena_notruncate = deny_arena_fixture('truncate = "deny"\n')

WRITE_F = (
    "CREATE FUNCTION w() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN {body}; RETURN NULL; END $f$"
)


def _copy_in(conn: psycopg.Connection[Any], copy: str, row: tuple[Any, ...]) -> None:
    with conn.cursor() as cur, cur.copy(copy) as cp:
        cp.write_row(row)


DENIED_DELETE = {
    "do_block": ["DO $$ BEGIN DELETE FROM big WHERE id = 1; END $$"],
    "do_dynamic": ["DO $$ BEGIN EXECUTE 'DELETE FROM ' || 'big WHERE id = 1'; END $$"],
    "sql_function_writable_cte": [
        "CREATE FUNCTION w() RETURNS int LANGUAGE sql AS "
        "$f$ WITH d AS (DELETE FROM big WHERE id = 1 RETURNING 1) SELECT count(*)::int FROM d $f$",
        "SELECT w()",
    ],
    "rule_on_insert": [
        "CREATE RULE w AS ON INSERT TO nokey DO ALSO DELETE FROM big WHERE id = 1",
        "INSERT INTO nokey VALUES (7, 'go')",
    ],
    "trigger_on_insert": [
        WRITE_F.format(body="DELETE FROM big WHERE id = 1"),
        "CREATE TRIGGER w AFTER INSERT ON nokey FOR EACH STATEMENT EXECUTE FUNCTION w()",
        "INSERT INTO nokey VALUES (7, 'go')",
    ],
    "view_instead_of_insert": [
        "CREATE VIEW v AS SELECT * FROM big",
        "CREATE FUNCTION w() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN DELETE FROM big WHERE id = NEW.id; RETURN NULL; END $f$",
        "CREATE TRIGGER w INSTEAD OF INSERT ON v FOR EACH ROW EXECUTE FUNCTION w()",
        "INSERT INTO v VALUES (1, 'x')",
    ],
    "copy_from_trigger": [
        WRITE_F.format(body="DELETE FROM big WHERE id = 1"),
        "CREATE TRIGGER w AFTER INSERT ON nokey FOR EACH STATEMENT EXECUTE FUNCTION w()",
        lambda c: _copy_in(c, "COPY nokey FROM STDIN", (7, "go")),
    ],
    "merge_in_do": [
        "DO $$ BEGIN MERGE INTO big b USING (SELECT 1 AS id) s ON b.id = s.id "
        "WHEN MATCHED THEN DELETE; END $$"
    ],
    "inheritance_child_only": ["DO $$ BEGIN DELETE FROM ONLY dog WHERE id = 10; END $$"],
    "inheritance_parent": ["DO $$ BEGIN DELETE FROM animal WHERE id = 10; END $$"],
    "fk_cascade_from_parent": ["DO $$ BEGIN DELETE FROM parent WHERE id = 1; END $$"],
    # an UPDATE claiming to be a soft delete: still a DELETE of the table
    "soft_delete_claim": [
        "DO $$ BEGIN "
        + forge_sd(
            "parent",
            '{"column": "name", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM parent"}',
        )
        + " UPDATE parent SET name = 'x' WHERE id = 1; END $$"
    ],
    # the approval of a person forged: the ledger's table is not the client's to write
    "approval_forged": [
        f"DO $$ BEGIN EXECUTE 'INSERT INTO ' || {SG} || 'approvals (id, used_pid, used_xact) "
        "VALUES (1, pg_backend_pid(), pg_current_xact_id())'; DELETE FROM big WHERE id = 1; END $$"
    ],
    # the registration's denied tables rewritten
    "registration_rewritten": [
        f"DO $$ BEGIN EXECUTE 'UPDATE ' || {SG} || 'sessions SET denied_tables = $1' "
        "USING '[]'::jsonb; DELETE FROM big WHERE id = 1; END $$"
    ],
}
DENIED_CLEANUP = [
    "DROP RULE IF EXISTS w ON nokey",
    "DROP TRIGGER IF EXISTS w ON nokey",
    "DELETE FROM nokey WHERE a = 7",
]


def _denied(arena: Arena, steps: list[Any]) -> None:
    setup = [s for s in steps[:-1] if isinstance(s, str) and s.startswith("CREATE")]
    attack = [s for s in steps if s not in setup]
    out, ops = run(arena, attack, setup, DENIED_CLEANUP)
    assert out.sqlstate == "42501", out.describe()
    assert "refused by policy" in str(out.error) or "permission denied" in str(out.error), (
        out.describe()
    )
    assert not ops, ops


@pytest.mark.parametrize("name", sorted(DENIED_DELETE))
def test_denied_delete_refused_in_opaque_code(arena_nodelete: Arena, name: str) -> None:
    _denied(arena_nodelete, DENIED_DELETE[name])


DENIED_UPDATE = {
    "do_block": ["DO $$ BEGIN UPDATE big SET payload = 'x' WHERE id = 1; END $$"],
    "function": [
        "CREATE FUNCTION w() RETURNS void LANGUAGE sql AS $f$ UPDATE big SET payload = 'x' $f$",
        "SELECT w()",
    ],
    "fk_on_update_cascade": [
        "CREATE TABLE kid (id int PRIMARY KEY, big_id int REFERENCES big ON UPDATE CASCADE)",
        "DO $$ BEGIN UPDATE big SET id = 1000 WHERE id = 1; END $$",
    ],
    # an UPDATE claiming to be a soft delete of a data column (delete is allowed)
    "soft_delete_claim_data_column": [
        "DO $$ BEGIN "
        + forge_sd(
            "big",
            '{"column": "payload", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM big"}',
        )
        + " UPDATE big SET payload = 'x' WHERE id <= 3; END $$"
    ],
    "soft_delete_claim_other_column_too": [
        "DO $$ BEGIN "
        + forge_sd(
            "big",
            '{"column": "payload", "mark_kind": "expression", '
            '"mark": "x", "statement": "DELETE FROM big"}',
        )
        + " UPDATE big SET payload = 'x', id = id + 100 WHERE id <= 3; END $$"
    ],
}


@pytest.mark.parametrize("name", sorted(DENIED_UPDATE))
def test_denied_update_refused_in_opaque_code(arena_noupdate: Arena, name: str) -> None:
    """`soft_delete_claim_data_column` passed on ledger version 9: the shape check proves
    only that one column was set to one value, and the forged setting names the column."""
    _denied(arena_noupdate, DENIED_UPDATE[name])


# update denied, delete protected, one soft-delete table: the proxy's own claim (bound
# with the session key) is a DELETE; a claim the client writes for that very table too
# is an UPDATE
arena_sd_noupdate = deny_arena_fixture(
    'update = "deny"\n\n[[soft_delete]]\ntable = "public.sdt"\ncolumn = "gone_at"\n'
    'deleted_by = "gone_by"\n'
)
SDT = [
    "CREATE TABLE sdt (id int PRIMARY KEY, v text, gone_at timestamptz, gone_by text)",
    "INSERT INTO sdt SELECT g, 'v' || g, NULL, NULL FROM generate_series(1, 5) g",
]
SDT_CLAIM = (
    '{"table": "public.sdt", "column": "gone_at", "by_column": "gone_by", '
    '"mark_kind": "timestamp", "mark": "2001-01-01", "statement": "DELETE FROM sdt"}'
)


def test_soft_delete_allowed_where_updates_denied(arena_sd_noupdate: Arena) -> None:
    out, ops = run(arena_sd_noupdate, ["DELETE FROM sdt WHERE id <= 2"], SDT)
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops


def test_unbound_soft_delete_refused_where_updates_denied(arena_sd_noupdate: Arena) -> None:
    """softguard's own rewrite in a two-statement text cannot be bound to the session key
    (decision 0031): where UPDATEs are denied it is refused as the UPDATE it also is, with
    nothing changed, rather than believed on the claim alone."""
    out, ops = run(arena_sd_noupdate, ["SELECT 1; DELETE FROM sdt WHERE id <= 2"], SDT)
    assert out.sqlstate == "42501" and "refused by policy" in str(out.error), out.describe()
    assert not ops, ops


def test_soft_delete_claim_of_the_configured_column_forged(arena_sd_noupdate: Arena) -> None:
    """The configured table and column, the claim written by the client: an UPDATE."""
    out, ops = run(
        arena_sd_noupdate,
        [
            "DO $$ BEGIN "
            + forge_sd("sdt", SDT_CLAIM)
            + " UPDATE sdt SET gone_at = '2001-01-01', gone_by = 'x' WHERE id <= 2; END $$"
        ],
        SDT,
    )
    assert out.sqlstate == "42501" and "refused by policy" in str(out.error), out.describe()
    assert not ops, ops


DENIED_TRUNCATE = {
    "do_block": ["DO $$ BEGIN TRUNCATE big; END $$"],
    "function": [
        "CREATE FUNCTION w() RETURNS void LANGUAGE sql AS $f$ TRUNCATE big $f$",
        "SELECT w()",
    ],
    "cascade": ["DO $$ BEGIN TRUNCATE parent CASCADE; END $$"],
    "trigger": [
        WRITE_F.format(body="TRUNCATE big"),
        "CREATE TRIGGER w AFTER INSERT ON nokey FOR EACH STATEMENT EXECUTE FUNCTION w()",
        "INSERT INTO nokey VALUES (7, 'go')",
    ],
}


@pytest.mark.parametrize("name", sorted(DENIED_TRUNCATE))
def test_denied_truncate_refused_in_opaque_code(arena_notruncate: Arena, name: str) -> None:
    _denied(arena_notruncate, DENIED_TRUNCATE[name])


# -- 5. spellings of softguard's names ----------------------------------------------------------

PROXY_REFUSAL = "statements may not read, change or drop softguard's own schemas"
RETYPE = "ALTER TABLE big ALTER COLUMN payload TYPE text USING left(payload, 1)"


def _probe_on(name_sql: str) -> str:
    """A DO block switching probe mode on under the name `name_sql`, then retyping."""
    return f"DO $$ BEGIN PERFORM set_config({name_sql}, 'on', true); {RETYPE}; END $$"


# Spellings the proxy's text check decodes (softguard/sql/tamper.py): refused there.
SPELLED = {
    "octal": "SELECT set_config(E'\\163oftguard.probe', 'on', false)",
    "hex": "SELECT set_config(E'\\x73oftguard.probe', 'on', false)",
    "u4": "SELECT set_config(E'\\u0073oftguard.probe', 'on', false)",
    "u8": "SELECT set_config(E'\\U00000073oftguard.probe', 'on', false)",
    "needless_escape": "SELECT set_config(E'soft\\guard.probe', 'on', false)",
    "unicode_string": "SELECT set_config(U&'\\0073oftguard.probe', 'on', false)",
    "unicode_plus6": "SELECT set_config(U&'\\+000073oftguard.probe', 'on', false)",
    "uescape": "SELECT set_config(U&'!0073oftguard.probe' UESCAPE '!', 'on', false)",
    "unicode_ident": 'SELECT * FROM U&"\\0073oftguard".sessions',
    "uescape_ident": "SELECT * FROM U&\"#0073oftguard\" UESCAPE '#'.sessions",
    "dollar": "SELECT set_config($q$softguard.probe$q$, 'on', false)",
    "upper_case": "SELECT set_config('SOFTGUARD.PROBE', 'on', false)",
    "adjacent_literals": "SELECT set_config('soft'\n'guard.probe', 'on', false)",
    "scs_off_same_query": (
        "SET standard_conforming_strings = off; "
        "SELECT set_config('\\163oftguard.probe', 'on', false)"
    ),
    "do_octal": _probe_on("E'\\163oftguard.probe'"),
    "do_two_levels": (
        "DO $$ BEGIN EXECUTE E'SELECT set_config(E''\\\\163oftguard.probe'', ''on'', true)'; "
        f"{RETYPE}; END $$"
    ),
    "do_uescape": _probe_on("U&'!0073oftguard.probe' UESCAPE '!'"),
    "do_uescape_ident": (
        "DO $$ BEGIN PERFORM * FROM U&\"%0073oftguard\" UESCAPE '%'.sessions; END $$"
    ),
    "function_uescape": (
        "CREATE FUNCTION w() RETURNS text LANGUAGE sql AS "
        "$f$ SELECT set_config(U&'*0073oftguard.probe' UESCAPE '*', 'on', true) $f$"
    ),
    "prepared": "PREPARE p AS SELECT set_config(E'\\163oftguard.probe', 'on', false)",
}


def _prepared_twice(c: psycopg.Connection[Any]) -> None:
    c.execute("SET standard_conforming_strings = off")
    c.execute("SELECT set_config('\\163oftguard.probe', 'on', false)")


@pytest.mark.parametrize("name", sorted(SPELLED))
def test_spelled_names_refused_by_the_proxy(arena: Arena, name: str) -> None:
    out, _ = run(arena, [SPELLED[name]], cleanup=["DROP FUNCTION IF EXISTS w()"])
    assert out.sqlstate == "42501" and PROXY_REFUSAL in str(out.error), out.describe()


# Names built at run time (a documented limit of the text check): the database holds.
BUILT = {
    "concat": _probe_on(f"{SG} || 'probe'"),
    "chr": _probe_on("chr(115) || 'oftguard.probe'"),
    "format": _probe_on("format('%sguard.%s', 'soft', 'probe')"),
    "convert_from": _probe_on("convert_from('\\x736f66746775617264'::bytea, 'UTF8') || '.probe'"),
    "reverse": _probe_on("reverse('eborp.draugtfos')"),
    "scs_off_then_plain": (
        "DO $$ BEGIN SET LOCAL standard_conforming_strings = off; "
        "PERFORM set_config(replace('s_oftguard.probe', '_', ''), 'on', true); "
        f"{RETYPE}; END $$"
    ),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_names_built_at_run_time_held_by_the_database(arena: Arena, name: str) -> None:
    out, _ = run(arena, [BUILT[name]])
    assert out.error is not None, out.describe()
    assert PROXY_REFUSAL not in str(out.error), "expected the database's refusal"


def test_name_in_a_bind_parameter_held_by_the_database(arena: Arena) -> None:
    """Parameter values never pass the text check: a setting named in one is the
    client's to set; the database's checks still hold."""

    def attack(c: psycopg.Connection[Any]) -> None:
        c.execute("SELECT set_config(%s, 'on', false)", ["softguard.probe"])
        c.execute(RETYPE.encode())

    out, _ = run(arena, [attack])
    assert out.error is not None, out.describe()


def test_probe_on_in_startup_options_held(arena: Arena) -> None:
    """`options=-c softguard.probe=on` at connection: refused, or held by the database."""
    before, last = arena.snapshot(), arena.last_op()
    try:
        out = arena.attack([f"DO $$ BEGIN {RETYPE}; END $$"], options="-c softguard.probe=on")
    except psycopg.OperationalError as e:
        assert "softguard" in str(e).lower(), e
        return
    arena.verdict(before, last, out)


# -- 1b. what the attacker changes between a DROP ... CASCADE that kept columns and its undo --

AFTER_KEEP = {
    # a constraint the restored values break: undo refuses whole
    "check_rejects_values": "ALTER TABLE labelled ADD CONSTRAINT c CHECK (id > 100) NOT VALID",
    # the table renamed: found by oid
    "table_renamed": "ALTER TABLE labelled RENAME TO labelled_was",
    # a domain of the same name re-created: the kept one must come back, not this one
    "domain_recreated": "CREATE DOMAIN short_text AS text CHECK (VALUE = 'only this')",
    # a trigger of the client's on the table that would rewrite what undo writes back
    "trigger_rewrites": (
        "CREATE FUNCTION scrub() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN NEW.t := 'scrubbed'; RETURN NEW; END $f$; "
        "CREATE TRIGGER scrub BEFORE UPDATE ON labelled FOR EACH ROW EXECUTE FUNCTION scrub()"
    ),
}


@pytest.mark.parametrize("move", sorted(AFTER_KEEP))
def test_undo_of_kept_columns_exact_or_refused_whole(arena: Arena, move: str) -> None:
    with arena.connect("owner", via="direct") as c:
        for s in BACKSTOP_SETUP:
            c.execute(s.encode())
    last = arena.last_op()
    out = arena.attack(["DROP DOMAIN short_text CASCADE", AFTER_KEEP[move]])
    if out.error is not None:  # the move itself refused: the DROP stands, undone below
        assert out.failed_step == 1, out.describe()
    ops = [o["id"] for o in arena.ops_since(last) if o["kind"] == "DROP DOMAIN"]
    assert len(ops) == 1, arena.ops_since(last)
    moved = arena.snapshot()
    r = arena.undo(ops)
    if r.returncode != 0:
        assert arena.snapshot() == moved, "a refused undo changed something"
        return
    table = "labelled_was" if move == "table_renamed" else "labelled"
    got = sorted(arena.direct(f"SELECT id, t::text FROM {table}"))
    assert got == [(1, "one"), (2, "two")], got
    # the column's type is the kept domain (its CHECK), not one created since
    typ = arena.direct(
        f"SELECT t.typnamespace::regnamespace::text, pg_get_constraintdef(k.oid) "
        f"FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        f"JOIN pg_constraint k ON k.contypid = t.oid "
        f"WHERE a.attrelid = '{table}'::regclass AND a.attname = 't'"
    )
    assert typ == [("public", "CHECK ((length(VALUE) < 50))")], typ


# -- 4b. a person's approval of one statement ---------------------------------------------------


def _approve(arena: Arena, c: psycopg.Connection[Any], text: str) -> str:
    """Have `text` refused, then approved by a person (the CLI, as the operator)."""
    with pytest.raises(psycopg.Error) as info:
        c.execute(text.encode())
    found = re.search(r"\(approval id ([0-9a-f]{16})\)", str(info.value))
    assert found, str(info.value)
    for _ in range(100):  # the proxy records the request without making the client wait
        if arena.direct("SELECT 1 FROM softguard.approvals WHERE id = %s", [found[1]]):
            break
        time.sleep(0.1)
    r = arena.cli("approve", found[1], "--by", "alice")
    assert r.returncode == 0, r.stdout + r.stderr
    return found[1]


APPROVED_THEN = {
    # in the approved statement's transaction, a DO block deleting elsewhere
    "do_block_after": "DO $$ BEGIN DELETE FROM big WHERE id > 40; END $$",
    # ... a function doing the same
    "function_after": "SELECT count(*) FROM (SELECT w()) s",
}


@pytest.mark.parametrize("name", sorted(APPROVED_THEN))
def test_approval_covers_only_the_approved_statement(arena_nodelete: Arena, name: str) -> None:
    arena = arena_nodelete
    arena.direct(
        f'SET ROLE "{arena.owner}"; CREATE FUNCTION public.w() RETURNS int LANGUAGE sql AS '
        "$f$ WITH d AS (DELETE FROM big WHERE id > 40 RETURNING 1) SELECT count(*)::int FROM d $f$"
    )
    text = "DELETE FROM big WHERE id = 1"
    with arena.connect("owner") as c:
        _approve(arena, c, text)
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["BEGIN", text, APPROVED_THEN[name], "COMMIT"])
    assert out.failed_step == 2 and out.sqlstate == "42501", out.describe()
    arena.verdict(before, last, out)


# -- 1c. DROP DOMAIN ... CASCADE over shapes that make keeping a column hard ------------------

DOMAIN_SHAPES = {
    # the key itself goes: rows found again by the other columns, duplicates among them
    "key_column_duplicates": [
        "CREATE TABLE dk (id did PRIMARY KEY, v text)",
        "INSERT INTO dk VALUES (1, 'a'), (2, 'a'), (3, 'b')",
    ],
    # a foreign key from another table onto the domain-typed key
    "referenced_key": [
        "CREATE TABLE dk (id did PRIMARY KEY, v text)",
        "CREATE TABLE dref (id int PRIMARY KEY, dk_id did REFERENCES dk)",
        "INSERT INTO dk VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO dref VALUES (10, 1), (11, 2)",
    ],
    # a generated column computed from the domain column
    "generated_from_it": [
        "CREATE TABLE dk (id int PRIMARY KEY, d did, g int GENERATED ALWAYS AS (d * 2) STORED)",
        "INSERT INTO dk (id, d) VALUES (1, 5), (2, 7)",
    ],
    # a partitioned table's partition key of the domain type: PostgreSQL refuses the drop
    "partition_key": [
        "CREATE TABLE dk (id did, v text) PARTITION BY RANGE (id)",
        "CREATE TABLE dk1 PARTITION OF dk FOR VALUES FROM (1) TO (100)",
        "INSERT INTO dk VALUES (1, 'a'), (2, 'b')",
    ],
    # a CHECK constraint and an index over the column and another one
    "check_and_index": [
        "CREATE TABLE dk (id int PRIMARY KEY, d did, e int, CHECK (d < e))",
        "CREATE INDEX dk_de ON dk (d, e)",
        "INSERT INTO dk VALUES (1, 1, 2), (2, 3, 4)",
    ],
    # a row-level security policy reading the column
    "policy_reads_it": [
        "CREATE TABLE dk (id int PRIMARY KEY, d did)",
        "ALTER TABLE dk ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY p ON dk USING (d > 0)",
        "INSERT INTO dk VALUES (1, 1), (2, 2)",
    ],
}


@pytest.mark.parametrize("shape", sorted(DOMAIN_SHAPES))
def test_drop_domain_cascade_shapes_exact_or_refused(arena: Arena, shape: str) -> None:
    setup = ["CREATE DOMAIN did AS int CHECK (VALUE > 0)", *DOMAIN_SHAPES[shape]]
    out, _ = run(arena, ["DROP DOMAIN did CASCADE"], setup)
    print(out.describe())


# -- 6. code of the client's that undo runs (as the operator) ---------------------------------

PLANTED = (
    "CREATE TABLE loot (who text, su text)",
    # an IMMUTABLE function may not write, but may call one that does
    "CREATE FUNCTION spy_v() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN "
    "INSERT INTO public.loot SELECT current_user, rolsuper::text FROM pg_roles "
    "WHERE rolname = current_user; END $f$",
    "CREATE FUNCTION spy(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN "
    "PERFORM public.spy_v(); RETURN i; END $f$",
)
PLANTS = {
    "expression_index": "CREATE INDEX big_spy ON big ((spy(id)))",
    "check_constraint": "ALTER TABLE big ADD CONSTRAINT big_spy CHECK (spy(id) > 0)",
    "partial_index": "CREATE INDEX big_spy ON big (id) WHERE spy(id) > 0",
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_undo_runs_no_client_code_as_the_operator(arena: Arena, plant: str) -> None:
    """The client's function in an index expression or CHECK runs when undo writes rows
    back: never with the operator's (superuser's) rights."""
    with arena.connect("owner", via="direct") as c:
        for s in (*PLANTED, PLANTS[plant]):
            c.execute(s.encode())
        c.execute("DELETE FROM loot")
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("DELETE FROM big WHERE id <= 2")
    ops = [o["id"] for o in arena.ops_since(last)]
    arena.direct("DELETE FROM loot")
    r = arena.undo(ops)
    loot = arena.direct("SELECT who, su FROM loot")
    assert "true" not in {su for _, su in loot}, f"client code ran as a superuser: {loot}"
    assert r.returncode != 0 and "would run public.spy(integer)" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )
    # the operator reviews and removes the planted code: undo then puts the rows back
    arena.direct("DROP INDEX IF EXISTS big_spy")
    arena.direct("ALTER TABLE big DROP CONSTRAINT IF EXISTS big_spy")
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.direct("SELECT count(*) FROM big WHERE id <= 2") == [(2,)]


# The client's function deeper in what writing a row runs: a domain inside a composite
# field (or an array of one), a domain default a column added since takes, an index of one
# partition. (setup, statements run after the DELETE and before undo)
NESTED_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "domain_in_composite": (
        (
            "CREATE DOMAIN spyd AS int CHECK (spy(VALUE) > 0)",
            "CREATE TYPE pair AS (a spyd, b int)",
            "CREATE TABLE nest (id int PRIMARY KEY, p pair)",
            "INSERT INTO nest VALUES (1, ROW(1, 1)), (2, ROW(2, 2)), (3, ROW(3, 3))",
        ),
        (),
    ),
    "domain_in_composite_array": (
        (
            "CREATE DOMAIN spyd AS int CHECK (spy(VALUE) > 0)",
            "CREATE TYPE pair AS (a spyd, b int)",
            "CREATE TABLE nest (id int PRIMARY KEY, p pair[])",
            "INSERT INTO nest VALUES (1, ARRAY[ROW(1, 1)::pair]), (2, ARRAY[ROW(2, 2)::pair]),"
            " (3, ARRAY[ROW(3, 3)::pair])",
        ),
        (),
    ),
    "domain_default_of_a_column_added_since": (
        (
            "CREATE DOMAIN spyd AS int DEFAULT spy(5)",
            "CREATE TABLE nest (id int PRIMARY KEY, v text)",
            "INSERT INTO nest VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        ),
        ("ALTER TABLE nest ADD COLUMN z spyd",),
    ),
    "index_of_one_partition": (
        (
            "CREATE TABLE nest (id int, v text) PARTITION BY RANGE (id)",
            "CREATE TABLE nest1 PARTITION OF nest FOR VALUES FROM (0) TO (100)",
            "CREATE INDEX nest1_spy ON nest1 ((spy(id)))",
            "INSERT INTO nest VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        ),
        (),
    ),
}


@pytest.mark.parametrize("where", sorted(NESTED_CODE))
def test_undo_runs_no_nested_client_code_as_the_operator(arena: Arena, where: str) -> None:
    """The same refusal however deep the client's function sits in what a row write runs."""
    setup, after = NESTED_CODE[where]
    with arena.connect("owner", via="direct") as c:
        for s in (*PLANTED, *setup):
            c.execute(s.encode())
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("DELETE FROM nest WHERE id <= 2")
    ops = [o["id"] for o in arena.ops_since(last)]
    assert ops, "the DELETE was not recorded"
    with arena.connect("owner", via="direct") as c:
        for s in after:
            c.execute(s.encode())
    arena.direct("DELETE FROM loot")
    r = arena.undo(ops)
    loot = arena.direct("SELECT who, su FROM loot")
    assert "true" not in {su for _, su in loot}, f"client code ran as a superuser: {loot}"
    assert r.returncode != 0 and "would run public.spy(integer)" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )
    assert arena.direct("SELECT count(*) FROM nest") == [(1,)], "undo changed something"


KEPT_COLUMN_CODE = {
    # undo adds the column back with its default, evaluated by the ALTER TABLE it runs
    "default": "ALTER TABLE big ADD COLUMN extra int DEFAULT spy(7)",
    # ... and its CHECK constraint, checked against the rows
    "check": "ALTER TABLE big ADD COLUMN extra int CHECK (spy(extra) > 0) DEFAULT 7",
    # ... and its index over an expression (CREATE INDEX runs as the owner: harmless)
    "index": "ALTER TABLE big ADD COLUMN extra int DEFAULT 7; CREATE INDEX ON big ((spy(extra)))",
}


@pytest.mark.parametrize("where", sorted(KEPT_COLUMN_CODE))
def test_undo_of_a_dropped_column_runs_no_client_code_as_the_operator(
    arena: Arena, where: str
) -> None:
    with arena.connect("owner", via="direct") as c:
        for s in (*PLANTED, KEPT_COLUMN_CODE[where]):
            c.execute(s.encode())
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("ALTER TABLE big DROP COLUMN extra")
    ops = [o["id"] for o in arena.ops_since(last)]
    assert ops, "the DROP COLUMN was not recorded"
    arena.direct("DELETE FROM loot")
    r = arena.undo(ops)
    loot = arena.direct("SELECT who, su FROM loot")
    assert "true" not in {su for _, su in loot}, f"client code ran as a superuser: {loot}"
    if where == "check":  # refused before the constraint is validated, nothing changed
        assert r.returncode != 0 and "would run public.spy(integer)" in r.stdout + r.stderr
