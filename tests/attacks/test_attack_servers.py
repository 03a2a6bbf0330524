"""Attacks on what ledger version 12 (section langsrv) added, as the application's role
through softguard: DROP SERVER is kept (decision 0036, since then), the server renamed
softguard_q<id>_<name> in place and given to softguard_keeper, its USAGE grants revoked.
A superuser made the server and gave it to the owner (through softguard CREATE SERVER is
refused, category remote); the owner's foreign table on it is kept by DROP SCHEMA, after
which, directly, the server can be dropped. The attacker tries to get the kept server
back into use, or lost for good while its foreign table is kept. Each attempt gets the
arena's verdict (refused with everything intact, or recorded and undone exactly), on a
snapshot that also holds the servers, their grants and user mappings, and the foreign
tables.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, Outcome, fixtures

arena_template, arena = fixtures()

WRAPPER = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = 'sg_w')"
    " THEN CREATE FOREIGN DATA WRAPPER sg_w; END IF; END $$"
)
OWNER_SETUP = ["CREATE FOREIGN TABLE fs.ft (id int, x text) SERVER srv"]
KEEP_USERS = ["DROP SCHEMA fs CASCADE"]  # then only a kept object uses the server
# CASCADE: the other role's user mapping goes with the server (directly too)
DROP = CASCADE = "DROP SERVER srv CASCADE"


def extras(arena: Arena) -> dict[str, Any]:
    """What the arena's snapshot leaves out: servers (owner, grants), user mappings,
    foreign tables and the server each uses, and the schemas."""
    return {
        "servers": arena.direct(
            "SELECT s.srvname, s.srvowner::regrole::text, coalesce(s.srvacl::text, ''),"
            " coalesce(m.umuser::regrole::text, ''), coalesce(m.umoptions::text, '')"
            " FROM pg_foreign_server s LEFT JOIN pg_user_mapping m ON m.umserver = s.oid"
            " ORDER BY 1, 4"
        ),
        "foreign tables": arena.direct(
            "SELECT f.ftrelid::regclass::text, s.srvname FROM pg_foreign_table f"
            " JOIN pg_foreign_server s ON s.oid = f.ftserver ORDER BY 1"
        ),
        "schemas": arena.direct(
            "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' ORDER BY 1"
        ),
    }


def setup(arena: Arena) -> None:
    arena.direct(WRAPPER)
    arena.direct("CREATE SERVER srv FOREIGN DATA WRAPPER sg_w")
    arena.direct(f'ALTER SERVER srv OWNER TO "{arena.owner}"')
    arena.direct(f'GRANT USAGE ON FOREIGN SERVER srv TO "{arena.other}"')
    arena.direct(f"CREATE USER MAPPING FOR \"{arena.other}\" SERVER srv OPTIONS (user 'o')")
    arena.direct(f'CREATE SCHEMA fs AUTHORIZATION "{arena.owner}"')
    with arena.connect("owner", via="direct") as c:
        for s in OWNER_SETUP:
            c.execute(s.encode())


def attempt(arena: Arena, steps: list[Any], who: str = "owner") -> Outcome:
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack(steps, who)
    arena.verdict(before, last, out)
    assert extras(arena) == more
    return out


def kept_server(c: psycopg.Connection[Any]) -> str:
    """The kept server's name, found in pg_foreign_server as any role can."""
    row = c.execute(
        b"SELECT quote_ident(srvname) FROM pg_foreign_server"
        b" WHERE srvname ~ '^softguard_q[0-9]+_' ORDER BY oid DESC LIMIT 1"
    ).fetchone()
    assert row is not None, "no server in quarantine"
    return str(row[0])


def _on_kept(template: str, do_block: bool = False) -> Any:
    """A step running `template` with {k} the kept server (in a DO block: unseen by the
    proxy's policy, PostgreSQL's privileges alone decide)."""

    def step(c: psycopg.Connection[Any]) -> None:
        stmt = template.format(k=kept_server(c))
        if do_block:
            stmt = f"DO $d$ BEGIN EXECUTE $q${stmt}$q$; END $d$"
        c.execute(stmt.encode())

    return step


