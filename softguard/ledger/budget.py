"""Keeping a database's capture budget (``softguard.settings``) equal to the configuration.

The budget decides, in the database, how much one statement may copy into the ledger
(migrations/install/07_settings.sql, docs/decisions/0014-capture-budget.md). Only
softguard's own connections write it: ``softguard init`` and the proxy's ledger gate call
``sync_budget`` on a connection of the ledger's owner (a superuser). A connection that may
not write it (the gate connecting as a client's role) leaves the table as it is and says so.

The disk share can be kept only when softguard can measure the disk that holds the
server's data directory: the server runs on this host (a Unix socket or a loopback
address: the embedded server, or an upstream beside softguard) and the connection may read
``data_directory``. Otherwise the disk figures are NULL and only ``max_capture_bytes``
holds.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import psycopg

from softguard.config import CaptureBudget
from softguard.ledger.db import LedgerError

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class DiskSample:
    total: int
    free: int


def is_local_host(host: str | None) -> bool:
    """Does a connection to ``host`` reach a server on this machine?"""
    h = (host or "").strip()
    return h in _LOCAL_HOSTS or h.startswith("/") or h.startswith("127.")


def disk_sample(conn: psycopg.Connection[Any]) -> DiskSample | None:
    """The disk holding the server's data directory, when softguard can measure it."""
    if not is_local_host(conn.info.host):
        return None
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('data_directory', true)").fetchone()
    except psycopg.Error:
        return None
    path = row[0] if row else None
    if not path or not os.path.isdir(path):
        return None  # not readable by this role, or not this machine's file system after all
    usage = shutil.disk_usage(path)
    return DiskSample(total=usage.total, free=usage.free)


def sync_budget(conn: psycopg.Connection[Any], budget: CaptureBudget) -> bool:
    """Write the budget (and a fresh disk sample) into ``softguard.settings`` when it
    differs or the sample is older than a minute. True when written. Raises
    ``LedgerError`` when the ledger has no settings table or the role may not write it."""
    disk = disk_sample(conn)
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT max_capture_bytes, min_free_disk_percent, disk_total_bytes,"
                " coalesce(disk_checked_at < now() - interval '1 minute', true)"
                " FROM softguard.settings"
            ).fetchone()
            stale = (
                row is None
                or row[0] != budget.max_capture_bytes
                or abs(float(row[1]) - budget.min_free_disk_percent) > 1e-6
                or (disk is None) != (row[2] is None)
                or (disk is not None and bool(row[3]))
            )
            if not stale:
                return False
            conn.execute(
                "SELECT softguard._settings_set(%s::bigint, %s::real, %s::bigint, %s::bigint)",
                [
                    budget.max_capture_bytes,
                    budget.min_free_disk_percent,
                    None if disk is None else disk.total,
                    None if disk is None else disk.free,
                ],
            )
    except psycopg.Error as exc:
        raise LedgerError.from_psycopg(exc, "capture budget not written: ") from exc
    return True


def sync_update_capture(conn: psycopg.Connection[Any], wanted: bool, *, only_on: bool) -> bool:
    """Make ``softguard.settings.capture_updates`` say ``wanted`` (decision 0023): UPDATE
    capture triggers on every table only while some rule protects UPDATE or soft-deletes.
    ``only_on``: switch it on if wanted, never off (the proxy; another configuration's
    sessions may rely on it). True when changed. Raises ``LedgerError`` when the role may
    not, or when live sessions still rely on it."""
    if only_on and not wanted:
        return False
    try:
        with conn.transaction():
            row = conn.execute("SELECT softguard._set_capture_updates(%s)", [wanted]).fetchone()
    except psycopg.Error as exc:
        raise LedgerError.from_psycopg(exc, "UPDATE capture not switched: ") from exc
    return bool(row and row[0])
