"""Install and upgrade the softguard ledger in a database.

The SQL lives in ``SQL_DIR`` (docs/decisions/0010-sql-layout-and-versioning.md):

- ``install/*.sql``: the current definitions, by topic; in name order they are the install
  script of the current version.
- ``upgrades/N--M.sql`` (M = N + 1): reviewed scripts taking an install from version N to M.
- ``released/softguard--1.sql``: the install script of the first version, frozen.

The current version is 1 + the number of upgrade scripts. An install records each script it
ran in ``softguard.migrations`` (the install of version N as ``softguard--N.sql``, then each
upgrade); its version is the highest recorded. A fresh database gets the install script, an
older install the upgrades it lacks, each in its own transaction, serialised by an advisory
lock; applying is idempotent. A ledger left by the pre-release numbered migrations
(``0001_ledger.sql`` ...) is refused, never half-upgraded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from softguard.ledger.db import LedgerError

# The repository's top-level migrations/, reached through the package's symlink
# softguard/ledger/migrations (a built wheel carries the files themselves there).
SQL_DIR = Path(__file__).resolve().parent / "migrations"
#: Kept for callers that name the directory the SQL ships in.
MIGRATIONS_DIR = SQL_DIR

#: The version of the frozen baseline (released/softguard--1.sql).
FIRST_VERSION = 1

#: pg_advisory_xact_lock key serialising ledger migrations ("softgrd" in ASCII).
ADVISORY_LOCK_KEY = 0x736F6674677264

_UPGRADE = re.compile(r"^(\d+)--(\d+)\.sql$")
# What the pre-release migrations recorded in softguard.migrations.name.
_PRE_RELEASE = r"^[0-9]{4}_"


@dataclass(frozen=True)
class Script:
    """One script an install runs: the install of a version, or one upgrade."""

    version: int  # the version the database is at once it ran
    name: str  # what softguard.migrations records
    sql: str


def install_script(directory: Path | None = None) -> str:
    """The install script of the current version: the topic files, in name order."""
    topics = sorted((_dir(directory) / "install").glob("*.sql"))
    if not topics:
        raise LedgerError(f"no install files in {_dir(directory) / 'install'}")
    return "".join(f"-- install/{p.name}\n{p.read_text(encoding='utf-8')}\n" for p in topics)


def upgrade_scripts(directory: Path | None = None) -> list[Script]:
    """The upgrade scripts, in version order; each takes version N to N + 1."""
    upgrades = _dir(directory) / "upgrades"
    found: dict[int, Script] = {}
    for path in sorted(upgrades.glob("*.sql")) if upgrades.is_dir() else []:
        m = _UPGRADE.match(path.name)
        if m is None or int(m.group(2)) != int(m.group(1)) + 1:
            raise LedgerError(f"bad upgrade script name {path.name}: expected N--N+1.sql")
        found[int(m.group(2))] = Script(int(m.group(2)), path.name, path.read_text("utf-8"))
    expected = list(range(FIRST_VERSION + 1, FIRST_VERSION + 1 + len(found)))
    if sorted(found) != expected:
        raise LedgerError(f"upgrade scripts do not chain from version {FIRST_VERSION}")
    return [found[v] for v in expected]


def current_version(directory: Path | None = None) -> int:
    """The version the install files define."""
    return FIRST_VERSION + len(upgrade_scripts(directory))


def ledger_version(conn: psycopg.Connection[Any]) -> int | None:
    """The installed version, or None when the ledger is not installed."""
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
) -> list[str]:
    """The names of the scripts this database still needs (none when up to date)."""
    return [s.name for s in _pending(conn, directory)]


def apply_migrations(
    conn: psycopg.Connection[Any],
    directory: Path | None = None,
    *,
    event_trigger_helper: str | None = None,
    owner_may_install: bool = False,
) -> list[str]:
    """Install or upgrade the ledger; return the names of the scripts run (maybe none).

    ``conn`` must be idle (not inside a transaction); each script is committed on its
    own. Needs a superuser when anything is pending, or with ``owner_may_install`` (an
    explicit ``softguard init``, never serve's automatic install) the database's owner (a
    managed service's owner role, decision 0025). The event triggers are created directly when
    PostgreSQL allows it, through ``event_trigger_helper`` (a provider's function
    ``schema.name(name text, definition text)``) when given, or left out, and the ledger
    records it (``softguard.settings.event_triggers``; see ``capabilities``).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise LedgerError("applying migrations needs a connection that is not in a transaction")
    applied: list[str] = []
    # One applier at a time for the whole run (each script still commits on its own):
    # concurrent appliers then find everything applied instead of splitting the work.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
    try:
        for _ in range(current_version(directory) + 1):  # bounded: one script per pass
            script = _next_script(conn, directory, event_trigger_helper, owner_may_install)
            if script is None:
                break
            applied.append(script)
    finally:
        if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
    return applied


def _next_script(
    conn: psycopg.Connection[Any],
    directory: Path | None,
    event_trigger_helper: str | None,
    owner_may_install: bool,
) -> str | None:
    """Run the next pending script in its own transaction; its name, or None if none."""
    name = "?"
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
            pending = _pending(conn, directory)
            if not pending:
                return None
            script = pending[0]
            name = script.name
            _require_installer(conn, owner_may_install)
            if event_trigger_helper:
                conn.execute(
                    "SELECT set_config('softguard.event_trigger_helper', %s, true)",
                    [event_trigger_helper],
                )
            conn.execute(script.sql.encode())
            conn.execute(
                "INSERT INTO softguard.migrations (version, name) VALUES (%s, %s)",
                [script.version, script.name],
            )
    except psycopg.Error as exc:
        diag = exc.diag
        where = f" ({diag.context.strip()})" if diag.context else ""
        raise LedgerError(f"migration {name} failed: {diag.message_primary or exc}{where}") from exc
    return name


def _pending(conn: psycopg.Connection[Any], directory: Path | None) -> list[Script]:
    version = ledger_version(conn)
    target = current_version(directory)
    if version is None:
        name = f"softguard--{target}.sql"
        return [Script(target, name, install_script(directory))]
    _refuse_pre_release(conn)
    if version > target:
        raise LedgerError(
            f"the ledger is at version {version}, newer than this softguard's {target}:"
            " upgrade softguard"
        )
    return [s for s in upgrade_scripts(directory) if s.version > version]


def _refuse_pre_release(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT string_agg(name, ', ' ORDER BY version) FROM softguard.migrations WHERE name ~ %s",
        [_PRE_RELEASE],
    ).fetchone()
    if row is None or row[0] is None:
        return
    raise LedgerError(
        f"this database's ledger was installed by pre-release migrations ({row[0]}), which"
        " cannot be upgraded: undo or purge what it keeps, then remove it as a superuser"
        " (SET softguard.internal = on; DROP EVENT TRIGGER softguard_capture_sql_drop,"
        " softguard_capture_ddl_end, softguard_capture_install; DROP SCHEMA softguard,"
        " softguard_rows, softguard_quarantine and every softguard_q<op>_* schema CASCADE) and"
        " run softguard init again"
    )


def _dir(directory: Path | None) -> Path:
    found = directory or SQL_DIR
    if not found.is_dir():
        raise LedgerError(f"migrations directory not found: {found}")
    return found


def _require_installer(conn: psycopg.Connection[Any], owner_may_install: bool) -> None:
    """A superuser; or, for an explicit ``softguard init``, the owner of the database (a
    managed service's owner role): the install creates schemas and puts triggers on the
    application's tables. serve never installs as the owner by itself: what such an
    install leaves unprotected is for a person to read first (``init`` prints it)."""
    row = conn.execute(
        "SELECT current_user, r.rolsuper, pg_has_role(current_user, d.datdba, 'MEMBER')"
        " FROM pg_roles r, pg_database d"
        " WHERE r.rolname = current_user AND d.datname = current_database()"
    ).fetchone()
    if row is not None and (row[1] or (owner_may_install and row[2])):
        return
    who = row[0] if row else "?"
    if owner_may_install:
        raise LedgerError(
            "installing the softguard ledger needs a superuser or the owner of the database"
            ' (a managed service\'s owner role: see the runbook, "Managed PostgreSQL"):'
            f" connected as {who}"
        )
    raise LedgerError(
        "installing the softguard ledger needs a superuser (it creates event triggers):"
        f" connected as {who} (a managed service's owner role installs it with softguard init)"
    )


@dataclass(frozen=True)
class Capabilities:
    """What the installed ledger can protect in this database (decision 0025)."""

    event_triggers: bool  # all of softguard's event triggers were created
    replica_role: bool  # this role may set session_replication_role (undo uses it)
    large_objects: bool  # PUBLIC may not run lo_unlink & co. directly (their REVOKE worked)

    def lines(self) -> list[tuple[str, bool]]:
        """(what, protected) for ``softguard init`` and ``serve`` to say."""
        et = self.event_triggers
        return [
            ("DELETE, TRUNCATE, UPDATE on existing tables: captured; undo; purge", True),
            ("DROP TABLE/VIEW/SCHEMA/..., ALTER TABLE DROP COLUMN (else refused, 55000)", et),
            (
                "tables created later: captured at once (else serve equips them at its next"
                " check; a DELETE in the transaction that created the table is not captured)",
                et,
            ),
            ("backstop for DROP inside DO blocks and functions", et),
            ("capture triggers defend themselves against DROP/DISABLE TRIGGER", et),
            ("CREATE OR REPLACE history, the CASCADE guard, the mode guard", et),
            ("lo_unlink, lo_put, lowrite, lo_truncate only through softguard", self.large_objects),
            (
                "undo in replica mode (else: the tables' user triggers are disabled during undo)",
                self.replica_role,
            ),
        ]


def capabilities(conn: psycopg.Connection[Any]) -> Capabilities:
    """Read what the install could set up (the ledger must be installed)."""
    row = conn.execute(
        "SELECT softguard._has_event_triggers(), softguard._can_set_replica(),"
        " NOT has_function_privilege('public', 'pg_catalog.lo_unlink(oid)', 'EXECUTE')"
    ).fetchone()
    assert row is not None
    return Capabilities(
        event_triggers=bool(row[0]), replica_role=bool(row[1]), large_objects=bool(row[2])
    )


def sweep_capture(conn: psycopg.Connection[Any]) -> list[tuple[str, bool]]:
    """Without event triggers nothing equips tables created later: put the capture triggers
    on every table that lacks them; (table, whether it could) for each one found."""
    rows = conn.execute("SELECT rel::text, done FROM softguard.capture_sweep()").fetchall()
    return [(str(rel), bool(done)) for rel, done in rows]
