"""Purge on a schedule: ``softguard serve --purge-every 1h`` (config ``purge_every``).

A background thread (``PurgeScheduler``) wakes every ``interval`` seconds and, for each
database it covers, runs the same purge as ``softguard purge --yes`` (due operations only:
past their expiry; see softguard/ledger/purge.py), then checks the quarantine against
``max_quarantine_bytes``.

Which databases: those listed in ``purge_databases``, else every database of the server
that accepts connections and has the softguard ledger (looked up on each run, so a ledger
installed later, by ``softguard init`` or by the proxy, is covered without a restart).

What holds:
- One softguard process at a time purges a database: each pass takes
  ``pg_try_advisory_lock(PURGE_LOCK_KEY)`` on its session connection (advisory locks are
  per database) and, if another process holds it, logs that it skipped the database and
  moves on. The lock is released at the end of the pass (or when the connection ends).
- One log line per purged or skipped operation (skipped ones at WARNING), one WARNING when
  the quarantine holds more than ``max_quarantine_bytes``; nothing is ever evicted to stay
  under the cap.
- An error in one database (cannot connect, ledger too old, role may not purge) is logged
  and the other databases are still purged; the thread never dies of it.
- ``stop`` (a threading.Event) ends the loop at the next database or wake-up; purge works in
  short transactions, so a process that exits mid-pass leaves every operation either purged
  or untouched.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from softguard.ledger.db import PURGE_APPLICATION_NAME, LedgerError, connect, error_line
from softguard.ledger.purge import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_LOCK_TIMEOUT,
    PurgeSummary,
    check_purge_access,
    run_purge,
)
from softguard.ledger.space import due_operations, over_cap_warning, space_report

if TYPE_CHECKING:
    from softguard.config import Settings

log = logging.getLogger("softguard.purge")

#: pg_try_advisory_lock key: one scheduled purge per database at a time ("softprg").
PURGE_LOCK_KEY = 0x736F6674707267

#: database name -> a new autocommit connection to it.
Connect = Callable[[str], "psycopg.Connection[Any]"]
PassStatus = Literal["done", "locked", "no-ledger", "error"]


@dataclass(frozen=True)
class DatabasePass:
    """What one pass did in one database."""

    database: str
    status: PassStatus  # done; locked (another process purges it); no-ledger; error
    summary: PurgeSummary | None = None
    total_bytes: int | None = None  # what the quarantine holds after the pass
    message: str = ""


def connector(dsn: str, connect_timeout: float = 10.0) -> Connect:
    """A ``Connect`` for a DSN template: its database name is replaced by the one asked."""

    def connect_to(database: str) -> psycopg.Connection[Any]:
        return connect(
            dsn,
            application_name=PURGE_APPLICATION_NAME,
            dbname=database,
            connect_timeout=connect_timeout,
        )

    return connect_to


def connectable_databases(conn: psycopg.Connection[Any]) -> list[str]:
    """Every database of the server that accepts connections (templates left out)."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
    ).fetchall()
    return [str(r[0]) for r in rows]


def purge_database(
    conn: psycopg.Connection[Any],
    database: str,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    max_quarantine_bytes: int | None = None,
) -> DatabasePass:
    """One pass over one database (``conn``: autocommit, to that database)."""
    row = conn.execute("SELECT to_regclass('softguard.operations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        log.debug("database %s: no softguard ledger, nothing to purge", database)
        return DatabasePass(database, "no-ledger")
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [PURGE_LOCK_KEY]).fetchone()
    if row is None or not row[0]:
        message = f"database {database}: purge skipped: another softguard process is purging it"
        log.info("%s", message)
        return DatabasePass(database, "locked", message=message)
    try:
        check_purge_access(conn)
        due = due_operations(conn)
        summary = run_purge(conn, due, lock_timeout=lock_timeout, batch_rows=batch_rows)
        for outcome in summary.outcomes:
            if outcome.purged:
                log.info("database %s: %s", database, outcome.message)
            else:
                hint = f" ({outcome.hint})" if outcome.hint else ""
                log.warning("database %s: %s%s", database, outcome.message, hint)
        if summary.rows_deleted:
            log.info(
                "database %s: deleted %d released captured rows", database, summary.rows_deleted
            )
        total = space_report(conn).total_bytes
        if max_quarantine_bytes is not None and total > max_quarantine_bytes:
            log.warning(
                "%s", over_cap_warning(total, max_quarantine_bytes, f" of database {database}")
            )
        return DatabasePass(database, "done", summary=summary, total_bytes=total)
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", [PURGE_LOCK_KEY])


