"""Issue 10 item 5: make undo restore the wrong data while it reports success.

The deleting session picks its own output formats, leaves triggers that rewrite restored
rows, changes keys under update protection, or deletes through an inheritance parent.
What must hold: undo brings back every value byte for byte, or refuses and says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from attacker import Arena, Template, fixtures
from support.proxy import ProxyFactory

arena_template, arena = fixtures()


@pytest.fixture
def arena_upd(arena_template: Template, proxy_factory: ProxyFactory) -> Iterator[Arena]:
    """An arena behind a proxy that protects UPDATEs too."""
    yield from arena_template.clone(proxy_factory("--protect-updates"))


FORMATS = {
    "datestyle_sql_dmy": "SET DateStyle = 'SQL, DMY'",
    "datestyle_german": "SET DateStyle = 'German'",
    "datestyle_postgres_ymd": "SET DateStyle = 'Postgres, YMD'",
    "extra_float_digits": "SET extra_float_digits = -14",
    "intervalstyle_sql_standard": "SET IntervalStyle = 'sql_standard'",
    "intervalstyle_iso_8601": "SET IntervalStyle = 'iso_8601'",
    "intervalstyle_postgres_verbose": "SET IntervalStyle = 'postgres_verbose'",
    "bytea_escape": "SET bytea_output = 'escape'",
    "timezone": "SET TimeZone = 'Pacific/Chatham'",
    "search_path_empty": "SET search_path = ''",
}

KINDS = {
    "delete": "DELETE FROM public.typed",
    "truncate": "TRUNCATE public.typed",
    "drop_column": None,  # one statement per column, below
}


@pytest.mark.parametrize(
    ("fmt", "kind"), [(f, k) for f in sorted(FORMATS) for k in ("delete", "truncate")]
)
def test_undo_exact_whatever_the_session_formats(arena: Arena, fmt: str, kind: str) -> None:
    arena.attempt([FORMATS[fmt], KINDS[kind]])


DROP_COLUMN_FORMATS = {
    "datestyle_sql_dmy": ("SET DateStyle = 'SQL, DMY'", "d"),
    "extra_float_digits": ("SET extra_float_digits = -14", "f"),
    "intervalstyle_sql_standard": ("SET IntervalStyle = 'sql_standard'", "iv"),
    "bytea_escape": ("SET bytea_output = 'escape'", "b"),
}


@pytest.mark.parametrize("fmt", sorted(DROP_COLUMN_FORMATS))
def test_drop_column_undo_exact_whatever_the_formats(arena: Arena, fmt: str) -> None:
    setting, column = DROP_COLUMN_FORMATS[fmt]
    arena.attempt([setting, f"ALTER TABLE typed DROP COLUMN {column}"])


@pytest.mark.parametrize("fmt", ["datestyle_sql_dmy", "extra_float_digits", "bytea_escape"])
def test_update_undo_exact_whatever_the_formats(arena_upd: Arena, fmt: str) -> None:
    before, last = arena_upd.snapshot(), arena_upd.last_op()
    out = arena_upd.attack(
        [
            FORMATS[fmt],
            "UPDATE typed SET d = d + 1, f = f * 3, b = b || '\\x00'::bytea, "
            "iv = iv * 2, ts = ts + interval '1 hour', n = n + 1",
        ]
    )
    arena_upd.verdict(before, last, out)


TRIGGERS = {
    "rewrite_before_insert": (
        "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.name := 'forged'; RETURN NEW; END $$",
        "CREATE TRIGGER evil BEFORE INSERT ON parent FOR EACH ROW EXECUTE FUNCTION evil()",
    ),
    "drop_before_insert": (
        "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "CREATE TRIGGER evil BEFORE INSERT ON parent FOR EACH ROW EXECUTE FUNCTION evil()",
    ),
    "delete_after_insert": (
        "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN DELETE FROM parent WHERE id = NEW.id; RETURN NULL; END $$",
        "CREATE TRIGGER evil AFTER INSERT ON parent FOR EACH ROW EXECUTE FUNCTION evil()",
    ),
}


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_enable_always_trigger_cannot_change_restored_rows(arena: Arena, name: str) -> None:
    arena.attack([*TRIGGERS[name], "ALTER TABLE parent ENABLE ALWAYS TRIGGER evil"])
    arena.attempt(["DELETE FROM parent WHERE id IN (1, 2)"])


def test_enable_replica_trigger_cannot_change_restored_rows(arena: Arena) -> None:
    arena.attack(
        [*TRIGGERS["rewrite_before_insert"], "ALTER TABLE parent ENABLE REPLICA TRIGGER evil"]
    )
    arena.attempt(["DELETE FROM parent WHERE id IN (1, 2)"])


@pytest.mark.parametrize(
    "stmt",
    [
        "UPDATE big SET id = id + 1000 WHERE id <= 3",
        "UPDATE big SET id = -id, payload = 'gone' WHERE id <= 3",
    ],
)
def test_key_changing_update_is_undone_or_refused(arena_upd: Arena, stmt: str) -> None:
    arena_upd.attempt([stmt])


def test_update_without_key_is_reversible_or_refused(arena_upd: Arena) -> None:
    before, last = arena_upd.snapshot(), arena_upd.last_op()
    out = arena_upd.attack(["UPDATE nokey SET b = 'z'"])
    if out.error is None:
        assert not any("reversible" in n for n in out.notices) or arena_upd.ops_since(last)
    arena_upd.verdict(before, last, out)


def test_delete_without_key_is_undone(arena: Arena) -> None:
    arena.attempt(["DELETE FROM nokey WHERE a = 1"])


@pytest.mark.parametrize(
    "stmt", ["DELETE FROM animal", "DELETE FROM animal WHERE id >= 10", "TRUNCATE animal"]
)
def test_inheritance_children_get_their_rows_back(arena: Arena, stmt: str) -> None:
    arena.attempt([stmt])


def test_inheritance_update_undone_in_the_child(arena_upd: Arena) -> None:
    arena_upd.attempt(["UPDATE animal SET name = name || '!'"])


@pytest.mark.parametrize("setting", ["SET search_path = public", "SET search_path = ''"])
def test_undo_exact_for_name_typed_columns(arena: Arena, setting: str) -> None:
    """regclass / regtype values print relative to the deleting session's search_path."""
    arena.attack(
        [
            "CREATE TABLE refs (id int PRIMARY KEY, r regclass, t regtype, p regproc)",
            "INSERT INTO refs VALUES (1, 'parent', 'typed', 'lower'), "
            "(2, 'pg_class', 'int4', 'now')",
        ]
    )
    arena.attempt([setting, "DELETE FROM public.refs"])
