"""Attacks on what ledger version 11 (section fidview) added, as the application's role
through softguard: DROP TYPE / DOMAIN ... CASCADE that reaches row-level security policies
and views reading the columns it keeps (decision 0029, "Since then"). The policies are
recorded and dropped, the views kept in quarantine with their query set aside; the
attacker tries to use that path to lose one of them for good. Each attempt gets the
arena's verdict (refused with everything intact, or recorded and undone exactly), on a
snapshot that also holds every policy and every view's owner, options and privileges.

softguard's names are built at run time ('soft' || 'guard.'), as in test_attack_v9.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, Outcome, fixtures

arena_template, arena = fixtures()

SG = "'soft' || 'guard.'"

SETUP = [
    "CREATE DOMAIN did AS int CHECK (VALUE > 0)",
    "CREATE TABLE dk (id int PRIMARY KEY, note text, d did)",
    "INSERT INTO dk VALUES (1, 'a', 1), (2, 'b', 2)",
    "ALTER TABLE dk ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY dk_pos ON dk AS RESTRICTIVE FOR SELECT USING (d > 0)",
    "CREATE POLICY dk_all ON dk USING (true)",
    "CREATE TABLE dk_side (id int PRIMARY KEY)",
    "ALTER TABLE dk_side ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY dk_side_sub ON dk_side USING (EXISTS (SELECT FROM dk WHERE dk.d = dk_side.id))",
    "CREATE VIEW dk_v WITH (security_barrier) AS SELECT id, d FROM dk WHERE d > 0",
    "CREATE VIEW dk_v2 AS SELECT id FROM dk_v",
]
DROP = "DROP DOMAIN did CASCADE"


def quarantined(c: psycopg.Connection[Any], name: str) -> str:
    """The quarantine name of the kept view `name` (read through the proxy: pg_class is
    readable by every role, which is how an attacker finds it)."""
    row = c.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'softguard_quarantine'"
        f" AND c.relname LIKE 'op%\\_{name}' ORDER BY c.oid DESC LIMIT 1".encode()
    ).fetchone()
    assert row is not None, f"{name} is not in quarantine"
    return str(row[0])


def extras(arena: Arena) -> dict[str, Any]:
    """What the new path keeps besides data, which the arena's snapshot leaves out."""
    snap: dict[str, Any] = {}
    snap["policies"] = arena.direct(
        "SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check"
        " FROM pg_policies WHERE schemaname = 'public' ORDER BY 1, 2"
    )
    snap["views"] = arena.direct(
        "SELECT c.relname, c.relowner::regrole::text, c.relacl::text, c.reloptions::text"
        " FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace"
        " ORDER BY 1"
    )
    return snap


def snapshot(arena: Arena) -> dict[str, Any]:
    return {**arena.snapshot(), **extras(arena)}


def setup(arena: Arena) -> None:
    with arena.connect("owner", via="direct") as c:
        for s in SETUP:
            c.execute(s.encode())


def attempt(arena: Arena, steps: list[Any]) -> Outcome:
    """Set up, attack, remove the attacker's own helpers, then the arena's verdict and the
    policies and views compared as well."""
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(steps)
    arena.direct("DROP FUNCTION IF EXISTS wipe_did()")
    arena.verdict(before, last, out)
    assert extras(arena) == more
    return out


def _drop_kept_view(c: psycopg.Connection[Any]) -> None:
    c.execute(f"DROP VIEW {quarantined(c, 'dk_v')} CASCADE".encode())


def _replace_kept_view(c: psycopg.Connection[Any]) -> None:
    # the kept view's query is set aside: put something else in it before undo
    kept = quarantined(c, "dk_v")
    c.execute(f"CREATE OR REPLACE VIEW {kept} AS SELECT 1 AS id, NULL::int AS d".encode())


