"""Installing the ledger: apply_migrations, ledger_version, `softguard init`."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import TestServer
from typer.testing import CliRunner

from softguard.ledger import MIGRATIONS_DIR, LedgerError, apply_migrations, ledger_version
from softguard.ledger.migrate import current_version


@pytest.fixture
def empty_db(pg_server: TestServer) -> Any:
    with pg_server.scratch_database() as name:
        yield name


LATEST = current_version()
ALL = [f"softguard--{LATEST}.sql"]  # a fresh database gets the install of the current version


def test_migrations_dir_is_in_the_repository() -> None:
    assert MIGRATIONS_DIR.is_dir()
    assert (MIGRATIONS_DIR / "install" / "70_undo.sql").is_file()
    assert (MIGRATIONS_DIR / "released" / "softguard--1.sql").is_file()


def test_apply_is_idempotent(pg_server: TestServer, empty_db: str) -> None:
    with psycopg.connect(pg_server.superuser_dsn(empty_db), autocommit=True) as c:
        assert ledger_version(c) is None
        assert apply_migrations(c) == ALL
        assert ledger_version(c) == LATEST
        assert apply_migrations(c) == []
        rows = c.execute("SELECT name FROM softguard.migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == ALL
        triggers = c.execute(
            "SELECT evtname, evtenabled FROM pg_event_trigger ORDER BY 1"
        ).fetchall()
        assert triggers == [
            ("softguard_backstop_rewrite", "A"),
            ("softguard_capture_ddl_end", "A"),
            ("softguard_capture_definitions", "A"),
            ("softguard_capture_definitions_drop", "A"),
            ("softguard_capture_inherit", "A"),
            ("softguard_capture_install", "A"),
            ("softguard_capture_remote", "A"),
            ("softguard_capture_sequences_end", "A"),
            ("softguard_capture_sequences_start", "A"),
            ("softguard_capture_sql_drop", "A"),
            ("softguard_capture_tamper_ddl", "A"),
            ("softguard_capture_tamper_drop", "A"),
            ("softguard_mode_guard", "A"),
        ]


def test_concurrent_apply(pg_server: TestServer, empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(pg_server.superuser_dsn(empty_db), autocommit=True) as c:
                results.append(apply_migrations(c))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [[], [], ALL]


def test_upgrade_in_its_own_transaction(
    pg_server: TestServer, empty_db: str, tmp_path: Path
) -> None:
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "sql", symlinks=False)
    broken = f"{LATEST}--{LATEST + 1}.sql"
    (tmp_path / "sql" / "upgrades" / broken).write_text(
        "CREATE TABLE softguard.x (a int); SELECT 1/0;"
    )
    with psycopg.connect(pg_server.superuser_dsn(empty_db), autocommit=True) as c:
        assert apply_migrations(c) == ALL
        with pytest.raises(LedgerError, match=rf"{broken} failed: division by zero"):
            apply_migrations(c, tmp_path / "sql")
        assert ledger_version(c) == LATEST  # the install committed, the broken upgrade not
        assert c.execute("SELECT to_regclass('softguard.x')").fetchone() == (None,)


def test_needs_superuser(
    pg_server: TestServer, empty_db: str, rental_template: str, ledger: Any
) -> None:
    # rental_template creates the non-owner role
    dsn = pg_server.dsn(empty_db, ledger.nonowner["user"], ledger.nonowner["password"])
    with psycopg.connect(dsn, autocommit=True) as c:
        with pytest.raises(LedgerError, match=r"needs a superuser .*: connected as sg_ledger_"):
            apply_migrations(c)
        assert ledger_version(c) is None


def test_init_command(
    pg_server: TestServer, empty_db: str, rental_template: str, ledger: Any
) -> None:
    import typer

    from softguard.cli.init_cmd import init

    app = typer.Typer()
    app.command()(init)
    app.command("noop")(lambda: None)  # keep `init` a sub-command
    runner = CliRunner()
    dsn = pg_server.superuser_dsn(empty_db)
    first = runner.invoke(app, ["init", "--dsn", dsn])
    assert first.exit_code == 0, first.output
    applied = "".join(f"applied {name}\n" for name in ALL)
    updates = "UPDATEs are not captured (no rule protects UPDATE): they pay no capture cost\n"
    assert first.output == f"{applied}ledger is at version {LATEST}\n{updates}"
    again = runner.invoke(app, ["init"], env={"SOFTGUARD_DSN": dsn})
    assert again.exit_code == 0
    assert again.output == f"ledger is up to date (version {LATEST})\n{updates}"
    with pg_server.scratch_database() as other:
        nonsuper = pg_server.dsn(other, ledger.nonowner["user"], ledger.nonowner["password"])
        bad = runner.invoke(app, ["init", "--dsn", nonsuper])
    assert bad.exit_code == 1
    assert "needs a superuser" in bad.output
