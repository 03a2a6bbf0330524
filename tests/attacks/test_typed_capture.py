"""Large DELETE / TRUNCATE captures kept typed, a table per capture (decision 0030).

Through a real `softguard serve`, as the application's role (the arena's owner: it owns its
tables and nothing else): a DELETE or TRUNCATE of at least `softguard._typed_min_rows()`
rows of a table of built-in types is kept in `softguard_rows.c<capture id>`, in the
table's own column types; below that, or with a user's type or collation in the table, it
stays text in softguard.captured_rows. Undo, purge and the purge archive read both forms
alike. The application's role cannot read, change or drop the capture tables, in any
spelling; a superuser's DELETE / TRUNCATE / UPDATE of them is refused by the ledger's
guard. Every comparison of the typed path is against the text path or a direct twin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attacker import REFUSAL_CODES, Arena, fixtures, uident

ROWS = 20_000  # twice the threshold: both sides of it fit in one table

COLUMNS = """(id int PRIMARY KEY, n numeric, t text, v varchar(20), ts timestamptz, d date,
              iv interval, f float8, b bytea, j jsonb, a int[], ok boolean)"""
FILL = f"""SELECT g, g * 1.25, 'row ' || g, left(md5(g::text), 20),
                  timestamptz '2024-01-01 00:00:00.123456+00' + g * interval '1 minute',
                  date '2000-01-01' + g, g * interval '1.5 second' + interval '1 month',
                  g / 3.0::float8, decode(md5(g::text), 'hex'), jsonb_build_object('g', g),
                  ARRAY[g, NULL, -g], g % 2 = 0
             FROM generate_series(1, {ROWS}) g"""
USER_TYPED = {
    "enum": ("mood", "(ARRAY['sad', 'ok', 'happy']::mood[])[g % 3 + 1]"),
    "domain": ("posint", "g"),
    "composite": ("pair", "ROW(g, 'p' || g)::pair"),
    "enum_array": ("mood[]", "ARRAY[(ARRAY['sad', 'ok']::mood[])[g % 2 + 1]]"),
    "collation": ('text COLLATE "sg_c"', "'c' || g"),
}
DATASET = (
    f"CREATE TABLE bulk {COLUMNS}; INSERT INTO bulk {FILL};"
    f" CREATE TABLE bulk_b {COLUMNS}; INSERT INTO bulk_b {FILL};"
    f" CREATE TABLE bulk_twin {COLUMNS}; INSERT INTO bulk_twin {FILL};"
    " CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
    " CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
    " CREATE TYPE pair AS (x int, y text);"
    " CREATE COLLATION sg_c (provider = libc, locale = 'C');"
    # a user's trigger that deletes from bulk twice in one statement
    " CREATE TABLE kick (id int);"
    " CREATE FUNCTION kick_bulk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    "  DELETE FROM bulk WHERE id <= 10; DELETE FROM bulk WHERE id > 10; RETURN NULL; END $$;"
    " CREATE TRIGGER kick_bulk AFTER INSERT ON kick FOR EACH STATEMENT"
    "  EXECUTE FUNCTION kick_bulk();"
    + "".join(
        f" CREATE TABLE with_{name} (id int PRIMARY KEY, u {typ});"
        f" INSERT INTO with_{name} SELECT g, {expr} FROM generate_series(1, 10000) g;"
        for name, (typ, expr) in USER_TYPED.items()
    )
    # the application's role owns its tables (the superuser made them here)
    + """ DO $$ DECLARE
              who text := (SELECT nspowner::regrole::text FROM pg_namespace
                            WHERE nspname = 'public');
              r record;
          BEGIN
              FOR r IN SELECT c.oid::regclass AS t FROM pg_class c
                        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' LOOP
                  EXECUTE format('ALTER TABLE %s OWNER TO %s', r.t, who);
              END LOOP;
              FOR r IN SELECT t.oid::regtype AS t FROM pg_type t
                        WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd')
              LOOP
                  EXECUTE format('ALTER TYPE %s OWNER TO %s', r.t, who);
              END LOOP;
          END $$"""
)

arena_template, arena = fixtures(DATASET)


# -- helpers ---------------------------------------------------------------------------------


def rows_of(a: Arena, table: str, where: str = "true") -> list[Any]:
    """A table's rows as jsonb (no session format can hide a difference), by id."""
    return [
        json.loads(r[0])
        for r in a.direct(
            f"SELECT to_jsonb(sg_r)::text FROM {table} sg_r WHERE {where} ORDER BY id"
        )
    ]