ATTACKS: dict[str, list[Any]] = {
    # the kept server renamed back by its former owner (the proxy refuses ALTER SERVER:
    # category remote; in a DO block PostgreSQL does: softguard_keeper owns it)
    "rename_back": [*KEEP_USERS, DROP, _on_kept("ALTER SERVER {k} RENAME TO srv")],
    "rename_back_in_do": [*KEEP_USERS, DROP, _on_kept("ALTER SERVER {k} RENAME TO srv", True)],
    "owner_back_in_do": [
        *KEEP_USERS,
        DROP,
        _on_kept("ALTER SERVER {k} OWNER TO CURRENT_USER", True),
    ],
    # USAGE given again, to the other role
    "regrant_usage": [*KEEP_USERS, DROP, _on_kept("GRANT USAGE ON FOREIGN SERVER {k} TO PUBLIC")],
    # a new foreign table on it, for purge's CASCADE to take along
    "new_foreign_table": [
        *KEEP_USERS,
        DROP,
        _on_kept("CREATE FOREIGN TABLE grab (id int) SERVER {k}"),
    ],
    # a user mapping on it (the proxy refuses CREATE USER MAPPING: in a DO block)
    "user_mapping_in_do": [
        *KEEP_USERS,
        DROP,
        _on_kept("CREATE USER MAPPING FOR CURRENT_USER SERVER {k}", True),
    ],
    "drop_user_mapping_in_do": [
        *KEEP_USERS,
        DROP,
        _on_kept("DROP USER MAPPING FOR PUBLIC SERVER {k}", True),
    ],
    # the kept server dropped again, through softguard and in a DO block
    "drop_kept": [*KEEP_USERS, DROP, _on_kept("DROP SERVER {k} CASCADE")],
    "drop_kept_in_do": [*KEEP_USERS, DROP, _on_kept("DROP SERVER {k} CASCADE", True)],
    # the CASCADE in a DO block once only the kept foreign table uses it: PostgreSQL
    # would take the kept table; the quarantine's guard refuses
    "do_block_cascade_into_quarantine": [*KEEP_USERS, f"DO $$ BEGIN EXECUTE '{CASCADE}'; END $$"],
    # the plain ones: kept, undone by the verdict
    "after_the_schema": [*KEEP_USERS, DROP],
    "plain_cascade": [CASCADE],  # the live foreign table kept with it
}

EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "after_the_schema": (None, None),
    "do_block_cascade_into_quarantine": (1, "42501"),
    "drop_kept": (2, "42501"),
    "drop_kept_in_do": (2, "42501"),
    "drop_user_mapping_in_do": (2, "42501"),
    "new_foreign_table": (2, "42501"),
    "owner_back_in_do": (2, "42501"),
    "plain_cascade": (None, None),
    "regrant_usage": (2, "42501"),
    "rename_back": (2, "42501"),
    "rename_back_in_do": (2, "42501"),
    "user_mapping_in_do": (2, "42501"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_kept_servers_are_never_lost_nor_used(arena: Arena, name: str) -> None:
    out = attempt(arena, ATTACKS[name])
    assert (out.failed_step, out.sqlstate) == EXPECTED[name], out.describe()


def test_a_second_role_cannot_drop_the_owners_server(arena: Arena) -> None:
    """The second role has USAGE but owns nothing: its DROP is refused by PostgreSQL
    (must be owner), before softguard keeps anything."""
    out = attempt(arena, [CASCADE], who="other")
    assert (out.failed_step, out.sqlstate) == (0, "42501"), out.describe()


def test_undo_and_purge_of_a_server_in_a_bad_order_change_nothing(arena: Arena) -> None:
    """The foreign table kept first (DROP SCHEMA), then its server: undo of the schema
    first would give back a foreign table on a kept server, purge of the server first
    would take the kept foreign table: both are refused (55006) and change nothing; in
    the right order both go through."""
    setup(arena)
    before, more, last = arena.snapshot(), extras(arena), arena.last_op()
    out = arena.attack([*KEEP_USERS, DROP])
    assert out.error is None, out.describe()
    schema, tie = [o["id"] for o in arena.ops_since(last)]
    r = arena.cli("undo", str(schema), "--yes")
    assert r.returncode != 0 and f"held by operation {tie}" in r.stdout + r.stderr, r.stdout
    with pytest.raises(psycopg.errors.ObjectInUse, match=f"held by operation {schema}"):
        arena.direct(f"SELECT softguard.purge_op({tie})")
    states = arena.direct(
        "SELECT state FROM softguard.operations WHERE id > %s ORDER BY id", [last]
    )
    assert states == [("active",)] * 2
    r = arena.undo([schema, tie])
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    assert extras(arena) == more


def test_a_server_made_again_makes_undo_wait(arena: Arena) -> None:
    """After the DROP the name is free, as directly: a superuser makes the server again.
    Undo then refuses (42710, nothing changed) and, under another name, gives the kept
    server back with its owner, grants and mapping."""
    setup(arena)
    more, last = extras(arena), arena.last_op()
    out = arena.attack([CASCADE])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    arena.direct("CREATE SERVER srv FOREIGN DATA WRAPPER sg_w")
    with pytest.raises(psycopg.errors.DuplicateObject, match="already exists"):
        arena.direct(f"SELECT * FROM softguard.undo_op({op})")
    assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
        ("active",)
    ]
    arena.direct(f"SELECT * FROM softguard.undo_op({op}, 'srv_back')")
    (was,) = more["servers"]
    assert extras(arena)["servers"] == [
        ("srv", arena.direct("SELECT current_user")[0][0], "", "", ""),
        ("srv_back", *was[1:]),
    ]
