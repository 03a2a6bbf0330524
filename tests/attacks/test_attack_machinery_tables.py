"""Issue 10 item 2, tables the owner brings in later: created, attached as partitions,
added as inheritance children, moved between schemas. Each must carry softguard's capture
triggers enabled ALWAYS, so that a DELETE afterwards (even in replica mode) is captured and
undone exactly. And protected work refuses to run while one of softguard's event triggers
is switched off (migrations/install/90_event_triggers.sql, _machinery_check).
"""

from __future__ import annotations

import pytest
from attacker import Arena, Step, fixtures, uident

arena_template, arena = fixtures()

# The arena's ledger comes from `softguard init` with the default policy, which protects
# no UPDATE: tables carry no UPDATE capture trigger (decision 0023;
# tests/ledger/test_update_capture.py covers the switch).
CAPTURE = (
    "zz_softguard_capture_delete",
    "zz_softguard_capture_statement",
    "zz_softguard_capture_truncate",
)


def capture_triggers(arena: Arena, table: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in arena.direct(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND tgname LIKE 'zz\\_softguard%%' ORDER BY 1",
            [table],
        )
    ]


def build(arena: Arena, steps: list[Step], who: str = "owner") -> None:
    out = arena.attack(steps, who=who)
    assert out.error is None, out.describe()


def captured_and_undone(arena: Arena, delete: str, who: str = "owner") -> None:
    _, ops = arena.attempt(
        ["SET session_replication_role = replica", delete] if who == "super" else [delete], who
    )
    assert [o["kind"] for o in ops] == ["DELETE"], ops


NEW_TABLES: dict[str, tuple[str, list[str]]] = {
    "create_table": ("later", ["CREATE TABLE later (id int PRIMARY KEY, v text)"]),
    "create_table_as": ("later", ["CREATE TABLE later AS SELECT id, name AS v FROM parent"]),
    "select_into": ("later", ["SELECT id, name AS v INTO later FROM parent"]),
    "in_do_block": (
        "later",
        ["DO $$ BEGIN EXECUTE 'CREATE TABLE later (id int PRIMARY KEY, v text)'; END $$"],
    ),
    "like_parent": ("later", ["CREATE TABLE later (LIKE parent INCLUDING ALL)"]),
}


@pytest.mark.parametrize("name", sorted(NEW_TABLES))
def test_table_created_later_gets_always_triggers(arena: Arena, name: str) -> None:
    table, steps = NEW_TABLES[name]
    build(
        arena, [*steps, "INSERT INTO later SELECT g, 'row ' || g FROM generate_series(100, 104) g"]
    )
    assert capture_triggers(arena, table) == [(t, "A") for t in CAPTURE]
    captured_and_undone(arena, "DELETE FROM later WHERE id > 101", who="super")


def test_table_created_in_create_schema_gets_always_triggers(arena: Arena) -> None:
    """CREATE SCHEMA ... CREATE TABLE reports the tag CREATE SCHEMA (a superuser here:
    the owner may not create schemas)."""
    build(
        arena,
        [
            "CREATE SCHEMA extra CREATE TABLE extra.kept (id int PRIMARY KEY, v text)",
            "INSERT INTO extra.kept VALUES (1, 'a'), (2, 'b')",
        ],
        who="super",
    )
    assert capture_triggers(arena, "extra.kept") == [(t, "A") for t in CAPTURE]
    captured_and_undone(arena, "DELETE FROM extra.kept", who="super")


def test_partition_attached_later_is_captured(arena: Arena) -> None:
    build(
        arena,
        [
            "CREATE TABLE events (id int NOT NULL, note text) PARTITION BY RANGE (id)",
            "CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100)",
            "CREATE TABLE events_high (id int NOT NULL, note text)",
            "INSERT INTO events_high SELECT g, 'late ' || g FROM generate_series(100, 120) g",
            "ALTER TABLE events ATTACH PARTITION events_high FOR VALUES FROM (100) TO (200)",
            "INSERT INTO events SELECT g, 'early ' || g FROM generate_series(1, 20) g",
        ],
    )
    for table in ("events", "events_low", "events_high"):
        assert capture_triggers(arena, table) == [(t, "A") for t in CAPTURE], table
    captured_and_undone(arena, "DELETE FROM events WHERE id % 3 = 0")
    captured_and_undone(arena, "DELETE FROM events_high WHERE id > 110", who="super")


