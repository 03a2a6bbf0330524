"""Making sure a database has softguard's ledger before a statement is rewritten into it.

The first protected statement for a database (per process) waits while softguard checks,
over its own connection, that the ledger is installed and current, installing or
upgrading it when it can. The answer is cached: ``True``, or the error message that
protected statements of that database are then refused with.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import psycopg
from psycopg.conninfo import make_conninfo

from softguard.proxy.upstream import UpstreamTarget

log = logging.getLogger("softguard.ledger")

LedgerState = Literal[True] | str  # True when ready, else why not


class LedgerGate:
    def __init__(self, target: UpstreamTarget, connect_timeout: float) -> None:
        self._target = target
        self._timeout = connect_timeout
        self._states: dict[str, LedgerState] = {}
        self._checks: dict[str, asyncio.Future[LedgerState]] = {}
        self._users: dict[str, str] = {}  # the role a database's ledger was checked for

    def ready_databases(self) -> dict[str, str]:
        """{database: conninfo} of the databases whose ledger is known ready (any thread)."""
        states, users = dict(self._states), dict(self._users)
        return {
            db: self.conninfo(db, users.get(db, ""), "softguard-metrics")
            for db, state in states.items()
            if state is True
        }

    def state(self, database: str) -> LedgerState | None:
        """None while unknown; then True or the refusal message."""
        return self._states.get(database)

    def forget(self, database: str) -> None:
        """The server says the ledger is gone: check again next time."""
        self._states.pop(database, None)

    async def ensure(self, database: str, user: str) -> LedgerState:
        known = self._states.get(database)
        if known is not None:
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

    def conninfo(self, database: str, user: str, application_name: str = "softguard") -> str:
        """softguard's own connection to ``database``: the upstream's credentials if it
        carries any, else the client's role (trust or .pgpass)."""
        target = self._target
        return make_conninfo(
            "",
            host=target.host,
            port=target.port,
            dbname=database,
            user=target.user or user,
            password=target.password,
            sslmode=target.sslmode,
            sslrootcert=target.sslrootcert,
            sslcert=target.sslcert,
            sslkey=target.sslkey,
            connect_timeout=max(1, int(self._timeout)),
            application_name=application_name,
        )

    def _install(self, database: str, user: str) -> LedgerState:
        from softguard.ledger.migrate import LedgerError, apply_migrations

        conninfo = self.conninfo(database, user)
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                applied = apply_migrations(conn)
        except (psycopg.Error, LedgerError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.warning("ledger check for database %s failed: %s", database, message)
            return message
        if applied:
            log.info("installed softguard ledger in database %s: %s", database, ", ".join(applied))
        return True
