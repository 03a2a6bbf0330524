"""Making sure a database has softguard's ledger before a statement is rewritten into it.

The first protected statement for a database (per process) waits while softguard checks,
over its own connection, that the ledger is installed and current, installing or
upgrading it when it can. The answer is cached: ``True``, or the error message that
protected statements of that database are then refused with.

The same check keeps the database's capture budget equal to the configuration
(``softguard.settings``, softguard/ledger/budget.py), with a fresh sample of the server's
disk; it is written again, in the background, once it is older than ``BUDGET_REFRESH``
(free disk space changes), when protected statements keep coming.

The same check reads which tables of the database are soft-delete tables (when
``[[soft_delete]]`` is configured); that answer is refreshed in the background once it is
older than the ``soft_delete_refresh`` setting (60 s by default), so tables created later
are picked up.

A ledger installed without event triggers (a managed service's owner role, decision 0025)
is reported once per database at its first check (what is not protected there), and
nothing equips the tables created later: each check then puts the capture triggers on
every table that lacks them (``softguard.capture_sweep``), and table DDL makes the next
protected statement wait for a check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import make_conninfo

from softguard.config import CaptureBudget
from softguard.contract import REQUEST_APPROVAL_FUNCTION
from softguard.ledger.budget import sync_budget, sync_update_capture
from softguard.ledger.db import GATE_APPLICATION_NAME, LedgerError, connect, error_line
from softguard.ledger.soft_delete_tables import check, resolve
from softguard.proxy.commands import RequestApproval
from softguard.proxy.upstream import UpstreamTarget
from softguard.soft_delete_config import SoftDeleteRule
from softguard.sql.soft_delete import SoftDeleteTables

log = logging.getLogger("softguard.ledger")

LedgerState = Literal[True] | str  # True when ready, else why not
SOFT_DELETE_REFRESH = 60.0
INSTALL_LOCK_TIMEOUT = 5.0  # seconds
DDL_RECHECK = 2.0  # seconds after a read caused by DDL, read again (in the background)
BUDGET_REFRESH = 60.0  # seconds after which the capture budget's disk sample is taken again


class LedgerGate:
    def __init__(
        self,
        target: UpstreamTarget,
        connect_timeout: float,
        soft_delete: list[SoftDeleteRule] | None = None,
        soft_delete_refresh: float = SOFT_DELETE_REFRESH,
        budget: CaptureBudget | None = None,
        *,
        passfile: Path | None = None,
        password: str | None = None,
    ) -> None:
        self._target = target
        # The secrets softguard holds (decision 0018): its own connections use them too.
        self._passfile = passfile
        self._password = password or target.password
        self._refresh_after = soft_delete_refresh
        self._timeout = connect_timeout
        self._states: dict[str, LedgerState] = {}
        self._checks: dict[str, asyncio.Future[LedgerState]] = {}
        self._users: dict[str, str] = {}  # the role a database's ledger was checked for
        self.soft_delete_rules = list(soft_delete or [])
        # database -> (when read, its soft-delete tables); refreshes in flight
        self._soft: dict[str, tuple[float, SoftDeleteTables]] = {}
        self._soft_refresh: set[str] = set()
        self._recheck: set[str] = set()  # read again soon after the next read (DDL seen)
        self._tasks: set[asyncio.Future[None]] = set()
        self._budget = budget
        # database -> when its budget was last written (inf: this role may not write it)
        self._budget_at: dict[str, float] = {}
        self._budget_refresh: set[str] = set()
        self._no_event_triggers: set[str] = set()  # databases installed without them
        self._reported: set[str] = set()  # databases whose protection was logged

    def ready_databases(self) -> dict[str, str]:
        """{database: conninfo} of the databases whose ledger is known ready (any thread)."""
        states, users = dict(self._states), dict(self._users)
        return {
            db: self.conninfo(db, users.get(db, ""), "softguard-metrics")
            for db, state in states.items()
            if state is True
        }

    def state(self, database: str, user: str) -> LedgerState | None:
        """None while unknown; then True or the refusal message. A failure is the role's
        that was checked: without credentials in the upstream DSN the check runs as the
        client's role, and another role (a superuser) may be able to install the ledger."""
        known = self._states.get(database)
        if known is not True and known is not None and self._users.get(database) != user:
            return None
        return known

    def forget(self, database: str) -> None:
        """The server says the ledger is gone: check again next time."""
        self._states.pop(database, None)
        self._soft.pop(database, None)

    def lacks_event_triggers(self, database: str) -> bool:
        return database in self._no_event_triggers

    def forget_soft_delete_tables(self, database: str) -> None:
        """DDL went by: the next DELETE waits for the tables to be read again, and they are
        read once more shortly after (the DDL may not have been committed yet)."""
        self._soft.pop(database, None)
        self._recheck.add(database)
        if database in self._no_event_triggers:
            # the next protected statement waits for a check, which equips new tables
            self._states.pop(database, None)

    def soft_delete_tables(self, database: str) -> SoftDeleteTables | None:
        """The database's soft-delete tables (None: not read yet, wait with ``ensure``).
        An answer older than ``soft_delete_refresh`` is still returned while a fresh one is
        read in the background."""
        known = self._soft.get(database)
        if known is None:
            return None
        read_at, tables = known
        if time.monotonic() - read_at > self._refresh_after and database not in self._soft_refresh:
            self._soft_refresh.add(database)
            task = asyncio.ensure_future(self._refresh_soft(database))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return tables

    async def _refresh_soft(self, database: str) -> None:
        try:
            await asyncio.to_thread(self._read_soft, database, self._users.get(database, ""))
        except Exception as exc:  # keep the answer we have; try again later
            log.warning("soft-delete tables of database %s not refreshed: %s", database, exc)
            known = self._soft.get(database)
            if known is not None:
                self._soft[database] = (time.monotonic(), known[1])
        finally:
            self._soft_refresh.discard(database)

    def _read_soft(self, database: str, user: str) -> None:
        with connect(self.conninfo(database, user)) as conn:
            self._store_soft(conn, database)

    def _store_soft(self, conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
        if not self.soft_delete_rules:
            self._soft[database] = (time.monotonic(), SoftDeleteTables())
            return
        resolution = resolve(conn, self.soft_delete_rules, database)
        self._capture_updates(conn, database)
        errors, warnings = check(resolution, database)
        for line in errors:
            log.error("%s: DELETEs on that table are refused until it is fixed", line)
        for line in warnings:
            log.info("%s", line)
        read_at = time.monotonic()
        if database in self._recheck:
            self._recheck.discard(database)
            read_at -= self._refresh_after - DDL_RECHECK
        self._soft[database] = (read_at, resolution.tables)

    def _capture_updates(self, conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
        """A soft delete marks rows with an UPDATE, which only the UPDATE capture triggers
        record (decision 0023): switch them on. Without them, soft_delete_begin refuses."""
        try:
            if sync_update_capture(conn, True, only_on=True):
                log.info("UPDATE capture switched on in database %s (soft delete)", database)
        except LedgerError as exc:
            log.error(
                "UPDATE capture of database %s is off and could not be switched on (%s):"
                " soft deletes there are refused until softguard init --config runs with"
                " this configuration",
                database,
                exc,
            )

    async def ensure(self, database: str, user: str) -> LedgerState:
        known = self.state(database, user)
        if known is not None and (known is not True or database in self._soft):
            if known is True:
                self._refresh_budget(database)
            return known
        check = self._checks.get(database)
        if check is None:
            self._users[database] = user
            check = asyncio.ensure_future(asyncio.to_thread(self._install, database, user))
            self._checks[database] = check
        try:
            state = await check
        except Exception as exc:  # the check itself must never kill a session
            state = f"{type(exc).__name__}: {exc}"
        self._checks.pop(database, None)
        if state is not True:
            state = (
                f"softguard: cannot make this statement reversible: the softguard ledger is "
                f'not installed in database "{database}" and softguard could not install it '
                f"({state}). Run: softguard init --dsn <superuser DSN of that database>"
            )
            # Do not cache failures forever: an operator may run `softguard init` now.
            asyncio.get_running_loop().call_later(10, self._states.pop, database, None)
        self._states[database] = state
        return state

    def _refresh_budget(self, database: str) -> None:
        at = self._budget_at.get(database, 0.0)
        if (
            self._budget is None
            or time.monotonic() - at < BUDGET_REFRESH
            or database in self._budget_refresh
        ):
            return
        self._budget_refresh.add(database)
        task = asyncio.ensure_future(asyncio.to_thread(self._resync_budget, database))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resync_budget(self, database: str) -> None:
        try:
            with connect(self.conninfo(database, self._users.get(database, ""))) as conn:
                self._sync_budget(conn, database)
        except (psycopg.Error, LedgerError) as exc:  # keep what the table has; try later
            log.warning("capture budget of database %s not refreshed: %s", database, exc)
            self._budget_at[database] = time.monotonic()
        finally:
            self._budget_refresh.discard(database)

    def _sync_budget(self, conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
        if self._budget is None:
            return
        try:
            if sync_budget(conn, self._budget):
                log.info(
                    "capture budget of database %s set: max_capture_bytes=%s"
                    " min_free_disk_percent=%s",
                    database,
                    self._budget.max_capture_bytes,
                    self._budget.min_free_disk_percent,
                )
            self._budget_at[database] = time.monotonic()
        except LedgerError as exc:
            # Not the ledger's owner (the gate connects as the client's role when the
            # upstream DSN carries no credentials): softguard init keeps it instead.
            log.warning(
                "capture budget of database %s left as it is (%s): run softguard init"
                " --config with this configuration as a superuser",
                database,
                exc,
            )
            self._budget_at[database] = float("inf")

    async def request_approval(self, request: RequestApproval) -> None:
        """Record a refused statement for a person to approve (decision 0020). Failures
        are logged: the client's error already says what was refused."""

        def record() -> None:
            with connect(self.conninfo(request.database, request.role)) as conn:
                conn.execute(
                    f"SELECT {REQUEST_APPROVAL_FUNCTION}(%s, %s, %s, %s, %s)",
                    [
                        request.role,
                        request.database,
                        request.statement,
                        request.reason,
                        request.client_addr,
                    ],
                )

        try:
            await asyncio.to_thread(record)
        except (psycopg.Error, LedgerError) as exc:
            log.warning(
                "approval request for database %s not recorded: %s",
                request.database,
                error_line(exc),
            )

    def conninfo(
        self, database: str, user: str, application_name: str = GATE_APPLICATION_NAME
    ) -> str:
        """softguard's own connection to ``database``: the upstream's credentials if it
        carries any, else the client's role, with the password softguard holds (trust or
        .pgpass when it holds none)."""
        target = self._target
        extra = {"passfile": str(self._passfile)} if self._passfile is not None else {}
        return make_conninfo(
            "",
            host=target.host,
            port=target.port,
            dbname=database,
            user=target.user or user,
            password=self._password,
            **extra,
            sslmode=target.sslmode,
            sslrootcert=target.sslrootcert,
            sslcert=target.sslcert,
            sslkey=target.sslkey,
            connect_timeout=max(1, int(self._timeout)),
            application_name=application_name,
        )

    def _install(self, database: str, user: str) -> LedgerState:
        from softguard.ledger.migrate import apply_migrations

        conninfo = self.conninfo(database, user)
        try:
            # The statement waiting for this check may come from a transaction that holds
            # locks the migrations need (installing triggers on its tables): wait a little,
            # then refuse it with the reason, rather than wait for each other forever.
            with connect(conninfo, lock_timeout=INSTALL_LOCK_TIMEOUT) as conn:
                applied = apply_migrations(conn)
                try:
                    self._without_event_triggers(conn, database)
                except psycopg.Error as exc:  # what it could not say or do is logged
                    log.error("database %s: protection not read: %s", database, error_line(exc))
                self._sync_budget(conn, database)
                try:
                    self._store_soft(conn, database)
                except psycopg.Error as exc:
                    # DELETEs stay reversible (captured); soft delete waits for a re-read
                    log.error("soft-delete tables of database %s not read: %s", database, exc)
                    retry_at = time.monotonic() - self._refresh_after + 10
                    self._soft[database] = (retry_at, SoftDeleteTables())
        except (psycopg.Error, LedgerError) as exc:
            message = error_line(exc)
            log.warning("ledger check for database %s failed: %s", database, message)
            return message
        if applied:
            log.info("installed softguard ledger in database %s: %s", database, ", ".join(applied))
        return True

    def _without_event_triggers(
        self, conn: psycopg.Connection[tuple[object, ...]], database: str
    ) -> None:
        """Say once what this database's install does not protect; without event
        triggers, equip the tables that lack capture triggers (created since)."""
        from softguard.ledger.migrate import capabilities, sweep_capture

        able = capabilities(conn)
        if database not in self._reported:
            self._reported.add(database)
            for what, ok in able.lines():
                if not ok:
                    log.warning("database %s: NOT protected: %s (decision 0025)", database, what)
        if able.event_triggers:
            self._no_event_triggers.discard(database)
            return
        self._no_event_triggers.add(database)
        for rel, done in sweep_capture(conn):
            if done:
                log.info("database %s: capture triggers put on %s", database, rel)
            else:
                log.error(
                    "database %s: %s has no capture triggers and softguard's role may not add"
                    " them: its DELETEs and TRUNCATEs are not reversible",
                    database,
                    rel,
                )
