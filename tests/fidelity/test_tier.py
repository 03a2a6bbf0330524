"""The fidelity tier (issue 16): hundreds of DROP / ALTER statements, generated over a
schema with many object kinds, run through softguard and directly on twins as a
non-superuser application role that owns the objects (and as the superuser). Each
statement runs in a transaction that is rolled back afterwards, so every statement meets
the same schema; compared per statement: command tags, rows, errors (every field),
notices (softguard's own "reversible as operation N" NOTICE set aside), transaction
status, and a catalog snapshot a non-superuser can read, taken after the statement.
Known remaining differences: xfail(strict=True) below, listed in README's limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fidelity.harness import APP_PW, APP_ROLE, app_role, grant_create, install_ledger
from support.catalog_check import inconsistencies
from support.drop_harness import Seen, psycopg_step
from support.drop_harness import _pg_err as pg_err
from support.drop_harness import _pg_notice as pg_notice

__all__ = ["app_role"]  # the fixture

SCHEMA = r"""
CREATE SCHEMA fx;
CREATE TYPE fx.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE fx.pair AS (a int, b text);
CREATE TYPE fx.span AS RANGE (subtype = int4);
CREATE DOMAIN fx.pos AS int CHECK (VALUE > 0);
CREATE DOMAIN fx.tag AS text;
CREATE DOMAIN fx.spanned AS fx.span;
CREATE SEQUENCE fx.seq START 10;
CREATE TABLE fx.parent (id int PRIMARY KEY, name text NOT NULL, m fx.mood,
                        p fx.pos, note fx.tag, g int GENERATED ALWAYS AS (id * 2) STORED,
                        n int DEFAULT nextval('fx.seq'));
CREATE TABLE fx.child (id int PRIMARY KEY, parent_id int REFERENCES fx.parent,
                       amount numeric(10, 2), pr fx.pair, s fx.span, UNIQUE (parent_id, id));
CREATE TABLE fx.nokey (a int, b text, c date);
CREATE TABLE fx.ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE fx.base (id int PRIMARY KEY, v text);
CREATE TABLE fx.heir (extra int) INHERITS (fx.base);
CREATE TABLE fx.part (k int, v text) PARTITION BY RANGE (k);
CREATE TABLE fx.part_lo PARTITION OF fx.part FOR VALUES FROM (0) TO (100);
CREATE TABLE fx.part_hi PARTITION OF fx.part FOR VALUES FROM (100) TO (200);
INSERT INTO fx.parent (id, name, m, p, note)
    VALUES (1, 'a', 'ok', 1, 't'), (2, 'b', 'sad', 2, NULL);
INSERT INTO fx.child VALUES (1, 1, 9.5, ROW(1, 'x'), '[1,3)'), (2, 2, 1, NULL, NULL);
INSERT INTO fx.nokey VALUES (1, 'x', '2025-01-01'), (1, 'x', '2025-01-01');
INSERT INTO fx.ident (v) VALUES ('one'), ('two');
INSERT INTO fx.base VALUES (1, 'b'); INSERT INTO fx.heir VALUES (2, 'h', 3);
INSERT INTO fx.part VALUES (1, 'lo'), (150, 'hi');
CREATE INDEX parent_name_idx ON fx.parent (name);
CREATE INDEX child_amount_idx ON fx.child (amount) WHERE amount > 0;
CREATE VIEW fx.v_parent AS SELECT id, name FROM fx.parent;
CREATE VIEW fx.v_join AS
    SELECT p.name, c.amount FROM fx.parent p JOIN fx.child c ON c.parent_id = p.id;
