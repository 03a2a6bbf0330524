# ruff: noqa: E501
"""Attacks on kept objects (decision 0027, threat model G22): the role that owned what a DROP
through softguard keeps tries to take it back, read it, change it, or tie live objects to it,
through softguard, in plain statements and in DO blocks whose names are built at run time.

What must hold: every such attempt is refused (the kept objects belong to softguard_keeper,
with no privilege for any role), nothing kept changes, undo gives everything back to the role,
and purge still destroys what is kept (a live object the role tied to a kept one does not
keep it alive, and does not make purge fail).
"""

from __future__ import annotations

import pytest
from attacker import Arena, fixtures

arena_template, arena = fixtures()

# The role's own objects, made directly as the role (not an attack step).
OBJECTS = """
CREATE TABLE kp (id int PRIMARY KEY, v text);
INSERT INTO kp VALUES (1, 'one'), (2, 'two');
CREATE SCHEMA ks;
CREATE TABLE ks.kt (id int PRIMARY KEY, v text);
INSERT INTO ks.kt VALUES (1, 'uno');
CREATE SEQUENCE ks.kq;
SELECT setval('ks.kq', 42);
CREATE FUNCTION ks.kf(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
CREATE TYPE ks.kty AS (a int);
"""

KEEPER = "softguard_keeper"

# Each attempt names the kept objects through {t} (the kept table kp), {s} (the kept schema
# ks), {st} (its table), {q} (its sequence), {f} (its function), {ty} (its type), {me} (the
# role itself). One statement each, run on its own session.
TABLE_ATTEMPTS = [
    "SELECT * FROM {t}",
    "SELECT count(*) FROM {t}",
    "COPY {t} TO STDOUT",
    "ALTER TABLE {t} OWNER TO {me}",
    "ALTER TABLE {t} RENAME TO stolen",
    "ALTER TABLE {t} SET SCHEMA public",
    "ALTER TABLE {t} ADD COLUMN w int",
    "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "DROP TABLE {t}",
    "TRUNCATE {t}",
    "DELETE FROM {t}",
    "UPDATE {t} SET v = 'x'",
    "INSERT INTO {t} VALUES (9, 'nine')",
    "GRANT SELECT ON {t} TO {me}",
    "COMMENT ON TABLE {t} IS 'mine'",
    "CREATE INDEX ON {t} (v)",
    "CREATE TABLE heir () INHERITS ({t})",
    "CREATE TABLE refs (x int REFERENCES {t} (id))",
    "CREATE TRIGGER tg BEFORE DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "CREATE POLICY p ON {t} USING (true)",
    "CREATE RULE r AS ON DELETE TO {t} DO INSTEAD NOTHING",
]
ROLE_ATTEMPTS = [
    f"GRANT {KEEPER} TO {{me}}",
    f"SET ROLE {KEEPER}",
    f"REASSIGN OWNED BY {KEEPER} TO {{me}}",
    f"DROP OWNED BY {KEEPER}",
    f"ALTER DEFAULT PRIVILEGES FOR ROLE {KEEPER} GRANT SELECT ON TABLES TO {{me}}",
    f"ALTER ROLE {KEEPER} LOGIN",
]
SCHEMA_ATTEMPTS = [
    "ALTER SCHEMA {s} OWNER TO {me}",
    "ALTER SCHEMA {s} RENAME TO mine",
    "DROP SCHEMA {s} CASCADE",
    "CREATE TABLE {s}.plant (x int)",
    "SELECT * FROM {st}",
    "ALTER TABLE {st} OWNER TO {me}",
    "SELECT nextval('{q}')",
    "SELECT setval('{q}', 1)",
    "ALTER SEQUENCE {q} RESTART",
    "SELECT {f}(1)",
    "ALTER FUNCTION {f}(int) OWNER TO {me}",
    "CREATE OR REPLACE FUNCTION {f}(int) RETURNS int LANGUAGE sql AS 'SELECT 0'",
    "ALTER TYPE {ty} RENAME TO mine",
    "DROP TYPE {ty} CASCADE",
    "CREATE TABLE usety (x {ty})",
]


def hidden(stmt: str) -> str:
    """*stmt* run by a DO block from a string built at run time: the proxy reads none of it."""
    return (
        f"DO $$ BEGIN EXECUTE convert_from(decode('{stmt.encode().hex()}', 'hex'), 'UTF8'); END $$"
    )


def setup(a: Arena) -> None:
    a.direct(f'GRANT CREATE ON DATABASE "{a.db}" TO "{a.owner}"')
    with a.connect("owner", via="direct") as c:
        c.execute(OBJECTS.encode())


