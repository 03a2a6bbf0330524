"""``softguard ops``, ``softguard show OP``, ``softguard undo OP...``: the ledger, from the CLI.

Each command connects DIRECTLY to the protected database (``--dsn`` / $SOFTGUARD_DSN), not
through the proxy, as the superuser that installed the ledger or a role granted SELECT on
softguard.operations and EXECUTE on softguard.undo_op.

Output: short, exact lines (errors on stderr, prefixed ``softguard:``); a rich table (and
for ``ops`` the quarantine's total, for ``undo`` a progress bar) only when stdout is a
terminal; ``--json`` always machine-readable. ``ops`` shows each operation's size in
quarantine (softguard.op_size, when the ledger has it and the role may call it) and warns
on stderr when the total exceeds ``max_quarantine_bytes``. Exit codes: 0 success,
1 refused or failed (nothing changed), 2 usage.
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from typing import Annotated, Any

import psycopg
import typer

from softguard.cli.common import (
    ConfigOption,
    DsnOption,
    JsonOption,
    configured_cap,
    connect_any,
    connect_ledger,
    dumps,
    fail,
    iso,
    not_the_ledger,
    parse_since,
    short,
)
from softguard.cli.progress import bars
from softguard.cli.show_text import show_lines
from softguard.ledger.db import LedgerError, LedgerNotInstalled
from softguard.ledger.operations import (
    STATES,
    Operation,
    OperationNotFound,
    UndoFailed,
    check_ledger,
    get_operation,
    get_operations,
    list_operations,
    operation_sizes,
    undo_operations,
)
from softguard.ledger.space import human_bytes, over_cap_warning, space_report

#: Header of the plain (not a terminal) `ops` output: one tab-separated line per operation.
PLAIN_COLUMNS = (
    "id",
    "time",
    "role",
    "application",
    "statement",
    "objects",
    "state",
    "expires",
    "size",
)

# -- the terminal (two predicates, so that tests can pretend a terminal) --------------


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _state_label(op: Operation) -> str:
    """The state as shown in tables: an undo record is not 'active' in any useful sense."""
    return f"undo of {op.undo_of}" if op.is_undo_record else op.state


def _objects_label(op: Operation, names_only: bool = False) -> str:
    """``names_only``: without the object types (narrow terminals)."""
    named = (
        [str(o.get("identity", "?")) for o in op.objects if o.get("original")]
        if names_only
        else op.targets()
    )
    label = ", ".join(named) or "-"
    if op.is_undo_record:
        return label
    also = op.cascaded()
    if also:
        label += f" (+{len(also)})" if names_only else f" (+{len(also)} by cascade)"
    return label


def operation_summary(op: Operation, size: int | None = None) -> dict[str, Any]:
    """The JSON object ``softguard ops --json`` prints for one operation (``size``: bytes
    it keeps in quarantine, None when unknown)."""
    c = op.columns
    return {
        "id": op.id,
        "created_at": op.created_at,
        "expires_at": op.expires_at,
        "kind": op.kind,
        "statement": op.statement,
        "objects": op.targets(),
        "cascaded": op.cascaded(),
        "state": op.state,
        "reversible": op.reversible,
        "role": op.db_role,
        "current_role": c.get("current_role"),
        "application_name": op.application_name,
        "client_addr": op.client_addr,
        "undone_at": op.undone_at,
        "undone_by": c.get("undone_by"),
        "undo_of": op.undo_of,
        "row_counts": c.get("row_counts"),
        "size_bytes": size,
    }


# -- ops -------------------------------------------------------------------------------


def ops(
    dsn: DsnOption,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="only operations since a duration ago (90s, 30m, 2h, 7d) or a timestamp",
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="active|undone|purged",
            help="active (can be undone now; undo records left out), undone or purged",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="at most N operations")] = 50,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="every column and the whole statement, however wide"),
    ] = False,
    all_databases: Annotated[
        bool,
        typer.Option(
            "--all-databases",
            help="operations of every database of the server that has the ledger"
            " (--dsn names any one of them)",
        ),
    ] = False,
) -> None:
    """List recent operations in the ledger, newest first, with what each keeps."""
    try:
        since_value = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if state is not None and state not in STATES:
        raise fail(f"--state: expected one of {', '.join(STATES)}, got {state!r}", 2)
    if limit < 1:
        raise fail(f"--limit: expected a positive number, got {limit}", 2)
    cap = configured_cap(config)
    if all_databases:
        _ops_all_databases(dsn, since_value, state, limit, as_json, wide)
        return
    with connect_ledger(dsn) as conn:
        found = list_operations(
            conn,
            since=since_value,
            state=state,
            limit=limit,
        )
        sizes = operation_sizes(conn, [op.id for op in found])
        total = _quarantine_total(conn) if sizes is not None else None
    if cap is not None and total is not None and total > cap:
        typer.echo(f"softguard: {over_cap_warning(total, cap, '')}", err=True)
    if as_json:
        typer.echo(dumps([operation_summary(op, _size(sizes, op)) for op in found]))
        return
    if not found:
        typer.echo("no operations")
        return
    if _stdout_is_terminal():
        _print_rich_table(found, sizes, wide=wide)
        if total is not None:
            typer.echo(f"total in quarantine: {human_bytes(total)} (estimated; softguard space)")
        return
    typer.echo("\t".join(PLAIN_COLUMNS))
    for op in found:
        typer.echo(
            "\t".join(
                (
                    str(op.id),
                    iso(op.created_at),
                    op.db_role,
                    op.application_name or "-",
                    " ".join(op.statement.split()) if wide else short(op.statement),
                    _objects_label(op),
                    _state_label(op),
                    iso(op.expires_at),
                    str(_size(sizes, op)) if sizes is not None else "-",
                )
            )
        )


def _size(sizes: dict[int, int] | None, op: Operation) -> int | None:
    return sizes.get(op.id) if sizes is not None else None


def _quarantine_total(conn: psycopg.Connection[Any]) -> int | None:
    """What every operation keeps in quarantine, in bytes (None: this role cannot tell)."""
    try:
        return space_report(conn).total_bytes
    except psycopg.Error:
        return None


#: Below this many columns, the terminal table leaves out application, expires and size.
COMPACT_BELOW = 120


def _print_rich_table(
    found: list[Operation],
    sizes: dict[int, int] | None = None,
    *,
    wide: bool = False,
    databases: dict[int, str] | None = None,
) -> None:
    """``databases``: id(op) -> database name, for --all-databases."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # --wide: as wide as the rows are (the terminal wraps or a pager scrolls), nothing cut
    console = Console(file=sys.stdout, width=1 << 16) if wide else Console(file=sys.stdout)
    compact = not wide and console.width < COMPACT_BELOW
    cut = {"overflow": "ellipsis", "no_wrap": True}
    columns: list[tuple[str, dict[str, Any]]] = [
        ("id", {"justify": "right", "no_wrap": True}),
        ("time", {"no_wrap": True}),
        ("role", {**cut, "max_width": 12 if compact else 16}),
        ("statement", {**cut, "ratio": 3} if compact else {"overflow": "fold", "ratio": 3}),
        ("objects", {**cut, "ratio": 2} if compact else {"overflow": "fold", "ratio": 2}),
        ("state", {"no_wrap": True}),
    ]
    if databases is not None:
        columns.insert(1, ("database", {**cut, "max_width": 16}))
    if not compact:
        columns.insert(-3, ("application", {**cut, "max_width": 16}))
        columns += [("expires", {"no_wrap": True}), ("size", {"justify": "right", "no_wrap": True})]
    table = Table(show_edge=False, pad_edge=False, header_style="bold", expand=compact)
    today = datetime.now().astimezone().date()
    for name, kw in columns:
        table.add_column(name, **kw)
    for op in found:
        state = _state_label(op)
        style = {"active": "green", "undone": "yellow", "purged": "red"}.get(state, "dim")
        size = _size(sizes, op)
        cells = {
            "id": str(op.id),
            "database": (databases or {}).get(id(op), ""),
            "time": _time_label(op.created_at, compact, today),
            "role": escape(op.db_role),
            "application": escape(op.application_name or ""),
            "statement": escape(" ".join(op.statement.split()) if wide else short(op.statement)),
            "objects": escape(_objects_label(op, names_only=compact)),
            "state": f"[{style}]{state}[/{style}]",
            "expires": op.expires_at.strftime("%Y-%m-%d %H:%M"),
            "size": human_bytes(size) if size is not None else "-",
        }
        table.add_row(*(cells[name] for name, _ in columns))
    console.print(table)