def test_inheritance_child_added_later_is_captured(arena: Arena) -> None:
    build(
        arena,
        [
            "CREATE TABLE cat (id int PRIMARY KEY, name text NOT NULL, lives int)",
            "INSERT INTO cat VALUES (20, 'tom', 9), (21, 'felix', 7)",
            "ALTER TABLE cat INHERIT animal",
        ],
    )
    # an inheritance child also keeps its whole rows for a DELETE through its parent (G9)
    expected = sorted([*CAPTURE, "zz_softguard_capture_inherited"])
    assert capture_triggers(arena, "cat") == [(t, "A") for t in expected]
    captured_and_undone(arena, "DELETE FROM cat WHERE id = 21")


def test_new_table_cannot_be_stripped_before_attaching(arena: Arena) -> None:
    """The owner creates a table, tries to switch its capture off, then attaches it."""
    build(
        arena,
        [
            "CREATE TABLE events (id int NOT NULL, note text) PARTITION BY RANGE (id)",
            "CREATE TABLE events_high (id int NOT NULL, note text)",
            "INSERT INTO events_high SELECT g, 'late ' || g FROM generate_series(100, 120) g",
        ],
    )
    machinery = arena.machinery()
    for step in (
        f"ALTER TABLE events_high DISABLE TRIGGER {uident('zz_softguard_capture_delete')}",
        "ALTER TABLE events_high DISABLE TRIGGER USER",
        f"DROP TRIGGER {uident('zz_softguard_capture_delete')} ON events_high",
    ):
        out = arena.attack([step], via="direct")
        assert out.sqlstate == "42501" and "softguard" in str(out.error), out.describe()
    assert arena.machinery() == machinery
    build(arena, ["ALTER TABLE events ATTACH PARTITION events_high FOR VALUES FROM (100) TO (200)"])
    captured_and_undone(arena, "DELETE FROM events WHERE id < 110")


def test_table_moved_from_an_unprotected_schema_is_refused(arena: Arena) -> None:
    """A table made in a schema softguard does not protect, without capture triggers,
    moved into a protected one: refused (a superuser: the owner may not create schemas)."""
    arena.direct("CREATE SCHEMA softguard_scratch")
    arena.direct("CREATE TABLE softguard_scratch.bare (id int PRIMARY KEY)")
    arena.direct("CREATE TABLE softguard_scratch.bare2 (id int PRIMARY KEY)")
    assert capture_triggers(arena, "softguard_scratch.bare") == []
    for step in (
        "DO $$ BEGIN EXECUTE format('ALTER TABLE %I.bare SET SCHEMA public', "
        "concat('soft', 'guard_scratch')); END $$",
        "DO $$ BEGIN EXECUTE format('ALTER SCHEMA %I RENAME TO plain', "
        "concat('soft', 'guard_scratch')); END $$",
    ):
        out = arena.attack([step], who="super")
        assert out.sqlstate == "42501" and "softguard" in str(out.error), out.describe()
    assert arena.direct("SELECT to_regclass('public.bare'), to_regnamespace('plain')") == [
        (None, None)
    ]


EVENT_TRIGGERS = (
    "softguard_capture_ddl_end",
    "softguard_capture_install",
    "softguard_capture_sql_drop",
    "softguard_capture_tamper_ddl",
    "softguard_capture_tamper_drop",
)
PROTECTED_WORK = ("TRUNCATE big", "DROP TABLE big", "ALTER TABLE parent DROP COLUMN name")


@pytest.mark.parametrize(
    ("evt", "state"),
    [(e, "DISABLE") for e in EVENT_TRIGGERS]
    + [("softguard_capture_tamper_ddl", "ENABLE REPLICA"), ("softguard_capture_install", "ENABLE")],
)
def test_protected_work_refused_while_an_event_trigger_is_off(
    arena: Arena, evt: str, state: str
) -> None:
    """An operator (or a superuser's dynamic SQL) switched one off directly: DROP,
    TRUNCATE and DROP COLUMN through softguard refuse to run instead of running half
    protected."""
    arena.direct(f"ALTER EVENT TRIGGER {evt} {state}")
    for stmt in PROTECTED_WORK:
        out, ops = arena.attempt([stmt])
        assert out.error is not None and "softguard" in str(out.error), (stmt, out.describe())
        assert ops == [], ops
    arena.direct(f"ALTER EVENT TRIGGER {evt} ENABLE ALWAYS")
    for stmt in PROTECTED_WORK:
        _, ops = arena.attempt([stmt])
        assert len(ops) == 1, (stmt, ops)