def kept(a: Arena) -> dict[str, str]:
    """The kept objects' names, as any role can read them from the catalogs: a table kept
    as softguard_quarantine.op<id>_<n>_kp, a schema as softguard_q<id>_ks."""
    found: dict[str, str] = {}
    table = a.direct(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'softguard_quarantine' AND c.relname ~ '^op[0-9]+_[0-9]+_kp$'"
    )
    if table:
        found["t"] = table[0][0]
    schema = a.direct(
        "SELECT quote_ident(nspname) FROM pg_namespace WHERE nspname ~ '^softguard_q[0-9]+_ks$'"
    )
    if schema:
        s = schema[0][0]
        found |= {"s": s, "st": f"{s}.kt", "q": f"{s}.kq", "f": f"{s}.kf", "ty": f"{s}.kty"}
    return found


def refused(a: Arena, attempts: list[str], names: dict[str, str]) -> list[str]:
    """The attempts that were not refused, each run plainly and hidden, on its own session."""
    passed = []
    for template in attempts:
        stmt = template.format(me=a.role("owner"), **names)
        for text in (stmt, hidden(stmt)):
            out = a.attack([text])
            if out.error is None:
                passed.append(text if text == stmt else f"hidden: {stmt}")
            else:
                assert out.sqlstate in {"42501", "42P01", "3F000", "0A000"}, out.describe()
    return passed


def held(a: Arena) -> dict[str, object]:
    """What is kept, read as the superuser: it must not change while kept."""
    names = kept(a)
    out: dict[str, object] = {}
    for key in ("t", "st"):
        if key in names:
            out[key] = a.direct(f"SELECT to_jsonb(x)::text FROM {names[key]} x ORDER BY 1")
            out[f"{key} owner"] = a.direct(
                f"SELECT relowner::regrole::text, relacl::text FROM pg_class WHERE oid = '{names[key]}'::regclass"
            )
    if "q" in names:
        out["q"] = a.direct(f"SELECT last_value, is_called FROM {names['q']}")
    out["dependents"] = a.direct(
        "SELECT count(*) FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.refclassid = 'pg_class'::regclass"
        " AND n.nspname LIKE 'softguard\\_q%' AND d.deptype = 'n'"
    )
    return out


@pytest.mark.parametrize(
    ("drop", "attempts"),
    [
        ("DROP TABLE kp", TABLE_ATTEMPTS + ROLE_ATTEMPTS),
        ("DROP SCHEMA ks CASCADE", SCHEMA_ATTEMPTS),
    ],
    ids=["table", "schema"],
)
def test_the_role_cannot_take_back_what_is_kept(
    arena: Arena, drop: str, attempts: list[str]
) -> None:
    setup(arena)
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([drop])
    assert out.error is None, out.describe()
    ops = [o["id"] for o in arena.ops_since(last)]
    assert len(ops) == 1, ops
    names = kept(arena)
    assert ("s" if drop.startswith("DROP SCHEMA") else "t") in names, names
    was = held(arena)
    assert refused(arena, attempts, names) == []
    assert held(arena) == was
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.snapshot() == before
    owners = arena.direct(
        "SELECT DISTINCT relowner::regrole::text FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'ks') AND c.relkind IN ('r', 'S')"
    )
    assert owners == [(arena.role("owner"),)]
    assert arena.direct("SELECT nextval('ks.kq')") == [(43,)]


@pytest.mark.parametrize(
    "tie",
    [
        "CREATE VIEW leak AS SELECT * FROM {t}",
        "CREATE FUNCTION leak() RETURNS SETOF {t} LANGUAGE sql AS 'SELECT * FROM {t}'",
        "CREATE TABLE leak (x {t})",
    ],
    ids=["view", "function_result", "column_of_row_type"],
)
@pytest.mark.parametrize("how", ["plain", "hidden"])
def test_live_objects_tied_to_a_kept_table_do_not_block_purge(
    arena: Arena, tie: str, how: str
) -> None:
    """A live object the role makes depend on the kept table (refused today: the role has no
    USAGE on the quarantine schema, and the proxy refuses its name) must neither read the
    kept rows nor keep purge from destroying the table."""
    setup(arena)
    last = arena.last_op()
    assert arena.attack(["DROP TABLE kp"]).error is None
    names = kept(arena)
    stmt = tie.format(**names)
    made = arena.attack([stmt if how == "plain" else hidden(stmt)])
    if made.error is None and tie.startswith("CREATE VIEW"):
        got = arena.attack(["SELECT * FROM leak"])
        assert got.error is not None, "the view read the kept rows"
    op = arena.ops_since(last)[0]["id"]
    r = arena.cli("purge", "--older-than", "0s", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    state = arena.direct("SELECT state FROM softguard.operations WHERE id = %s", [op])
    assert state == [("purged",)], (state, r.stdout)
    left = arena.direct(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname LIKE 'softguard\\_q%' AND c.relkind = 'r'"
    )
    assert left == [(0,)]
