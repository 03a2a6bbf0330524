"""Retention: purging expired operations, one short transaction each.

Used by ``softguard purge`` (softguard/cli/purge_cmd.py) and the scheduled purge
(softguard/ledger/scheduler.py) on a connection made DIRECTLY to the protected database,
as the superuser that installed the ledger (or a role granted EXECUTE on
softguard.purge_op, purge_rows, op_size, held_relations and SELECT on the ledger tables).
The SQL side is migrations/0003_purge.sql; what is due and how big it is, space.py; the
archive written before an operation is purged, archive.py.

What holds:
- Each operation is purged by ``softguard.purge_op`` in its OWN short transaction, with
  ``lock_timeout`` set: it is either purged (objects dropped, marked 'purged' with when and
  by whom) or untouched. A table the application holds a lock on makes that operation be
  skipped (``PurgeOutcome.skipped``), not waited for; the next run purges it.
- Captured rows too many to delete in that transaction are released there and deleted by
  ``purge_released_rows`` in batches of ``batch_rows``, one transaction per batch; a run
  interrupted half-way leaves released rows that the next run (or ``purge_released_rows``)
  deletes. Released rows are never read again.
- With an archive directory, every operation is written to ``DIR/op-<id>/`` (see
  ``archive.archive_operation``) BEFORE it is purged; an operation that cannot be archived
  is not purged.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from softguard.ledger.archive import archive_operation
from softguard.ledger.db import ArchiveFailed, PurgeError, error_line, milliseconds, sqlstate
from softguard.ledger.space import OpSpace

#: How long purge waits for a lock (the ledger row, a quarantined table) before skipping.
DEFAULT_LOCK_TIMEOUT = 2.0
#: Captured rows deleted per transaction (and the most purge_op deletes inline).
DEFAULT_BATCH_ROWS = 10_000
#: The ledger version that brings purge_op, purge_rows and op_size.
PURGE_LEDGER_VERSION = 3


@dataclass(frozen=True)
class PurgeOutcome:
    op: int
    purged: bool  # False: skipped (untouched), see message
    message: str  # purge_op's line, or why it was skipped
    bytes: int  # its size before (what purging it freed, estimated)
    archive: Path | None = None
    sqlstate: str | None = None
    hint: str | None = None


@dataclass
class PurgeSummary:
    outcomes: list[PurgeOutcome] = field(default_factory=list)
    rows_deleted: int = 0  # captured rows (and emptied captures) deleted in batches

    @property
    def purged(self) -> list[int]:
        return [o.op for o in self.outcomes if o.purged]

    @property
    def skipped(self) -> list[PurgeOutcome]:
        return [o for o in self.outcomes if not o.purged]

    @property
    def bytes_freed(self) -> int:
        return sum(o.bytes for o in self.outcomes if o.purged)


# -- checks ----------------------------------------------------------------------------


def check_purge_access(conn: psycopg.Connection[Any]) -> None:
    """PurgeError unless the ledger has purge (version 3) and this role may run it."""
    row = conn.execute(
        "SELECT current_user,"
        " to_regprocedure('softguard.purge_op(bigint, text, text, bigint)') IS NOT NULL"
    ).fetchone()
    assert row is not None
    role, present = str(row[0]), bool(row[1])
    if not present:
        raise PurgeError(
            f"the softguard ledger in this database predates purge (version"
            f" {PURGE_LEDGER_VERSION}): run softguard init --dsn DSN (as a superuser) to upgrade"
        )
    row = conn.execute(
        "SELECT has_function_privilege('softguard.purge_op(bigint, text, text, bigint)',"
        " 'EXECUTE') AND has_function_privilege('softguard.op_size(bigint)', 'EXECUTE')"
    ).fetchone()
    if row is None or not row[0]:
        raise PurgeError(
            f"role {role} may not purge: connect as the superuser that installed the ledger"
        )


# -- purge -----------------------------------------------------------------------------


def purge_operation(
    conn: psycopg.Connection[Any],
    op: OpSpace,
    *,
    archive: Path | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    inline_rows: int = DEFAULT_BATCH_ROWS,
) -> PurgeOutcome:
    """Purge one operation in its own transaction (``conn`` in autocommit mode, idle).

    Never raises for a server error: the operation is then left untouched and the outcome
    says why (``purged`` False)."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT softguard.purge_op(%s, %s, %s, %s)",
                [
                    op.id,
                    str(archive) if archive is not None else None,
                    milliseconds(lock_timeout),
                    inline_rows,
                ],
            ).fetchone()
    except psycopg.Error as exc:
        why = "{message}; nothing was changed"
        if sqlstate(exc) == "55P03":
            why = (
                "something it holds is locked by another session (not granted within "
                f"{lock_timeout:g}s: {{message}}); nothing was changed, the next purge will take it"
            )
        return _skipped(op, exc, why, archive)
    assert row is not None
    return PurgeOutcome(op=op.id, purged=True, message=str(row[0]), bytes=op.bytes, archive=archive)


