"""``softguard init``: install or upgrade the ledger in one database, and write the
capture budget of the configuration into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer

from softguard.cli.common import fail
from softguard.config import ConfigError, load_settings
from softguard.ledger.budget import sync_budget
from softguard.ledger.db import LedgerError, connect, error_line
from softguard.ledger.migrate import apply_migrations, ledger_version


def init(
    dsn: str = typer.Option(
        ...,
        envvar="SOFTGUARD_DSN",
        help="superuser DSN of the database to protect",
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML configuration file: its capture budget (max_capture_bytes, "
            "min_free_disk_percent) is written into the ledger [default: the defaults]",
        ),
    ] = None,
) -> None:
    """Install (or upgrade) the softguard ledger in a database."""
    try:
        budget = load_settings(config).capture_budget
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        with connect(dsn) as conn:
            applied = apply_migrations(conn)
            version = ledger_version(conn)
            sync_budget(conn, budget)
    except LedgerError as exc:  # ours: already what a person should read, kept whole
        raise fail(str(exc).strip()) from None
    except psycopg.Error as exc:
        raise fail(error_line(exc)) from None
    if applied:
        for name in applied:
            typer.echo(f"applied {name}")
        typer.echo(f"ledger is at version {version}")
    else:
        typer.echo(f"ledger is up to date (version {version})")