def _time_label(when: datetime, compact: bool, today: date) -> str:
    """Compact: today's operations by time only (local time, like the full form)."""
    if not compact:
        return when.strftime("%Y-%m-%d %H:%M:%S")
    local = when.astimezone()
    return local.strftime("%H:%M" if local.date() == today else "%m-%d %H:%M")


def _ops_all_databases(
    dsn: str,
    since: Any,
    state: str | None,
    limit: int,
    as_json: bool,
    wide: bool,
) -> None:
    """``ops --all-databases``: each connectable database that has the ledger, merged
    newest first; a database this role cannot read is named on stderr, not fatal."""
    from softguard.ledger.scheduler import connectable_databases

    found: list[tuple[str, Operation]] = []
    with connect_any(dsn) as conn:
        databases = connectable_databases(conn)
    for database in databases:
        try:
            with connect_any(dsn, dbname=database) as conn:
                if not check_ledger(conn).can_read:
                    typer.echo(f"softguard: {database}: this role cannot read the ledger", err=True)
                    continue
                ops_here = list_operations(conn, since=since, state=state, limit=limit)
        except LedgerNotInstalled:
            continue
        except LedgerError as exc:
            typer.echo(f"softguard: {database}: skipped: {exc}", err=True)
            continue
        except psycopg.Error as exc:
            raise fail(f"{database}: {not_the_ledger(exc)}") from None
        found += [(database, op) for op in ops_here]
    found.sort(key=lambda pair: pair[1].created_at, reverse=True)
    found = found[:limit]
    if as_json:
        typer.echo(dumps([{"database": db, **operation_summary(op)} for db, op in found]))
        return
    if not found:
        typer.echo("no operations in any database")
        return
    if _stdout_is_terminal():
        _print_rich_table(
            [op for _, op in found], wide=wide, databases={id(op): db for db, op in found}
        )
        return
    typer.echo("\t".join(("database", *PLAIN_COLUMNS)))
    for database, op in found:
        typer.echo(
            "\t".join(
                (
                    database,
                    str(op.id),
                    iso(op.created_at),
                    op.db_role,
                    op.application_name or "-",
                    " ".join(op.statement.split()) if wide else short(op.statement),
                    _objects_label(op),
                    _state_label(op),
                    iso(op.expires_at),
                    "-",
                )
            )
        )


