"""softguard's own connections to PostgreSQL, and the errors of the database half.

Every connection softguard opens for itself (``init``, the CLI's ledger commands, purge,
archive, space, the scheduled purge, the proxy's ledger gate and its catalog reading) is
made by ``connect``, so that each has the same options; the clients' connections through
the proxy are not made here.

What holds:
- A softguard connection is in autocommit mode (each caller opens the transactions it
  means), has a ``connect_timeout`` (a dead server never hangs a command or the gate) and
  an ``application_name`` saying which part of softguard it is (unless the DSN names one).
- What goes wrong reaches callers as a ``LedgerError`` (or a subclass), with the server's
  SQLSTATE when the server gave one, so callers react to a code, never to prose.
- ``error_line`` is the one way to turn an error into the single line shown to a person.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: Seconds to wait for a connection when the caller does not say.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: application_name of each part of softguard (when the DSN does not set one).
CLI_APPLICATION_NAME = "softguard-cli"
GATE_APPLICATION_NAME = "softguard"
PURGE_APPLICATION_NAME = "softguard-purge"


class LedgerError(Exception):
    """The ledger cannot be installed, read or changed (the message says why and what to
    do). ``sqlstate``: the server's code, when the server refused."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @classmethod
    def from_psycopg(cls, exc: psycopg.Error, prefix: str = "") -> LedgerError:
        """This error class for a psycopg error: its one line, after ``prefix``."""
        return cls(prefix + error_line(exc), sqlstate=sqlstate(exc))


class CannotConnect(LedgerError):
    """The database could not be reached, or refused the login."""


class InvalidDsn(CannotConnect):
    """The DSN does not parse."""


class LedgerNotInstalled(LedgerError):
    """The database has no softguard ledger (``softguard init`` was not run on it)."""


class PurgeError(LedgerError):
    """Purge cannot run here (ledger too old, missing privilege, no pg_dump...)."""


class ArchiveFailed(PurgeError):
    """An operation could not be archived: it is not purged."""

    def __init__(self, op: int, message: str) -> None:
        super().__init__(f"operation {op}: cannot archive: {message}")
        self.op = op


def error_line(exc: BaseException) -> str:
    """One line for a person: the server's primary message, else the first line of the
    error's text, else its class name."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def sqlstate(exc: psycopg.Error) -> str | None:
    return exc.diag.sqlstate or exc.sqlstate


def milliseconds(seconds: float) -> str:
    """A timeout setting's value ('250ms'); never 0, which would mean no timeout."""
    return f"{max(int(seconds * 1000), 1)}ms"


def conninfo(
    dsn: str,
    *,
    application_name: str = CLI_APPLICATION_NAME,
    dbname: str | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> str:
    """``dsn`` with softguard's options: ``application_name`` and ``connect_timeout`` unless
    the DSN sets them, ``dbname`` (when given) instead of the DSN's. InvalidDsn for a DSN
    that does not parse."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise InvalidDsn.from_psycopg(exc) from None
    extra: dict[str, Any] = {}
    if "application_name" not in params:
        extra["application_name"] = application_name
    if connect_timeout is not None and "connect_timeout" not in params:
        extra["connect_timeout"] = max(1, int(connect_timeout))
    if dbname is not None:
        extra["dbname"] = dbname
    return make_conninfo(dsn, **extra) if extra else dsn


def connect(
    dsn: str,
    *,
    application_name: str = CLI_APPLICATION_NAME,
    dbname: str | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    lock_timeout: float | None = None,
) -> psycopg.Connection[Any]:
    """A new autocommit connection for softguard's own work (see ``conninfo``);
    ``lock_timeout`` (seconds) for every statement of the session. CannotConnect when the
    database cannot be reached or refuses the login, InvalidDsn for a DSN that does not
    parse."""
    info = conninfo(
        dsn, application_name=application_name, dbname=dbname, connect_timeout=connect_timeout
    )
    try:
        conn = psycopg.connect(info, autocommit=True)
    except psycopg.Error as exc:
        raise CannotConnect.from_psycopg(exc) from exc
    if lock_timeout is not None:
        # A SET, not a startup option: poolers (PgBouncer) refuse unknown startup options.
        conn.execute(f"SET lock_timeout = '{milliseconds(lock_timeout)}'")
    return conn
