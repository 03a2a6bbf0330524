"""``softguard init``: install or upgrade the ledger in one database, and write the
capture budget of the configuration into it, and whether UPDATEs are captured. Run by a
role that is not a superuser (a managed service's owner role, decision 0025), it says what
is and is not protected there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer

from softguard.cli.common import fail
from softguard.ledger.db import LedgerError, connect, error_line
from softguard.ledger.migrate import (
    Capabilities,
    apply_migrations,
    capabilities,
    ledger_version,
    sweep_capture,
)


def init(
    dsn: str = typer.Option(
        ...,
        envvar="SOFTGUARD_DSN",
        help="DSN of the database to protect: a superuser, or the database's owner (a "
        "managed service's owner role; see the runbook, Managed PostgreSQL)",
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
    event_trigger_helper: Annotated[
        str | None,
        typer.Option(
            "--event-trigger-helper",
            metavar="SCHEMA.FUNCTION",
            help="a function (name text, definition text) that creates an event trigger on "
            "the installing role's behalf (a provider's, or one a superuser made: runbook, "
            "Managed PostgreSQL) [default: create them directly, or go without]",
        ),
    ] = None,
) -> None:
    """Install (or upgrade) the softguard ledger in a database."""
    # Here, not at the top: pydantic and the SQL reader cost every other command's start.
    from softguard.config import ConfigError, load_settings
    from softguard.ledger.budget import sync_budget, sync_update_capture

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        with connect(dsn) as conn:
            applied = apply_migrations(
                conn, event_trigger_helper=event_trigger_helper, owner_may_install=True
            )
            version = ledger_version(conn)
            able = capabilities(conn)
            swept = [] if able.event_triggers else sweep_capture(conn)
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
    _say_capabilities(able)
    for rel, done in swept:
        typer.echo(
            f"capture triggers put on {rel}"
            if done
            else f"{rel} has no capture triggers and this role may not add them: its DELETEs"
            " and TRUNCATEs are not reversible"
        )


def _say_capabilities(able: Capabilities) -> None:
    """Only an install that lacks something says so (a superuser's has everything)."""
    if all(ok for _, ok in able.lines()):
        return
    typer.echo("this install protects only part of what softguard can (decision 0025):")
    for what, ok in able.lines():
        typer.echo(f"  {'protected    ' if ok else 'NOT protected'}  {what}")