def delete(a: Arena, stmt: str) -> int:
    """Run a captured statement through the proxy as the application; its operation id."""
    last = a.last_op()
    out = a.attack([stmt])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in a.ops_since(last)]
    return int(op)


def captures(a: Arena, op: int) -> list[tuple[int, str, int, Any]]:
    return [
        (int(r[0]), r[1], int(r[2]), r[3])
        for r in a.direct(
            "SELECT id, event, n_rows, info FROM softguard.captures"
            " WHERE op_id = %s AND event IN ('delete', 'truncate') ORDER BY id",
            [op],
        )
    ]


def text_rows(a: Arena, cid: int) -> int:
    return int(
        a.direct("SELECT count(*) FROM softguard.captured_rows WHERE capture_id = %s", [cid])[0][0]
    )


def typed_tables(a: Arena) -> list[str]:
    return [
        r[0]
        for r in a.direct(
            "SELECT relname::text FROM pg_class"
            " WHERE relnamespace = 'softguard_rows'::regnamespace AND relkind = 'r' ORDER BY 1"
        )
    ]


def assert_typed(a: Arena, op: int, n: int) -> int:
    """The operation's one capture is typed, with its n rows in its own table only."""
    ((cid, _, n_rows, info),) = captures(a, op)
    assert (n_rows, info) == (n, {"typed": True})
    assert a.direct(f"SELECT count(*) FROM softguard_rows.c{cid}")[0][0] == n
    assert text_rows(a, cid) == 0
    return cid


def assert_text(a: Arena, op: int, n: int) -> int:
    ((cid, _, n_rows, info),) = captures(a, op)
    assert (n_rows, info) == (n, None)
    assert text_rows(a, cid) == n
    assert f"c{cid}" not in typed_tables(a)
    return cid


def undo(a: Arena, *ops: int) -> None:
    r = a.undo(list(ops))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def threshold(arena: Arena) -> int:
    return int(arena.direct("SELECT softguard._typed_min_rows()")[0][0])


@pytest.fixture
def text_only(arena: Arena) -> Iterator[Any]:
    """A switch: while on, the ledger keeps every capture as text (the threshold out of
    reach), so the same statement can be run down both paths and the results compared."""

    def switch(on: bool) -> None:
        limit = "9223372036854775807" if on else str(ROWS // 2)
        arena.direct(
            "CREATE OR REPLACE FUNCTION softguard._typed_min_rows() RETURNS bigint"
            f" LANGUAGE sql IMMUTABLE AS $$ SELECT {limit}::pg_catalog.int8 $$"
        )

    yield switch
    switch(False)


# -- what is kept, and undo -------------------------------------------------------------------


def test_large_delete_is_kept_typed_and_undone_exactly(arena: Arena) -> None:
    before = rows_of(arena, "bulk")
    op = delete(arena, "DELETE FROM bulk WHERE id <= 15000")
    arena.direct("DELETE FROM bulk_twin WHERE id <= 15000")  # the same statement, direct
    assert rows_of(arena, "bulk") == rows_of(arena, "bulk_twin")
    assert_typed(arena, op, 15000)
    # a row written since stays; the captured ones come back exactly
    assert arena.attack(["INSERT INTO bulk (id, t) VALUES (30001, 'since')"]).error is None
    undo(arena, op)
    assert rows_of(arena, "bulk", "id <> 30001") == before
    assert [r["t"] for r in rows_of(arena, "bulk", "id = 30001")] == ["since"]


def test_threshold_boundary(arena: Arena, threshold: int) -> None:
    before = rows_of(arena, "bulk")
    below = delete(arena, f"DELETE FROM bulk WHERE id < {threshold}")
    at = delete(arena, f"DELETE FROM bulk WHERE id >= {threshold} AND id < {2 * threshold}")
    assert_text(arena, below, threshold - 1)
    assert_typed(arena, at, threshold)
    undo(arena, below, at)
    assert rows_of(arena, "bulk") == before


def test_one_operation_with_a_text_and_a_typed_capture(arena: Arena) -> None:
    """A user's trigger deleting from one table twice within one statement: one operation,
    one capture small (text), one large (typed), of the same table; undo reads both forms
    in one pass."""
    before, last = rows_of(arena, "bulk"), arena.last_op()
    out = arena.attack(["INSERT INTO kick VALUES (1)"])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    forms = [(n, info) for _, _, n, info in captures(arena, op)]
    assert forms == [(10, None), (ROWS - 10, {"typed": True})]
    undo(arena, op)
    assert rows_of(arena, "bulk") == before


def test_truncate_is_kept_typed(arena: Arena) -> None:
    snap, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["TRUNCATE bulk"])
    assert out.error is None, out.describe()
    (op,) = [o["id"] for o in arena.ops_since(last)]
    assert_typed(arena, op, ROWS)
    arena.verdict(snap, last, out)  # undone through the CLI: the data exactly as before


