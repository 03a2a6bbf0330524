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
from support.pg import build_dsn

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


# -- the kept server's user mappings (ledger 14, decision 0043) ---------------------------
# A DROP SERVER ... CASCADE now drops the server's mappings, each recorded with its
# options (a password, here) in softguard.kept_mappings for undo. The application's role
# (the server's owner: pg_user_mappings shows it PUBLIC's options, never another role's)
# tries to read them back through the ledger, to forge a record so that undo makes a
# mapping of its choosing, to switch the table's protection off, or to replay a record.
SECRET = "pw-of-the-other-role"
LEDGER_READS = {
    "kept_mappings": "SELECT * FROM softguard.kept_mappings",
    "restore_plan": "SELECT restore FROM softguard.operations",
    "undo_lines": "SELECT * FROM softguard.undo_steps({op}, NULL, false, 'fail')",
    "keep_mappings_call": "SELECT softguard._keep_mappings({op}, {srv})",
    "undo_mapping_call": "SELECT softguard._undo_mapping({op}, '{{}}')",
}
LEDGER_WRITES = {
    "forge_row": "INSERT INTO softguard.kept_mappings VALUES ({op}, {srv}, {me}, 'me',"
    " '{{user=me,password=mine}}')",
    "rewrite_row": "UPDATE softguard.kept_mappings SET umuser = {me}",
    "grant_read": "GRANT SELECT ON softguard.kept_mappings TO PUBLIC",
    "guard_off": "ALTER TABLE softguard.kept_mappings DISABLE TRIGGER guard_ledger",
    "forget_off": "ALTER TABLE softguard.operations DISABLE TRIGGER forget_mappings",
    # a list naming the other role's mapping alone: what _quarantine would record of it
    "forged_list": "SELECT softguard._quarantine(jsonb_build_array(jsonb_build_object("
    "'classid', 'pg_user_mapping'::regclass::oid, 'objid', (SELECT umid FROM pg_user_mappings"
    " WHERE usename <> 'public' LIMIT 1), 'objsubid', 0, 'original', true, 'normal', false,"
    " 'is_temporary', false, 'object_type', 'user mapping', 'object_identity', 'x')),"
    " 'DROP USER MAPPING', '{{}}', current_user)",
}


def _kept_with_secret(arena: Arena) -> tuple[int, int]:
    """The other role's mapping given a password, then the owner's DROP SERVER ... CASCADE
    through softguard: (operation, server oid)."""
    setup(arena)
    arena.direct(f"ALTER USER MAPPING FOR \"{arena.other}\" SERVER srv"
                 f" OPTIONS (ADD password '{SECRET}')")  # fmt: skip
    (srv,) = arena.direct("SELECT oid FROM pg_foreign_server WHERE srvname = 'srv'")[0]
    last = arena.last_op()
    out = arena.attack([CASCADE])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    return op, int(srv)


@pytest.mark.parametrize("who", ["owner", "other"])
@pytest.mark.parametrize("name", sorted({**LEDGER_READS, **LEDGER_WRITES}))
def test_no_role_reads_forges_or_unguards_a_kept_mapping(arena: Arena, name: str, who: str) -> None:
    """Directly (not through softguard, which refuses what names its schemas anyway), as
    the application's role and as the mapped role: each attempt is refused (42501 or
    softguard's 0A000), the record and the ledger unchanged; the password is nowhere in
    the operation's row, which `softguard grant --ops` lets a role read."""
    op, srv = _kept_with_secret(arena)
    row = arena.direct("SELECT restore::text || objects::text || statement FROM"
                       " softguard.operations WHERE id = %s", [op])  # fmt: skip
    assert SECRET not in row[0][0]
    record = arena.direct("SELECT * FROM softguard.kept_mappings ORDER BY umuser")
    assert [r[3] for r in record] == [arena.other] and SECRET in str(record[0][4])
    me = arena.direct("SELECT oid FROM pg_roles WHERE rolname = %s", [arena.role(who)])[0][0]
    stmt = {**LEDGER_READS, **LEDGER_WRITES}[name].format(op=op, srv=srv, me=me)
    out = arena.attack([stmt], who, via="direct")
    assert out.sqlstate in ("42501", "0A000"), out.describe()
    assert arena.direct("SELECT * FROM softguard.kept_mappings ORDER BY umuser") == record
    assert arena.direct(
        "SELECT tgenabled FROM pg_trigger WHERE tgname IN ('guard_ledger', 'forget_mappings')"
        " AND tgrelid IN ('softguard.kept_mappings'::regclass, 'softguard.operations'::regclass)"
        " ORDER BY tgrelid, tgname") == [("A",), ("A",), ("A",)]  # fmt: skip
    assert arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op]) == [
        ("active",)
    ]


def test_a_role_made_again_under_the_mapped_name_gets_no_credentials(arena: Arena) -> None:
    """The mapped role can be dropped now, as directly. A role made afterwards under its
    name (CREATEROLE is enough) is another role: undo makes no mapping for it (the record
    names the role by oid), says so, gives back the rest, and keeps no password after."""
    tag = arena.db[-8:]
    victim, maker = f"atk_victim_{tag}", f"atk_maker_{tag}"
    arena.direct(f"CREATE ROLE {victim}")
    arena.direct(f"CREATE ROLE {maker} LOGIN CREATEROLE")
    try:
        setup(arena)
        arena.direct(f"CREATE USER MAPPING FOR {victim} SERVER srv"
                     f" OPTIONS (user 'v', password '{SECRET}')")  # fmt: skip
        more, last = extras(arena), arena.last_op()
        out = arena.attack([CASCADE])
        assert out.error is None, out.describe()
        (op,) = [o["id"] for o in arena.ops_since(last)]
        arena.direct(f"DROP ROLE {victim}")  # its mapping went with the server, as directly
        as_maker = build_dsn(arena.server.host, arena.server.port, arena.db, maker, None)
        with psycopg.connect(as_maker, autocommit=True) as c:
            c.execute(f"CREATE ROLE {victim}".encode())
        r = arena.cli("undo", str(op), "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"user mapping for role {victim} on server srv not made again" in r.stdout
        assert extras(arena)["servers"] == [s for s in more["servers"] if s[3] != victim]
        assert arena.direct("SELECT count(*) FROM softguard.kept_mappings") == [(0,)]
        # replayed: the operation is undone, its record gone; nothing is made twice
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="already undone"):
            arena.direct(f"SELECT * FROM softguard.undo_op({op})")
        assert extras(arena)["servers"] == [s for s in more["servers"] if s[3] != victim]
    finally:
        arena.direct(f"DROP USER MAPPING IF EXISTS FOR {victim} SERVER srv")
        arena.direct(f"DROP ROLE IF EXISTS {victim}")
        arena.direct(f"DROP ROLE IF EXISTS {maker}")
