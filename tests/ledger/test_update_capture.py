"""UPDATE capture only where a rule needs it (issue 13 item 4; decision 0023).

With UPDATE capture off (softguard init with a policy that protects no UPDATE), tables
carry no UPDATE capture trigger, so UPDATEs of every session pay nothing for softguard;
the tables a DELETE changes by ON DELETE SET NULL / SET DEFAULT keep theirs (part of the
DELETE, undone with it). A session registered with UPDATE protection switches it back on;
nothing a client does switches it off.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest_capture import CAPTURE_DELETE, Ledger, protected, row_ops, tables_data, undo
from support.pg import TestServer
from support.proxy import REPO_ROOT, ProxyFactory

UPDATE_TRIGGER = "zz_softguard_capture_update"


def _switch(ledger: Ledger, db: str, wanted: bool) -> None:
    with ledger.connect(db) as c:
        c.execute("SELECT softguard._set_capture_updates(%s)", [wanted])


def _setting(ledger: Ledger, db: str) -> bool:
    with ledger.connect(db) as c:
        row = c.execute("SELECT capture_updates FROM softguard.settings").fetchone()
    assert row is not None
    return bool(row[0])


def _softguard_triggers(ledger: Ledger, db: str) -> dict[str, dict[str, int]]:
    """table -> {softguard capture trigger name: tgtype} for every user table."""
    with ledger.connect(db) as c:
        rows = c.execute(
            "SELECT c.oid::regclass::text, t.tgname, t.tgtype FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_trigger t ON t.tgrelid = c.oid"
            " AND t.tgname LIKE 'zz\\_softguard\\_capture\\_%'"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%'"
            " AND n.nspname NOT LIKE 'softguard%' AND n.nspname <> 'information_schema'"
        ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for table, name, tgtype in rows:
        out.setdefault(table, {})
        if name is not None:
            out[table][name] = tgtype
    return out


def _set_null_tables(ledger: Ledger, db: str) -> set[str]:
    with ledger.connect(db) as c:
        rows = c.execute(
            "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND confdeltype IN ('n', 'd')"
        ).fetchall()
    return {r[0] for r in rows}


def test_off_leaves_update_triggers_only_where_a_delete_needs_them(
    ledger: Ledger, rental_db: Any
) -> None:
    db = rental_db()
    assert _setting(ledger, db)  # a plain install keeps capturing UPDATEs
    before = _softguard_triggers(ledger, db)
    assert all(UPDATE_TRIGGER in t for t in before.values()), before
    _switch(ledger, db, False)
    assert not _setting(ledger, db)
    after = _softguard_triggers(ledger, db)
    needed = _set_null_tables(ledger, db)
    assert needed, "the fixture has ON DELETE SET NULL foreign keys"
    for table, triggers in after.items():
        assert {
            "zz_softguard_capture_delete",
            "zz_softguard_capture_truncate",
            "zz_softguard_capture_statement",
        } <= set(triggers), (table, triggers)
        if table in needed:
            assert UPDATE_TRIGGER in triggers, table
            assert triggers["zz_softguard_capture_statement"] == 26  # BEFORE DELETE OR UPDATE
        else:
            assert UPDATE_TRIGGER not in triggers, table
            assert triggers["zz_softguard_capture_statement"] == 10  # BEFORE DELETE
    # and back: every table carries them again, exactly as installed
    _switch(ledger, db, True)
    assert _softguard_triggers(ledger, db) == before


def test_delete_with_set_null_is_undone_exactly_while_updates_are_not_captured(
    ledger: Ledger, rental_db: Any
) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db) as c:
        row = c.execute(
            "SELECT l.id FROM locations l WHERE EXISTS"
            " (SELECT FROM vehicles v WHERE v.location_id = l.id) LIMIT 1"
        ).fetchone()
    assert row is not None
    before = tables_data(ledger, db)
    with protected(ledger, db, CAPTURE_DELETE) as c:
        # a location referenced ON DELETE SET NULL: the DELETE also changes vehicles
        c.execute("DELETE FROM locations WHERE id = %s", [row[0]])
    op = row_ops(ledger, db)[-1]
    assert "public.vehicles" in op["row_counts"]["tables"], op
    undo(ledger, db, op["id"])
    assert tables_data(ledger, db) == before


def test_plain_updates_are_not_captured_and_fire_nothing(ledger: Ledger, rental_db: Any) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    with protected(ledger, db, "-c softguard.capture=delete,update") as c:
        c.execute("UPDATE customers SET email = email || '.x' WHERE id <= 3")
    assert row_ops(ledger, db) == []


def test_a_registration_protecting_update_switches_it_on(ledger: Ledger, rental_db: Any) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    before = tables_data(ledger, db)
    with ledger.connect(db) as c:
        c.execute("SELECT softguard.register_session('delete,update', 3600, '127.0.0.1')")
        assert _setting(ledger, db)
        c.execute("UPDATE customers SET email = 'changed' || id || '@example.com' WHERE id <= 3")
    op = row_ops(ledger, db)[-1]
    assert op["kind"] == "UPDATE" and op["row_counts"]["tables"] == {"public.customers": 3}
    undo(ledger, db, op["id"])
    assert tables_data(ledger, db) == before


def test_a_data_mode_registration_switches_it_on_too(ledger: Ledger, rental_db: Any) -> None:
    """The agent preset registers 'schema' (no DDL) with 'update': the switch is
    softguard's own DDL, which the mode guard lets through."""
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute("SELECT softguard.register_session('schema', 3600, '127.0.0.1')")
        c.execute("SELECT softguard.register_session('schema,update', 3600, '127.0.0.1')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("CREATE TABLE public.later (id int)")  # the mode still holds
    assert _setting(ledger, db)


def test_a_table_rule_denying_update_switches_it_on(ledger: Ledger, rental_db: Any) -> None:
    """A rule's `tables` denying UPDATE is refused by the UPDATE capture trigger
    (decision 0021): registering it switches the triggers on."""
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db) as c:
        c.execute("SELECT softguard.register_session('delete', 3600, '127.0.0.1')")
        c.execute(
            "SELECT softguard.register_limits(NULL, NULL, NULL, NULL, %s::jsonb)",
            ['[{"pattern": "public.customers", "category": "update", "by": "rule \'t\'"}]'],
        )
        assert _setting(ledger, db)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("UPDATE customers SET email = email WHERE id = 1")