# -- show ------------------------------------------------------------------------------

_SHOWN_APART = ("objects", "restore")


def show(
    dsn: DsnOption,
    op: Annotated[int, typer.Argument(help="operation id", show_default=False)],
    as_json: JsonOption = False,
    details: Annotated[
        bool,
        typer.Option(
            "--details",
            help="every recorded column, object and restore step (for support)",
        ),
    ] = False,
) -> None:
    """Show one operation: what it did, what it keeps, what undo will do."""
    with connect_ledger(dsn) as conn:
        try:
            found = get_operation(conn, op)
        except OperationNotFound as exc:
            raise fail(str(exc)) from None
    if as_json:
        doc = dict(found.columns)
        doc["targets"] = found.targets()
        doc["cascaded"] = found.cascaded()
        doc["reversible"] = found.reversible
        typer.echo(dumps(doc, indent=2))
        return
    if not details:
        for line in show_lines(found):
            typer.echo(line)
        return
    columns = {k: v for k, v in found.columns.items() if k not in _SHOWN_APART}
    width = max(len(k) for k in columns)
    typer.echo(f"operation {found.id}")
    for key, value in columns.items():
        if key == "id":
            continue
        typer.echo(f"  {key:<{width}}  {_show_value(value)}")
    typer.echo(f"  {'reversible':<{width}}  {'yes' if found.reversible else 'no'}")
    typer.echo(f"objects ({len(found.objects)}):")
    for obj in found.objects:
        typer.echo(f"  {_object_line(obj)}")
    restore = found.columns.get("restore")
    steps = restore if isinstance(restore, list) else []
    typer.echo(f"restore plan ({len(steps)} steps; undo runs them last to first):")
    for i, step in enumerate(steps, 1):
        typer.echo(f"  {i}. {_step_text(step)}")


def _step_text(step: Any) -> str:
    """One restore step: a replaced definition or a sequence's state readably (the old
    text is what an operator re-creates by hand when undo refuses), any other as JSON."""
    if not isinstance(step, dict):
        return dumps(step)
    if step.get("step") == "definition":
        text = str(step.get("old", "")).rstrip().replace("\n", "\n       ")
        return f"{step.get('identity')}: undo re-creates its previous definition:\n       {text}"
    if step.get("step") == "sequence":
        before: dict[str, Any] = step.get("old") or {}
        after: dict[str, Any] = step.get("new") or {}
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        was = ", ".join(f"{k} {before.get(k)}" for k in changed)
        now = ", ".join(f"{k} {after.get(k)}" for k in changed)
        return f"{step.get('identity')}: undo puts back {was} (the operation set {now})"
    return dumps(step)


def _show_value(value: Any) -> str:
    if value is None:
        return "-"
    if value == "":
        return '""'
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps(value)
    return str(value)


_EVENT_WORDS = {
    "delete": "{rows} removed rows captured",
    "truncate": "{rows} removed rows captured",
    "update": "old values of {rows} rows captured",
    "soft_delete": "{rows} rows soft-deleted (marked; they stay in the table)",
    "definition": "replaced in place; its previous definition kept in the restore plan",
    "sequence": "value or parameters changed; the previous ones kept in the restore plan",
}


