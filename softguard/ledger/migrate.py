"""Install and upgrade the softguard ledger in a database.

Migrations are the files ``NNNN_name.sql`` of ``MIGRATIONS_DIR``, applied in version
order, each in its own transaction serialised by a transaction-level advisory lock, and
recorded in ``softguard.migrations``. Applying is idempotent: a version already recorded
is skipped, also when another process applied it while we waited for the lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from softguard.ledger.db import LedgerError

#: The repository's ``migrations/`` (an editable install runs from the repository).
# The repository's top-level migrations/, reached through the package's symlink
# softguard/ledger/migrations (a built wheel carries the files themselves there).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: pg_advisory_xact_lock key serialising ledger migrations ("softgrd" in ASCII).
ADVISORY_LOCK_KEY = 0x736F6674677264

_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "0001_ledger.sql"
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files, in version order."""
    directory = directory or MIGRATIONS_DIR
    if not directory.is_dir():
        raise LedgerError(f"migrations directory not found: {directory}")
    found: dict[int, Migration] = {}
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise LedgerError(
                f"two migrations with version {version}: {found[version].name}, {path.name}"
            )
        found[version] = Migration(version, path.name, path)
    return [found[v] for v in sorted(found)]


def ledger_version(conn: psycopg.Connection[Any]) -> int | None:
    """The highest applied migration version, or None when the ledger is not installed."""
    row = conn.execute(
        "SELECT CASE WHEN to_regclass('softguard.migrations') IS NOT NULL"
        " AND has_table_privilege('softguard.migrations', 'SELECT') THEN 1 END"
    ).fetchone()
    if row is None or row[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM softguard.migrations").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def pending_migrations(
    conn: psycopg.Connection[Any],
    directory: Path | None = None,
) -> list[Migration]:
    """The migrations not yet recorded in this database."""
    applied = _applied_versions(conn)
    return [m for m in available_migrations(directory) if m.version not in applied]


def apply_migrations(
    conn: psycopg.Connection[Any],
    directory: Path | None = None,
) -> list[str]:
    """Apply the pending migrations; return the names of those applied (maybe none).

    ``conn`` must be idle (not inside a transaction); each migration is committed on its
    own. Needs a superuser when anything is pending (the ledger creates event triggers).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise LedgerError("applying migrations needs a connection that is not in a transaction")
    migrations = available_migrations(directory)
    applied_names: list[str] = []
    # One applier at a time for the whole run (each migration still commits on its own):
    # concurrent appliers then find everything applied instead of splitting the work.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
    try:
        _apply_each(conn, migrations, applied_names)
    finally:
        if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
    return applied_names


def _apply_each(
    conn: psycopg.Connection[Any], migrations: list[Migration], applied_names: list[str]
) -> None:
    for migration in migrations:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
                if migration.version in _applied_versions(conn):
                    continue
                _require_superuser(conn)
                conn.execute(migration.sql().encode())
                conn.execute(
                    "INSERT INTO softguard.migrations (version, name) VALUES (%s, %s)",
                    [migration.version, migration.name],
                )
        except psycopg.Error as exc:
            diag = exc.diag
            where = f" ({diag.context.strip()})" if diag.context else ""
            raise LedgerError(
                f"migration {migration.name} failed: {diag.message_primary or exc}{where}"
            ) from exc
        applied_names.append(migration.name)


def _applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    if ledger_version(conn) is None:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM softguard.migrations")}


def _require_superuser(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row is None or not row[1]:
        who = row[0] if row else "?"
        raise LedgerError(
            "installing the softguard ledger needs a superuser (it creates event triggers):"
            f" connected as {who}"
        )