def test_not_switched_off_under_a_live_update_session(ledger: Ledger, rental_db: Any) -> None:
    db = rental_db()
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute("SELECT softguard.register_session('update', 3600, '127.0.0.1')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            _switch(ledger, db, False)
    assert _setting(ledger, db)


@pytest.mark.parametrize(
    "attempt",
    [
        "SELECT softguard._set_capture_updates(false)",
        "UPDATE softguard.settings SET capture_updates = false",
        "SELECT softguard._install_capture_maintained('public.own'::regclass)",
        "DROP TRIGGER zz_softguard_capture_update ON public.own",
        "ALTER TABLE public.own DISABLE TRIGGER zz_softguard_capture_update",
        "DO $$ BEGIN EXECUTE 'DROP TRIGGER zz_softguard_capture_'"
        " || 'update ON public.own'; END $$",
    ],
)
def test_a_client_cannot_switch_update_capture_off(
    ledger: Ledger, rental_db: Any, attempt: str
) -> None:
    db = rental_db()
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute("CREATE TABLE public.own (id int PRIMARY KEY, v int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(attempt.encode())
    assert _setting(ledger, db)
    assert UPDATE_TRIGGER in _softguard_triggers(ledger, db)["own"]


def test_set_null_target_keeps_its_trigger_against_its_owner(
    ledger: Ledger, rental_db: Any
) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute(
            "CREATE TABLE public.p (id int PRIMARY KEY);"
            " CREATE TABLE public.k (id int PRIMARY KEY,"
            " p int REFERENCES public.p ON DELETE SET NULL)"
        )
        for attempt in (
            "DROP TRIGGER zz_softguard_capture_update ON public.k",
            "ALTER TRIGGER zz_softguard_capture_update ON public.k RENAME TO kept",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(attempt.encode())
    triggers = _softguard_triggers(ledger, db)
    assert UPDATE_TRIGGER in triggers["k"] and UPDATE_TRIGGER not in triggers["p"]


def test_a_set_null_key_added_later_gets_the_trigger(ledger: Ledger, rental_db: Any) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute(
            "CREATE TABLE public.p (id int PRIMARY KEY);"
            " CREATE TABLE public.k (id int PRIMARY KEY, p int);"
            " INSERT INTO public.p VALUES (1), (2); INSERT INTO public.k VALUES (10, 1), (20, 2)"
        )
        assert UPDATE_TRIGGER not in _softguard_triggers(ledger, db)["k"]
        c.execute("ALTER TABLE public.k ADD FOREIGN KEY (p) REFERENCES public.p ON DELETE SET NULL")
    assert UPDATE_TRIGGER in _softguard_triggers(ledger, db)["k"]
    with protected(ledger, db, CAPTURE_DELETE) as c:
        c.execute("DELETE FROM public.p WHERE id = 1")
    op = row_ops(ledger, db)[-1]
    undo(ledger, db, op["id"])
    with ledger.connect(db) as c:
        assert c.execute("SELECT id, p FROM public.k ORDER BY id").fetchall() == [
            (10, 1),
            (20, 2),
        ]


def test_soft_delete_is_refused_rather_than_uncaptured(ledger: Ledger, rental_db: Any) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    with ledger.connect(db) as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
            c.execute(
                "SELECT softguard.soft_delete_begin('public.customers'::regclass,"
                " 'public.customers', '{}'::jsonb, now())"
            )
    assert "UPDATE capture is off" in str(err.value)


# ------------------------------------------------------------- softguard init and the proxy


def _init(dsn: str, config: Path | None) -> str:
    argv = [sys.executable, "-m", "softguard", "init", "--dsn", dsn]
    if config is not None:
        argv += ["--config", str(config)]
    r = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_init_sets_it_from_the_policy_and_the_proxy_switches_it_on(
    pg_server: TestServer, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    db = pg_server.create_database()
    try:
        dsn = pg_server.superuser_dsn(db)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        out = _init(dsn, None)
        assert "UPDATEs are not captured" in out
        protect = tmp_path / "protect.toml"
        protect.write_text('[policy]\nupdate = "protect"\n')
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT capture_updates FROM softguard.settings").fetchone() == (
                False,
            )
            assert c.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND tgname = %s",
                [UPDATE_TRIGGER],
            ).fetchone() == (0,)
        proxy = proxy_factory("--config", str(protect))
        if proxy.is_direct:
            pytest.skip("the proxy registers sessions")
        with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
            c.execute("UPDATE t SET v = 'b' WHERE id = 1")
        with psycopg.connect(dsn, autocommit=True) as c:
            op = c.execute("SELECT id FROM softguard.operations WHERE kind = 'UPDATE'").fetchone()
            assert op is not None
            c.execute("SELECT softguard.undo_op(%s)", [op[0]])
            assert c.execute("SELECT v FROM t").fetchone() == ("a",)
        # init with the protecting policy keeps it on; with the default it goes off again
        assert "UPDATEs are captured" in _init(dsn, protect)
        assert "UPDATEs are not captured" in _init(dsn, None)
    finally:
        pg_server.drop_database(db)


def _set_null_pair(ledger: Ledger, db: str) -> None:
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute(
            "CREATE TABLE public.p (id int PRIMARY KEY);"
            " CREATE TABLE public.k (id int PRIMARY KEY,"
            " p int CONSTRAINT k_p REFERENCES public.p ON DELETE SET NULL);"
            " INSERT INTO public.p VALUES (1), (2); INSERT INTO public.k VALUES (10, 1), (20, 2)"
        )
    assert _softguard_triggers(ledger, db)["k"]["zz_softguard_capture_statement"] == 26


def test_a_set_null_key_dropped_trims_the_trigger(ledger: Ledger, rental_db: Any) -> None:
    """The last ON DELETE SET NULL key of a table gone, its extra capture is removed,
    not refused as tampering (the rental fixture's billing.refunds could not lose its key,
    nor be dropped through softguard)."""
    db = rental_db()
    _switch(ledger, db, False)
    _set_null_pair(ledger, db)
    with ledger.connect(db, **ledger.nonowner) as c:
        c.execute("ALTER TABLE public.k DROP CONSTRAINT k_p")
    triggers = _softguard_triggers(ledger, db)["k"]
    assert UPDATE_TRIGGER not in triggers and triggers["zz_softguard_capture_statement"] == 10


@pytest.mark.parametrize(
    ("stmt", "cascade"),
    [
        ("DROP TABLE public.k", "DROP TABLE public.k CASCADE"),  # the key's own table
        ("DROP TABLE public.p CASCADE", None),  # the key goes with what it references
        ("DROP TABLE billing.refunds", "DROP TABLE billing.refunds CASCADE"),
        ("DROP TABLE billing.payments CASCADE", None),
    ],
)
def test_a_drop_taking_a_set_null_key_is_undone_with_its_capture(
    ledger: Ledger, rental_db: Any, stmt: str, cascade: str | None
) -> None:
    db = rental_db()
    _switch(ledger, db, False)
    _set_null_pair(ledger, db)
    before = _softguard_triggers(ledger, db)
    with ledger.connect(db) as c:
        c.execute('CALL softguard.drop_op(%s, %s, \'{"action": "DROP TABLE"}\')', [stmt, cascade])
        row = c.execute("SELECT max(id) FROM softguard.operations").fetchone()
    assert row is not None
    undo(ledger, db, int(row[0]))
    assert _softguard_triggers(ledger, db) == before
    with protected(ledger, db, CAPTURE_DELETE) as c:  # and a DELETE's SET NULL is kept
        c.execute("DELETE FROM public.p WHERE id = 1")
    undo(ledger, db, row_ops(ledger, db)[-1]["id"])
    with ledger.connect(db) as c:
        assert c.execute("SELECT id, p FROM public.k ORDER BY id").fetchall() == [
            (10, 1),
            (20, 2),
        ]
