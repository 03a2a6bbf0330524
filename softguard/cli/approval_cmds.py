"""``softguard pending``, ``softguard approve ID``, ``softguard deny ID``: people deciding
on statements softguard refused (docs/decisions/0020-approval.md).

A refused statement's error names an approval id; the client's byte-identical retry runs
once after ``approve`` (within an hour). Nothing holds a session open meanwhile. Each
command connects DIRECTLY to the protected database (``--dsn`` / $SOFTGUARD_DSN) as the
superuser that installed the ledger (or a role granted access to softguard.approvals and
softguard.decide_approval). Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import psycopg
import typer

from softguard.cli.common import DsnOption, JsonOption, connect_ledger, dumps, fail, iso, short

_COLUMNS = (
    "id, state, role, statement, reason, client_addr, requested_at, requests, "
    "decided_by, decided_at, used_at"
)


def _rows(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(query.encode(), params)
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pending(
    dsn: DsnOption,
    all_states: Annotated[
        bool, typer.Option("--all", help="also approved, denied and used requests")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """List refused statements waiting for a person's decision."""
    with connect_ledger(dsn) as conn:
        try:
            rows = _rows(
                conn,
                f"SELECT {_COLUMNS} FROM softguard.approvals"
                + ("" if all_states else " WHERE state = 'pending'")
                + " ORDER BY requested_at DESC LIMIT 500",
                [],
            )
        except psycopg.Error as exc:
            raise fail(f"cannot read approval requests: {exc.diag.message_primary}") from None
    if json_out:
        typer.echo(dumps(rows))
        return
    if not rows:
        typer.echo("no approval requests" + ("" if all_states else " waiting"))
        return
    for r in rows:
        typer.echo(
            f"{r['id']}  {r['state']:8}  {iso(r['requested_at'])}  role {r['role']}"
            f"  x{r['requests']}\n    {short(r['statement'], 72)}\n    {short(r['reason'], 72)}"
        )


def _decide(dsn: str, approval: str, approve: bool, by: str | None, json_out: bool) -> None:
    who = by or getpass.getuser()
    with connect_ledger(dsn) as conn:
        try:
            rows = _rows(
                conn,
                f"SELECT {_COLUMNS} FROM softguard.decide_approval(%s, %s, %s)",
                [approval, approve, who],
            )
        except psycopg.Error as exc:
            raise fail(exc.diag.message_primary or str(exc)) from None
    row = rows[0]
    if json_out:
        typer.echo(dumps(row))
        return
    verb = "approved" if approve else "denied"
    typer.echo(
        f"softguard: {approval} {verb} by {who}: {short(row['statement'], 60)}"
        + (
            "\n  the same statement from role " + row["role"] + " runs once if sent again "
            "within an hour"
            if approve
            else ""
        )
    )


ApprovalId = Annotated[str, typer.Argument(help="the approval id from the refusal's message")]
ByOption = Annotated[
    str | None, typer.Option("--by", help="who decides (recorded; default: your login name)")
]


def approve(
    approval: ApprovalId, dsn: DsnOption, by: ByOption = None, json_out: JsonOption = False
) -> None:
    """Let a refused statement run once: the client's identical retry within an hour."""
    _decide(dsn, approval, True, by, json_out)


def deny(
    approval: ApprovalId, dsn: DsnOption, by: ByOption = None, json_out: JsonOption = False
) -> None:
    """Record that a refused statement stays refused."""
    _decide(dsn, approval, False, by, json_out)


def register(app: typer.Typer) -> None:
    app.command()(pending)
    app.command()(approve)
    app.command()(deny)
