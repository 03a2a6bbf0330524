"""Run the same client code directly and through the proxy; capture what the client saw.

An `Outcome` is everything DESIGN.md §1 says must be identical: the value the code
returned (rows, command tags...), the error (class, SQLSTATE, message, detail, hint,
position), the notices, and the transaction status afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from .proxy import via_direct

T = TypeVar("T")


@dataclass
class ErrorInfo:
    cls: str
    sqlstate: str | None
    message: str | None
    detail: str | None
    hint: str | None
    position: str | None


@dataclass
class Outcome:
    value: Any = None
    error: ErrorInfo | None = None
    notices: list[tuple[str | None, str | None, str | None]] = field(default_factory=list)
    transaction_status: str | None = None
    softguard_notices: list[str] = field(default_factory=list, compare=False)


def error_info(e: psycopg.Error) -> ErrorInfo:
    d = e.diag
    return ErrorInfo(
        type(e).__name__,
        d.sqlstate,
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.statement_position,
    )


def capture(conn: psycopg.Connection, fn: Callable[[psycopg.Connection], Any]) -> Outcome:
    """Run fn(conn) and record what the client saw."""
    out = Outcome()

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        if (d.message_primary or "").startswith("softguard: "):
            # The one difference DESIGN §2 adds: the NOTICE naming a reversible
            # operation. Tests of reversible operations check it on their own.
            out.softguard_notices.append(d.message_primary or "")
            return
        out.notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))

    conn.add_notice_handler(on_notice)
    try:
        out.value = fn(conn)
    except psycopg.Error as e:
        out.error = error_info(e)
    finally:
        conn.remove_notice_handler(on_notice)
    out.transaction_status = conn.info.transaction_status.name
    return out


def compare(
    direct_dsn: str,
    proxy_dsn: str,
    fn: Callable[[psycopg.Connection], Any],
    *,
    autocommit: bool = False,
    softguard_notices: int = 0,
    **connect_kwargs: Any,
) -> Outcome:
    """Run fn on a fresh direct connection and a fresh proxied one; assert same Outcome,
    and that the proxied run got exactly ``softguard_notices`` softguard NOTICEs (one per
    reversible operation; none on ordinary traffic)."""
    outcomes = []
    for dsn in (direct_dsn, proxy_dsn):
        with psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs) as c:
            outcomes.append(capture(c, fn))
    direct, proxied = outcomes
    assert proxied == direct, f"through proxy:\n{proxied}\ndirect:\n{direct}"
    assert direct.softguard_notices == [], direct.softguard_notices
    if not via_direct():  # SOFTGUARD_TEST_VIA=direct: no proxy, no notices
        assert len(proxied.softguard_notices) == softguard_notices, proxied.softguard_notices
    return direct


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion in a fresh event loop, bounded by timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
