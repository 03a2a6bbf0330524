"""Versioning of the database half: a fresh install from migrations/install/ is the same as
the frozen first release plus every upgrade script; pre-release ledgers are refused.

Editing a file in migrations/install/ without adding the upgrade script that makes the same
change turns test_fresh_install_equals_release_plus_upgrades red."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support.ledger_versions import install_ledger_at
from support.pg import TestServer
from typer.testing import CliRunner

from softguard.ledger import LedgerError, apply_migrations, ledger_version
from softguard.ledger.migrate import FIRST_VERSION, current_version, upgrade_scripts

# Everything an install defines, in a form two installs can be compared by: every function
# in the softguard schemas (pg_get_functiondef, ACL, comment), relations with their columns,
# defaults, ACLs and comments, constraints, indexes, triggers (softguard's own and those it
# puts on user tables), event triggers, schemas and types.
_SOFTGUARD = "~ '^softguard'"
CATALOG: dict[str, str] = {
    "functions": f"""
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,
               obj_description(p.oid, 'pg_proc')
          FROM pg_proc p WHERE p.pronamespace::regnamespace::text {_SOFTGUARD}""",
    "relations": f"""
        SELECT c.oid::regclass::text, c.relkind, c.relacl::text, c.reloptions::text,
               obj_description(c.oid, 'pg_class')
          FROM pg_class c WHERE c.relnamespace::regnamespace::text {_SOFTGUARD}""",
    "columns": f"""
        SELECT c.oid::regclass::text, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
               a.attacl::text, col_description(c.oid, a.attnum)
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace::regnamespace::text {_SOFTGUARD}""",
    "constraints": f"""
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace::regnamespace::text {_SOFTGUARD}""",
    "indexes": f"""
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace::regnamespace::text {_SOFTGUARD}""",
    "triggers": f"""
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal
           AND (c.relnamespace::regnamespace::text {_SOFTGUARD}
                OR t.tgfoid::regproc::text {_SOFTGUARD})""",
    "event_triggers": """
        SELECT evtname, evtevent, evtfoid::regprocedure::text, evtenabled, evttags::text
          FROM pg_event_trigger""",
    "schemas": f"""
        SELECT nspname, nspacl::text, obj_description(oid, 'pg_namespace')
          FROM pg_namespace WHERE nspname {_SOFTGUARD}""",
    "types": f"""
        SELECT t.oid::regtype::text, t.typtype
          FROM pg_type t WHERE t.typnamespace::regnamespace::text {_SOFTGUARD}""",
}


def catalog(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {k: sorted(conn.execute(q).fetchall(), key=repr) for k, q in CATALOG.items()}


@pytest.fixture
def two_dbs(pg_server: TestServer) -> Iterator[tuple[str, str]]:
    with pg_server.scratch_database() as a, pg_server.scratch_database() as b:
        for db in (a, b):  # a user table, so that the triggers softguard adds are compared
            with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
                c.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
        yield a, b


def test_fresh_install_equals_release_plus_upgrades(
    pg_server: TestServer, two_dbs: tuple[str, str]
) -> None:
    fresh, upgraded = two_dbs
    with psycopg.connect(pg_server.superuser_dsn(fresh), autocommit=True) as c:
        assert apply_migrations(c) == [f"softguard--{current_version()}.sql"]
        want = catalog(c)
    with psycopg.connect(pg_server.superuser_dsn(upgraded), autocommit=True) as c:
        install_ledger_at(c, FIRST_VERSION)
        assert apply_migrations(c) == [s.name for s in upgrade_scripts()]
        assert ledger_version(c) == current_version()
        got = catalog(c)
    for part in CATALOG:
        assert got[part] == want[part], (
            f"{part} differ between a fresh install and the first release + upgrades:"
            " a change to migrations/install/ needs its script in migrations/upgrades/"
        )


def _pre_release_ledger(conn: psycopg.Connection[Any]) -> None:
    """What the numbered migrations 0001..0005 left (enough of it to be recognised)."""
    conn.execute(
        "CREATE SCHEMA softguard;"
        " CREATE TABLE softguard.migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now());"
        " INSERT INTO softguard.migrations (version, name)"
        " VALUES (1, '0001_ledger.sql'), (2, '0002_capture.sql')"
    )


def test_pre_release_ledger_is_refused(pg_server: TestServer, two_dbs: tuple[str, str]) -> None:
    db, _ = two_dbs
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        _pre_release_ledger(c)
        with pytest.raises(LedgerError, match=r"pre-release migrations \(0001_ledger.sql, 0002"):
            apply_migrations(c)
        # nothing was added to it
        assert c.execute("SELECT to_regclass('softguard.operations')").fetchone() == (None,)
        assert c.execute("SELECT count(*) FROM softguard.migrations").fetchone() == (2,)


def test_init_refuses_a_pre_release_ledger(pg_server: TestServer, two_dbs: tuple[str, str]) -> None:
    import typer

    from softguard.cli.init_cmd import init

    db, _ = two_dbs
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        _pre_release_ledger(c)
    app = typer.Typer()
    app.command()(init)
    app.command("noop")(lambda: None)  # keep `init` a sub-command
    result = CliRunner().invoke(app, ["init", "--dsn", pg_server.superuser_dsn(db)])
    assert result.exit_code == 1
    assert "pre-release migrations" in result.output
    assert "run softguard init" in result.output


def test_newer_ledger_is_refused(pg_server: TestServer, two_dbs: tuple[str, str]) -> None:
    db, _ = two_dbs
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        apply_migrations(c)
        newer = current_version() + 1
        c.execute(
            "INSERT INTO softguard.migrations (version, name) VALUES (%s, %s)",
            [newer, f"{newer - 1}--{newer}.sql"],
        )
        with pytest.raises(LedgerError, match=rf"version {newer}, newer than"):
            apply_migrations(c)
