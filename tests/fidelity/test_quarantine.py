"""Issue 16 class 3: the quarantine leaves no trace a client can see or trip over.

A DROP through softguard keeps the objects in quarantine; those objects now belong to
softguard while kept, with the privileges roles had on them taken away and recorded
(30_drop.sql `_disown`), and undo gives both back (70_undo.sql `_undo_owner`). So, as after a
direct DROP: the owning role and every role granted something on the dropped objects can be
dropped (DROP ROLE, DROP OWNED BY, REASSIGN OWNED BY do not reach into the quarantine, and
no error names a kept object), and no role finds the kept objects in the
information_schema. Twins: the same statements directly on one database and through
softguard (as a non-superuser owner) on another."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.catalog_check import OWNED, check_dsn
from support.cli import run_cli
from support.pg import TestServer
from support.proxy import Target

PW = "quarantine-pw"

SCHEMA = """
CREATE SCHEMA {s};
CREATE TYPE {s}.span AS RANGE (subtype = int4);
CREATE TYPE {s}.pair AS (a int, b text);
CREATE DOMAIN {s}.pos AS int CHECK (VALUE > 0);
CREATE TABLE {s}.t (id serial PRIMARY KEY, x int GENERATED ALWAYS AS IDENTITY, v text,
                    r {s}.span);
CREATE INDEX t_v ON {s}.t (v);
CREATE FUNCTION {s}.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
CREATE AGGREGATE {s}.total(int) (SFUNC = int4pl, STYPE = int);
CREATE VIEW {s}.v AS SELECT id, v FROM {s}.t;
CREATE TABLE {s}.lone (id int PRIMARY KEY, note text);
CREATE SEQUENCE {s}.counter;
INSERT INTO {s}.t (v) VALUES ('a'), ('b');
INSERT INTO {s}.lone VALUES (1, 'one');
GRANT USAGE ON SCHEMA {s} TO {reader};
GRANT SELECT ON {s}.t, {s}.v TO {reader};
GRANT UPDATE (v) ON {s}.t TO {reader};
GRANT SELECT, INSERT ON {s}.lone TO {reader} WITH GRANT OPTION;
GRANT UPDATE (note) ON {s}.lone TO {reader};
GRANT USAGE ON SEQUENCE {s}.counter TO {reader};
GRANT EXECUTE ON ROUTINE {s}.total(int) TO {reader};
GRANT USAGE ON TYPE {s}.span TO {reader};
GRANT USAGE ON DOMAIN {s}.pos TO {reader};
"""

# What a role can find of the schema's objects in the information_schema.
VISIBLE = """
SELECT 'table', table_schema, table_name FROM information_schema.tables
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'softguard')
UNION ALL
SELECT 'column', table_name, column_name FROM information_schema.columns
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'softguard')
UNION ALL
SELECT 'routine', routine_schema, routine_name FROM information_schema.routines
 WHERE routine_schema NOT IN ('pg_catalog', 'information_schema', 'softguard')
UNION ALL
SELECT 'sequence', sequence_schema, sequence_name FROM information_schema.sequences
 WHERE sequence_schema NOT IN ('softguard')
UNION ALL
SELECT 'grant', table_name, privilege_type FROM information_schema.table_privileges
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'softguard')
UNION ALL
SELECT 'usage', object_name, privilege_type FROM information_schema.usage_privileges
 WHERE object_schema NOT IN ('pg_catalog', 'information_schema', 'softguard')
UNION ALL
SELECT 'schema', schema_name, NULL FROM information_schema.schemata
 WHERE schema_name NOT IN ('pg_catalog', 'information_schema', 'softguard', 'pg_toast')
ORDER BY 1, 2, 3
"""

# Owners and privileges of everything in the schema (undo must give back exactly these).
RIGHTS = """
SELECT 'rel', c.relname, c.relowner::regrole::text, c.relacl::text FROM pg_class c
 WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'col', c.relname || '.' || a.attname, NULL, a.attacl::text FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = %(s)s::regnamespace AND a.attacl IS NOT NULL
UNION ALL
SELECT 'proc', p.oid::regprocedure::text, p.proowner::regrole::text, p.proacl::text
  FROM pg_proc p WHERE p.pronamespace = %(s)s::regnamespace
UNION ALL
SELECT 'type', t.typname, t.typowner::regrole::text, t.typacl::text FROM pg_type t
 WHERE t.typnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'schema', n.nspname, n.nspowner::regrole::text, n.nspacl::text FROM pg_namespace n
 WHERE n.oid = %(s)s::regnamespace
ORDER BY 1, 2
"""

# What ties a role to a kept object (pg_shdepend: owner, privileges, policy roles, default
# privileges): DROP ROLE, DROP OWNED BY and REASSIGN OWNED BY follow exactly these rows.
# Once kept, an object is tied to softguard_keeper only.
HOLDERS = """
SELECT i.type, i.identity, s.deptype::text, s.refobjid::regrole::text
  FROM pg_shdepend s, LATERAL pg_identify_object(s.classid, s.objid, s.objsubid) i
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.refclassid = 'pg_authid'::regclass
   AND s.refobjid <> 'softguard_keeper'::regrole
   AND (coalesce(i.schema, '') ~ '^softguard_q' OR i.identity ~ '(^|[ ."])softguard_q')
ORDER BY 1, 2, 3, 4
"""

DROPS = {
    "tables": ["DROP TABLE {s}.lone", "DROP TABLE {s}.t CASCADE"],
    "objects": [
        "DROP VIEW {s}.v",
        "DROP SEQUENCE {s}.counter",
        "DROP AGGREGATE {s}.total(int)",
        "DROP TABLE {s}.t",
        "DROP TABLE {s}.lone",
        "DROP DOMAIN {s}.pos",
        "DROP TYPE {s}.span",
    ],
    "schema": ["DROP SCHEMA {s} CASCADE"],
}


@dataclass
class World:
    server: TestServer
    proxy: Target
    direct_db: str
    sg_db: str
    owner: str
    reader: str
    schema: str

    def dsn(self, db: str, user: str | None = None, through: bool = False) -> str:
        if through:
            return self.proxy.dsn(db, user, PW)
        if user is None:
            return self.server.superuser_dsn(db)
        return self.server.dsn(db, user, PW)

    def run(self, db: str, stmts: list[str], user: str | None = None) -> None:
        """As `user` (the superuser: None); the owner's statements on softguard's twin go
        through softguard."""
        through = db == self.sg_db and user == self.owner
        with psycopg.connect(self.dsn(db, user, through), autocommit=True) as c:
            for stmt in stmts:
                c.execute(stmt.format(s=self.schema, reader=self.reader).encode())

    def rows(self, db: str, query: str, user: str | None = None) -> list[tuple[Any, ...]]:
        """Directly (queries that name softguard's schemas, which softguard refuses)."""
        with psycopg.connect(self.dsn(db, user), autocommit=True) as c:
            return c.execute(query, {"s": self.schema}).fetchall()

    def ops(self) -> list[int]:
        return [int(r[0]) for r in self.rows(self.sg_db, "SELECT id FROM softguard.operations"
                                             " WHERE kind <> 'UNDO' ORDER BY id")]  # fmt: skip


@pytest.fixture
def world(pg_server: TestServer, proxy: Target, ledger_template: str) -> Iterator[World]:
    if proxy.is_direct:
        pytest.skip("about softguard's quarantine (SOFTGUARD_TEST_VIA=direct)")
    tag = uuid.uuid4().hex[:8]
    owner, reader = f"sg_qown_{tag}", f"sg_qread_{tag}"
    # softguard's twin: the ledger installed beforehand by a superuser (a copy of the
    # session's ledger template: the install done once, not per test)
    dbs = [pg_server.create_database(), pg_server.create_database(ledger_template)]
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(owner), sql.Literal(PW)))  # fmt: skip
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(reader), sql.Literal(PW)))  # fmt: skip
        for db in dbs:
            c.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(db), sql.Identifier(owner)))  # fmt: skip
    w = World(pg_server, proxy, dbs[0], dbs[1], owner, reader, "qs_" + tag)
    for db in dbs:
        w.run(db, [s for s in SCHEMA.split(";\n") if s.strip()], owner)
    try:
        yield w
        for db in dbs:  # issue 16 class 4, on both twins
            check_dsn(pg_server.superuser_dsn(db), "the quarantine test")
    finally:
        for db in dbs:
            pg_server.drop_database(db)
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            for role in (owner, reader):
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _drop_both(w: World, kind: str) -> None:
    for db in (w.direct_db, w.sg_db):
        w.run(db, DROPS[kind], w.owner)
    assert w.ops(), "softguard recorded nothing"
    assert w.rows(w.sg_db, HOLDERS) == []