def _object_line(obj: dict[str, Any]) -> str:
    label = f"{obj.get('type', '?')} {obj.get('identity', '?')}"
    flags = []
    if obj.get("original"):
        flags.append("named")
    elif obj.get("normal"):
        flags.append("cascade")
    event = obj.get("event")
    if obj.get("held_by") is not None:
        where = f"held by operation {obj['held_by']}"
    elif event in _EVENT_WORDS:
        where = _EVENT_WORDS[str(event)].format(rows=obj.get("rows", "?"))
    elif obj.get("quarantined_as"):
        where = f"kept as {obj['quarantined_as']}"
    elif obj.get("type") == "table column" and event is None:
        # PostgreSQL cannot put a column back between others (README, known limits)
        where = "kept; restored as the last column"
    else:
        where = "kept in the restore plan"
    return f"{label}{' [' + ', '.join(flags) + ']' if flags else ''}: {where}"


# -- undo ------------------------------------------------------------------------------


def undo(
    dsn: DsnOption,
    op_ids: Annotated[
        list[int],
        typer.Argument(metavar="OP", help="operation ids (undone newest first)"),
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="run the undo and roll it back: show what it would do"),
    ] = False,
    rename_to: Annotated[
        str | None,
        typer.Option(
            "--rename-to",
            metavar="NAME",
            help="restore the dropped object under this name (one OP only)",
        ),
    ] = None,
    cascade: Annotated[
        bool,
        typer.Option("--cascade", help="first undo later operations that hold what it needs"),
    ] = False,
    on_conflict: Annotated[
        str,
        typer.Option(
            "--on-conflict",
            metavar="fail|skip",
            help="a restored row whose key was re-used since: fail (default) or skip it",
        ),
    ] = "fail",
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            metavar="SECONDS",
            help="give up (nothing changed) if a table stays locked this long",
        ),
    ] = 10.0,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Undo operations, all in one transaction (all or nothing)."""
    if on_conflict not in ("fail", "skip"):
        raise fail("--on-conflict takes fail or skip", 2)
    order = sorted(set(op_ids), reverse=True)
    if rename_to is not None and len(order) != 1:
        raise fail("--rename-to works with a single OP only", 2)
    if not dry_run and not yes and not _stdin_is_terminal():
        raise fail(
            "undo changes the database and stdin is not a terminal to confirm:"
            " pass --yes (or --dry-run to see what it would do)",
            2,
        )
    with connect_ledger(dsn, read=False) as conn:
        found: list[Operation] | None = None
        if check_ledger(conn).can_read:  # else: a role that may only run undo_op
            try:
                found = get_operations(conn, order)
            except OperationNotFound as exc:
                raise fail(f"{exc}; nothing was changed") from None
        if not dry_run and not yes:
            typer.echo(f"about to undo {len(order)} operation(s), newest first:")
            for op in found or []:
                typer.echo(f"  {op.id}  {short(op.statement, 100)}  [{_objects_label(op)}]")
            if found is None:
                typer.echo(f"  {', '.join(map(str, order))} (this role cannot read the ledger)")
            if not typer.confirm("proceed?", default=False):
                raise fail("not confirmed; nothing was changed")
        try:
            with bars(_stdout_is_terminal(), transient=True) as shown:
                shown.add("undo", "undoing operations", len(order))
                result = undo_operations(
                    conn,
                    order,
                    rename_to=rename_to,
                    cascade=cascade,
                    on_conflict=on_conflict,
                    dry_run=dry_run,
                    lock_timeout=lock_timeout,
                    on_step=lambda _op: shown.advance("undo"),
                )
        except UndoFailed as exc:
            raise _undo_failed(exc, dry_run) from None
    for step in result.steps:
        typer.echo(step.line())
    if dry_run:
        typer.echo(f"would undo: {', '.join(map(str, result.undone)) or '-'}")
        typer.echo("dry run: nothing was changed")
    else:
        typer.echo(f"undone: {', '.join(map(str, result.undone)) or '-'}")


def _undo_failed(exc: UndoFailed, dry_run: bool) -> typer.Exit:
    which = f"undo of operation {exc.op}" if exc.op is not None else "undo"
    prefix = "dry run: " if dry_run else ""
    state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    typer.echo(f"softguard: {prefix}{which} failed{state}; nothing was changed", err=True)
    typer.echo(f"ERROR:  {exc.message}", err=True)
    if exc.detail and exc.blocked_by is None:  # blocked_by: the message names it already
        typer.echo(f"DETAIL:  {exc.detail}", err=True)
    if exc.hint:
        typer.echo(f"HINT:  {exc.hint}", err=True)
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ops, show and undo to the softguard CLI."""
    app.command()(ops)
    app.command()(show)
    app.command()(undo)
