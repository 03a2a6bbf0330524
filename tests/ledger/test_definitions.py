"""Definitions and sequence state are operations (issue 11 item 6; 65_definitions.sql,
72_undo_definitions.sql): CREATE OR REPLACE and ALTER SEQUENCE in a session registered
with 'alter' are recorded whatever text carried them, and undo puts the old state back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

Ledger = Any


@contextmanager
def registered(ledger: Ledger, db: str, events: str = "alter", **kw: Any) -> Iterator[Any]:
    """A session registered as the proxy registers one (decision 0012)."""
    with ledger.connect(db, **kw) as c:
        c.execute("SELECT softguard.register_session(%s, 604800, '127.0.0.1')", [events])
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.notices = notices  # type: ignore[attr-defined]
        yield c


def ops_since(ledger: Ledger, db: str, last: int) -> list[dict[str, Any]]:
    return [o for o in ledger.operations(db) if o["id"] > last]


def undo_lines(ledger: Ledger, db: str, op: int, cascade: bool = False) -> list[str]:
    return list(ledger.undo(db, op, cascade=cascade))


def one(ledger: Ledger, db: str, query: str) -> Any:
    """The first value of the last statement of `query` ('; '-separated)."""
    with ledger.connect(db) as c:
        for stmt in query.split("; "):
            cur = c.execute(stmt.encode())
        row = cur.fetchone()
    assert row is not None
    return row[0]


def last(ledger: Ledger, db: str) -> int:
    return int(one(ledger, db, "SELECT coalesce(max(id), 0) FROM softguard.operations"))


REPLACED = {
    "function": (
        "CREATE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'",
        "CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'",
        "SELECT price(2)",
        200,
    ),
    "procedure": (
        "CREATE TABLE log (v int); CREATE PROCEDURE note() LANGUAGE sql AS "
        "'INSERT INTO log VALUES (1)'",
        "CREATE OR REPLACE PROCEDURE note() LANGUAGE sql AS 'INSERT INTO log VALUES (2)'",
        "CALL note(); SELECT max(v) FROM log",
        1,
    ),
    "view": (
        "CREATE VIEW names AS SELECT 1 AS id, 'kept'::text AS name",
        "CREATE OR REPLACE VIEW names AS SELECT 1 AS id, 'gone'::text AS name",
        "SELECT name FROM names",
        "kept",
    ),
    "rule": (
        "CREATE TABLE r (v int); CREATE TABLE r_log (v int); "
        "CREATE RULE keep AS ON INSERT TO r DO ALSO INSERT INTO r_log VALUES (NEW.v)",
        "CREATE OR REPLACE RULE keep AS ON INSERT TO r DO ALSO INSERT INTO r_log VALUES (0)",
        "INSERT INTO r VALUES (7); SELECT max(v) FROM r_log",
        7,
    ),
    "trigger": (
        "CREATE TABLE t (v int); "
        "CREATE FUNCTION plus() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.v := NEW.v + 1; RETURN NEW; END $$; "
        "CREATE FUNCTION minus() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.v := NEW.v - 1; RETURN NEW; END $$; "
        "CREATE TRIGGER adjust BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION plus()",
        "CREATE OR REPLACE TRIGGER adjust BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION minus()",
        "INSERT INTO t VALUES (10); SELECT max(v) FROM t",
        11,
    ),
}


@pytest.mark.parametrize("kind", sorted(REPLACED))
@pytest.mark.parametrize("who", ["super", "nonowner"])
def test_replace_then_undo_puts_the_old_definition_back(
    kind: str, who: str, ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    setup, replace, probe, expected = REPLACED[kind]
    kw = {} if who == "super" else dict(ledger.nonowner)
    with ledger.connect(db, **kw) as c:
        c.execute(setup.encode())
    start = last(ledger, db)
    with registered(ledger, db, **kw) as c:
        c.execute(replace.encode())
        notices = list(c.notices)
    ops = ops_since(ledger, db, start)
    assert [o["kind"] for o in ops] == [f"CREATE OR REPLACE {kind.upper()}"]
    assert notices == [
        f"softguard: CREATE OR REPLACE {kind.upper()} {ops[0]['objects'][0]['identity']} is "
        f"reversible as operation {ops[0]['id']} until {ops[0]['expires_at']:%Y-%m-%d}"
    ]
    lines = undo_lines(ledger, db, ops[0]["id"])
    assert lines and "restored the previous definition" in lines[0]
    assert one(ledger, db, probe) == expected


def test_replace_in_a_do_block_and_unchanged_replace(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    setup, _, probe, expected = REPLACED["function"]
    with ledger.connect(db) as c:
        c.execute(setup.encode())
    start = last(ledger, db)
    with registered(ledger, db) as c:
        c.execute(setup.replace("CREATE", "CREATE OR REPLACE").encode())  # same text
        c.execute(
            "DO $d$ BEGIN EXECUTE 'CREATE OR REPLACE FUNCTION price(int) RETURNS int "
            "LANGUAGE sql AS ''SELECT -1'''; END $d$"
        )
    ops = ops_since(ledger, db, start)
    assert [o["kind"] for o in ops] == ["CREATE OR REPLACE FUNCTION"]
    assert "DO $d$" in ops[0]["statement"]
    undo_lines(ledger, db, ops[0]["id"])
    assert one(ledger, db, probe) == expected


def test_unregistered_sessions_keep_the_history_current(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    start = last(ledger, db)
    with ledger.connect(db) as c:
        c.execute("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        c.execute("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'")
    assert ops_since(ledger, db, start) == []
    with registered(ledger, db) as c:
        c.execute("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 3'")
    (op,) = ops_since(ledger, db, start)
    undo_lines(ledger, db, op["id"])
    assert one(ledger, db, "SELECT f()") == 2
    # one row per live object: a dropped one leaves the history
    with ledger.connect(db) as c:
        c.execute("DROP FUNCTION f()")
    assert (
        one(
            ledger,
            db,
            "SELECT count(*) FROM softguard.definitions WHERE identity LIKE 'function public.f()'",
        )
        == 0
    )


def recorded(ledger: Ledger, db: str, setup: str, *changes: str) -> list[int]:
    """Run `setup` directly, then `changes` in a registered session: the operations."""
    with ledger.connect(db) as c:
        c.execute(setup.encode())
    start = last(ledger, db)
    with registered(ledger, db) as c:
        for change in changes:
            c.execute(change.encode())
    return [o["id"] for o in ops_since(ledger, db, start)]


F = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT {}'"


def test_replaced_twice_undo_the_later_first_or_cascade(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    first, second = recorded(ledger, db, F.format(1), F.format(2), F.format(3))
    with pytest.raises(psycopg.errors.ObjectInUse) as e:
        undo_lines(ledger, db, first)
    assert e.value.diag.message_detail == f"blocked_by={second}"
    assert one(ledger, db, "SELECT f()") == 3
    undo_lines(ledger, db, first, cascade=True)
    assert one(ledger, db, "SELECT f()") == 1


def test_a_later_change_outside_softguard_is_kept(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    (op,) = recorded(ledger, db, F.format(1), F.format(2))
    with ledger.connect(db) as c:
        c.execute(F.format(4))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="changed since"):
        undo_lines(ledger, db, op)
    assert one(ledger, db, "SELECT f()") == 4


def test_view_whose_old_columns_do_not_fit_is_refused_clearly(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    (op,) = recorded(
        ledger,
        db,
        "CREATE VIEW v AS SELECT 1 AS a",
        "CREATE OR REPLACE VIEW v AS SELECT 1 AS a, 2 AS b",
    )
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot replace the current"):
        undo_lines(ledger, db, op)
    assert one(ledger, db, "SELECT b FROM v") == 2


SEQUENCES = {
    "restart": "ALTER SEQUENCE counter RESTART",
    "restart_with": "ALTER SEQUENCE counter RESTART WITH 1",
    "increment": "ALTER SEQUENCE counter INCREMENT BY 10 RESTART WITH 3",
    "in_do": "DO $$ BEGIN EXECUTE 'ALTER SEQUENCE counter RESTART WITH 5'; END $$",
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
@pytest.mark.parametrize("who", ["super", "nonowner"])
def test_alter_sequence_then_undo_restores_value_and_parameters(
    name: str, who: str, ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    kw = {} if who == "super" else dict(ledger.nonowner)
    with ledger.connect(db, **kw) as c:
        c.execute("CREATE SEQUENCE counter START 100")
        c.execute("SELECT setval('counter', 150)")
    state = (
        "SELECT c.last_value, c.is_called, s.increment_by FROM counter c, pg_sequences s "
        "WHERE s.sequencename = 'counter'"
    )
    with ledger.connect(db) as c:
        before = c.execute(state).fetchone()
    start = last(ledger, db)
    with registered(ledger, db, **kw) as c:
        c.execute(SEQUENCES[name].encode())
        c.execute("ALTER SEQUENCE counter OWNED BY NONE")  # changes no value: no operation
    ops = ops_since(ledger, db, start)
    assert [o["kind"] for o in ops] == ["ALTER SEQUENCE"]
    undo_lines(ledger, db, ops[0]["id"])
    with ledger.connect(db) as c:
        assert c.execute(state).fetchone() == before


def test_sequence_undo_refuses_to_hand_values_out_again(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE SEQUENCE counter; SELECT setval('counter', 10)")
    start = last(ledger, db)
    with registered(ledger, db) as c:
        c.execute("ALTER SEQUENCE counter RESTART WITH 500")
        c.execute("SELECT nextval('counter'), nextval('counter')")
    (op,) = ops_since(ledger, db, start)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="again"):
        undo_lines(ledger, db, op["id"])


def test_a_session_without_alter_records_nothing(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        c.execute("CREATE SEQUENCE counter")
    start = last(ledger, db)
    with registered(ledger, db, events="delete,drop") as c:
        c.execute("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'")
        c.execute("ALTER SEQUENCE counter RESTART WITH 7")
    assert ops_since(ledger, db, start) == []


def test_identity_column_restart_is_an_operation(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with ledger.connect(db) as c:
        c.execute("CREATE TABLE ids (id int GENERATED ALWAYS AS IDENTITY, v int)")
        c.execute("INSERT INTO ids (v) SELECT g FROM generate_series(1, 5) g")
    start = last(ledger, db)
    with registered(ledger, db) as c:
        c.execute("ALTER TABLE ids ALTER COLUMN id RESTART WITH 1")
        c.execute("ALTER TABLE ids ADD COLUMN w int")  # changes no sequence: no operation
    (op,) = ops_since(ledger, db, start)
    assert op["kind"] == "ALTER SEQUENCE"
    assert op["objects"][0]["identity"] == "public.ids_id_seq"
    undo_lines(ledger, db, op["id"])
    with ledger.connect(db) as c:
        c.execute("INSERT INTO ids (v) VALUES (6)")
    assert one(ledger, db, "SELECT max(id) FROM ids") == 6