@pytest.mark.parametrize("kind", list(DROPS))
def test_kept_objects_are_invisible_and_undo_gives_everything_back(world: World, kind: str) -> None:
    w = world
    before = w.rows(w.sg_db, RIGHTS)
    _drop_both(w, kind)
    for who in (w.owner, w.reader):
        assert w.rows(w.sg_db, VISIBLE, who) == w.rows(w.direct_db, VISIBLE, who), who
    for op in reversed(w.ops()):
        w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    assert w.rows(w.sg_db, RIGHTS) == before


@pytest.mark.parametrize("kind", list(DROPS))
def test_a_reader_of_dropped_objects_can_be_dropped(world: World, kind: str) -> None:
    """DROP ROLE of a role granted privileges only on what was dropped: PostgreSQL lets
    it go after a direct DROP, so it must after a DROP through softguard; undo then gives
    back the privileges of the roles that still exist, and says which it could not."""
    w = world
    _drop_both(w, kind)
    keep = (
        []
        if kind == "schema"
        else [  # what the DROPs left that the reader may use
            f"REVOKE ALL ON SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL ROUTINES IN SCHEMA {w.schema} FROM {w.reader}",
        ]
    )
    for db in (w.direct_db, w.sg_db):
        w.run(db, keep + [
            f"REVOKE ALL ON TYPE {w.schema}.{t} FROM {w.reader}"
            for t in ("span", "pos") if kind == "tables"
        ])  # fmt: skip
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(w.reader)))
    lines = []
    for op in reversed(w.ops()):
        lines += [r[0] for r in w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")]
    acls = " ".join(str(r[3]) for r in w.rows(w.sg_db, RIGHTS))
    assert "sg_qread" not in acls and w.owner in acls
    assert any("no longer exists" in line for line in lines), lines


@pytest.mark.parametrize("kind", list(DROPS))
def test_the_owner_can_be_dropped_and_undo_asks_for_it(world: World, kind: str) -> None:
    """REASSIGN OWNED BY and DROP OWNED BY the owner, then DROP ROLE: as after a direct
    DROP. The kept objects are softguard's, untouched; undo refuses until the owner
    exists again, then gives the objects back to it."""
    w = world
    _drop_both(w, kind)
    heir = w.reader
    for db in (w.direct_db, w.sg_db):
        w.run(db, [f"REASSIGN OWNED BY {w.owner} TO {heir}", f"DROP OWNED BY {w.owner}"])
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(w.owner)))
    op = w.ops()[-1]
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
        w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    assert f"role {w.owner}" in str(info.value) and "no longer exists" in str(info.value)
    assert info.value.diag.message_hint and "CREATE ROLE" in info.value.diag.message_hint
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(w.owner)))
    w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    owners = {r[2] for r in w.rows(w.sg_db, RIGHTS) if r[2] is not None}
    assert w.owner in owners


