"""A ledger as an older softguard left it: the frozen first release, then the upgrade
scripts up to a version, each in its own transaction and recorded as `softguard init`
records it. For tests of upgrades, and of what a ledger version wrote before them."""

from __future__ import annotations

from typing import Any

import psycopg

from softguard.ledger import MIGRATIONS_DIR
from softguard.ledger.migrate import FIRST_VERSION, upgrade_scripts


def install_ledger_at(conn: psycopg.Connection[Any], version: int) -> None:
    """Install the ledger at *version* on *conn* (autocommit, a superuser)."""
    released = MIGRATIONS_DIR / "released" / f"softguard--{FIRST_VERSION}.sql"
    steps = [(FIRST_VERSION, released.name, released.read_text(encoding="utf-8"))]
    steps += [(s.version, s.name, s.sql) for s in upgrade_scripts() if s.version <= version]
    for number, name, text in steps:
        with conn.transaction():
            conn.execute(text.encode())
            conn.execute(
                "INSERT INTO softguard.migrations (version, name) VALUES (%s, %s)",
                [number, name],
            )