@pytest.mark.parametrize("name", list(USER_TYPED))
def test_a_user_type_or_collation_stays_text(arena: Arena, name: str) -> None:
    """A capture table must never depend on a user's object: those rows stay text."""
    before = rows_of(arena, f"with_{name}")
    op = delete(arena, f"DELETE FROM with_{name}")
    assert_text(arena, op, 10000)
    assert typed_tables(arena) == []
    undo(arena, op)
    assert rows_of(arena, f"with_{name}") == before


def test_a_publication_for_all_tables_keeps_captures_text(arena: Arena) -> None:
    """It would publish every capture table to subscribers that have none of them."""
    arena.direct("CREATE PUBLICATION sg_everything FOR ALL TABLES")
    before = rows_of(arena, "bulk")
    op = delete(arena, "DELETE FROM bulk")
    assert_text(arena, op, ROWS)
    assert typed_tables(arena) == []
    undo(arena, op)
    assert rows_of(arena, "bulk") == before


def test_rollback_keeps_no_capture_table(arena: Arena) -> None:
    last = arena.last_op()
    out = arena.attack(["BEGIN", "DELETE FROM bulk", "ROLLBACK"])
    assert out.error is None, out.describe()
    assert arena.ops_since(last) == []
    assert typed_tables(arena) == []
    assert arena.direct("SELECT count(*) FROM bulk")[0][0] == ROWS


def test_the_budget_still_refuses_before_anything_is_kept(arena: Arena) -> None:
    last = arena.last_op()
    out = arena.attack(
        ["DELETE FROM bulk"],
        via="direct",
        options="-c softguard.capture=delete -c softguard.max_capture_bytes=100000",
    )
    assert out.sqlstate == "54000", out.describe()
    assert arena.ops_since(last) == []
    assert typed_tables(arena) == []
    assert arena.direct("SELECT count(*) FROM bulk")[0][0] == ROWS


