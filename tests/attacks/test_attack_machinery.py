"""Issue 10 item 2: the table's owner (or a superuser) removes the capture machinery.

Each attack disables, drops, renames or sidelines softguard's triggers or event triggers,
then destroys something. What must hold: the tampering is refused, or what follows is
still refused or recorded and undone exactly; a DROP never answers "DROP TABLE" for work
it did not do. The capture triggers are enabled ALWAYS and an event trigger refuses any
statement that leaves them otherwise (migrations/install/90_event_triggers.sql), so each
refused tampering is followed by a DELETE that must be captured and undone exactly.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, Step, fixtures, uident

from softguard.sql.tamper import mentions_softguard

arena_template, arena = fixtures()

TRIGGER = "zz_softguard_capture_delete"
# Where the owner attacks from: through softguard, and directly with its own password.
VIAS = ("proxy", "direct")


def _prepared(c: psycopg.Connection[Any]) -> None:
    # Parse/Bind/Execute of a utility statement: what a driver's prepared statement sends
    c.execute(f"ALTER TABLE parent DISABLE TRIGGER {uident(TRIGGER)}", prepare=True)


# name -> (setup run first by the owner, directly; the tampering steps)
OWNER_TAMPERING: dict[str, tuple[list[str], list[Step]]] = {
    "disable_user": ([], ["ALTER TABLE parent DISABLE TRIGGER USER"]),
    "disable_named": ([], [f"ALTER TABLE parent DISABLE TRIGGER {TRIGGER}"]),
    "disable_uident": ([], [f"ALTER TABLE parent DISABLE TRIGGER {uident(TRIGGER)}"]),
    "rename_then_disable": (
        [],
        [
            f"ALTER TRIGGER {uident(TRIGGER)} ON parent RENAME TO plain",
            "ALTER TABLE parent DISABLE TRIGGER plain",
        ],
    ),
    "rename_then_drop": (
        [],
        [
            f"ALTER TRIGGER {uident(TRIGGER)} ON parent RENAME TO plain",
            "DROP TRIGGER plain ON parent",
        ],
    ),
    "drop_trigger": ([], [f"DROP TRIGGER {uident(TRIGGER)} ON parent"]),
    "enable_replica": ([], [f"ALTER TABLE parent ENABLE REPLICA TRIGGER {uident(TRIGGER)}"]),
    "enable_replica_plain": ([], [f"ALTER TABLE parent ENABLE REPLICA TRIGGER {TRIGGER}"]),
    "enable_origin_user": ([], ["ALTER TABLE parent ENABLE TRIGGER USER"]),
    "disable_in_do": (
        [],
        [
            "DO $$ BEGIN EXECUTE format('ALTER TABLE parent DISABLE TRIGGER %I', "
            "concat('zz_soft', 'guard_capture_delete')); END $$"
        ],
    ),
    "disable_in_sql_function": (
        [
            "CREATE FUNCTION public.quiet() RETURNS void LANGUAGE sql AS "
            f"$$ ALTER TABLE parent DISABLE TRIGGER {uident(TRIGGER)} $$"
        ],
        ["SELECT public.quiet()"],
    ),
    "disable_in_procedure": (
        [
            "CREATE PROCEDURE public.quiet() LANGUAGE plpgsql AS $$ BEGIN "
            "EXECUTE format('ALTER TABLE parent DISABLE TRIGGER %I', "
            "concat('zz_soft', 'guard_capture_delete')); END $$"
        ],
        ["CALL public.quiet()"],
    ),
    "disable_prepared": ([], [_prepared]),
    "disable_through_sql_prepare": (
        [
            "CREATE FUNCTION public.quiet() RETURNS void LANGUAGE plpgsql AS "
            "$$ BEGIN ALTER TABLE parent DISABLE TRIGGER USER; END $$"
        ],
        ["PREPARE q AS SELECT public.quiet()", "EXECUTE q"],
    ),
    "replace_with_own_function": (
        [
            "CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN NULL; END $$"
        ],
        [
            f"CREATE OR REPLACE TRIGGER {uident(TRIGGER)} AFTER DELETE ON parent "
            "REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT EXECUTE FUNCTION public.noop()"
        ],
    ),
    "disable_all": ([], ["ALTER TABLE parent DISABLE TRIGGER ALL"]),  # system triggers:
    # PostgreSQL itself refuses this to a non-superuser
}


def refused_then_captured(
    arena: Arena,
    steps: list[Step],
    who: str = "owner",
    via: str = "proxy",
    delete: str = "DELETE FROM parent WHERE id = 1",
) -> None:
    """The tampering is refused and leaves the machinery as it was; a DELETE through
    softguard afterwards is captured and undone exactly."""
    machinery = arena.machinery()
    out, ops = arena.attempt(steps, who, via)
    assert out.error is not None, f"the tampering was not refused: {out.describe()}"
    assert ops == [], ops
    assert arena.machinery() == machinery
    _, ops = arena.attempt([delete], who)
    assert [o["kind"] for o in ops] == ["DELETE"], ops


def _setup(arena: Arena, statements: list[str]) -> None:
    if statements:
        out = arena.attack(statements, who="owner", via="direct")
        assert out.error is None, out.describe()


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("name", sorted(OWNER_TAMPERING))
def test_owner_cannot_silence_delete_capture(arena: Arena, name: str, via: str) -> None:
    setup, steps = OWNER_TAMPERING[name]
    _setup(arena, setup)
    refused_then_captured(arena, steps, via=via)


@pytest.mark.parametrize("via", VIAS)
def test_owner_cannot_silence_truncate_capture(arena: Arena, via: str) -> None:
    refused_then_captured(
        arena,
        [f"ALTER TABLE big DISABLE TRIGGER {uident('zz_softguard_capture_truncate')}"],
        via=via,
    )
    arena.attempt(["TRUNCATE big"])


def test_owner_drops_capture_then_other_role_deletes(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([f"DROP TRIGGER {uident(TRIGGER)} ON big"])
    out2 = arena.attack(["DELETE FROM big WHERE id < 30"], who="other")
    arena.verdict(before, last, out if out.error else out2)
    assert out.error is not None, out.describe()


@pytest.mark.parametrize(
    "how",
    [
        "SET session_replication_role = replica",
        "SELECT set_config('session_replication_role', 'replica', false)",
    ],
)
def test_superuser_cannot_use_replica_mode(arena: Arena, how: str) -> None:
    _, ops = arena.attempt([how, "DELETE FROM parent WHERE id = 3"], who="super")
    assert [o["kind"] for o in ops] == ["DELETE"], ops


@pytest.mark.parametrize("how", ["alter_disable", "drop", "replica"])
@pytest.mark.parametrize(
    "destroy",
    ["DROP TABLE big", "ALTER TABLE parent DROP COLUMN name", "DROP SCHEMA public CASCADE"],
)
def test_superuser_cannot_disable_event_triggers(arena: Arena, how: str, destroy: str) -> None:
    """The proxy refuses every statement naming softguard's event triggers (PostgreSQL
    fires no event trigger for them); the U& spelling does not hide the name."""
    before, last = arena.snapshot(), arena.last_op()
    names = [r[0] for r in arena.direct("SELECT evtname FROM pg_event_trigger")]
    tamper = {
        "alter_disable": [f"ALTER EVENT TRIGGER {uident(n)} DISABLE" for n in names],
        "drop": [f"DROP EVENT TRIGGER {uident(n)}" for n in names],
        "replica": [f"ALTER EVENT TRIGGER {uident(n)} ENABLE REPLICA" for n in names],
    }[how]
    out = arena.attack([*tamper, destroy], who="super")
    arena.verdict(before, last, out)
    assert out.failed_step == 0 and out.sqlstate == "42501", out.describe()


def test_superuser_cannot_strip_triggers_in_do_block(arena: Arena) -> None:
    arena.attempt(
        [
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT tgname, tgrelid::regclass AS t "
            "FROM pg_trigger WHERE tgname LIKE 'zz\\_soft%' LOOP "
            "EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.t); END LOOP; END $$",
            "DELETE FROM child",
            "DELETE FROM typed",
        ],
        who="super",
    )


SUPER_TAMPERING: dict[str, list[Step]] = {
    # the capture function dropped with its triggers, after forging the purge marker the
    # ledger backstop trusts
    "drop_capture_function": [
        "DO $$ BEGIN PERFORM set_config(concat('soft', 'guard.internal'), 'on', false); "
        "EXECUTE format('DROP FUNCTION %I._capture_rows() CASCADE', concat('soft', 'guard')); "
        "END $$"
    ],
    "disable_all_in_do": [
        "DO $$ BEGIN EXECUTE 'ALTER TABLE parent DISABLE TRIGGER ALL'; END $$",
    ],
    "replica_in_do": [
        "DO $$ BEGIN EXECUTE format('ALTER TABLE parent ENABLE REPLICA TRIGGER %I', "
        "concat('zz_soft', 'guard_capture_delete')); END $$"
    ],
    # CREATE OR REPLACE with softguard's own function resets it to fire on origin only
    "replace_same_function": [
        "DO $$ BEGIN EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON parent "
        "REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT EXECUTE FUNCTION %I._capture_rows()',"
        " concat('zz_soft', 'guard_capture_delete'), concat('soft', 'guard')); END $$"
    ],
    "replace_when_false": [
        "DO $$ BEGIN EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON parent "
        "REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT WHEN (false) "
        "EXECUTE FUNCTION %I._capture_rows()', concat('zz_soft', 'guard_capture_delete'), "
        "concat('soft', 'guard')); END $$"
    ],
}


@pytest.mark.parametrize("name", sorted(SUPER_TAMPERING))
def test_superuser_cannot_silence_capture(arena: Arena, name: str) -> None:
    refused_then_captured(arena, SUPER_TAMPERING[name], who="super")


@pytest.mark.xfail(
    strict=True,
    reason="G7 residual: a superuser's DO block can switch softguard's event triggers off "
    "with dynamic SQL (ALTER EVENT TRIGGER fires nothing and the proxy cannot read the "
    "assembled text), then disable the capture triggers; only DROP / TRUNCATE / ALTER "
    "through softguard notice. Inside the database nothing outranks a superuser",
)
def test_superuser_disables_guard_with_dynamic_sql(arena: Arena) -> None:
    arena.attempt(
        [
            "DO $$ DECLARE r record; BEGIN FOR r IN SELECT evtname FROM pg_event_trigger LOOP "
            "EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', r.evtname); END LOOP; "
            "EXECUTE 'ALTER TABLE parent DISABLE TRIGGER USER'; END $$",
            "DELETE FROM parent WHERE id = 2",
        ],
        who="super",
    )


def test_machinery_intact_after_refused_tampering(arena: Arena) -> None:
    """What a refused attempt leaves: the machinery exactly as installed."""
    machinery = arena.machinery()
    arena.attack(["ALTER TABLE parent DISABLE TRIGGER ALL"])
    assert arena.machinery() == machinery
    assert {t[2] for t in machinery["triggers"] if t[1].startswith("zz_softguard")} == {"A"}
    assert {e[1] for e in machinery["event triggers"]} == {"A"}


# -- the proxy's name check, without a server ------------------------------------------------

NAMED = [
    "ALTER EVENT TRIGGER softguard_capture_tamper_ddl DISABLE",
    f"ALTER EVENT TRIGGER {uident('softguard_capture_install')} ENABLE REPLICA",
    f"DROP EVENT TRIGGER {uident('softguard_capture_sql_drop')}",
    f"ALTER EVENT TRIGGER {uident('softguard_capture_ddl_end')} RENAME TO x",
    f"ALTER EVENT TRIGGER {uident('softguard_capture_tamper_drop')} OWNER TO nobody",
    f"ALTER TABLE parent DISABLE TRIGGER {uident(TRIGGER)}",
    "ALTER TABLE parent DISABLE TRIGGER U&\"!007a!007a_softguard_capture_delete\" UESCAPE '!'",
    f"SELECT * FROM {uident('softguard')}.operations",
    "SELECT E'\\163oftguard.operations'::regclass",
    "SELECT U&'\\0073oftguard_quarantine.t'::regclass",
    "DROP TABLE softguard_rows.c12",
    'TRUNCATE "softguard_rows"."c12"',
]
NOT_NAMED = [
    "SELECT 1",
    "SELECT E'a\\nb', U&'caf\\00e9'",
    "SELECT softguard_notes FROM t",
    "SELECT softguard_rowsy FROM softguard_rows_archive",
    "ALTER TABLE parent DISABLE TRIGGER my_trigger",
]


@pytest.mark.parametrize("text", NAMED)
def test_proxy_sees_softguard_names_in_every_spelling(text: str) -> None:
    assert mentions_softguard(text.encode())


@pytest.mark.parametrize("text", NOT_NAMED)
def test_proxy_name_check_leaves_other_text_alone(text: str) -> None:
    assert not mentions_softguard(text.encode())
