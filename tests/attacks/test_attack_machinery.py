"""Issue 10 item 2: the table's owner (or a superuser) removes the capture machinery.

Each attack disables, drops, renames or sidelines softguard's triggers or event triggers,
then destroys something. What must hold: the tampering is refused, or what follows is
still refused or recorded and undone exactly; a DROP never answers "DROP TABLE" for work
it did not do.
"""

from __future__ import annotations

import pytest
from attacker import Arena, fixtures, uident

arena_template, arena = fixtures()

TRIGGER = "zz_softguard_capture_delete"

OWNER_TAMPERING = {
    "disable_user": (["ALTER TABLE parent DISABLE TRIGGER USER"], True),
    "disable_named": ([f"ALTER TABLE parent DISABLE TRIGGER {TRIGGER}"], True),
    "disable_uident": ([f"ALTER TABLE parent DISABLE TRIGGER {uident(TRIGGER)}"], True),
    "rename_then_disable": (
        [
            f"ALTER TRIGGER {uident(TRIGGER)} ON parent RENAME TO plain",
            "ALTER TABLE parent DISABLE TRIGGER plain",
        ],
        True,
    ),
    "drop_trigger": ([f"DROP TRIGGER {uident(TRIGGER)} ON parent"], True),
    "enable_replica": ([f"ALTER TABLE parent ENABLE REPLICA TRIGGER {uident(TRIGGER)}"], True),
    "disable_in_do": (
        [
            "DO $$ BEGIN EXECUTE format('ALTER TABLE parent DISABLE TRIGGER %I', "
            "concat('zz_soft', 'guard_capture_delete')); END $$"
        ],
        True,
    ),
    "disable_all": (["ALTER TABLE parent DISABLE TRIGGER ALL"], False),  # system triggers:
    # PostgreSQL itself refuses this to a non-superuser
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            k,
            marks=[
                pytest.mark.xfail(
                    strict=True,
                    reason=f"issue 10 item 2: '{k}' passes as allowed; the DELETE after it "
                    "is lost silently",
                )
            ]
            if OWNER_TAMPERING[k][1]
            else [],
        )
        for k in sorted(OWNER_TAMPERING)
    ],
)
def test_owner_cannot_silence_delete_capture(arena: Arena, name: str) -> None:
    arena.attempt([*OWNER_TAMPERING[name][0], "DELETE FROM parent WHERE id = 1"])


@pytest.mark.xfail(
    strict=True,
    reason="issue 10 item 2: the TRUNCATE capture trigger can be "
    "disabled by the owner; TRUNCATE then keeps nothing",
)
def test_owner_cannot_silence_truncate_capture(arena: Arena) -> None:
    arena.attempt(
        [
            f"ALTER TABLE big DISABLE TRIGGER {uident('zz_softguard_capture_truncate')}",
            "TRUNCATE big",
        ]
    )


@pytest.mark.xfail(
    strict=True,
    reason="issue 10 item 2: the owner drops the capture trigger "
    "of a table another role deletes from; that role's DELETE is lost",
)
def test_owner_drops_capture_then_other_role_deletes(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([f"DROP TRIGGER {uident(TRIGGER)} ON big"])
    out2 = arena.attack(["DELETE FROM big WHERE id < 30"], who="other")
    arena.verdict(before, last, out if out.error else out2)


@pytest.mark.xfail(
    strict=True,
    reason="issue 10 item 2: a superuser sets "
    "session_replication_role = replica; DELETEs are not captured",
)
@pytest.mark.parametrize(
    "how",
    [
        "SET session_replication_role = replica",
        "SELECT set_config('session_replication_role', 'replica', false)",
    ],
)
def test_superuser_cannot_use_replica_mode(arena: Arena, how: str) -> None:
    arena.attempt([how, "DELETE FROM parent WHERE id = 3"], who="super")


@pytest.mark.parametrize("how", ["alter_disable", "drop", "replica"])
@pytest.mark.parametrize(
    "destroy",
    ["DROP TABLE big", "ALTER TABLE parent DROP COLUMN name", "DROP SCHEMA public CASCADE"],
)
def test_superuser_cannot_disable_event_triggers(arena: Arena, how: str, destroy: str) -> None:
    """Today the tampering passes but drop_op notices its trigger did not fire and refuses."""
    before, last = arena.snapshot(), arena.last_op()
    names = [r[0] for r in arena.direct("SELECT evtname FROM pg_event_trigger")]
    tamper = {
        "alter_disable": [f"ALTER EVENT TRIGGER {uident(n)} DISABLE" for n in names],
        "drop": [f"DROP EVENT TRIGGER {uident(n)}" for n in names],
        "replica": [f"ALTER EVENT TRIGGER {uident(n)} ENABLE REPLICA" for n in names],
    }[how]
    out = arena.attack([*tamper, destroy], who="super")
    arena.verdict(before, last, out)


@pytest.mark.xfail(
    strict=True,
    reason="issue 10 item 2: a superuser drops the capture "
    "function's trigger on every table through a DO block",
)
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


def test_machinery_intact_after_refused_tampering(arena: Arena) -> None:
    """What a refused attempt leaves: the machinery exactly as installed."""
    machinery = arena.machinery()
    arena.attack(["ALTER TABLE parent DISABLE TRIGGER ALL"])
    assert arena.machinery() == machinery