CREATE VIEW fx.v_v AS SELECT name FROM fx.v_parent;
CREATE VIEW fx.v_cat AS SELECT relname FROM pg_class WHERE relname LIKE 'fx%';
CREATE MATERIALIZED VIEW fx.mv AS SELECT count(*) AS n FROM fx.child;
CREATE FUNCTION fx.f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';
CREATE FUNCTION fx.f(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1';
CREATE FUNCTION fx.outs(IN a int, OUT b int, OUT c text) LANGUAGE sql AS 'SELECT 1, ''x''';
CREATE FUNCTION fx.va(a int, VARIADIC r int[]) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION fx.def(a int, b int DEFAULT 2) RETURNS int LANGUAGE sql AS 'SELECT a + b';
CREATE PROCEDURE fx.pr(IN a int, b int, INOUT c int) LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE fx.pr(IN a int, b text, INOUT c int) LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION fx.trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER parent_trg BEFORE UPDATE ON fx.parent FOR EACH ROW EXECUTE FUNCTION fx.trg();
CREATE AGGREGATE fx.total(int) (SFUNC = int4pl, STYPE = int);
CREATE VIEW fx.v_fun AS SELECT fx.f(id) AS f1 FROM fx.parent;
CREATE FUNCTION fx.pair_text(fx.pair) RETURNS text LANGUAGE sql AS 'SELECT ($1).b';
CREATE CAST (fx.pair AS text) WITH FUNCTION fx.pair_text(fx.pair);
CREATE FUNCTION fx.eq(int, text) RETURNS bool LANGUAGE sql AS 'SELECT $1::text = $2';
CREATE OPERATOR fx.=== (LEFTARG = int, RIGHTARG = text, FUNCTION = fx.eq);
CREATE RULE parent_rule AS ON DELETE TO fx.v_parent DO INSTEAD NOTHING;
ALTER TABLE fx.child ENABLE ROW LEVEL SECURITY;
CREATE POLICY child_pol ON fx.child USING (amount > 0);
CREATE STATISTICS fx.child_stats ON parent_id, amount FROM fx.child;
COMMENT ON TABLE fx.parent IS 'the parent';
CREATE SCHEMA fx_empty;
"""

TABLE_COLUMNS = {
    "fx.parent": ["id", "name", "m", "p", "note", "g", "n"],
    "fx.child": ["id", "parent_id", "amount", "pr", "s"],
    "fx.nokey": ["a", "b", "c"],
    "fx.ident": ["id", "v"],
    "fx.base": ["id", "v"],
    "fx.heir": ["extra", "v"],
    "fx.part": ["k", "v"],
    "fx.part_lo": ["v"],
}

OBJECTS = {
    "TABLE": [
        "fx.parent",
        "fx.child",
        "fx.nokey",
        "fx.ident",
        "fx.base",
        "fx.heir",
        "fx.part",
        "fx.part_lo",
        "fx.v_parent",
        "fx.mv",
    ],
    "VIEW": ["fx.v_parent", "fx.v_join", "fx.v_v", "fx.v_cat", "fx.v_fun", "fx.parent"],
    "MATERIALIZED VIEW": ["fx.mv", "fx.v_join"],
    "SEQUENCE": ["fx.seq", "fx.ident_id_seq", "fx.parent"],
    "INDEX": ["fx.parent_name_idx", "fx.child_amount_idx", "fx.parent_pkey", "fx.parent"],
    "TYPE": ["fx.mood", "fx.pair", "fx.span", "fx.pos", "fx.parent", "fx.spanned"],
    "DOMAIN": ["fx.pos", "fx.tag", "fx.spanned", "fx.mood"],
    "FUNCTION": [
        "fx.f(int)",
        "fx.f(text)",
        "fx.f",
        "fx.outs(int)",
        "fx.outs(in int, out int, out text)",
        "fx.va(int, int[])",
        "fx.va(a int, VARIADIC r int[])",
        "fx.def(int, int)",
        "fx.def(int)",
        "fx.trg()",
        "fx.eq(int, text)",
        "fx.pair_text(fx.pair)",
        "fx.pr(int, int, int)",
    ],
    "PROCEDURE": [
        "fx.pr(in int, int, int)",
        "fx.pr(int, text, inout int)",
        "fx.pr",
        "fx.pr(int, int)",
        "fx.f(int)",
    ],
    "ROUTINE": ["fx.f(int)", "fx.pr(int, text, int)"],
    "AGGREGATE": ["fx.total(int)", "fx.total(text)"],
    "SCHEMA": ["fx", "fx_empty"],
    "STATISTICS": ["fx.child_stats"],
    "CAST": ["(fx.pair AS text)", "(fx.mood AS int)"],
    "OPERATOR": ["fx.=== (int, text)", "fx.=== (text, int)"],
    "TRIGGER": ["parent_trg ON fx.parent", "nosuch ON fx.parent"],
    "RULE": ["parent_rule ON fx.v_parent"],
    "POLICY": ["child_pol ON fx.child"],
}


def statements() -> Iterator[str]:
    for kind, names in OBJECTS.items():
        for name in names:
            yield f"DROP {kind} {name}"
            if kind not in ("CAST", "OPERATOR", "TRIGGER", "RULE", "POLICY"):
                yield f"DROP {kind} {name} CASCADE"
            yield (
                f"DROP {kind} IF EXISTS {name}, fx.nosuch"
                if "(" not in name and " " not in name
                else f"DROP {kind} IF EXISTS {name}"
            )
        yield (
            f"DROP {kind} fx_nosuch.x"
            if kind not in ("CAST", "OPERATOR", "TRIGGER", "RULE", "POLICY", "SCHEMA")
            else f"DROP {kind} IF EXISTS nosuch"
        )
    for table, cols in TABLE_COLUMNS.items():
        for col in cols:
            yield f"ALTER TABLE {table} DROP COLUMN {col}"
            yield f"ALTER TABLE {table} DROP COLUMN {col} CASCADE"
            yield f"ALTER TABLE {table} ALTER COLUMN {col} TYPE text"
        yield f"ALTER TABLE {table} DROP COLUMN IF EXISTS nosuch"
        yield f"ALTER TABLE {table} DROP COLUMN {cols[-1]}, ADD COLUMN added int DEFAULT 7"
    yield "DROP TABLE fx.child, fx.base CASCADE"
    yield "DROP VIEW fx.v_v, fx.v_parent"
    yield "DROP TYPE fx.mood, fx.pair CASCADE"
    yield "DROP FUNCTION fx.f(int), fx.f(text) CASCADE"
    yield "ALTER TABLE fx.parent ALTER COLUMN p TYPE bigint, ALTER COLUMN name TYPE varchar(20)"


STATEMENTS = list(dict.fromkeys(statements()))

SNAPSHOT = """
SELECT 'rel', n.nspname, c.relname, c.relkind::text, c.relowner::regrole::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('fx', 'fx_empty')
UNION ALL
SELECT 'col', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'fx' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'proc', n.nspname, p.oid::regprocedure::text, p.prokind::text, NULL
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'fx'
UNION ALL
SELECT 'type', n.nspname, t.typname, t.typtype::text, NULL
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'fx'
UNION ALL
SELECT 'con', c.conrelid::regclass::text, c.conname, c.contype::text, pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'fx'
UNION ALL
SELECT 'trg', t.tgrelid::regclass::text, t.tgname, NULL, NULL FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'fx' AND NOT t.tgisinternal AND t.tgname NOT LIKE %(hidden)s
UNION ALL
SELECT 'schema', nspname, NULL, NULL, NULL FROM pg_namespace WHERE nspname LIKE 'fx%%'
UNION ALL
SELECT 'cast', castsource::regtype::text, casttarget::regtype::text, NULL, NULL FROM pg_cast
 WHERE castsource::regtype::text LIKE 'fx.%%'
UNION ALL
SELECT 'op', oprname, oprleft::regtype::text, oprright::regtype::text, NULL FROM pg_operator
 WHERE oprnamespace = 'fx'::regnamespace
UNION ALL
SELECT 'view', schemaname, viewname, definition, NULL FROM pg_views WHERE schemaname = 'fx'
UNION ALL
SELECT 'idx', schemaname, indexname, indexdef, NULL FROM pg_indexes WHERE schemaname = 'fx'
ORDER BY 1, 2, 3, 4, 5
"""


# softguard's capture triggers show in pg_trigger (issue 16 class 1, another change's
# work): left out here, checked on their own by test_capture_triggers_invisible.
HIDDEN_TRIGGERS = "zz\\_softguard\\_capture\\_%"


def _snapshot(conn: psycopg.Connection[Any], hidden: str = HIDDEN_TRIGGERS) -> Any:
    try:
        return conn.execute(SNAPSHOT, {"hidden": hidden}).fetchall()
    except psycopg.Error as e:
        return ("error", e.sqlstate)


def _set_aside(seen: Seen) -> None:
    seen.notices = [
        n for n in seen.notices if not (n[0] == "NOTICE" and (n[2] or "").startswith("softguard:"))
    ]


def _one(conn: psycopg.Connection[Any], stmt: str) -> Seen:
    seen = Seen()

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        seen.notices.append(pg_notice(d))

    conn.add_notice_handler(on_notice)
    try:
        seen.value = psycopg_step(conn, stmt, "simple")
    except psycopg.Error as e:
        seen.error = pg_err(e)
    finally:
        conn.remove_notice_handler(on_notice)
    seen.tx = conn.info.transaction_status.name
    _set_aside(seen)
    return seen


def run_all(
    dsn: str, stmts: list[str], broken: dict[str, Any] | None = None
) -> list[tuple[Seen, Any]]:
    """Each statement in its own rolled-back transaction: BEGIN, the statement, the
    snapshot, the catalog consistency check (into `broken`, by statement), ROLLBACK."""
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in stmts:
            conn.execute("BEGIN")
            seen = _one(conn, stmt)
            snap = _snapshot(conn)
            if broken is not None and conn.info.transaction_status.name == "INTRANS":
                found = inconsistencies(conn)
                if found:
                    broken[stmt] = found
            conn.execute("ROLLBACK")
            out.append((seen, snap))
    return out


# Refusals that stay by design (README "Known limits", decision 0022): the proxied
# statement fails with 0A000, a HINT, and one of these messages, where PostgreSQL runs it.
KEYLESS = "no key identifies the rows at undo time"
REFUSALS = {
    r"softguard cannot keep column .*: the table has no primary key or unique NOT NULL": KEYLESS,
    r"softguard cannot keep the values of .* across its type change: ": KEYLESS,
    r"softguard cannot (yet )?keep (materialized view|view|rule) .*, which reads "
    r"(a )?column": (
        "a view an earlier operation holds that reads a column a type's CASCADE takes, or a "
        "routine using the row type of a materialized view that goes (decision 0035)"
    ),
    r"softguard cannot yet keep identity or generated column": "type change of such a column",
    r"softguard cannot yet keep identity column": "identity column",
    r"softguard cannot keep (cast|operator) .* \(dropped by this statement\)": (
        "casts and operators a CASCADE takes"
    ),
    r"softguard: dropping .* would take .* with it, which cannot be made reversible": (
        "a column's CASCADE that takes a view"
    ),
}


def _known_refusal(p: Seen) -> str | None:
    if p.error is None or p.error.sqlstate != "0A000" or not p.error.hint:
        return None
    for pattern, why in REFUSALS.items():
        if re.match(pattern, p.error.message or ""):
            return why
    return None


def differences(
    direct: list[tuple[Seen, Any]], proxied: list[tuple[Seen, Any]]
) -> tuple[dict[str, str], dict[str, str]]:
    """-> (unexpected differences, known refusals), by statement."""
    diffs: dict[str, str] = {}
    known: dict[str, str] = {}
    for stmt, (d, ds), (p, ps) in zip(STATEMENTS, direct, proxied, strict=True):
        if (p.value, p.error, p.notices, p.tx) != (d.value, d.error, d.notices, d.tx):
            why = _known_refusal(p)
            if why is not None:
                known[stmt] = why
            else:
                diffs[stmt] = f"through softguard: {p}\ndirect: {d}"
        elif ps != ds:
            diffs[stmt] = "catalog snapshot: " + repr(
                ([r for r in ps if r not in ds], [r for r in ds if r not in ps])
            )
    return diffs, known


# The runs of the module, by role: test_no_refusals_left judges the very run
# test_generated_statements_like_direct[superuser] judged (the same statements on the same
# schema, deterministic), so the ~700 statements, snapshots and catalog checks run once.
_RUNS: dict[str, tuple[list[Any], list[Any]]] = {}


def _run_twins(proxy: Any, sg: Any, twins: Any, role: str) -> tuple[list[Any], list[Any]]:
    if role not in _RUNS:
        _RUNS[role] = _run_twins_now(proxy, sg, twins, role)
    return _RUNS[role]


def _run_twins_now(proxy: Any, sg: Any, twins: Any, role: str) -> tuple[list[Any], list[Any]]:
    a, b = twins()
    user, pw = (APP_ROLE, APP_PW) if role == "app" else (None, None)
    for db in (a, b):
        grant_create(sg, db)
        dsn = sg.server.dsn(db, user=user, password=pw) if user else sg.dsn(db)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(SCHEMA.encode())
    install_ledger(sg, b)
    direct_dsn = sg.server.dsn(a, user=user, password=pw) if user else sg.dsn(a)
    broken: dict[str, Any] = {}  # issue 16 class 4: after each statement, on both twins
    direct = run_all(direct_dsn, STATEMENTS, broken)
    proxied = run_all(proxy.dsn(b, user=user, password=pw), STATEMENTS, broken)
    assert not broken, f"catalog inconsistent after: {broken}"
    return direct, proxied


@pytest.mark.parametrize("role", ["app", "superuser"])
def test_generated_statements_like_direct(
    proxy: Any, sg: Any, twins: Any, app_role: str, role: str
) -> None:
    """Every statement answers as directly, except the documented refusals (0A000 + HINT)."""
    assert len(STATEMENTS) >= 300, len(STATEMENTS)
    direct, proxied = _run_twins(proxy, sg, twins, role)
    assert sum(1 for d, _ in direct if d.error is None) >= 100  # not all refused by PostgreSQL
    diffs, known = differences(direct, proxied)
    assert not diffs, "\n\n".join(f"{k}\n{v}" for k, v in list(diffs.items())[:30]) + (
        f"\n({len(diffs)} differ)"
    )
    # the refusals stay a minority of the generated statements
    assert len(known) < len(STATEMENTS) // 4, known


@pytest.mark.xfail(strict=True, reason="issue 16 class 1: capture triggers show in pg_trigger")
def test_capture_triggers_invisible(proxy: Any, sg: Any, twins: Any, app_role: str) -> None:
    a, b = twins()
    for db in (a, b):
        grant_create(sg, db)
        with psycopg.connect(sg.dsn(db), autocommit=True) as c:
            c.execute(SCHEMA.encode())
    install_ledger(sg, b)
    stmt = "DROP VIEW fx.v_cat"
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute(stmt)
        proxied = _snapshot(c, hidden="")
    with psycopg.connect(sg.dsn(a), autocommit=True) as c:
        c.execute(stmt)
        direct = _snapshot(c, hidden="")
    assert proxied == direct


@pytest.mark.xfail(strict=True, reason="the documented refusals (README Known limits)")
def test_no_refusals_left(proxy: Any, sg: Any, twins: Any, app_role: str) -> None:
    direct, proxied = _run_twins(proxy, sg, twins, "superuser")
    assert differences(direct, proxied) == ({}, {})
