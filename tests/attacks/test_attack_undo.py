"""Issue 10 item 5: make undo restore the wrong data while it reports success.

The deleting session picks its own output formats, leaves triggers that rewrite restored
rows, changes keys under update protection, or deletes through an inheritance parent.
What must hold: undo brings back every value byte for byte, or refuses and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from attacker import Arena, Template, describe_diff, fixtures
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


# -- triggers and rules that fire in replica mode ---------------------------------------------

EVIL_REWRITE = (
    "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.name := 'forged'; RETURN NEW; END $$"
)
MORE_TRIGGERS = {
    "before_row_changes_new_on_insert_or_update": (
        EVIL_REWRITE,
        "CREATE TRIGGER evil BEFORE INSERT OR UPDATE ON parent FOR EACH ROW "
        "EXECUTE FUNCTION evil()",
    ),
    "after_row_deletes_on_insert_or_update": (
        "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN DELETE FROM parent WHERE id = NEW.id; RETURN NULL; END $$",
        "CREATE TRIGGER evil AFTER INSERT OR UPDATE ON parent FOR EACH ROW EXECUTE FUNCTION evil()",
    ),
    "after_statement_empties_the_table": (
        "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN DELETE FROM parent WHERE id > 2; RETURN NULL; END $$",
        "CREATE TRIGGER evil AFTER INSERT ON parent FOR EACH STATEMENT EXECUTE FUNCTION evil()",
    ),
}


def user_trigger_states(arena: Arena) -> list[tuple[Any, ...]]:
    return arena.direct(
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
        "WHERE NOT tgisinternal AND tgname NOT LIKE 'zz_softguard%' "
        "UNION ALL SELECT ev_class::regclass::text, rulename, ev_enabled FROM pg_rewrite "
        "WHERE rulename <> '_RETURN' AND ev_class >= 16384 ORDER BY 1, 2"
    )


@pytest.mark.parametrize("mode", ["ALWAYS", "REPLICA"])
@pytest.mark.parametrize("name", sorted(MORE_TRIGGERS))
@pytest.mark.parametrize(
    "stmt",
    ["DELETE FROM parent WHERE id IN (1, 2)", "UPDATE parent SET name = name || '?' WHERE id <= 2"],
)
def test_replica_firing_triggers_cannot_change_restored_rows(
    arena_upd: Arena, mode: str, name: str, stmt: str
) -> None:
    arena_upd.attack([*MORE_TRIGGERS[name], f"ALTER TABLE parent ENABLE {mode} TRIGGER evil"])
    states = user_trigger_states(arena_upd)
    arena_upd.attempt([stmt])
    # and they are back exactly as the owner left them
    assert user_trigger_states(arena_upd) == states


@pytest.mark.parametrize("mode", ["ALWAYS", "REPLICA"])
def test_replica_firing_rule_cannot_drop_restored_rows(arena: Arena, mode: str) -> None:
    arena.attack(
        [
            "CREATE RULE evil AS ON INSERT TO parent DO INSTEAD NOTHING",
            f"ALTER TABLE parent ENABLE {mode} RULE evil",
        ]
    )
    states = user_trigger_states(arena)
    arena.attempt(["DELETE FROM parent WHERE id IN (1, 2)"])
    assert user_trigger_states(arena) == states


def test_always_trigger_on_a_partition_cannot_change_restored_rows(arena: Arena) -> None:
    arena.attack(
        [
            "CREATE TABLE part (id int PRIMARY KEY, name text) PARTITION BY RANGE (id)",
            "CREATE TABLE part_lo PARTITION OF part FOR VALUES FROM (0) TO (100)",
            "CREATE TABLE part_hi PARTITION OF part FOR VALUES FROM (100) TO (200)",
            "INSERT INTO part SELECT g, 'p' || g FROM generate_series(90, 110) g",
            EVIL_REWRITE,
            "CREATE TRIGGER evil BEFORE INSERT ON part FOR EACH ROW EXECUTE FUNCTION evil()",
            "ALTER TABLE part ENABLE ALWAYS TRIGGER evil",
            "ALTER TABLE part_hi ENABLE REPLICA TRIGGER evil",
        ]
    )
    states = user_trigger_states(arena)
    arena.attempt(["DELETE FROM part WHERE id % 2 = 0"])
    assert user_trigger_states(arena) == states


# -- UPDATEs that change keys -------------------------------------------------------------------

KEYED_TABLES = [
    "CREATE TABLE ck (a int, b int, v text, PRIMARY KEY (a, b))",
    "INSERT INTO ck SELECT g % 3, g, 'v' || g FROM generate_series(1, 12) g",
    "CREATE TABLE sw (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)",
    "INSERT INTO sw SELECT g, 'sw' || g FROM generate_series(1, 4) g",
    "CREATE TABLE gen (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text,"
    " l int GENERATED ALWAYS AS (length(v)) STORED)",
    "INSERT INTO gen (v) SELECT repeat('g', g) FROM generate_series(1, 5) g",
    "CREATE TABLE gen2 (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text)",
    "INSERT INTO gen2 (k, v) SELECT g, 'g' || g FROM generate_series(1, 5) g",
    "CREATE TABLE pk1 (id int PRIMARY KEY, v text)",
    "CREATE TABLE fk1 (id int PRIMARY KEY, pid int REFERENCES pk1 ON UPDATE CASCADE)",
    "INSERT INTO pk1 SELECT g, 'pk' || g FROM generate_series(1, 4) g",
    "INSERT INTO fk1 SELECT g, 1 + g % 4 FROM generate_series(1, 8) g",
]


@pytest.mark.parametrize(
    "steps",
    [
        ["UPDATE ck SET b = b + 100 WHERE a = 1"],
        ["UPDATE ck SET a = a + 1, v = 'x'"],
        ["UPDATE ck SET (a, b) = (b, a) WHERE a = 0"],
        ["UPDATE sw SET id = 3 - id WHERE id IN (1, 2)"],
        ["UPDATE sw SET id = CASE WHEN id = 4 THEN 1 ELSE id + 1 END, v = v || '!'"],
        [
            "UPDATE big SET id = -1 WHERE id = 1; UPDATE big SET id = 1 WHERE id = 2; "
            "UPDATE big SET id = 2 WHERE id = -1"
        ],
        [
            "UPDATE big SET id = -1 WHERE id = 1",
            "UPDATE big SET id = 1 WHERE id = 2",
            "UPDATE big SET id = 2 WHERE id = -1",
        ],
        [
            "UPDATE big SET id = id + 1000 WHERE id <= 3; "
            "UPDATE big SET id = id + 1000 WHERE id > 1000"
        ],
        ["UPDATE gen SET id = id + 10, v = v || 'x' WHERE id <= 2"],
        ["UPDATE gen2 SET k = k + 10, v = 'x' WHERE k <= 2"],
        ["UPDATE pk1 SET id = id * 10"],
        ["INSERT INTO big VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET id = 5000"],
        ["DO $$ BEGIN UPDATE big SET id = id + 3000 WHERE id <= 2; END $$"],
    ],
    ids=lambda s: " | ".join(s)[:70],
)
def test_key_changing_updates_are_undone_exactly(arena_upd: Arena, steps: list[str]) -> None:
    arena_upd.attack(KEYED_TABLES)
    out, ops = arena_upd.attempt(steps)
    if not steps[0].startswith("DO"):  # a DO block may be refused by policy
        assert out.error is None and ops, out.describe()  # undone, not refused


def test_key_changing_update_as_a_prepared_statement(arena_upd: Arena) -> None:
    out, ops = arena_upd.attempt(
        [lambda c: c.execute("UPDATE big SET id = id + %s WHERE id <= %s", [2000, 4], prepare=True)]
    )
    assert out.error is None and ops, out.describe()


def test_undo_refuses_when_a_rekeyed_row_is_gone(arena_upd: Arena) -> None:
    """A row whose key the UPDATE changed is deleted behind softguard's back: undo cannot
    tell which old row it was, so it restores nothing and says why."""
    last = arena_upd.last_op()
    out = arena_upd.attack(["UPDATE big SET id = id + 1000 WHERE id <= 3"])
    assert out.error is None, out.describe()
    [op] = [o["id"] for o in arena_upd.ops_since(last)]
    arena_upd.direct("DELETE FROM big WHERE id = 1002")  # direct: not captured
    before = arena_upd.snapshot()
    r = arena_upd.undo([op])
    assert r.returncode != 0
    assert "no longer have that key" in r.stdout + r.stderr
    assert describe_diff(before, arena_upd.snapshot()) == []


def test_undo_refuses_when_a_gone_key_is_taken(arena_upd: Arena) -> None:
    last = arena_upd.last_op()
    arena_upd.attack(["UPDATE big SET id = id + 1000 WHERE id <= 3"])
    [op] = [o["id"] for o in arena_upd.ops_since(last)]
    arena_upd.direct("INSERT INTO big VALUES (2, 'taken since')")
    before = arena_upd.snapshot()
    for extra in ([], ["--on-conflict", "skip"]):
        r = arena_upd.cli("undo", str(op), "--yes", *extra)
        assert r.returncode != 0
        assert "(id)=(2)" in r.stdout + r.stderr
    assert describe_diff(before, arena_upd.snapshot()) == []


# -- tables without a key -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "stmt",
    [
        "UPDATE nokey SET a = 1",
        "UPDATE nokey SET b = b || '!' WHERE a = 1",
        "UPDATE nokey SET a = a + 1, b = NULL",
    ],
)
def test_update_without_key_is_undone(arena_upd: Arena, stmt: str) -> None:
    out, ops = arena_upd.attempt([stmt])
    assert out.error is None and ops, out.describe()


def test_keyless_update_undo_refuses_when_rows_changed_since(arena_upd: Arena) -> None:
    last = arena_upd.last_op()
    arena_upd.attack(["UPDATE nokey SET b = 'z' WHERE a = 1"])
    [op] = [o["id"] for o in arena_upd.ops_since(last)]
    arena_upd.direct(
        "UPDATE nokey SET b = 'y' WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)"
    )
    before = arena_upd.snapshot()
    r = arena_upd.undo([op])
    assert r.returncode != 0
    assert "not as it left them" in r.stdout + r.stderr
    assert describe_diff(before, arena_upd.snapshot()) == []


def test_set_null_on_a_keyless_child_is_undone(arena: Arena) -> None:
    arena.attack(
        [
            "CREATE TABLE kl (pid int REFERENCES parent ON DELETE SET NULL, v text)",
            "INSERT INTO kl SELECT 1 + g % 5, 'v' FROM generate_series(1, 6) g",
        ]
    )
    out, ops = arena.attempt(["DELETE FROM parent WHERE id = 2"])
    assert out.error is None and ops, out.describe()


# -- inheritance --------------------------------------------------------------------------------

MORE_CHILDREN = [
    "CREATE TABLE puppy (toy text) INHERITS (dog)",
    "INSERT INTO puppy VALUES (20, 'bit', 'pug', 'ball'), (21, 'bob', 'pug', NULL)",
    "CREATE TABLE cat (a text, lives int, b text) INHERITS (animal)",
    "ALTER TABLE cat DROP COLUMN a",
    "INSERT INTO cat VALUES (30, 'tom', 9, 'grey')",
    "CREATE TABLE bird (id int NOT NULL, name text NOT NULL, wings int)",
    "INSERT INTO bird VALUES (40, 'tweety', 2)",
    "ALTER TABLE bird INHERIT animal",
    "INSERT INTO animal VALUES (10, 'rex')",  # the parent's own twin of a child's row
]


@pytest.mark.parametrize(
    "stmt",
    [
        "DELETE FROM animal",
        "DELETE FROM animal WHERE id IN (1, 10, 20, 30, 40)",
        "DELETE FROM dog",
        "DELETE FROM ONLY animal",
        "DELETE FROM puppy",
        "DELETE FROM animal WHERE name = 'rex'",
    ],
)
def test_inheritance_children_deep_and_reshaped_get_their_rows_back(
    arena: Arena, stmt: str
) -> None:
    arena.attack(MORE_CHILDREN)
    out, ops = arena.attempt([stmt])
    assert out.error is None and ops, out.describe()


def test_key_changing_update_through_an_inheritance_parent_is_refused(arena_upd: Arena) -> None:
    before, last = arena_upd.snapshot(), arena_upd.last_op()
    out = arena_upd.attack(["UPDATE animal SET id = id + 100"])
    assert out.sqlstate == "0A000", out.describe()
    arena_upd.verdict(before, last, out)
