"""``softguard init``: install or upgrade the ledger in one database, and write the
capture budget of the configuration into it, and whether UPDATEs are captured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer

from softguard.cli.common import fail
from softguard.config import ConfigError, load_settings
from softguard.ledger.budget import sync_budget, sync_update_capture
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
            "min_free_disk_percent), and whether UPDATEs are captured (a rule protects "
            "UPDATE, or [[soft_delete]] tables), are written into the ledger "
            "[default: the defaults]",
        ),
    ] = None,
) -> None:
    """Install (or upgrade) the softguard ledger in a database."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        with connect(dsn) as conn:
            applied = apply_migrations(conn)
            version = ledger_version(conn)
            sync_budget(conn, settings.capture_budget)
            sync_update_capture(conn, settings.captures_updates, only_on=False)
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
    typer.echo(
        "UPDATEs are captured (a rule protects UPDATE, or a soft delete needs it)"
        if settings.captures_updates
        else "UPDATEs are not captured (no rule protects UPDATE): they pay no capture cost"
    )