def _skipped(
    op: OpSpace, exc: psycopg.Error, why: str, archive: Path | None = None
) -> PurgeOutcome:
    """The outcome of an operation a server error stopped: "operation N skipped: " + ``why``
    with ``{message}`` the server's message."""
    return PurgeOutcome(
        op=op.id,
        purged=False,
        message=f"operation {op.id} skipped: " + why.format(message=error_line(exc)),
        bytes=0,
        archive=archive,
        sqlstate=sqlstate(exc),
        hint=exc.diag.message_hint,
    )


def purge_released_rows(
    conn: psycopg.Connection[Any],
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete released captured rows, ``batch_rows`` per transaction, until none is left.
    Returns how many rows (and emptied captures) were deleted."""
    total = 0
    while True:
        with conn.transaction():
            row = conn.execute("SELECT softguard.purge_rows(%s)", [batch_rows]).fetchone()
        n = int(row[0]) if row is not None else 0
        if n == 0:
            return total
        total += n
        if progress is not None:
            progress(total)


def purge_soft_deleted(
    conn: psycopg.Connection[Any],
    op: OpSpace,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> PurgeOutcome | None:
    """Hard-delete the rows a soft-delete operation marked (and that still carry its mark),
    ``batch_rows`` per transaction. None when done (or nothing to do); else the outcome
    of the operation, skipped (a batch failed: lock timeout, a foreign key)."""
    if op.state != "active" or not _has_soft_purge(conn):
        return None
    while True:
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT softguard.purge_soft_rows(%s, %s, %s)",
                    [op.id, batch_rows, milliseconds(lock_timeout)],
                ).fetchone()
        except psycopg.Error as exc:
            return _skipped(
                op,
                exc,
                "its soft-deleted rows could not be deleted ({message}); rows deleted by "
                "earlier batches stay deleted, the next purge continues",
            )
        if row is None or int(row[0]) == 0:
            return None


def soft_deleted_rows_purged(conn: psycopg.Connection[Any], op: int) -> int:
    """How many rows of their tables the soft deletes of ``op`` have had hard-deleted."""
    row = conn.execute(
        "SELECT coalesce(sum((c.info->>'purged_rows')::bigint), 0) FROM softguard.captures c"
        " WHERE c.op_id = %s AND c.event = 'soft_delete'",
        [op],
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _has_soft_purge(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT to_regprocedure('softguard.purge_soft_rows(bigint, integer, text)') IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


def run_purge(
    conn: psycopg.Connection[Any],
    ops: Iterable[OpSpace],
    *,
    dsn: str | None = None,
    archive_dir: Path | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Callable[[str], None] | None = None,
    on_outcome: Callable[[PurgeOutcome], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> PurgeSummary:
    """Archive (with ``archive_dir``; needs ``dsn`` for pg_dump) and purge each operation,
    oldest first, then delete the released captured rows in batches.

    ``progress`` gets a line per step; ``on_outcome`` each operation's outcome (purged or
    skipped); ``on_rows`` the released rows deleted so far, after each batch."""
    say = progress or (lambda _line: None)
    outcome_done = on_outcome or (lambda _outcome: None)
    summary = PurgeSummary()

    def rows_done(n: int) -> None:
        say(f"deleted {n} released captured rows so far")
        if on_rows is not None:
            on_rows(n)

    for op in sorted(ops, key=lambda o: o.id):
        archive: Path | None = None
        if archive_dir is not None and op.holds_objects:
            if dsn is None:
                raise ValueError("archiving needs the DSN (for pg_dump)")
            try:
                archive = archive_operation(
                    conn, dsn, op.id, archive_dir, lock_timeout=lock_timeout
                )
            except ArchiveFailed as exc:
                outcome = PurgeOutcome(
                    op=op.id, purged=False, message=f"{exc}; not purged", bytes=0
                )
                summary.outcomes.append(outcome)
                say(outcome.message)
                outcome_done(outcome)
                continue
            say(f"operation {op.id}: archived to {archive}")
        failed = purge_soft_deleted(conn, op, lock_timeout=lock_timeout, batch_rows=batch_rows)
        if failed is not None:
            outcome = failed
        else:
            hard_deleted = soft_deleted_rows_purged(conn, op.id)
            outcome = purge_operation(
                conn, op, archive=archive, lock_timeout=lock_timeout, inline_rows=batch_rows
            )
            if outcome.purged and hard_deleted:
                outcome = replace(
                    outcome,
                    message=f"{outcome.message}; {hard_deleted} soft-deleted rows deleted for good",
                )
        if not outcome.purged and archive is not None:
            # the archive of an operation still active would only mislead
            shutil.rmtree(archive, ignore_errors=True)
        summary.outcomes.append(outcome)
        say(outcome.message + (f" ({outcome.hint})" if outcome.hint else ""))
        outcome_done(outcome)
    summary.rows_deleted = purge_released_rows(conn, batch_rows=batch_rows, progress=rows_done)
    return summary
