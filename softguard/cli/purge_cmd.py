"""``softguard purge`` and ``softguard space``: retention and the size of the quarantine.

Both connect DIRECTLY to the protected database (``--dsn`` / $SOFTGUARD_DSN), as the
superuser that installed the ledger.

``softguard purge [--older-than DURATION] [--dry-run] [--archive DIR] [--yes] [--json]``
destroys what operations past their expiry (or, with --older-than, created at least that
long ago) keep in quarantine, one short transaction per operation (see
softguard/ledger/purge.py, archive.py). It lists what it would purge first, and asks on a terminal;
without a terminal it needs --yes. Exit codes: 0 done (or nothing to do, or a dry run),
1 some operation was skipped (locked, blocked, cannot be archived: it is left untouched and
the next run takes it) or failed, 2 usage / not confirmable.

``softguard space [--max-bytes N] [--config FILE] [--json]`` shows what each operation
keeps in quarantine and the total. Exit codes: 0, 1 error, 3 the total exceeds --max-bytes
(default: the ``max_quarantine_bytes`` setting; a WARNING line is printed on stderr):
softguard never evicts anything to stay under a cap, it warns.

On a terminal (and without --json) purge shows progress bars: operations purged, released
captured rows deleted. Elsewhere its output is plain lines.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from softguard.cli import common
from softguard.cli.common import ConfigOption, DsnOption, JsonOption, fail
from softguard.cli.progress import bars
from softguard.ledger.db import PurgeError
from softguard.ledger.purge import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_LOCK_TIMEOUT,
    check_purge_access,
    run_purge,
)
from softguard.ledger.space import OpSpace, due_operations, human_bytes, space_report

#: Exit code of ``softguard space --max-bytes N`` when the quarantine holds more.
EXIT_OVER_CAP = 3


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def parse_duration(text: str) -> timedelta:
    """'0s', '90s', '30m', '12h', '7d', '2w', '1d12h' -> timedelta; ValueError otherwise."""
    try:
        value = common.parse_since(text)
    except ValueError:
        value = None
    if not isinstance(value, timedelta):
        raise ValueError(
            f"--older-than: expected a duration like 0s, 90s, 30m, 12h, 7d or 2w, got {text!r}"
        )
    return value


def _op_json(op: OpSpace) -> dict[str, Any]:
    return {
        "id": op.id,
        "kind": op.kind,
        "state": op.state,
        "statement": op.statement,
        "created_at": op.created_at,
        "expires_at": op.expires_at,
        "bytes": op.bytes,
        "captured_rows": op.captured_rows,
    }


def _op_line(op: OpSpace) -> str:
    note = "" if op.holds_objects else f"  [{op.state}: releases its captured rows only]"
    return (
        f"  {op.id}\t{common.iso(op.created_at)}\texpires {common.iso(op.expires_at)}"
        f"\t{human_bytes(op.bytes)}\t{common.short(op.statement)}{note}"
    )


# -- purge -----------------------------------------------------------------------------


def purge(
    dsn: DsnOption,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="also purge operations created at least this long ago (0s, 12h, 7d),"
            " expired or not",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be purged; change nothing")
    ] = False,
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            metavar="DIR",
            help="first write each operation to DIR/op-<id>/ (pg_dump format, CSV, manifest)",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            metavar="SECONDS",
            help="skip an operation whose tables stay locked this long",
        ),
    ] = DEFAULT_LOCK_TIMEOUT,
    batch_rows: Annotated[
        int,
        typer.Option(
            "--batch-rows",
            metavar="N",
            help="captured rows deleted per transaction",
        ),
    ] = DEFAULT_BATCH_ROWS,
    as_json: JsonOption = False,
) -> None:
    """Destroy what expired operations keep in quarantine (past retention)."""
    try:
        older = parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if lock_timeout <= 0:
        raise fail("--lock-timeout: expected a positive number of seconds", 2)
    if batch_rows < 1:
        raise fail("--batch-rows: expected a positive number", 2)
    if not dry_run and not yes and not _stdin_is_terminal():
        raise fail(
            "purge destroys data and stdin is not a terminal to confirm:"
            " pass --yes (or --dry-run to see what it would purge)",
            2,
        )
    with common.connect_ledger(dsn) as conn:
        try:
            check_purge_access(conn)
        except PurgeError as exc:
            raise fail(str(exc)) from None
        due = due_operations(conn, older_than=older)
        total = sum(op.bytes for op in due)
        criterion = (
            "past their expiry"
            if older is None
            else f"past their expiry or created more than {older_than} ago"
        )
        if not as_json:
            if not due:
                typer.echo(f"nothing to purge (no operation {criterion})")
            else:
                typer.echo(
                    f"{len(due)} operation(s) {criterion}, {human_bytes(total)} in quarantine:"
                )
                for op in due:
                    typer.echo(_op_line(op))
        if not due or dry_run:
            if as_json:
                typer.echo(
                    common.dumps(
                        {
                            "dry_run": dry_run,
                            "due": [_op_json(op) for op in due],
                            "purged": [],
                            "skipped": [],
                            "bytes_freed": 0,
                        }
                    )
                )
            elif dry_run:
                typer.echo("dry run: nothing was changed")
            return
        if not yes:
            if not typer.confirm(
                f"destroy them{' (archived first to ' + str(archive) + ')' if archive else ''}?"
                " This cannot be undone",
                default=False,
            ):
                raise fail("not confirmed; nothing was changed")
        with bars(not as_json and _stdout_is_terminal()) as shown:
            shown.add("ops", "purging operations", len(due))

            def rows_deleted(n: int) -> None:
                if not shown.has("rows"):
                    shown.add("rows", "deleting released captured rows", None)
                shown.update("rows", n)

            summary = run_purge(
                conn,
                due,
                dsn=dsn,
                archive_dir=archive,
                lock_timeout=lock_timeout,
                batch_rows=batch_rows,
                progress=None if as_json else shown.line,
                on_outcome=lambda _outcome: shown.advance("ops"),
                on_rows=rows_deleted,
            )
    if as_json:
        typer.echo(
            common.dumps(
                {
                    "dry_run": False,
                    "due": [_op_json(op) for op in due],
                    "purged": [
                        {
                            "id": o.op,
                            "bytes": o.bytes,
                            "archive": str(o.archive) if o.archive else None,
                            "message": o.message,
                        }
                        for o in summary.outcomes
                        if o.purged
                    ],
                    "skipped": [
                        {"id": o.op, "sqlstate": o.sqlstate, "message": o.message, "hint": o.hint}
                        for o in summary.skipped
                    ],
                    "bytes_freed": summary.bytes_freed,
                    "rows_deleted_in_batches": summary.rows_deleted,
                }
            )
        )
    else:
        typer.echo(
            f"purged {len(summary.purged)} operation(s), {human_bytes(summary.bytes_freed)}"
            f" freed (estimated); skipped {len(summary.skipped)}"
        )
    if summary.skipped:
        raise typer.Exit(1)


# -- space -----------------------------------------------------------------------------


def space(
    dsn: DsnOption,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            metavar="N",
            help=f"warn (exit {EXIT_OVER_CAP}) when the quarantine holds more than N bytes"
            " \\[default: max_quarantine_bytes]",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what each operation keeps in quarantine, and the total."""
    if max_bytes is not None and max_bytes < 0:
        raise fail("--max-bytes: expected a number of bytes", 2)
    cap_name = "--max-bytes"
    if max_bytes is None:
        max_bytes, cap_name = common.configured_cap(config), "max_quarantine_bytes"
    with common.connect_ledger(dsn) as conn:
        try:
            check_purge_access(conn)
        except PurgeError as exc:
            raise fail(str(exc)) from None
        report = space_report(conn)
    over = max_bytes is not None and report.total_bytes > max_bytes
    if as_json:
        typer.echo(
            common.dumps(
                {
                    "total_bytes": report.total_bytes,
                    "count": report.count,
                    "ledger_bytes": report.ledger_bytes,
                    "max_bytes": max_bytes,
                    "over_max": over,
                    "operations": [_op_json(op) for op in report.operations],
                }
            )
        )
    else:
        for op in report.operations:
            typer.echo(_op_line(op))
        typer.echo(
            f"quarantine: {report.count} operation(s), {human_bytes(report.total_bytes)}"
            f" ({report.total_bytes} bytes, estimated); ledger tables:"
            f" {human_bytes(report.ledger_bytes)}"
        )
    if over:
        assert max_bytes is not None
        typer.echo(
            f"softguard: WARNING: the quarantine holds {human_bytes(report.total_bytes)}"
            f" ({report.total_bytes} bytes), more than {cap_name} {max_bytes}: nothing is"
            " evicted automatically; run softguard purge (e.g. --older-than 3d) to free space",
            err=True,
        )
        raise typer.Exit(EXIT_OVER_CAP)


def register(app: typer.Typer) -> None:
    """Add purge and space to the softguard CLI."""
    app.command()(purge)
    app.command()(space)
