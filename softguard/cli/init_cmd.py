"""``softguard init``: install or upgrade the ledger in one database."""

from __future__ import annotations

import psycopg
import typer

from softguard.cli.common import fail
from softguard.ledger.db import LedgerError, connect, error_line
from softguard.ledger.migrate import apply_migrations, ledger_version


def init(
    dsn: str = typer.Option(
        ...,
        envvar="SOFTGUARD_DSN",
        help="superuser DSN of the database to protect",
    ),
) -> None:
    """Install (or upgrade) the softguard ledger in a database."""
    try:
        with connect(dsn) as conn:
            applied = apply_migrations(conn)
            version = ledger_version(conn)
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