CHANGES = {
    "added": "ALTER TABLE {t} ADD COLUMN extra int DEFAULT 7",
    "dropped": "ALTER TABLE {t} DROP COLUMN v",
    "renamed": "ALTER TABLE {t} RENAME COLUMN t TO t2",
    "retyped": "ALTER TABLE {t} ALTER COLUMN f TYPE numeric",
    "retyped_narrower": "ALTER TABLE {t} ALTER COLUMN n TYPE int",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_undo_after_a_column_change_matches_the_text_path(
    arena: Arena, text_only: Any, change: str
) -> None:
    """The same DELETE down both paths, the same change to both tables since: the undo of
    the typed capture does what the undo of the text capture does (restores the same rows,
    or refuses the same way)."""
    text_only(True)
    op_text = delete(arena, "DELETE FROM bulk_b WHERE id > 5000")
    text_only(False)
    op_typed = delete(arena, "DELETE FROM bulk WHERE id > 5000")
    assert_text(arena, op_text, ROWS - 5000)
    assert_typed(arena, op_typed, ROWS - 5000)
    for t in ("bulk", "bulk_b"):
        arena.direct(CHANGES[change].format(t=t))
    typed, text = arena.undo([op_typed]), arena.undo([op_text])
    assert typed.returncode == text.returncode, (typed.stdout + typed.stderr, text.stdout)
    if text.returncode != 0:
        assert text.stderr.replace("bulk_b", "bulk").replace(str(op_text), "OP") == (
            typed.stderr.replace(str(op_typed), "OP")
        )
    assert rows_of(arena, "bulk") == rows_of(arena, "bulk_b")


# -- purge ------------------------------------------------------------------------------------


def test_purge_drops_the_table_and_archives_the_same_csv(
    arena: Arena, text_only: Any, tmp_path: Path
) -> None:
    text_only(True)
    op_text = delete(arena, "DELETE FROM bulk_b")
    text_only(False)
    op_typed = delete(arena, "DELETE FROM bulk")
    cid_text = assert_text(arena, op_text, ROWS)
    cid_typed = assert_typed(arena, op_typed, ROWS)
    size = arena.direct("SELECT softguard.op_size(%s)", [op_typed])[0][0]
    table_size = arena.direct(f"SELECT pg_total_relation_size('softguard_rows.c{cid_typed}')")[0][0]
    assert size == table_size
    r = arena.cli("purge", "--older-than", "0s", "--archive", str(tmp_path), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert typed_tables(arena) == []
    assert (
        arena.direct(
            "SELECT count(*) FROM softguard.captures WHERE op_id IN (%s, %s)", [op_text, op_typed]
        )[0][0]
        == 0
    )
    text_csv = (tmp_path / f"op-{op_text}" / f"rows-{cid_text}.csv").read_bytes()
    typed_csv = (tmp_path / f"op-{op_typed}" / f"rows-{cid_typed}.csv").read_bytes()
    assert typed_csv == text_csv
    manifest = json.loads((tmp_path / f"op-{op_typed}" / "manifest.json").read_text())
    assert [c.get("file_format") for c in manifest["captures"] if c.get("file")] == ["columns"]


# -- the application's role against the capture tables --------------------------------------

ATTACKS = {
    "drop": "DROP TABLE {s}.c{cid}",
    "drop_cascade": "DROP TABLE {s}.c{cid} CASCADE",
    "truncate": "TRUNCATE {s}.c{cid}",
    "delete": "DELETE FROM {s}.c{cid}",
    "update": "UPDATE {s}.c{cid} SET t = 'forged'",
    "insert": "INSERT INTO {s}.c{cid} (id) VALUES (-1)",
    "read": "SELECT count(*) FROM {s}.c{cid}",
    "rename": "ALTER TABLE {s}.c{cid} RENAME TO gone",
    "disable_guard": "ALTER TABLE {s}.c{cid} DISABLE TRIGGER ALL",
    "drop_schema": "DROP SCHEMA {s} CASCADE",
    "do_block": "DO $$ BEGIN EXECUTE 'DROP TABLE soft' || 'guard_rows.c' || {cid}; END $$",
    "do_truncate": "DO $$ BEGIN EXECUTE 'TRUNC' || 'ATE soft' || 'guard_rows.c' || {cid}; END $$",
    "do_delete": "DO $$ BEGIN EXECUTE 'DELETE FROM soft' || 'guard_rows.c' || {cid}; END $$",
    "do_alter": "DO $$ BEGIN EXECUTE 'ALTER TABLE soft' || 'guard_rows.c' || {cid}"
    " || ' RENAME TO gone'; END $$",
}
WHO_VIA = [("owner", "proxy"), ("owner", "direct"), ("other", "proxy")]


@pytest.mark.parametrize(("who", "via"), WHO_VIA, ids=[f"{w}-{v}" for w, v in WHO_VIA])
def test_the_application_cannot_touch_a_capture_table(arena: Arena, who: str, via: str) -> None:
    before = rows_of(arena, "bulk")
    op = delete(arena, "DELETE FROM bulk")
    cid = assert_typed(arena, op, ROWS)
    kept = arena.direct(
        f"SELECT md5(string_agg(r::text, ',' ORDER BY id)) FROM softguard_rows.c{cid} r"
    )
    # through the proxy the schema's name is spelt as a U& identifier too
    spellings = (
        ["softguard_rows", uident("softguard_rows")] if via == "proxy" else ["softguard_rows"]
    )
    for name, stmt in ATTACKS.items():
        for s in spellings:
            out = arena.attack([stmt.format(s=s, cid=cid)], who=who, via=via)
            assert out.sqlstate in REFUSAL_CODES, (name, s, out.describe())
    assert typed_tables(arena) == [f"c{cid}"]
    assert kept == arena.direct(
        f"SELECT md5(string_agg(r::text, ',' ORDER BY id)) FROM softguard_rows.c{cid} r"
    )
    assert (
        arena.direct(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass"
            " AND tgname = 'zz_softguard_guard_ledger' AND tgenabled = 'A'",
            [f"softguard_rows.c{cid}"],
        )[0][0]
        == 1
    )
    undo(arena, op)
    assert rows_of(arena, "bulk") == before


@pytest.mark.parametrize("stmt", ["DELETE FROM {t}", "TRUNCATE {t}", "UPDATE {t} SET t = 'x'"])
def test_the_ledger_guard_refuses_even_a_superuser(arena: Arena, stmt: str) -> None:
    op = delete(arena, "DELETE FROM bulk")
    cid = assert_typed(arena, op, ROWS)
    out = arena.attack([stmt.format(t=f"softguard_rows.c{cid}")], who="super", via="direct")
    assert out.sqlstate == "42501", out.describe()
    assert arena.direct(f"SELECT count(*) FROM softguard_rows.c{cid}")[0][0] == ROWS