def test_the_owner_cannot_reach_its_kept_objects(world: World) -> None:
    """Once kept, the objects are softguard's: the role that owned them cannot drop, alter
    or grant them, and REASSIGN OWNED BY leaves them where they are, for undo to give back
    to the owner."""
    w = world
    w.run(w.sg_db, ["DROP TABLE {s}.lone"], w.owner)
    kept = w.rows(w.sg_db, "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n"
                           " ON n.oid = c.relnamespace WHERE n.nspname = 'softguard_quarantine'"
                           " AND c.relkind = 'r'")[0][0]  # fmt: skip
    with psycopg.connect(w.server.dsn(w.sg_db, w.owner, PW), autocommit=True) as c:
        for stmt in (f"ALTER TABLE {kept} OWNER TO {w.owner}", f"DROP TABLE {kept}",
                     f"GRANT SELECT ON {kept} TO {w.owner}"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(stmt.encode())
    w.run(w.sg_db, [f"REASSIGN OWNED BY {w.owner} TO {w.reader}"])
    w.rows(w.sg_db, f"SELECT softguard.undo_op({w.ops()[-1]})")
    assert w.rows(w.sg_db, f"SELECT note FROM {w.schema}.lone") == [("one",)]
    owner = w.rows(w.sg_db, f"SELECT relowner::regrole::text FROM pg_class"
                            f" WHERE oid = '{w.schema}.lone'::regclass")  # fmt: skip
    assert owner == [(w.owner,)]


def test_what_runs_as_a_kept_tables_owner_has_no_rights(world: World) -> None:
    """PostgreSQL runs an expression index's function as the table's owner (ANALYZE,
    autovacuum). The former owner can still replace that function, so a kept table must
    not belong to a superuser: it belongs to softguard_keeper, which has no rights."""
    w = world
    w.run(w.sg_db, [
        "CREATE FUNCTION {s}.k(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS"
        " 'BEGIN RETURN $1; END'",
        "CREATE TABLE {s}.indexed (a int)",
        "CREATE INDEX indexed_k ON {s}.indexed ({s}.k(a))",
        "INSERT INTO {s}.indexed VALUES (1), (2)",
        "DROP TABLE {s}.indexed",
        "CREATE OR REPLACE FUNCTION {s}.k(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS"
        " 'BEGIN RAISE EXCEPTION ''ran as %'', current_user; END'",
    ], w.owner)  # fmt: skip
    kept = w.rows(
        w.sg_db,
        "SELECT c.oid::regclass::text, c.relowner::regrole::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'softguard_quarantine' AND c.relkind = 'r'",
    )
    assert [r[1] for r in kept] == ["softguard_keeper"], kept
    with pytest.raises(psycopg.errors.RaiseException) as info:
        w.rows(w.sg_db, f"ANALYZE {kept[0][0]}")
    assert "ran as softguard_keeper" in str(info.value)


# Objects of the kinds softguard does not move one by one, each made to belong to the
# owner in its schema: (statements as the owner, statements as the superuser). Operator
# classes and families need a superuser to create; ALTER ... OWNER gives them to the owner.
OTHER_KINDS: dict[str, tuple[list[str], list[str]]] = {
    "operator": (["CREATE OPERATOR {s}.<~> (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)"],
                 []),
    "operator class": ([], [
        "CREATE OPERATOR CLASS {s}.opc FOR TYPE int USING hash AS OPERATOR 1 =,"
        " FUNCTION 1 hashint4(int)",
        "ALTER OPERATOR CLASS {s}.opc USING hash OWNER TO {owner}",
        "ALTER OPERATOR FAMILY {s}.opc USING hash OWNER TO {owner}",
    ]),
    "operator family": ([], [
        "CREATE OPERATOR FAMILY {s}.fam USING btree",
        "ALTER OPERATOR FAMILY {s}.fam USING btree OWNER TO {owner}",
    ]),
    "collation": (['CREATE COLLATION {s}.coll FROM "C"'], []),
    "conversion": (["CREATE CONVERSION {s}.conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8"],
                   []),
    "text search configuration": (
        ["CREATE TEXT SEARCH CONFIGURATION {s}.cfg (COPY = pg_catalog.simple)"], []),
    "text search dictionary": (
        ["CREATE TEXT SEARCH DICTIONARY {s}.dict (TEMPLATE = pg_catalog.simple)"], []),
    "statistics object": (["CREATE TABLE {s}.st (a int, b int)",
                           "CREATE STATISTICS {s}.stx ON a, b FROM {s}.st"], []),
}  # fmt: skip

# Owners and privileges of every object in the schema, whatever its kind.
IN_SCHEMA = (
    "WITH "
    + OWNED
    + """
SELECT i.type, i.identity, o.owner::regrole::text, o.acl::text
  FROM owned o, LATERAL pg_identify_object(o.classid, o.objid, o.objsubid) i
 WHERE i.schema = %(s)s OR (o.classid = 'pg_namespace'::regclass AND i.identity = %(s)s)
ORDER BY 1, 2
"""
)

# What a role owns in this database, whatever the kind (REASSIGN OWNED gives these).
OWNED_BY = (
    "WITH "
    + OWNED
    + """
SELECT i.type, i.identity FROM owned o, LATERAL pg_identify_object(o.classid, o.objid, 0) i
 WHERE o.owns AND o.owner = %(r)s::regrole
ORDER BY 1, 2
"""
)


def test_every_kind_with_an_owner_in_a_schema_is_covered(pg_server: TestServer) -> None:
    """The kinds above are those of every catalog of this server with a namespace and an
    owner column, apart from relations, routines and types (DROPS above) and extensions
    (not in a schema): a kind a later PostgreSQL adds fails here until it has its test."""
    with psycopg.connect(pg_server.superuser_dsn()) as c:
        found = {
            r[0]
            for r in c.execute(
                "SELECT c.relname FROM pg_class c"
                " WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'"
                " AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid"
                "             AND a.attname LIKE '%namespace')"
                " AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid"
                "             AND a.attname LIKE '%owner')"
            ).fetchall()
        }
    made = {"pg_operator", "pg_opclass", "pg_opfamily", "pg_collation", "pg_conversion",
            "pg_ts_config", "pg_ts_dict", "pg_statistic_ext"}  # fmt: skip
    assert found - {"pg_class", "pg_proc", "pg_type", "pg_extension"} == made


@pytest.mark.parametrize("kind", list(OTHER_KINDS))
def test_objects_of_other_kinds_in_a_dropped_schema(world: World, kind: str) -> None:
    """DROP SCHEMA ... CASCADE, then REASSIGN OWNED BY / DROP OWNED BY / DROP ROLE of the
    owner: as after a direct DROP, whatever kind of object the schema held; undo gives the
    object back to the owner (created again), privileges as they were."""
    w = world
    as_owner, as_super = OTHER_KINDS[kind]
    for db in (w.direct_db, w.sg_db):
        w.run(db, as_owner, w.owner)
        w.run(db, [s.replace("{owner}", w.owner) for s in as_super])
    before = w.rows(w.sg_db, IN_SCHEMA)
    assert any(r[0] == kind and r[2] == w.owner for r in before), before
    for db in (w.direct_db, w.sg_db):
        w.run(db, ["DROP SCHEMA {s} CASCADE"], w.owner)
    assert w.rows(w.sg_db, HOLDERS) == []
    for db in (w.direct_db, w.sg_db):
        w.run(db, [f"REASSIGN OWNED BY {w.owner} TO {w.reader}"])
    heir = {"r": w.reader}
    with psycopg.connect(w.dsn(w.sg_db), autocommit=True) as c:
        sg_owned = c.execute(OWNED_BY, heir).fetchall()
    with psycopg.connect(w.dsn(w.direct_db), autocommit=True) as c:
        assert sg_owned == c.execute(OWNED_BY, heir).fetchall()
    for db in (w.direct_db, w.sg_db):
        w.run(db, [f"DROP OWNED BY {w.owner}"])
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(w.owner)))
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(w.owner), sql.Literal(PW)))  # fmt: skip
    w.rows(w.sg_db, f"SELECT softguard.undo_op({w.ops()[-1]})")
    assert w.rows(w.sg_db, IN_SCHEMA) == before


# What else ties a role to kept objects: the roles a policy applies to, a schema's default
# privileges. (kind, setup as the owner, the DROP)
TIES_CASES = {
    "policy, DROP TABLE": ("policy", "DROP TABLE {s}.pt"),
    "policy, DROP SCHEMA": ("policy", "DROP SCHEMA {s} CASCADE"),
    "default privileges, DROP SCHEMA": ("default privileges", "DROP SCHEMA {s} CASCADE"),
}
TIES_SETUP = {
    "policy": [
        "CREATE TABLE {s}.pt (a int)",
        "ALTER TABLE {s}.pt ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY pol ON {s}.pt TO {reader}, {owner} USING (a > 0)",
        "CREATE POLICY only_reader ON {s}.pt FOR SELECT TO {reader} USING (a > 1)",
    ],
    "default privileges": [
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, UPDATE ON TABLES TO {reader}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE ON SEQUENCES TO {reader}"
        " WITH GRANT OPTION",
    ],
}
TIES = """
SELECT 'policy', c.relname || '.' || p.polname,
       array(SELECT r::regrole::text FROM unnest(p.polroles) r ORDER BY 1)::text
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
 WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'default acl', d.defaclrole::regrole::text || ' ' || d.defaclobjtype::text,
       array(SELECT a::text FROM unnest(d.defaclacl) a ORDER BY 1)::text
  FROM pg_default_acl d WHERE d.defaclnamespace = %(s)s::regnamespace
ORDER BY 1, 2
"""


def _tie(w: World, case: str) -> list[tuple[Any, ...]]:
    kind, drop = TIES_CASES[case]
    setup = [s.replace("{owner}", w.owner) for s in TIES_SETUP[kind]]
    for db in (w.direct_db, w.sg_db):
        w.run(db, setup, w.owner)
    before = w.rows(w.sg_db, TIES)
    assert before, "nothing to tie"
    for db in (w.direct_db, w.sg_db):
        w.run(db, [drop], w.owner)
    assert w.rows(w.sg_db, HOLDERS) == []
    return before