class PurgeScheduler:
    """Purge due operations every ``interval`` seconds until ``stop`` is set.

    ``databases``: the names to purge, or None for every database with the ledger (found
    through ``connect(list_from)`` on each run).
    """

    def __init__(
        self,
        connect: Connect,
        interval: float,
        stop: threading.Event,
        *,
        databases: Sequence[str] | None = None,
        list_from: str = "postgres",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        max_quarantine_bytes: int | None = None,
        initial_delay: float = 0.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.connect = connect
        self.interval = interval
        self.stop = stop
        self.databases = list(databases) if databases is not None else None
        self.list_from = list_from
        self.lock_timeout = lock_timeout
        self.batch_rows = batch_rows
        self.max_quarantine_bytes = max_quarantine_bytes
        self.initial_delay = initial_delay
        self.thread: threading.Thread | None = None

    def _targets(self) -> list[str]:
        if self.databases is not None:
            return list(self.databases)
        with self.connect(self.list_from) as conn:
            return connectable_databases(conn)

    def run_once(self) -> list[DatabasePass]:
        """One pass over every database covered; never raises for a database's error."""
        try:
            targets = self._targets()
        except (psycopg.Error, LedgerError) as exc:
            log.warning("purge: cannot list the databases (via %s): %s", self.list_from, exc)
            return []
        passes: list[DatabasePass] = []
        for database in targets:
            if self.stop.is_set():
                break
            try:
                with self.connect(database) as conn:
                    passes.append(
                        purge_database(
                            conn,
                            database,
                            lock_timeout=self.lock_timeout,
                            batch_rows=self.batch_rows,
                            max_quarantine_bytes=self.max_quarantine_bytes,
                        )
                    )
            except (psycopg.Error, LedgerError) as exc:
                message = f"database {database}: purge failed: {error_line(exc)}"
                log.warning("%s", message)
                passes.append(DatabasePass(database, "error", message=message))
        return passes

    def run(self) -> None:
        """The loop: a pass, then wait ``interval`` (or until stopped)."""
        if self.stop.wait(self.initial_delay):
            return
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception:  # the scheduler must outlive any surprise
                log.exception("purge pass failed")
            if self.stop.wait(self.interval):
                return

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="softguard-purge", daemon=True)
        self.thread.start()
        return self.thread

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait (up to ``timeout``) for a pass in progress to end."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning(
                    "purge still running after %gs at shutdown; it stops with the process"
                    " (each operation is purged or untouched)",
                    timeout,
                )


def start_scheduled_purge(settings: Settings, upstream_dsn: str) -> PurgeScheduler | None:
    """For ``softguard serve``: start the scheduler when ``purge_every`` is set."""
    if settings.purge_every is None:
        return None
    dsn = settings.purge_dsn or upstream_dsn
    listed = conninfo_to_dict(dsn).get("dbname")
    scheduler = PurgeScheduler(
        connector(dsn, settings.connect_timeout),
        settings.purge_every,
        threading.Event(),
        databases=settings.purge_databases,
        list_from=str(listed) if listed else "postgres",
        max_quarantine_bytes=settings.max_quarantine_bytes,
        # the first pass after the workers have forked (a fork copies no thread, but a
        # thread inside libpq at that moment is best avoided)
        initial_delay=min(settings.purge_every, 10.0),
    )
    which = (
        ", ".join(settings.purge_databases)
        if settings.purge_databases is not None
        else "every database with the softguard ledger"
    )
    log.info("purge scheduled every %gs: %s", settings.purge_every, which)
    scheduler.start()
    return scheduler
