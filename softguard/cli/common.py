"""What the CLI's commands share: options, the error exit, the ledger connection, formats.

Commands that talk to a protected database connect DIRECTLY to it (``--dsn`` /
$SOFTGUARD_DSN), never through the proxy, with ``connect_ledger``: an autocommit
connection made by softguard.ledger.db.connect, the ledger checked first. Errors go to
stderr as one line prefixed ``softguard:``; exit codes: 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from softguard.ledger.db import (
    CLI_APPLICATION_NAME,
    CannotConnect,
    InvalidDsn,
    LedgerError,
    LedgerNotInstalled,
    connect,
    error_line,
)
from softguard.ledger.operations import check_ledger, json_default

STATEMENT_WIDTH = 60

DsnOption = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="SOFTGUARD_DSN",
        help="DSN of the protected database, directly (not through the proxy)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML configuration file (for max_quarantine_bytes; SOFTGUARD_* works too)",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``softguard: message`` on stderr; the exit to raise."""
    typer.echo(f"softguard: {message}", err=True)
    return typer.Exit(code)


def configured_cap(config: Path | None) -> int | None:
    """The ``max_quarantine_bytes`` setting (--config file, SOFTGUARD_* environment)."""
    from softguard.config import ConfigError, load_settings

    try:
        return load_settings(config).max_quarantine_bytes
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> timedelta | datetime:
    """'90s', '30m', '2h', '7d', '1w', '1h30m' -> timedelta; ISO 8601 -> aware datetime.

    A timestamp without a time zone is taken as local time. ValueError for anything else.
    """
    s = text.strip().lower()
    if _DURATION.match(s):
        return timedelta(
            seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(s))
        )
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since: expected a duration like 90s, 30m, 2h, 7d or an ISO 8601 timestamp"
            f" like 2026-01-31T12:00:00+00:00, got {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


@contextmanager
def connect_any(dsn: str, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (to ``dbname`` instead of the DSN's when given), the ledger
    not checked; exits 1 (2 for a DSN that does not parse) when it cannot connect."""
    try:
        conn = connect(dsn, application_name=CLI_APPLICATION_NAME, dbname=dbname)
    except InvalidDsn as exc:
        raise fail(f"invalid --dsn: {exc}", 2) from None
    except CannotConnect as exc:
        raise fail(f"cannot connect: {exc}") from None
    with conn:
        yield conn


@contextmanager
def connect_ledger(dsn: str, *, read: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the database, with the ledger checked; exits 1 on error
    (2 for a DSN that does not parse).

    ``read``: the role must be able to read softguard.operations (else only run undo_op).
    """
    try:
        conn = connect(dsn, application_name=CLI_APPLICATION_NAME)
    except InvalidDsn as exc:
        raise fail(f"invalid --dsn: {exc}", 2) from None
    except CannotConnect as exc:
        raise fail(f"cannot connect: {exc}") from None
    with conn:
        try:
            access = check_ledger(conn)
            if read:
                access.require_read()
            else:
                access.require_undo()
        except LedgerNotInstalled:
            raise fail(
                "softguard ledger is not installed in this database: run softguard init --dsn"
                " DSN (as a superuser) first if this is the database you protect; if the ledger"
                " is in another database of the server, give that one in --dsn (softguard ops"
                " --all-databases lists every database that has it)"
            ) from None
        except LedgerError as exc:
            raise fail(str(exc)) from None
        except psycopg.Error as exc:
            raise fail(not_the_ledger(exc)) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise fail(error_line(exc)) from None


def not_the_ledger(exc: psycopg.Error) -> str:
    """One paragraph for an error while checking the ledger: through the proxy (whose own
    refusals start with 'softguard:'), or anything else."""
    line = error_line(exc)
    if line.startswith("softguard:"):
        return (
            "this DSN goes through the softguard proxy, which lets no statement read its"
            " ledger. Ledger commands (ops, show, undo, purge, grant) connect to the database"
            " directly: use the DSN that `softguard serve` prints at start (SOFTGUARD_DSN=...;"
            " the upstream server's host and port, not softguard's)"
            f" [the proxy answered: {line}]"
        )
    return f"cannot read the softguard ledger through this DSN: {line}"


def dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, default=json_default, indent=indent, ensure_ascii=False)


def iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def short(text: str, width: int = STATEMENT_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"
