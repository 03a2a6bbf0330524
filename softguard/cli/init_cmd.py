"""``softguard init``: install or upgrade the ledger in one database."""

from __future__ import annotations

import psycopg
import typer

from softguard.ledger.migrate import LedgerError, apply_migrations, ledger_version


def init(
    dsn: str = typer.Option(
        ...,
        envvar="SOFTGUARD_DSN",
        help="superuser DSN of the database to protect",
    ),
) -> None:
    """Install (or upgrade) the softguard ledger in a database."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            applied = apply_migrations(conn)
            version = ledger_version(conn)
    except (LedgerError, psycopg.Error) as exc:
        typer.echo(f"softguard: {_message(exc)}", err=True)
        raise typer.Exit(1) from None
    if applied:
        for name in applied:
            typer.echo(f"applied {name}")
        typer.echo(f"ledger is at version {version}")
    else:
        typer.echo(f"ledger is up to date (version {version})")


def _message(exc: Exception) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return str(exc).strip() or type(exc).__name__
