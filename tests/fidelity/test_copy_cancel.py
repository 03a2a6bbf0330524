"""A client that stops reading holds the server up through softguard as it does directly
(issue 16): a COPY TO STDOUT the client cancels after its first row fails with 57014 and
leaves the transaction INERROR, instead of the proxy's buffers letting the server finish."""

from __future__ import annotations

from typing import Any

import psycopg

ROWS = 200_000  # about 21 MB: more than every buffer between server and client
# What softguard may hold beyond the direct path (its own socket and transport buffers,
# which the kernel grows with the load: 0.5 to 2 MB measured), in rows of 107 bytes:
# about 2.7 MB. Before issue 16 it held about 5 MB (some 49,000 rows) more.
SLACK_ROWS = 25_000
COPY = f"COPY (SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g) TO STDOUT"


def _server_state(sg: Any, db: str, pid: int) -> tuple[str | None, str | None]:
    with sg.connect(db) as c:
        row = c.execute(
            "SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def cancel_after_first_row(
    sg: Any, db: str, dsn: str
) -> tuple[tuple[str | None, str, str | None], int]:
    """Read one row, wait until the server either blocks writing to us or is done, cancel,
    read on; -> ((SQLSTATE, transaction status, what the server was doing at the cancel),
    rows the client got)."""
    with psycopg.connect(dsn) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        err = None
        got = 0
        seen = None
        try:
            with c.cursor().copy(COPY) as cp:
                for i, _row in enumerate(cp.rows()):
                    got = i
                    if i == 0:
                        for _ in range(600):  # bounded: at most 600 polls
                            state, wait = _server_state(sg, db, pid)
                            if wait == "ClientWrite" or state != "active":
                                seen = wait if state == "active" else state
                                break
                        c.cancel()
        except psycopg.Error as e:
            err = e.sqlstate
        return (err, c.info.transaction_status.name, seen), got


def test_cancelled_copy_out_fails_like_direct(proxy: Any, sg: Any, twins: Any) -> None:
    a, b = twins()
    direct, direct_rows = cancel_after_first_row(sg, a, sg.dsn(a))
    proxied, proxied_rows = cancel_after_first_row(sg, b, proxy.dsn(b))
    assert direct == ("57014", "INERROR", "ClientWrite")
    assert proxied == direct
    # the server was held up after about as many rows as directly (not megabytes later)
    assert proxied_rows <= direct_rows + SLACK_ROWS, (proxied_rows, direct_rows)
