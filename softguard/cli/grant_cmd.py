"""``softguard grant ROLE --ops|--undo|--purge``: give an operator role exactly what the
ledger commands need, in one database (grants are per database).

What each flag grants was found by running each command as a fresh non-superuser role and
granting until it worked (tests/cli/test_grant.py runs them so). Undo and purge work
through SECURITY DEFINER functions, so their grants are EXECUTE; reading the ledger (ops,
show, and purge's choice of what is due) needs SELECT on two ledger tables, which hold the
operations' metadata, never captured row data (softguard.captured_rows).
"""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from psycopg import sql

from softguard.cli.common import DsnOption, connect_ledger, fail
from softguard.ledger.db import error_line

_READ = (
    ("TABLE", "softguard.operations", "SELECT"),
    ("TABLE", "softguard.captures", "SELECT"),  # sizes; what purge finds due
    ("FUNCTION", "softguard.op_size(bigint)", "EXECUTE"),
)

#: What each command needs, as (object kind, object, privilege).
GRANTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ops": _READ,
    "undo": (
        ("FUNCTION", "softguard.undo_op(bigint, text, boolean)", "EXECUTE"),
        # --on-conflict skip
        ("FUNCTION", "softguard.undo_op(bigint, text, boolean, text)", "EXECUTE"),
    ),
    "purge": (
        *_READ,
        ("FUNCTION", "softguard.purge_op(bigint, text, text, bigint)", "EXECUTE"),
        ("FUNCTION", "softguard.purge_rows(integer)", "EXECUTE"),
        ("FUNCTION", "softguard.purge_soft_rows(bigint, integer, text)", "EXECUTE"),
    ),
}


def statements(role: str, wanted: list[str], revoke: bool = False) -> list[sql.Composed]:
    """The GRANT (or REVOKE) statements for ``wanted`` commands, each object once."""
    seen: set[tuple[str, str, str]] = set()
    out: list[sql.Composed] = []
    for command in wanted:
        for grant in GRANTS[command]:
            if grant in seen:
                continue
            seen.add(grant)
            kind, obj, privilege = grant
            template = (
                "REVOKE {priv} ON {kind} {obj} FROM {role}"
                if revoke
                else ("GRANT {priv} ON {kind} {obj} TO {role}")
            )
            # obj and privilege come from the table above, never from the user
            out.append(
                sql.SQL(template).format(
                    priv=sql.SQL(privilege),
                    kind=sql.SQL(kind),
                    obj=sql.SQL(obj),
                    role=sql.Identifier(role),
                )
            )
    return out


def grant(
    role: Annotated[str, typer.Argument(help="the operator role (it must exist)")],
    dsn: DsnOption,
    ops: Annotated[bool, typer.Option("--ops", help="softguard ops and show")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="softguard undo")] = False,
    purge: Annotated[bool, typer.Option("--purge", help="softguard purge")] = False,
    revoke: Annotated[bool, typer.Option("--revoke", help="take the same rights back")] = False,
) -> None:
    """Grant an operator role what ops/show, undo or purge need on this database's ledger
    (run it as the role that installed the ledger, a superuser or a managed service's
    owner role, once per database)."""
    wanted = [name for name, on in (("ops", ops), ("undo", undo), ("purge", purge)) if on]
    if not wanted:
        raise fail("say what to grant: --ops, --undo and/or --purge", 2)
    with connect_ledger(dsn) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists is None:
            raise fail(f"role {role!r} does not exist: CREATE ROLE it first")
        done = statements(role, wanted, revoke)
        try:
            with conn.transaction():
                for stmt in done:
                    conn.execute(stmt)
        except psycopg.Error as exc:
            raise fail(f"nothing was granted: {error_line(exc)}") from None
        database = conn.info.dbname
        shown = [stmt.as_string(conn) for stmt in done]
    for line in shown:
        typer.echo(f"{line};")
    what = "revoked from" if revoke else "granted to"
    typer.echo(f"{', '.join(wanted)}: {what} {role} in database {database}")


def register(app: typer.Typer) -> None:
    app.command()(grant)