@pytest.mark.parametrize("case", list(TIES_CASES))
def test_policy_roles_and_default_privileges_come_back(world: World, case: str) -> None:
    w = world
    before = _tie(w, case)
    w.rows(w.sg_db, f"SELECT softguard.undo_op({w.ops()[-1]})")
    assert w.rows(w.sg_db, TIES) == before


@pytest.mark.parametrize("case", list(TIES_CASES))
def test_a_role_named_by_kept_policies_or_default_privileges_can_be_dropped(
    world: World, case: str
) -> None:
    """DROP ROLE of the reader, with no DROP OWNED BY: as after a direct DROP. Undo then
    says what it could not give back; a policy whose only role is gone is dropped (as
    DROP OWNED BY would have dropped it)."""
    w = world
    _tie(w, case)
    for db in (w.direct_db, w.sg_db):  # what the DROP left that the reader may use
        w.run(db, [
            f"REVOKE ALL ON SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON ALL ROUTINES IN SCHEMA {w.schema} FROM {w.reader}",
            f"REVOKE ALL ON TYPE {w.schema}.span, {w.schema}.pos FROM {w.reader}",
        ] if "SCHEMA" not in case else [])  # fmt: skip
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(w.reader)))
    lines = [r[0] for r in w.rows(w.sg_db, f"SELECT softguard.undo_op({w.ops()[-1]})")]
    assert any("no longer exists" in line for line in lines), lines
    after = w.rows(w.sg_db, TIES)
    assert "sg_qread" not in str(after)
    if case.startswith("policy"):
        assert after == [("policy", "pt.pol", "{" + w.owner + "}")]


