"""Attacks on what ledger version 12 (section fidmat) added, as the application's role
through softguard: DROP TYPE / DOMAIN ... CASCADE that reaches materialized views and rules
reading a column it keeps (decision 0035). The materialized views are recorded, dropped
and re-made (then refreshed) by undo; the rules are recorded, dropped and re-created. The
attacker tries to use that path to lose data for good, or to have its own code run with
softguard's rights when undo re-makes and refreshes a view. Each attempt gets the arena's
verdict (refused with everything intact, or recorded and undone exactly), on a snapshot
that also holds every materialized view's owner, privileges and indexes and every rule.

softguard's names are built at run time ('soft' || 'guard.'), as in test_attack_v9.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from attacker import Arena, Outcome, fixtures

arena_template, arena = fixtures()

SG = "'soft' || 'guard.'"

SETUP = [
    "CREATE DOMAIN mid AS int CHECK (VALUE > 0)",
    "CREATE TABLE mk (id int PRIMARY KEY, note text, d mid)",
    "INSERT INTO mk VALUES (1, 'a', 1), (2, 'b', 2)",
    "CREATE TABLE mk_log (id int, d int)",
    "CREATE TABLE mk_side (id int)",
    "CREATE MATERIALIZED VIEW mk_mv AS SELECT id, d FROM mk",
    "CREATE UNIQUE INDEX mk_mv_id ON mk_mv (id)",
    "CREATE MATERIALIZED VIEW mk_other AS SELECT id, note FROM mk",  # reads no kept column
    "CREATE RULE mk_r AS ON INSERT TO mk_side DO ALSO"
    " INSERT INTO mk_log SELECT id, d FROM mk WHERE id = NEW.id",
]
DROP = "DROP DOMAIN mid CASCADE"

# The application's function in a materialized view's query: if undo ran it with
# softguard's rights (the superuser that installed the ledger), it would make the
# application's role a superuser. REFRESH runs it as the view's owner.
ESCALATE = """
CREATE FUNCTION mk_f(i int) RETURNS int LANGUAGE plpgsql AS $f$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('ALTER ROLE %I SUPERUSER', '{owner}');
    END IF;
    RETURN i;
END $f$"""


def extras(arena: Arena) -> dict[str, Any]:
    """What the new path keeps besides data, which the arena's snapshot leaves out."""
    return {
        "matviews": arena.direct(
            "SELECT c.relname, c.relowner::regrole::text, c.relacl::text, c.relispopulated,"
            " pg_get_viewdef(c.oid)"
            " FROM pg_class c WHERE c.relkind = 'm' AND c.relnamespace = 'public'::regnamespace"
            " ORDER BY 1"
        ),
        "indexes": arena.direct(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ),
        "rules": arena.direct(
            "SELECT tablename, rulename, definition FROM pg_rules WHERE schemaname = 'public'"
            " ORDER BY 1, 2"
        ),
        "superusers": arena.direct(
            "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname LIKE 'atk%' ORDER BY 1"
        ),
    }


def setup(arena: Arena, more: list[str] | None = None) -> None:
    with arena.connect("owner", via="direct") as c:
        for s in [*SETUP, *(more or [])]:
            c.execute(s.encode())


def attempt(arena: Arena, steps: list[Any], more: list[str] | None = None) -> Outcome:
    """Set up, attack, then the arena's verdict, with the materialized views, indexes,
    rules and superusers compared as well."""
    setup(arena, more)
    before, kept, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(steps)
    arena.direct("DROP FUNCTION IF EXISTS wipe_mid()")
    arena.verdict(before, last, out)
    assert extras(arena) == kept
    return out


