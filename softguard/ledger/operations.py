"""Reading the operations ledger and undoing operations (data access only, no printing).

Used by ``softguard ops``, ``softguard show`` and ``softguard undo`` on a connection made
DIRECTLY to the protected database (never through the proxy, which hides the ledger), as
the superuser that installed the ledger or a role granted SELECT on
``softguard.operations`` and EXECUTE on ``softguard.undo_op`` (which also lets it run
``softguard.undo_steps``, the form that returns rows).

What holds:
- ``undo_operations`` runs every ``softguard.undo_steps`` call in ONE transaction, newest
  operation first, and either commits all of them or nothing (a dry run always rolls back).
- A server error is surfaced as ``UndoFailed`` with the server's own SQLSTATE, message,
  DETAIL and HINT, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from softguard.contract import UNDO_STEP_COLUMNS, UndoStep, blocking_operation
from softguard.ledger.db import LedgerError, LedgerNotInstalled, error_line, sqlstate

#: The states an operation can be in (softguard.operations.state).
STATES = ("active", "undone", "purged")

#: ``kind`` of the ledger rows that record an undo (not themselves reversible).
UNDO_KIND = "UNDO"

# What a DROP ... CASCADE can take along besides its targets, worth naming: standalone
# objects (a view on the table, ...), and links on live tables that were removed (a foreign
# key referencing the table, ...). Sub-objects that went with a target are not named.
_STANDALONE_TYPES = frozenset(
    {
        "table",
        "view",
        "materialized view",
        "foreign table",
        "sequence",
        "function",
        "procedure",
        "aggregate",
        "type",
        "domain",
        "schema",
    }
)
_LINK_TYPES = frozenset({"table constraint", "index", "trigger", "policy", "rule", "default value"})


class OperationNotFound(LedgerError):
    """No operation with this id in the ledger."""

    def __init__(self, op: int) -> None:
        super().__init__(f"operation {op} does not exist")
        self.op = op


@dataclass(frozen=True)
class UndoFailed(LedgerError):
    """``softguard.undo_op`` (or the commit) failed: nothing was changed."""

    op: int | None  # the operation being undone when it failed (None: at commit)
    sqlstate: str | None
    message: str
    detail: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return self.message

    @property
    def blocked_by(self) -> int | None:
        """The later operation that must be undone first, when that is what failed."""
        return blocking_operation(self.sqlstate, self.detail)

    @classmethod
    def from_error(cls, exc: psycopg.Error, op: int | None) -> UndoFailed:
        diag = exc.diag
        return cls(
            op=op,
            sqlstate=sqlstate(exc),
            message=error_line(exc),
            detail=diag.message_detail,
            hint=diag.message_hint,
        )


@dataclass(frozen=True)
class Operation:
    """One row of softguard.operations; ``columns`` holds every column as read."""

    id: int
    created_at: datetime
    expires_at: datetime
    db_role: str
    application_name: str | None
    client_addr: str | None
    statement: str
    kind: str
    objects: list[dict[str, Any]]
    state: str
    undone_at: datetime | None
    undo_of: int | None
    columns: dict[str, Any] = field(repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Operation:
        objects = row.get("objects")
        return cls(
            id=int(row["id"]),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            db_role=row["db_role"],
            application_name=row.get("application_name"),
            client_addr=row.get("client_addr"),
            statement=row["statement"],
            kind=row["kind"],
            objects=list(objects) if isinstance(objects, list) else [],
            state=row["state"],
            undone_at=row.get("undone_at"),
            undo_of=row.get("undo_of"),
            columns=dict(row),
        )

    @property
    def is_undo_record(self) -> bool:
        """True for the row that records an undo (``kind = 'UNDO'``)."""
        return self.kind == UNDO_KIND

    @property
    def reversible(self) -> bool:
        """Can ``softguard undo`` take this operation back now?"""
        return self.state == "active" and not self.is_undo_record

    def targets(self) -> list[str]:
        """'type identity' of the objects the statement named (e.g. 'table public.t')."""
        return [_label(o) for o in self.objects if o.get("original")]

    def cascaded(self) -> list[str]:
        """'type identity' of what CASCADE took along: dependent objects (a view), and links
        on live tables removed with the targets (a foreign key referencing a dropped table).

        Objects that another (earlier) operation already held are left out: this operation
        did not take them.
        """
        return [
            _label(o)
            for o in self.objects
            if not o.get("original")
            and o.get("normal")
            and o.get("held_by") is None
            and (
                o.get("type") in _STANDALONE_TYPES
                or (o.get("type") in _LINK_TYPES and not o.get("quarantined_as"))
            )
        ]


def _label(obj: dict[str, Any]) -> str:
    return f"{obj.get('type', '?')} {obj.get('identity', '?')}"


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for the values ledger rows hold (timestamps,
    intervals as seconds, numerics as text)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


# -- ledger presence -------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerAccess:
    """What the connected role may do with the ledger."""

    role: str
    can_read: bool  # SELECT on softguard.operations (ops, show)
    can_undo: bool  # EXECUTE on softguard.undo_op

    def require_read(self) -> None:
        if not self.can_read:
            raise LedgerError(
                f"role {self.role} cannot read softguard.operations: connect as the superuser"
                " that installed the ledger, or GRANT SELECT ON softguard.operations TO"
                f" {self.role}"
            )

    def require_undo(self) -> None:
        if not self.can_undo:
            raise LedgerError(
                f"role {self.role} may not run softguard.undo_op: connect as the superuser"
                " that installed the ledger, or GRANT EXECUTE ON FUNCTION"
                f" softguard.undo_op(bigint, text, boolean) TO {self.role}"
            )


def check_ledger(conn: psycopg.Connection[Any]) -> LedgerAccess:
    """What this role may do; LedgerNotInstalled when the database has no ledger."""
    row = conn.execute(
        "SELECT current_user,"
        " to_regclass('softguard.operations') IS NOT NULL,"
        " to_regprocedure('softguard.undo_op(bigint, text, boolean)') IS NOT NULL"
    ).fetchone()
    assert row is not None
    role, has_table, has_undo = row
    if not has_table:
        raise LedgerNotInstalled("softguard ledger is not installed in this database")
    row = conn.execute(
        "SELECT has_table_privilege('softguard.operations', 'SELECT'),"
        " CASE WHEN %s THEN has_function_privilege("
        "'softguard.undo_op(bigint, text, boolean)', 'EXECUTE') ELSE false END",
        [has_undo],
    ).fetchone()
    assert row is not None
    return LedgerAccess(role=str(role), can_read=bool(row[0]), can_undo=bool(row[1]))


# -- reading ---------------------------------------------------------------------------


def list_operations(
    conn: psycopg.Connection[Any],
    *,
    since: timedelta | datetime | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[Operation]:
    """The most recent operations, newest first.

    ``since``: a duration (back from the server's now()) or a point in time.
    ``state``: 'active' means reversible now (undo records, whose state is 'active' too,
    are left out); 'undone' and 'purged' match the column.
    """
    if state is not None and state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    where: list[sql.Composable] = []
    params: list[Any] = []
    if isinstance(since, timedelta):
        where.append(sql.SQL("created_at >= now() - %s"))
        params.append(since)
    elif isinstance(since, datetime):
        where.append(sql.SQL("created_at >= %s"))
        params.append(since)
    if state is not None:
        where.append(sql.SQL("state = %s"))
        params.append(state)
        if state == "active":
            where.append(sql.SQL("kind <> %s"))
            params.append(UNDO_KIND)
    query = sql.SQL("SELECT * FROM softguard.operations {} ORDER BY id DESC LIMIT %s").format(
        sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    )
    params.append(limit)
    cur = conn.cursor(row_factory=dict_row)
    return [Operation.from_row(r) for r in cur.execute(query, params).fetchall()]


def get_operation(conn: psycopg.Connection[Any], op: int) -> Operation:
    """One operation; OperationNotFound if there is none with this id."""
    found = get_operations(conn, [op])
    return found[0]


def get_operations(conn: psycopg.Connection[Any], ops: Iterable[int]) -> list[Operation]:
    """The given operations, newest first; OperationNotFound for the first id missing."""
    wanted = sorted(set(ops), reverse=True)
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        "SELECT * FROM softguard.operations WHERE id = ANY(%s) ORDER BY id DESC", [wanted]
    ).fetchall()
    by_id = {int(r["id"]): Operation.from_row(r) for r in rows}
    for op in wanted:
        if op not in by_id:
            raise OperationNotFound(op)
    return [by_id[op] for op in wanted]


def operation_sizes(conn: psycopg.Connection[Any], ops: Iterable[int]) -> dict[int, int] | None:
    """Bytes each operation keeps in quarantine (softguard.op_size, estimated); None when
    the ledger predates sizes (version 3) or this role may not call op_size."""
    row = conn.execute(
        "SELECT CASE WHEN to_regprocedure('softguard.op_size(bigint)') IS NULL THEN false"
        " ELSE has_function_privilege('softguard.op_size(bigint)', 'EXECUTE') END"
    ).fetchone()
    if row is None or not row[0]:
        return None
    rows = conn.execute(
        "SELECT id, softguard.op_size(id) FROM unnest(%s::bigint[]) AS id", [sorted(set(ops))]
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


# -- undo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UndoResult:
    steps: list[UndoStep]  # what undo_steps reported, in order
    undone: list[int]  # every operation undone (with --cascade: also later ones), in order
    records: list[int]  # the ledger rows that record those undos
    committed: bool  # False for a dry run


_UNDO_STEPS = sql.SQL("SELECT {} FROM softguard.undo_steps(%s, %s, %s, %s)").format(
    sql.SQL(", ").join(map(sql.Identifier, UNDO_STEP_COLUMNS))
)


def undo_order(ops: Iterable[int]) -> list[int]:
    """The order ``undo_operations`` undoes them in: newest first, each once."""
    return sorted(set(ops), reverse=True)


def undo_operations(
    conn: psycopg.Connection[Any],
    ops: Sequence[int],
    *,
    rename_to: str | None = None,
    cascade: bool = False,
    on_conflict: str = "fail",
    dry_run: bool = False,
    lock_timeout: float = 10.0,
    on_step: Callable[[int], None] | None = None,
) -> UndoResult:
    """Undo ``ops`` (newest first) in one transaction: all of them, or nothing.

    ``conn`` must not be inside a transaction. With ``dry_run`` the same calls run and the
    transaction is rolled back, so conflicts show exactly as they would. Raises UndoFailed
    (nothing changed) on any error from the server. ``on_step(op)`` is called after each
    operation's undo_op (inside the transaction: nothing is committed before the end).
    """
    order = undo_order(ops)
    if not order:
        raise ValueError("no operation to undo")
    if rename_to is not None and len(order) != 1:
        raise ValueError("rename_to needs exactly one operation")
    steps: list[UndoStep] = []
    undone: list[int] = []
    records: list[int] = []
    current: int | None = None
    try:
        with conn.transaction() as tx:
            # Undo locks live tables (to re-add constraints, re-insert rows): never queue
            # the application behind it for long; fail and let the operator retry.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout * 1000)}ms"]
            )
            for op in order:
                current = op
                rows = conn.execute(_UNDO_STEPS, [op, rename_to, cascade, on_conflict])
                steps.extend(UndoStep(*r) for r in rows.fetchall())
                if on_step is not None:
                    on_step(op)
            current = None
            # What was undone (with cascade: later operations too, first): the undo records
            # written have the ids; a role allowed to undo but not to read the ledger gets
            # them from the steps.
            found = _undone_in_this_transaction(conn)
            if found is None:
                undone = list(dict.fromkeys(step.op for step in steps))
            else:
                undone = [undo_of for undo_of, _ in found]
                records = [rec for _, rec in found]
            if dry_run:
                raise psycopg.Rollback(tx)
    except psycopg.Error as exc:
        raise UndoFailed.from_error(exc, current) from exc
    return UndoResult(steps=steps, undone=undone, records=records, committed=not dry_run)


def _undone_in_this_transaction(conn: psycopg.Connection[Any]) -> list[tuple[int, int]] | None:
    """(undone operation, its undo record) written by this transaction so far, in order;
    None when this role cannot read the ledger."""
    row = conn.execute("SELECT has_table_privilege('softguard.operations', 'SELECT')").fetchone()
    if row is None or not row[0]:
        return None
    rows = conn.execute(
        "SELECT undo_of, id FROM softguard.operations"
        " WHERE kind = %s AND txid = pg_current_xact_id() ORDER BY id",
        [UNDO_KIND],
    ).fetchall()
    return [(int(r[0]), int(r[1])) for r in rows]