OPERATORS = "SELECT oprname::text FROM pg_operator WHERE oprnamespace = %(s)s::regnamespace"
SERVERS = "SELECT srvname::text FROM pg_foreign_server WHERE srvname = %(s)s || '_srv'"
# Only a superuser makes a foreign-data wrapper; made once per database.
WRAPPER = (
    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = 'sg_w')"
    " THEN CREATE FOREIGN DATA WRAPPER sg_w; END IF; END $$"
)
# A live object that only kept objects use (decision 0033): (setup, the DROPs that keep its
# users, the DROP of the object itself, what is live of its kind in the schema, and what
# the kept users show of it once everything is back).
TIE_CASES: dict[str, tuple[list[str], list[str], str, str, str]] = {
    "collation": (
        ['CREATE COLLATION {s}.coll FROM "C"',
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text COLLATE {s}.coll)",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct"],
        "DROP COLLATION {s}.coll",
        "SELECT collname::text FROM pg_collation WHERE collnamespace = %(s)s::regnamespace",
        "SELECT attcollation::regcollation::text FROM pg_attribute"
        " WHERE attrelid = to_regclass(%(s)s || '.ct') AND attname = 'x'",
    ),
    "text search configuration": (
        ["CREATE TEXT SEARCH CONFIGURATION {s}.tc (COPY = simple)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE INDEX ct_ts ON {s}.ct (to_tsvector('{s}.tc'::regconfig, x))",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct"],
        "DROP TEXT SEARCH CONFIGURATION {s}.tc",
        "SELECT cfgname::text FROM pg_ts_config WHERE cfgnamespace = %(s)s::regnamespace",
        "SELECT pg_get_indexdef(to_regclass(%(s)s || '.ct_ts'))",
    ),
    "text search dictionary": (
        ["CREATE TEXT SEARCH DICTIONARY {s}.td (TEMPLATE = simple)",
         "CREATE TEXT SEARCH CONFIGURATION {s}.tc (COPY = simple)",
         "ALTER TEXT SEARCH CONFIGURATION {s}.tc ALTER MAPPING FOR asciiword WITH {s}.td"],
        ["DROP TEXT SEARCH CONFIGURATION {s}.tc"],
        "DROP TEXT SEARCH DICTIONARY {s}.td",
        "SELECT dictname::text FROM pg_ts_dict WHERE dictnamespace = %(s)s::regnamespace",
        "SELECT DISTINCT m.mapdict::regdictionary::text FROM pg_ts_config_map m"
        " JOIN pg_ts_config c ON c.oid = m.mapcfg"
        " WHERE c.cfgname = 'tc' AND c.cfgnamespace = %(s)s::regnamespace ORDER BY 1",
    ),
    # an operator (decision 0036): kept under its name in a schema of its own
    "operator (check)": (
        ["CREATE OPERATOR {s}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text CHECK (x OPERATOR({s}.===) x))",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct"],
        "DROP OPERATOR {s}.=== (text, text)",
        OPERATORS,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = to_regclass(%(s)s || '.ct') AND contype = 'c'",
    ),
    "operator (index)": (
        ["CREATE OPERATOR {s}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE INDEX ct_i ON {s}.ct (id) WHERE x OPERATOR({s}.===) 'b'",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct"],
        "DROP OPERATOR {s}.=== (text, text)",
        OPERATORS,
        "SELECT pg_get_indexdef(to_regclass(%(s)s || '.ct_i'))",
    ),
    "operator (view)": (
        ["CREATE OPERATOR {s}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE VIEW {s}.cv AS SELECT id FROM {s}.ct WHERE x OPERATOR({s}.===) 'b'",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct CASCADE"],
        "DROP OPERATOR {s}.=== (text, text)",
        OPERATORS,
        "SELECT pg_get_viewdef(to_regclass(%(s)s || '.cv'))",
    ),
    # the function of a kept operator: kept in its turn (routines were kept already)
    "function (of a kept operator)": (
        ["CREATE FUNCTION {s}.same(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE"
         " AS 'SELECT $1 = $2'",
         "CREATE OPERATOR {s}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = {s}.same)"],
        ["DROP OPERATOR {s}.=== (text, text)"],
        "DROP FUNCTION {s}.same(text, text)",
        "SELECT proname::text FROM pg_proc"
        " WHERE pronamespace = %(s)s::regnamespace AND proname = 'same'",
        "SELECT oprcode::regprocedure::text FROM pg_operator"
        " WHERE oprnamespace = %(s)s::regnamespace",
    ),
    # an operator family with its class (made by a superuser, given to the owner)
    "operator family (index)": (
        ["CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE INDEX ct_i ON {s}.ct (x {s}.opc)",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        ["DROP TABLE {s}.ct"],
        "DROP OPERATOR FAMILY {s}.fam USING btree",
        "SELECT opfname::text FROM pg_opfamily WHERE opfnamespace = %(s)s::regnamespace"
        " UNION ALL SELECT opcname FROM pg_opclass WHERE opcnamespace = %(s)s::regnamespace",
        "SELECT pg_get_indexdef(to_regclass(%(s)s || '.ct_i'))",
    ),
    # a foreign server (decision 0036, since then): in no schema, kept by a rename; its
    # foreign table is kept by DROP SCHEMA (DROP FOREIGN TABLE keeps nothing: no rows)
    "server (foreign table)": (
        ["CREATE SCHEMA {s}_f",
         "CREATE FOREIGN TABLE {s}_f.ft (id int, x text) SERVER {s}_srv"],
        ["DROP SCHEMA {s}_f CASCADE"],
        "DROP SERVER {s}_srv",
        SERVERS,
        "SELECT s.srvname::text, s.srvowner::regrole::text, s.srvacl::text"
        " FROM pg_foreign_table f JOIN pg_foreign_server s ON s.oid = f.ftserver"
        " WHERE f.ftrelid = (SELECT c.oid FROM pg_class c WHERE c.relname = 'ft'"
        " AND c.relnamespace::regnamespace::text ~ ('^(softguard_q[0-9]+_)?' || %(s)s || '_f$'))",
    ),
    # a language (the same): a kept function is written in it
    "language (function)": (
        ["CREATE FUNCTION {s}.lf() RETURNS int LANGUAGE {s}_pl AS 'BEGIN RETURN 1; END'"],
        ["DROP FUNCTION {s}.lf()"],
        "DROP LANGUAGE {s}_pl",
        "SELECT lanname::text FROM pg_language WHERE lanname = %(s)s || '_pl'",
        "SELECT l.lanname::text, l.lanowner::regrole::text, l.lanacl::text FROM pg_proc p"
        " JOIN pg_language l ON l.oid = p.prolang WHERE p.proname = 'lf'"
        " AND p.pronamespace = %(s)s::regnamespace",
    ),
}
# Cases whose kept users are not the table ct.
NO_ROWS = {"text search dictionary", "function (of a kept operator)", "server (foreign table)",
           "language (function)"}
# Made by the superuser first (only a superuser creates operator classes and families).
SUPER_SETUP = {
    "operator family (index)": [
        "CREATE OPERATOR FAMILY {s}.fam USING btree",
        "CREATE OPERATOR CLASS {s}.opc FOR TYPE text USING btree FAMILY {s}.fam AS"
        " OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,"
        " FUNCTION 1 bttextcmp(text, text)",
        "ALTER OPERATOR FAMILY {s}.fam USING btree OWNER TO {owner}",
        "ALTER OPERATOR CLASS {s}.opc USING btree OWNER TO {owner}",
    ],
    # through softguard, CREATE SERVER is refused (category remote, decision 0013)
    "server (foreign table)": [
        WRAPPER,
        "CREATE SERVER {s}_srv FOREIGN DATA WRAPPER sg_w",
        "ALTER SERVER {s}_srv OWNER TO {owner}",
        "GRANT USAGE ON FOREIGN SERVER {s}_srv TO {reader}",
    ],
    # a language that is no extension's (plpgsql's handler, no validator)
    "language (function)": [
        "CREATE TRUSTED LANGUAGE {s}_pl HANDLER plpgsql_call_handler",
        "ALTER LANGUAGE {s}_pl OWNER TO {owner}",
        "GRANT USAGE ON LANGUAGE {s}_pl TO {reader}",
    ],
}


def _super_setup(w: World, kind: str, db: str) -> None:
    stmts = [t.replace("{owner}", w.owner) for t in SUPER_SETUP.get(kind, [])]
    w.run(db, stmts)


def _tied(w: World, kind: str, cascade: str = "") -> tuple[list[int], list[tuple[Any, ...]]]:
    """Make the object, keep what uses it, then drop it, on both twins (softguard's
    through softguard as the owner): the operations, and what its users showed of it."""
    setup, keep_users, drop, _, shown = TIE_CASES[kind]
    for db in (w.direct_db, w.sg_db):
        _super_setup(w, kind, db)
        w.run(db, setup, w.owner)
    before = w.rows(w.sg_db, shown)
    outcomes = []
    for db in (w.direct_db, w.sg_db):
        w.run(db, keep_users, w.owner)
        try:
            w.run(db, [drop + cascade], w.owner)
            outcomes.append(None)
        except psycopg.Error as e:
            outcomes.append(e.sqlstate)
    assert outcomes == [None, None], outcomes
    return w.ops(), before


@pytest.mark.parametrize("cascade", ["", " CASCADE"])
@pytest.mark.parametrize("kind", list(TIE_CASES))
def test_dropping_what_only_kept_objects_use(world: World, kind: str, cascade: str) -> None:
    """After DROP TABLE, PostgreSQL lets the table's collation (text search configuration,
    a kept configuration's dictionary) go; through softguard it goes too: it is kept
    (moved into quarantine, softguard_keeper's) by an operation of its own, its name is
    free, and no role is tied to it (decision 0033)."""
    w = world
    ops, _ = _tied(w, kind, cascade)
    live = TIE_CASES[kind][3]
    assert w.rows(w.sg_db, live) == w.rows(w.direct_db, live) == []
    kinds = w.rows(w.sg_db, "SELECT kind FROM softguard.operations ORDER BY id")
    assert kinds[-1] == ("DROP " + kind.split(" (")[0].upper(),)
    assert len(ops) == 2
    assert w.rows(w.sg_db, HOLDERS) == []
    # the name is free as after a direct DROP: it can be made again
    for db in (w.direct_db, w.sg_db):
        if kind in SUPER_SETUP:
            _super_setup(w, kind, db)
        else:
            w.run(db, TIE_CASES[kind][0][:1], w.owner)


@pytest.mark.parametrize("order", ["later first", "earlier first"])
@pytest.mark.parametrize("kind", list(TIE_CASES))
def test_undo_of_a_tie_in_either_order(world: World, kind: str, order: str) -> None:
    """Undo of the object's operation first gives it back; undo of the earlier operation
    first is refused (55006, blocked_by the object's operation: a live table never uses a
    kept object) and changes nothing, and with cascade undoes both. Either way the kept
    users come back using the object under its own name, their rows with them."""
    w = world
    ops, before = _tied(w, kind)
    earlier, tie = ops
    shown = TIE_CASES[kind][4]
    if order == "later first":
        w.rows(w.sg_db, f"SELECT softguard.undo_op({tie})")
        w.rows(w.sg_db, f"SELECT softguard.undo_op({earlier})")
    else:
        with psycopg.connect(w.dsn(w.sg_db), autocommit=True) as c:
            with pytest.raises(psycopg.errors.ObjectInUse) as blocked:
                c.execute(f"SELECT softguard.undo_op({earlier})")
        assert blocked.value.diag.message_detail == f"blocked_by={tie}"
        states = w.rows(w.sg_db, "SELECT state FROM softguard.operations ORDER BY id")
        assert states == [("active",), ("active",)]
        w.rows(w.sg_db, f"SELECT softguard.undo_op({earlier}, NULL, true)")
    assert w.rows(w.sg_db, shown) == before
    assert w.rows(w.sg_db, TIE_CASES[kind][3]) != []
    if kind not in NO_ROWS:
        assert w.rows(w.sg_db, "SELECT id, x FROM {s}.ct ORDER BY id".replace(
            "{s}", w.schema)) == [(1, "b"), (2, "a")]  # fmt: skip


@pytest.mark.parametrize("kind", list(TIE_CASES))
def test_purge_of_a_tie_waits_for_its_users(world: World, kind: str) -> None:
    """Purging the object's operation while a kept object still uses it is refused (55006,
    naming the operation to purge first), as for a kept type; purged in that order, both
    go, and nothing is left pointing at the object."""
    w = world
    (earlier, tie), _ = _tied(w, kind)
    with psycopg.connect(w.dsn(w.sg_db), autocommit=True) as c:
        with pytest.raises(psycopg.errors.ObjectInUse) as held:
            c.execute(f"SELECT softguard.purge_op({tie})")
    assert f"held by operation {earlier}" in str(held.value)
    w.rows(w.sg_db, f"SELECT softguard.purge_op({earlier})")
    w.rows(w.sg_db, f"SELECT softguard.purge_op({tie})")
    states = w.rows(w.sg_db, "SELECT state FROM softguard.operations ORDER BY id")
    assert states == [("purged",), ("purged",)]
    left = w.rows(w.sg_db, f"SELECT count(*) FROM softguard._held_objects({tie})")
    assert left == [(0,)]


# A live object made to use the kept one (its schema is softguard's: no USAGE for anyone).
USE_KEPT = {
    "collation": "CREATE TABLE {s}.grab (t text COLLATE {ident})",
    "text search configuration": "CREATE TABLE {s}.grab (c regconfig DEFAULT '{ident}')",
    "text search dictionary": "CREATE TABLE {s}.grab (d regdictionary DEFAULT '{ident}')",
}


@pytest.mark.parametrize("kind", list(USE_KEPT))
def test_the_owner_cannot_reach_a_kept_tie(world: World, kind: str) -> None:
    """Attack: the kept object belongs to softguard_keeper; its former owner can neither
    drop it for good (through softguard or around it) nor rename it away, and a DROP
    through softguard naming it is refused; the kept users and their rows are intact."""
    w = world
    (_, tie), _ = _tied(w, kind)
    held = w.rows(w.sg_db, f"SELECT keyword, ident FROM softguard._held_objects({tie})")
    assert len(held) == 1
    keyword, ident = held[0]
    attempts = [f"DROP {keyword} {ident}", f"DROP {keyword} {ident} CASCADE",
                f"ALTER {keyword} {ident} RENAME TO gone",
                f"ALTER {keyword} {ident} SET SCHEMA {{s}}",
                f"ALTER {keyword} {ident} OWNER TO CURRENT_USER",
                # making a live object use it, for purge's CASCADE to take along
                USE_KEPT[kind].replace("{ident}", ident)]  # fmt: skip
    for through in (True, False):
        for stmt in attempts:
            dsn = w.dsn(w.sg_db, w.owner, through)
            with psycopg.connect(dsn, autocommit=True) as c:
                with pytest.raises(psycopg.Error) as refused:
                    c.execute(stmt.format(s=w.schema).encode())
            assert refused.value.sqlstate == "42501", (through, stmt, refused.value)
    assert w.rows(w.sg_db, f"SELECT keyword, ident FROM softguard._held_objects({tie})") == held
    w.rows(w.sg_db, f"SELECT softguard.undo_op({tie})")
    w.rows(w.sg_db, f"SELECT softguard.undo_op({tie - 1})")
    if kind != "text search dictionary":
        rows = w.rows(w.sg_db, f"SELECT id, x FROM {w.schema}.ct ORDER BY id")
        assert rows == [(1, "b"), (2, "a")]


# Kinds softguard cannot keep, tied to a kept object as collations were (decision 0033,
# README limits): (setup, the DROP of the object once the table using it is kept).
STILL_TIED = {
    # a class's operators and functions are entries of its family, and a class cannot
    # change family: kept alone, they would stay in the live family (decision 0036)
    "operator class": (
        ["CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE INDEX ct_i ON {s}.ct (x {s}.opc)"],
        "DROP OPERATOR CLASS {s}.opc USING btree",
    ),
    "extension": (
        ["CREATE EXTENSION IF NOT EXISTS citext SCHEMA {s}",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x {s}.citext)"],
        "DROP EXTENSION citext",
    ),
}


@pytest.mark.xfail(strict=True, reason="an operator class, an extension cannot be kept: tied")
@pytest.mark.parametrize("cascade", ["", " CASCADE"])
@pytest.mark.parametrize("kind", list(STILL_TIED))
def test_what_softguard_cannot_keep_stays_tied(world: World, kind: str, cascade: str) -> None:
    """Directly the DROP goes once the table is dropped; through softguard it fails with
    2BP01 naming the kept column (42501 from the quarantine's guard with CASCADE)."""
    w = world
    setup, drop = STILL_TIED[kind]
    outcomes = []
    for db in (w.direct_db, w.sg_db):
        if kind == "operator class":
            _super_setup(w, "operator family (index)", db)
        w.run(db, [*setup, "DROP TABLE {s}.ct"], w.owner)
        try:
            w.run(db, [drop + cascade], w.owner)
            outcomes.append(None)
        except psycopg.Error as e:
            outcomes.append(e.sqlstate)
    assert outcomes == [None, None], outcomes


# DROP ... CASCADE of the newly reversible kinds (decision 0033), reaching live objects:
# (setup, the DROP). What the CASCADE takes is kept as for DROP TYPE ... CASCADE (a
# column as DROP COLUMN keeps it, an index or default by its definition, a view or domain
# moved along).
CASCADE_CASES: dict[str, tuple[list[str], str]] = {
    "collation alone": (['CREATE COLLATION {s}.coll FROM "C"'], "DROP COLLATION {s}.coll"),
    "collation of a live column": (
        ['CREATE COLLATION {s}.coll FROM "C"',
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text COLLATE {s}.coll)",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        "DROP COLLATION {s}.coll CASCADE",
    ),
    "collation of an index, a view and a domain": (
        ['CREATE COLLATION {s}.coll FROM "C"',
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text)",
         "CREATE INDEX ct_i ON {s}.ct (x COLLATE {s}.coll)",
         "CREATE VIEW {s}.cv AS SELECT x COLLATE {s}.coll AS y FROM {s}.ct",
         "CREATE DOMAIN {s}.cd AS text COLLATE {s}.coll"],
        "DROP COLLATION {s}.coll CASCADE",
    ),
    "text search configuration of an index and a default": (
        ["CREATE TEXT SEARCH CONFIGURATION {s}.tc (COPY = simple)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text, c regconfig DEFAULT '{s}.tc')",
         "CREATE INDEX ct_ts ON {s}.ct (to_tsvector('{s}.tc'::regconfig, x))"],
        "DROP TEXT SEARCH CONFIGURATION {s}.tc CASCADE",
    ),
    "text search dictionary of a live configuration": (
        ["CREATE TEXT SEARCH DICTIONARY {s}.td (TEMPLATE = simple)",
         "CREATE TEXT SEARCH CONFIGURATION {s}.tc (COPY = simple)",
         "ALTER TEXT SEARCH CONFIGURATION {s}.tc ALTER MAPPING FOR asciiword WITH {s}.td"],
        "DROP TEXT SEARCH DICTIONARY {s}.td CASCADE",
    ),
    # decision 0036: the operator kept in a schema of its own, the CHECK and the index by
    # their definitions, the view moved into quarantine
    "operator of a live check, index and view": (
        ["CREATE OPERATOR {s}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
         "CREATE TABLE {s}.ct (id int PRIMARY KEY, x text CHECK (x OPERATOR({s}.===) x))",
         "CREATE INDEX ct_i ON {s}.ct (id) WHERE x OPERATOR({s}.===) 'b'",
         "CREATE VIEW {s}.cv AS SELECT id FROM {s}.ct WHERE x OPERATOR({s}.===) 'b'",
         "INSERT INTO {s}.ct VALUES (1, 'b'), (2, 'a')"],
        "DROP OPERATOR {s}.=== (text, text) CASCADE",
    ),
}
# What the schema holds, as a client sees it: relations and their columns (type,
# collation, default), indexes, collations, text search objects, domains.
SCHEMA_SHAPE = """
SELECT 'rel', c.relname::text, c.relkind::text || coalesce(pg_get_indexdef(c.oid), '')
  FROM pg_class c WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'col', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod) || ' '
       || a.attcollation::regcollation::text || ' '
       || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = %(s)s::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'collation', collname::text, '' FROM pg_collation
 WHERE collnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'ts config', cfgname::text, '' FROM pg_ts_config WHERE cfgnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'ts dict', dictname::text, '' FROM pg_ts_dict WHERE dictnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'domain', typname::text, typcollation::regcollation::text FROM pg_type
 WHERE typnamespace = %(s)s::regnamespace AND typtype = 'd'
UNION ALL
SELECT 'operator', oid::regoperator::text, oprcode::text FROM pg_operator
 WHERE oprnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'constraint', conname::text, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = %(s)s::regnamespace
UNION ALL
SELECT 'view', relname::text, pg_get_viewdef(oid) FROM pg_class
 WHERE relnamespace = %(s)s::regnamespace AND relkind = 'v'
ORDER BY 1, 2, 3
"""


@pytest.mark.parametrize("case", list(CASCADE_CASES))
def test_newly_reversible_drops_as_directly_and_undone(world: World, case: str) -> None:
    """DROP COLLATION / TEXT SEARCH CONFIGURATION / DICTIONARY (with CASCADE reaching live
    objects): the schema looks as after the direct DROP, one operation keeps it all, and
    undo gives back the schema as it was, rows included."""
    w = world
    setup, drop = CASCADE_CASES[case]
    for db in (w.direct_db, w.sg_db):
        w.run(db, setup, w.owner)
    before = w.rows(w.sg_db, SCHEMA_SHAPE)
    for db in (w.direct_db, w.sg_db):
        w.run(db, [drop], w.owner)
    assert w.rows(w.sg_db, SCHEMA_SHAPE) == w.rows(w.direct_db, SCHEMA_SHAPE)
    assert w.rows(w.sg_db, HOLDERS) == []
    (op,) = w.ops()
    w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    assert w.rows(w.sg_db, SCHEMA_SHAPE) == before
    if "live column" in case or "live check" in case:
        rows = w.rows(w.sg_db, f"SELECT id, x FROM {w.schema}.ct ORDER BY id")
        assert rows == [(1, "b"), (2, "a")]


# Foreign servers, their user mappings and grants, as any session sees them (the options
# of a mapping only its user, the server's owner and superusers see: compared directly).
SERVER_SHAPE = """
SELECT s.srvname::text, s.srvowner::regrole::text, coalesce(s.srvacl::text, ''),
       coalesce(m.umuser::regrole::text, ''), coalesce(m.umoptions::text, '')
  FROM pg_foreign_server s LEFT JOIN pg_user_mapping m ON m.umserver = s.oid
 ORDER BY 1, 4
"""


# Its user mappings: the reader's (with a password), PUBLIC's and the owner's.
MAPPINGS = [
    "CREATE USER MAPPING FOR {owner} SERVER {s}_srv OPTIONS (user 'remote_me')",
    "CREATE USER MAPPING FOR {reader} SERVER {s}_srv"
    " OPTIONS (user 'remote_reader', password 'pw=of reader''s')",
    "CREATE USER MAPPING FOR PUBLIC SERVER {s}_srv OPTIONS (user 'anyone')",
]
KEPT_MAPPINGS = "SELECT count(*) FROM softguard.kept_mappings"


def _server_with_mappings(w: World, mapped: dict[str, str] | None = None) -> None:
    """The server (a superuser's, given to the owner), its mappings, and the owner's
    foreign table and view on it, on both twins; `mapped`: a role per twin mapped too."""
    setup = [*SUPER_SETUP["server (foreign table)"], *MAPPINGS]
    for db in (w.direct_db, w.sg_db):
        extra = [f"CREATE USER MAPPING FOR {mapped[db]} SERVER {{s}}_srv OPTIONS (user 'm')"
                 ] if mapped else []  # fmt: skip
        w.run(db, [t.replace("{owner}", w.owner) for t in setup + extra])
        w.run(db, ["CREATE FOREIGN TABLE {s}.ft (id int, x text) SERVER {s}_srv",
                   "CREATE VIEW {s}.fv AS SELECT id FROM {s}.ft"], w.owner)


def test_drop_server_cascade_as_directly_and_undone(world: World) -> None:
    """DROP SERVER ... CASCADE reaching a live foreign table, a view on it and user
    mappings (decision 0036, since then; 0043): the schema looks as after the direct
    DROP, the kept server is renamed softguard_q<id>_..., softguard_keeper's, no grant
    left and, as directly, no user mapping (recorded with their options in the ledger's
    softguard.kept_mappings); no role is tied to it. Undo gives everything back, each
    mapping with its options, and forgets the options."""
    w = world
    _server_with_mappings(w)
    before = w.rows(w.sg_db, SCHEMA_SHAPE), w.rows(w.sg_db, SERVER_SHAPE)
    assert len(before[1]) == 3
    for db in (w.direct_db, w.sg_db):
        w.run(db, ["DROP SERVER {s}_srv CASCADE"], w.owner)
    assert w.rows(w.sg_db, SCHEMA_SHAPE) == w.rows(w.direct_db, SCHEMA_SHAPE)
    assert w.rows(w.direct_db, SERVER_SHAPE) == []
    (op,) = w.ops()
    kept = w.rows(w.sg_db, SERVER_SHAPE)
    keeper_acl = "{softguard_keeper=U/softguard_keeper}"  # the reader's USAGE revoked
    assert kept == [(f"softguard_q{op}_{w.schema}_srv", "softguard_keeper", keeper_acl, "", "")]
    assert w.rows(w.sg_db, HOLDERS) == []
    assert w.rows(w.sg_db, KEPT_MAPPINGS) == [(3,)]
    w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    assert (w.rows(w.sg_db, SCHEMA_SHAPE), w.rows(w.sg_db, SERVER_SHAPE)) == before
    assert w.rows(w.sg_db, KEPT_MAPPINGS) == [(0,)]


@pytest.mark.parametrize("how", ["DROP ROLE {m}", "DROP OWNED BY {m}; DROP ROLE {m}"])
def test_a_mapped_role_goes_as_directly(world: World, how: str) -> None:
    """After DROP SERVER ... CASCADE a role that had a mapping on the server can be
    dropped, directly as through softguard (before ledger 14 its mapping stayed on the
    kept server: 2BP01, or 42501 from the quarantine's guard for DROP OWNED BY). Undo
    then makes the other mappings again and says it skipped the dropped role's."""
    w = world
    mapped = {db: f"sg_qmap_{i}_{w.schema}" for i, db in enumerate((w.direct_db, w.sg_db))}
    try:
        for role in mapped.values():
            w.run(w.direct_db, [f"CREATE ROLE {role}"])
        _server_with_mappings(w, mapped)
        before = w.rows(w.sg_db, SERVER_SHAPE)
        for db in (w.direct_db, w.sg_db):
            w.run(db, ["DROP SERVER {s}_srv CASCADE"], w.owner)
        outcomes = []
        for db, role in mapped.items():
            try:
                w.run(db, how.format(m=role).split("; "))
                outcomes.append(None)
            except psycopg.Error as e:
                outcomes.append(e.sqlstate)
        assert outcomes == [None, None], outcomes
        (op,) = w.ops()
        lines = [r[0] for r in w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")]
        gone = mapped[w.sg_db]
        assert f"operation {op}: user mapping for role {gone} on server {w.schema}_srv not " \
            "made again: the role no longer exists" in lines, lines
        assert w.rows(w.sg_db, SERVER_SHAPE) == [r for r in before if r[3] != gone]
    finally:
        for role in mapped.values():
            w.run(w.direct_db, [f"DROP ROLE IF EXISTS {role}"])


def test_undo_refuses_a_mapping_made_again(world: World) -> None:
    """A mapping for one of the kept mappings' roles made on the kept server since (only a
    superuser can): undo refuses (42710, a HINT saying what to drop), nothing changed;
    once it is dropped, undo gives the recorded one back."""
    w = world
    _server_with_mappings(w)
    before = w.rows(w.sg_db, SERVER_SHAPE)
    w.run(w.sg_db, ["DROP SERVER {s}_srv CASCADE"], w.owner)
    (op,) = w.ops()
    kept = f"softguard_q{op}_{w.schema}_srv"
    w.run(w.sg_db, [f"CREATE USER MAPPING FOR {{reader}} SERVER {kept} OPTIONS (user 'x')"])
    with psycopg.connect(w.dsn(w.sg_db), autocommit=True) as c:
        with pytest.raises(psycopg.errors.DuplicateObject) as refused:
            c.execute(f"SELECT softguard.undo_op({op})")
    drop = f"DROP USER MAPPING FOR {w.reader} SERVER {kept}"
    assert refused.value.diag.message_hint == (
        "As a superuser, in a transaction marked as softguard's maintenance (docs/runbook.md,"
        f' "Who may read the ledger and undo"): {drop}; then undo: the mapping is made again'
        " as it was, with its options.")  # fmt: skip
    assert w.rows(w.sg_db, "SELECT state FROM softguard.operations") == [("active",)]
    assert w.rows(w.sg_db, KEPT_MAPPINGS) == [(3,)]
    # what the hint says (the quarantine's guard refuses the DROP otherwise)
    with psycopg.connect(w.dsn(w.sg_db), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(drop)
        with c.transaction():
            c.execute("INSERT INTO softguard.maintenance VALUES (pg_current_xact_id())")
            c.execute(drop)
            c.execute("DELETE FROM softguard.maintenance WHERE txid = pg_current_xact_id()")
    w.rows(w.sg_db, f"SELECT softguard.undo_op({op})")
    assert w.rows(w.sg_db, SERVER_SHAPE) == before


def test_show_and_purge_of_kept_mappings_keep_their_options_to_themselves(world: World) -> None:
    """`softguard show` (what a role granted --ops reads) names each mapping to make again
    but prints no option; purge drops the kept server and forgets the recorded options."""
    w = world
    _server_with_mappings(w)
    w.run(w.sg_db, ["DROP SERVER {s}_srv CASCADE"], w.owner)
    (op,) = w.ops()
    shown = run_cli("show", str(op), "--dsn", w.dsn(w.sg_db))
    assert shown.returncode == 0, shown.stderr
    words = " ".join(shown.stdout.split())  # wrapped lines
    assert f"make the user mapping for {w.reader} on server {w.schema}_srv again (options" \
        " kept, not shown)" in words, shown.stdout
    assert "reader''s" not in shown.stdout and "remote_reader" not in shown.stdout
    details = run_cli("show", str(op), "--details", "--json", "--dsn", w.dsn(w.sg_db))
    assert details.returncode == 0 and "remote_reader" not in details.stdout, details.stdout
    w.rows(w.sg_db, f"SELECT softguard.purge_op({op})")
    assert w.rows(w.sg_db, "SELECT state FROM softguard.operations") == [("purged",)]
    assert w.rows(w.sg_db, KEPT_MAPPINGS) == [(0,)]
    assert w.rows(w.sg_db, SERVER_SHAPE) == []


# The active operations that keep a relation (or an index of one) in a tablespace:
# what must be purged (or undone) before DROP TABLESPACE (decision 0027, README limits).
HELD_IN_TABLESPACE = """
SELECT DISTINCT o.id
  FROM softguard.operations o, LATERAL softguard.held_relations(o.id) h
  JOIN pg_class c ON c.oid = h.relid
                  OR c.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = h.relid)
 WHERE o.state = 'active'
   AND c.reltablespace = (SELECT t.oid FROM pg_tablespace t WHERE t.spcname = %(ts)s)
 ORDER BY 1
"""


def test_drop_tablespace_with_kept_tables_in_it(world: World) -> None:
    """PostgreSQL's own "tablespace is not empty" (55000) while a kept table is in it, where
    after a direct DROP TABLE it would go: softguard does not move a table at DROP (that
    would cost a copy of its data); the query above names the operations to purge first.
    Through softguard, DROP TABLESPACE is refused by policy (category `dangerous`)."""
    w = world
    spaces = {w.direct_db: f"ts_d_{w.schema}", w.sg_db: f"ts_s_{w.schema}"}
    with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
        if c.info.server_version < 150000:
            pytest.skip("allow_in_place_tablespaces needs PostgreSQL 15")
        c.execute("SET allow_in_place_tablespaces = on")
        for ts in spaces.values():
            c.execute(f"CREATE TABLESPACE {ts} LOCATION ''")
            c.execute(f"GRANT CREATE ON TABLESPACE {ts} TO {w.owner}")
    try:
        for db, ts in spaces.items():
            w.run(db, [f"CREATE TABLE {{s}}.big (id int PRIMARY KEY) TABLESPACE {ts}",
                       f"CREATE INDEX big_i ON {{s}}.big (id) TABLESPACE {ts}",
                       "DROP TABLE {s}.big"], w.owner)  # fmt: skip
        with psycopg.connect(w.proxy.dsn(w.sg_db, w.owner, PW), autocommit=True) as c:
            with pytest.raises(psycopg.Error) as refused:
                c.execute(f"DROP TABLESPACE {spaces[w.sg_db]}".encode())
        assert refused.value.sqlstate == "42501", refused.value
        with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
            c.execute(f"DROP TABLESPACE {spaces[w.direct_db]}")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
                c.execute(f"DROP TABLESPACE {spaces[w.sg_db]}")
        assert "is not empty" in str(info.value)
        held = w.rows(w.sg_db, HELD_IN_TABLESPACE.replace("%(ts)s", f"'{spaces[w.sg_db]}'"))
        assert held == [(w.ops()[-1],)]
        w.rows(w.sg_db, f"SELECT softguard.purge_op({held[0][0]})")
        with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
            c.execute(f"DROP TABLESPACE {spaces[w.sg_db]}")
    finally:
        for op in w.ops():
            try:
                w.rows(w.sg_db, f"SELECT softguard.purge_op({op})")
            except psycopg.Error:
                pass
        with psycopg.connect(w.server.superuser_dsn(), autocommit=True) as c:
            for ts in spaces.values():
                c.execute(f"DROP TABLESPACE IF EXISTS {ts}")