ATTACKS: dict[str, list[Any]] = {
    # the plain DROP: kept, undone exactly by the verdict
    "plain": [DROP],
    # the same DROP hidden in a DO block: the backstop refuses it
    "do_block": [f"DO $$ BEGIN EXECUTE '{DROP}'; END $$"],
    # the same DROP in a function of its own
    "function": [
        f"CREATE FUNCTION wipe_mid() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN {DROP}; END $f$",
        "SELECT wipe_mid()",
    ],
    # the same DROP, prepared (extended protocol): kept as the simple one
    "prepared": [lambda c: c.execute(DROP.encode(), prepare=True)],
    # the DROP recorded a materialized view's re-making in this transaction: another
    # materialized view dropped in a DO block of the same transaction gains nothing from it
    "other_matview_dropped_in_the_transaction": [
        "BEGIN",
        DROP,
        "DO $$ BEGIN DROP MATERIALIZED VIEW mk_other; END $$",
    ],
    # softguard's probe mode switched on by the session, to look like drop_op's own probe
    "probe_mode_forged": [
        "SELECT set_config('soft' || 'guard.probe', 'on', false)",
        "DO $$ BEGIN DROP MATERIALIZED VIEW mk_other; END $$",
    ],
    # the backstop's mark looked for in the wrong place: a DROP of the same transaction
    # recorded, then the application's own DROP of a view it re-made names
    "matview_dropped_after_the_drop_in_a_function": [
        "BEGIN",
        DROP,
        "CREATE FUNCTION wipe_mid() RETURNS void LANGUAGE plpgsql AS"
        " $f$ BEGIN DROP MATERIALIZED VIEW mk_other; END $f$",
        "SELECT wipe_mid()",
    ],
    # another materialized view refreshed meanwhile: nothing kept depends on it
    "refresh_matview_after_the_drop": [DROP, "REFRESH MATERIALIZED VIEW mk_other"],
    # softguard's helpers called directly: not executable
    "remake_step_called_directly": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_remake_step(1, ''mk_mv''::regclass,"
        " ''[]'')'; END $$"
    ],
    "undo_remake_called_directly": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_undo_remake(1, ''{{\"def\": \"SELECT 1\","
        " \"relname\": \"x\", \"schema_oid\": 2200, \"deps\": []}'')'; END $$"
    ],
    # _quarantine (PUBLIC) called directly with the probe's own list
    "quarantine_called_directly": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_quarantine(' || {SG} || '_probe(''{DROP}''),"
        f" ''x'', ''{{}}'', current_user::text)'; END $$"
    ],
}

# How each ends: (the step that failed, its SQLSTATE), (None, None) when all ran.
EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "do_block": (0, "0A000"),
    "function": (1, "0A000"),
    "other_matview_dropped_in_the_transaction": (2, "0A000"),
    "matview_dropped_after_the_drop_in_a_function": (3, "0A000"),
    "probe_mode_forged": (1, "SGPRB"),  # the probe always ends rolled back
    "plain": (None, None),
    "prepared": (None, None),
    "quarantine_called_directly": (0, "0A000"),
    "refresh_matview_after_the_drop": (None, None),
    "remake_step_called_directly": (0, "42501"),
    "undo_remake_called_directly": (0, "42501"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_matviews_and_rules_are_never_lost(arena: Arena, name: str) -> None:
    out = attempt(arena, ATTACKS[name])
    assert (out.failed_step, out.sqlstate) == EXPECTED[name], out.describe()


def test_refresh_at_undo_runs_as_the_views_owner(arena: Arena) -> None:
    """A materialized view whose query calls the application's function: undo re-makes it
    WITH NO DATA (nothing of the query runs) and refreshes it, which PostgreSQL runs as the
    view's owner. The function, which would make its role a superuser if it ran as one,
    finds the application's role and changes nothing."""
    more = [
        ESCALATE.format(owner=arena.owner),
        "CREATE MATERIALIZED VIEW mk_mvf AS SELECT id, mk_f(d) AS fd FROM mk",
    ]
    out = attempt(arena, [DROP, "SELECT to_regclass('mk_mvf')"], more)
    assert out.error is None and out.results[-1] == [(None,)], out.describe()
    assert arena.direct(
        "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [arena.owner]
    ) == [(False,)]


def test_a_second_roles_matview_comes_back_to_it(arena: Arena) -> None:
    """Another role's materialized view reading the column: PostgreSQL's CASCADE takes it
    whoever owns it; re-made, it goes back to that role with its privileges, and is
    refreshed as that role."""
    setup(arena)
    arena.direct(
        f'GRANT SELECT ON public.mk TO "{arena.other}";'
        "CREATE MATERIALIZED VIEW public.other_mv AS SELECT id, d FROM public.mk;"
        f' ALTER MATERIALIZED VIEW public.other_mv OWNER TO "{arena.other}";'
        f' GRANT SELECT ON public.other_mv TO "{arena.owner}"'
    )
    before, kept, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack([DROP, "SELECT to_regclass('other_mv')"])
    assert out.error is None and out.results[-1] == [(None,)], out.describe()
    arena.verdict(before, last, out)
    assert extras(arena) == kept


def test_names_taken_since_make_undo_wait(arena: Arena) -> None:
    """A table under the dropped materialized view's name, an index under its index's name
    and a rule under the dropped rule's name, made after the DROP: undo refuses (nothing
    changes) until each is gone, then gives back exactly what was there."""
    setup(arena)
    before, kept, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(
        [
            DROP,
            "CREATE TABLE mk_mv (x int)",
            "CREATE INDEX mk_mv_id ON mk_log (id)",
            "CREATE RULE mk_r AS ON INSERT TO mk_side DO ALSO NOTHING",
        ]
    )
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    for blocker in ("DROP TABLE mk_mv", "DROP INDEX mk_mv_id", "DROP RULE mk_r ON mk_side"):
        r = arena.undo([op])
        assert r.returncode != 0 and "already exists" in r.stdout + r.stderr, r.stdout + r.stderr
        assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
            ("active",)
        ]
        arena.direct(blocker)
    r = arena.undo([op])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    assert extras(arena) == kept


def test_a_rule_added_since_does_not_divert_undo(arena: Arena) -> None:
    """After the DROP the application puts rules of its own on the table whose column undo
    gives back, to turn undo's writes into nothing or into writes elsewhere: undo writes
    the values back all the same, and writes nothing else."""
    setup(arena)
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            DROP,
            "CREATE RULE mk_nothing AS ON UPDATE TO mk DO INSTEAD NOTHING",
            "CREATE RULE mk_copy AS ON INSERT TO mk DO ALSO INSERT INTO mk_log VALUES (NEW.id, 0)",
        ]
    )
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    r = arena.undo([op])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.direct("SELECT id, d FROM mk ORDER BY 1") == [(1, 1), (2, 2)]
    arena.direct("DROP RULE mk_nothing ON mk; DROP RULE mk_copy ON mk")
    assert arena.snapshot() == before