ATTACKS: dict[str, list[Any]] = {
    # the kept view, found in pg_class, dropped again (it belongs to softguard now)
    "drop_kept_view": [DROP, _drop_kept_view],
    # its set-aside query replaced, so that undo would give back the attacker's
    "replace_kept_view": [DROP, _replace_kept_view],
    # the same DROP hidden in a DO block: the backstop refuses it
    "do_block": [f"DO $$ BEGIN EXECUTE '{DROP}'; END $$"],
    # the same DROP in a function of its own
    "function": [
        f"CREATE FUNCTION wipe_did() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN {DROP}; END $f$",
        "SELECT wipe_did()",
    ],
    # the same DROP, prepared (extended protocol): kept as the simple one
    "prepared": [lambda c: c.execute(DROP.encode(), prepare=True)],
    # in a transaction, the policy's name taken and the new one dropped again
    "policy_name_reused_in_the_transaction": [
        "BEGIN",
        DROP,
        "CREATE POLICY dk_pos ON dk USING (true)",
        "DROP POLICY dk_pos ON dk",
        "COMMIT",
    ],
    # softguard's helper that sets the query aside, called directly: not executable
    "stub_called_directly": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_stub_view(''dk_v''::regclass, ''v'')'; END $$"
    ],
    # _quarantine (PUBLIC) called directly with the probe's own list: what the caller
    # could have dropped, recorded
    "quarantine_called_directly": [
        f"DO $$ BEGIN EXECUTE 'SELECT ' || {SG} || '_quarantine(' || {SG} || '_probe(''{DROP}''),"
        f" ''x'', ''{{}}'', current_user::text)'; END $$"
    ],
}


# How each ends: (the step that failed, its SQLSTATE), (None, None) when all ran. A plain
# DROP through softguard must pass (kept, then undone by the verdict), not be refused.
EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "do_block": (0, "0A000"),
    "drop_kept_view": (1, "42501"),
    "function": (1, "0A000"),
    "policy_name_reused_in_the_transaction": (None, None),
    "prepared": (None, None),
    "quarantine_called_directly": (0, "0A000"),  # the backstop: not drop_op's own
    "replace_kept_view": (1, "42501"),
    "stub_called_directly": (0, "42501"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_policies_and_views_are_never_lost(arena: Arena, name: str) -> None:
    out = attempt(arena, ATTACKS[name])
    assert (out.failed_step, out.sqlstate) == EXPECTED[name], out.describe()


def test_names_taken_since_make_undo_wait(arena: Arena) -> None:
    """A policy and a view created under the kept ones' names after the DROP: undo refuses
    (nothing changes) until they are gone, then gives back exactly what was there."""
    setup(arena)
    before, last = snapshot(arena), arena.last_op()
    out = arena.attack([DROP, "CREATE VIEW dk_v AS SELECT 1 AS id"])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    r = arena.undo([op])
    assert r.returncode != 0 and "already exists" in r.stdout + r.stderr, r.stdout + r.stderr
    assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
        ("active",)
    ]
    arena.direct("DROP VIEW dk_v")
    arena.direct("CREATE POLICY dk_pos ON dk USING (true)")
    r = arena.undo([op])
    assert r.returncode != 0 and "already exists" in r.stdout + r.stderr, r.stdout + r.stderr
    arena.direct("DROP POLICY dk_pos ON dk")
    r = arena.undo([op])
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(arena) == before


def test_a_second_roles_view_comes_back_to_it(arena: Arena) -> None:
    """Another role's view reading the column: PostgreSQL's CASCADE takes it whoever owns
    it; kept, it goes back to that role with its privileges."""
    setup(arena)
    arena.direct(
        "CREATE VIEW public.other_v AS SELECT id, d FROM public.dk;"
        f' ALTER VIEW public.other_v OWNER TO "{arena.other}";'
        f' GRANT SELECT ON public.other_v TO "{arena.owner}"'
    )
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack([DROP, "SELECT to_regclass('other_v')"])
    assert out.error is None and out.results[-1] == [(None,)], out.describe()
    arena.verdict(before, last, out)
    assert extras(arena) == more
