"""Soft-delete mode (issue 6) end to end, through softguard.

A DELETE on a soft-delete table, sent through the proxy, must look to the client exactly
like the DELETE run directly (tags, RETURNING rows and descriptions, errors, notices,
transaction status; plus one `softguard:` NOTICE per operation), while the data ends up
as the application's own soft delete written by hand (UPDATE ... SET deleted_at = now(),
deleted_by = current_user WHERE <cond> AND deleted_at IS NULL) would leave it. The
ledger records each operation; undo clears exactly the marks it wrote; purge hard-deletes
exactly the rows still carrying them. Misconfiguration is refused, at start or at use.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import TestServer
from support.softdelete_harness import (
    REFUSED_PREFIX,
    Seen,
    captures,
    check_sd_notice,
    check_sd_op,
    cli,
    customers_state,
    dh,
    ledger_ops,
    marks,
    other_tables,
    results,
    run,
    scalar,
    serve_once,
    sg_notices,
    undo_sql,
)

MODES = ["simple", "prepared", "unnamed", "asyncpg"]
SET_MARK = "SET deleted_at = now(), deleted_by = current_user"
# customers' columns as a DELETE returns them: the marks as they were (NULL here)
OLD_STAR = (
    "{p}id, {p}email, {p}full_name, {p}phone, {p}created_at, {p}tags,"
    " NULL::timestamptz AS deleted_at, NULL::text AS deleted_by"
)


def upd(cond: str, returning: str = "", table: str = "customers", using: str = "") -> str:
    """The application's own soft delete, written by hand."""
    ref = table.split()[-1]
    text = f"UPDATE {table} {SET_MARK}"
    if using:
        text += f" FROM {using}"
    text += f" WHERE ({cond}) AND {ref}.deleted_at IS NULL"
    if returning:
        text += f" RETURNING {returning}"
    return text


# ----------------------------------------------------------------------- every DELETE form


@dataclass
class Form:
    """steps: sent through softguard (and, as they are, directly to a plain-DELETE twin);
    update: the hand-written soft delete, step for step, run directly (on the softguard
    twin, once undo has made it the original again);
    tags: each step's command tags through softguard (the update's read UPDATE for DELETE);
    notices: softguard notices per step; ops: rows marked by each committed operation;
    parts: rows of each capture of each operation (default: one capture per operation; each
    statement of a multi-statement string is its own operation, decision 0012);
    opaque: steps whose rows are not compared (EXPLAIN output)."""

    steps: list[Any]
    update: list[Any]
    tags: list[list[str]]
    notices: list[int]
    ops: list[int]
    modes: Sequence[str] = tuple(MODES)
    opaque: frozenset[int] = frozenset()
    parts: list[list[int]] | None = None


CURSOR = "DECLARE c CURSOR FOR SELECT id FROM customers WHERE id > 100 ORDER BY id FOR UPDATE"


def _psycopg_params(prepare: bool, verb: str) -> list[Callable[[psycopg.Connection[Any]], Any]]:
    def q(text: str) -> str:
        return text if verb == "DELETE" else _to_update(text)

    def returning(c: psycopg.Connection[Any]) -> Any:
        cur = c.cursor()
        cur.execute(
            q("DELETE FROM customers WHERE id = ANY(%s) RETURNING id, email, deleted_at"),
            [[3, 6, 9]],
            prepare=prepare,
        )
        out = results(cur)
        return {"tags": [r[0] for r in out], "results": out}

    def plain(c: psycopg.Connection[Any]) -> Any:
        cur = c.cursor()
        cur.execute(
            q("DELETE FROM customers WHERE id BETWEEN %s AND %s"), [100, 104], prepare=prepare
        )
        out = results(cur)
        return {"tags": [r[0] for r in out], "results": out}

    return [returning, plain, returning]  # the third: the same rows again -> 0


def _to_update(delete_text: str) -> str:
    """DELETE FROM customers WHERE <c> [RETURNING r] -> the hand-written soft delete."""
    body = delete_text.removeprefix("DELETE FROM customers WHERE ")
    cond, _, returning = body.partition(" RETURNING ")
    return upd(cond, returning)


def _apg_steps(verb: str) -> list[Callable[[Any], Any]]:
    def q(text: str) -> str:
        return text if verb == "DELETE" else _to_update(text)

    async def fetch(c: Any) -> Any:
        stmt = await c.prepare(q("DELETE FROM customers WHERE id = ANY($1::int[]) RETURNING *"))
        rows = await stmt.fetch([3, 6, 9])
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        return {"tags": [stmt.get_statusmsg()], "rows": [tuple(r) for r in rows], "attrs": attrs}

    async def execute(c: Any) -> Any:
        status = await c.execute(q("DELETE FROM customers WHERE id = $1"), 7)
        return {"tags": [status]}

    async def executemany(c: Any) -> Any:
        await c.executemany(
            q("DELETE FROM customers WHERE id = $1"), [(11,), (12,), (13,), (11,), (-1,)]
        )
        return {"tags": []}

    async def again(c: Any) -> Any:
        status = await c.execute(q("DELETE FROM customers WHERE id = $1"), 7)
        return {"tags": [status]}

    return [fetch, execute, executemany, again]


def _pipeline(verb: str) -> Callable[[psycopg.Connection[Any]], Any]:
    def q(text: str) -> str:
        return text if verb == "DELETE" else _to_update(text)

    def step(c: psycopg.Connection[Any]) -> Any:
        with c.pipeline():
            c1 = c.execute(q("DELETE FROM customers WHERE id = %s RETURNING id"), [21])
            c2 = c.execute(q("DELETE FROM customers WHERE id BETWEEN %s AND %s"), [22, 26])
            c3 = c.execute("SELECT count(*) FROM customers WHERE deleted_at IS NULL")
            c4 = c.execute(
                q("DELETE FROM customers WHERE id BETWEEN %s AND %s RETURNING id"), [25, 28]
            )
        out = [results(c1), results(c2), results(c3), results(c4)]
        return {"tags": [r[0][0] for r in out], "results": out}

    return step


FORMS: dict[str, Form] = {
    "where": Form(
        ["DELETE FROM customers WHERE id BETWEEN 101 AND 110"],
        [upd("id BETWEEN 101 AND 110")],
        [["DELETE 10"]],
        [1],
        [10],
    ),
    "using": Form(
        [
            "DELETE FROM customers c USING reservations r"
            " WHERE r.customer_id = c.id AND r.status = 'cancelled' AND c.id <= 50"
        ],
        [
            upd(
                "r.customer_id = c.id AND r.status = 'cancelled' AND c.id <= 50",
                table="customers c",
                using="reservations r",
            )
        ],
        [["DELETE 10"]],  # customers 5, 10, ..., 50: each has 5 cancelled reservations
        [1],
        [10],
    ),
    "using_returning": Form(
        [
            "DELETE FROM customers c USING reservations r WHERE r.customer_id = c.id"
            " AND r.status = 'cancelled' AND c.id = 10 RETURNING c.id, c.email, c.deleted_at,"
            " r.customer_id"
        ],
        [
            upd(
                "r.customer_id = c.id AND r.status = 'cancelled' AND c.id = 10",
                "c.id, c.email, NULL::timestamptz AS deleted_at, r.customer_id",
                table="customers c",
                using="reservations r",
            )
        ],
        [["DELETE 1"]],
        [1],
        [1],
    ),
    "returning_id": Form(
        ["DELETE FROM customers WHERE id <= 5 RETURNING id"],
        [upd("id <= 5", "id")],
        [["DELETE 5"]],
        [1],
        [5],
    ),
    "returning_star": Form(
        ["DELETE FROM customers WHERE id IN (7, 8, 9) RETURNING *"],
        [upd("id IN (7, 8, 9)", OLD_STAR.format(p=""))],
        [["DELETE 3"]],
        [1],
        [3],
    ),
    "returning_marks": Form(
        [
            "DELETE FROM customers WHERE id BETWEEN 20 AND 24 RETURNING deleted_at, deleted_by, id",
            "DELETE FROM customers c WHERE c.id BETWEEN 31 AND 33 RETURNING c.id,"
            " c.deleted_at, c.deleted_by IS NULL AS by_null, c.*",
            "DELETE FROM public.customers WHERE id = 41 RETURNING customers.deleted_by,"
            " public.customers.deleted_at, customers.full_name",
        ],
        [
            upd(
                "id BETWEEN 20 AND 24",
                "NULL::timestamptz AS deleted_at, NULL::text AS deleted_by, id",
            ),
            upd(
                "c.id BETWEEN 31 AND 33",
                "c.id, NULL::timestamptz AS deleted_at, true AS by_null, "
                + OLD_STAR.format(p="c."),
                table="customers c",
            ),
            upd("id = 41", "NULL::text AS deleted_by, NULL::timestamptz AS deleted_at, full_name"),
        ],
        [["DELETE 5"], ["DELETE 3"], ["DELETE 1"]],
        [1, 1, 1],
        [5, 3, 1],
    ),
    "only": Form(
        ["DELETE FROM ONLY customers WHERE id = 40"],
        [upd("id = 40", table="ONLY customers")],
        [["DELETE 1"]],
        [1],
        [1],
    ),
    "with": Form(
        [
            "WITH d AS (DELETE FROM customers WHERE id < 10 RETURNING *)"
            " SELECT id, email, deleted_at, deleted_by FROM d ORDER BY id",
            "WITH d AS (DELETE FROM customers WHERE id BETWEEN 5 AND 15 RETURNING id)"
            " SELECT count(*) FROM d",
        ],
        [
            "WITH d AS (" + upd("id < 10", "*") + ")"
            " SELECT id, email, NULL::timestamptz AS deleted_at, NULL::text AS deleted_by"
            " FROM d ORDER BY id",
            "WITH d AS (" + upd("id BETWEEN 5 AND 15", "id") + ") SELECT count(*) FROM d",
        ],
        [["SELECT 9"], ["SELECT 1"]],  # the second counts 10..15 only: 5..9 are marked
        [1, 1],
        [9, 6],
    ),
    "sql_prepare_execute": Form(
        [
            "PREPARE d(int) AS DELETE FROM customers WHERE id = $1 RETURNING id, email",
            "EXECUTE d(5)",
            "EXECUTE d(6)",
            "EXECUTE d(5)",
            "EXECUTE d(-1)",
            "DEALLOCATE d",
        ],
        [
            "PREPARE d(int) AS " + upd("id = $1", "id, email"),
            "EXECUTE d(5)",
            "EXECUTE d(6)",
            "EXECUTE d(5)",
            "EXECUTE d(-1)",
            "DEALLOCATE d",
        ],
        [["PREPARE"], ["DELETE 1"], ["DELETE 1"], ["DELETE 0"], ["DELETE 0"], ["DEALLOCATE"]],
        [0, 1, 1, 0, 0, 0],
        [1, 1],
    ),
    "already_marked": Form(
        [
            "DELETE FROM customers WHERE id <= 20",
            "DELETE FROM customers WHERE id <= 25",
            "DELETE FROM customers WHERE id <= 25",
        ],
        [upd("id <= 20"), upd("id <= 25"), upd("id <= 25")],
        [["DELETE 20"], ["DELETE 5"], ["DELETE 0"]],
        [1, 1, 0],
        [20, 5],
    ),
    "nothing": Form(
        ["DELETE FROM customers WHERE id < 0 RETURNING id"],
        [upd("id < 0", "id")],
        [["DELETE 0"]],
        [0],
        [],
    ),
    "rollback": Form(
        ["BEGIN", "DELETE FROM customers WHERE id < 50", "ROLLBACK"],
        ["BEGIN", upd("id < 50"), "ROLLBACK"],
        [["BEGIN"], ["DELETE 49"], ["ROLLBACK"]],
        [0, 1, 0],  # the NOTICE was sent inside the transaction; nothing is kept
        [],
    ),
    "transaction": Form(
        [
            "BEGIN",
            "DELETE FROM customers WHERE id BETWEEN 200 AND 203",
            "SAVEPOINT a",
            "DELETE FROM customers WHERE id BETWEEN 300 AND 310",
            "ROLLBACK TO SAVEPOINT a",
            "DELETE FROM customers WHERE id BETWEEN 202 AND 205 RETURNING id",
            "COMMIT",
        ],
        [
            "BEGIN",
            upd("id BETWEEN 200 AND 203"),
            "SAVEPOINT a",
            upd("id BETWEEN 300 AND 310"),
            "ROLLBACK TO SAVEPOINT a",
            upd("id BETWEEN 202 AND 205", "id"),
            "COMMIT",
        ],
        [
            ["BEGIN"],
            ["DELETE 4"],
            ["SAVEPOINT"],
            ["DELETE 11"],
            ["ROLLBACK"],
            ["DELETE 2"],
            ["COMMIT"],
        ],
        [0, 1, 0, 1, 0, 1, 0],
        [4, 2],
    ),
    "explain_analyze": Form(
        [
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
            " DELETE FROM customers WHERE id BETWEEN 60 AND 64"
        ],
        ["EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + upd("id BETWEEN 60 AND 64")],
        [["EXPLAIN"]],
        [1],
        [5],
        opaque=frozenset({0}),
    ),
    "current_of": Form(
        [
            "BEGIN",
            CURSOR,
            "FETCH 2 FROM c",
            "DELETE FROM customers WHERE CURRENT OF c",
            "FETCH 1 FROM c",
            "DELETE FROM customers WHERE CURRENT OF c RETURNING id, deleted_at, email",
            "CLOSE c",
            "COMMIT",
        ],
        [
            "BEGIN",
            CURSOR,
            "FETCH 2 FROM c",
            f"UPDATE customers {SET_MARK} WHERE CURRENT OF c",
            "FETCH 1 FROM c",
            f"UPDATE customers {SET_MARK} WHERE CURRENT OF c"
            " RETURNING id, NULL::timestamptz AS deleted_at, email",
            "CLOSE c",
            "COMMIT",
        ],
        [
            ["BEGIN"],
            ["DECLARE CURSOR"],
            ["FETCH 2"],
            ["DELETE 1"],
            ["FETCH 1"],
            ["DELETE 1"],
            ["CLOSE CURSOR"],
            ["COMMIT"],
        ],
        [0, 0, 0, 1, 0, 1, 0, 0],
        [1, 1],
    ),
    "multi_statement": Form(
        [
            "DELETE FROM customers WHERE id <= 3; SELECT 1;"
            " DELETE FROM customers WHERE id BETWEEN 3 AND 6"
        ],
        [upd("id <= 3") + "; SELECT 1; " + upd("id BETWEEN 3 AND 6")],
        [["DELETE 3", "SELECT 1", "DELETE 3"]],
        [2],  # one operation, one NOTICE per statement (decision 0012)
        [3, 3],
        modes=("simple",),
    ),
    "psycopg_params_unprepared": Form(
        _psycopg_params(False, "DELETE"),
        _psycopg_params(False, "UPDATE"),
        [["DELETE 3"], ["DELETE 5"], ["DELETE 0"]],
        [1, 1, 0],
        [3, 5],
        modes=("simple",),
    ),
    "psycopg_params_prepared": Form(
        _psycopg_params(True, "DELETE"),
        _psycopg_params(True, "UPDATE"),
        [["DELETE 3"], ["DELETE 5"], ["DELETE 0"]],
        [1, 1, 0],
        [3, 5],
        modes=("simple",),
    ),
    "asyncpg_params": Form(
        _apg_steps("DELETE"),
        _apg_steps("UPDATE"),
        [["DELETE 3"], ["DELETE 1"], [], ["DELETE 0"]],
        [1, 1, 3, 0],
        [3, 1, 1, 1, 1],
        modes=("asyncpg",),
    ),
    "psycopg_pipeline": Form(
        [_pipeline("DELETE")],
        [_pipeline("UPDATE")],
        [["DELETE 1", "DELETE 5", "SELECT 1", "DELETE 2"]],
        [3],
        [1, 5, 2],
        modes=("simple",),
    ),
}

PAIRS = [(name, mode) for name, form in FORMS.items() for mode in form.modes]


def _tags(seen: Any, step: Any, mode: str) -> list[str]:
    assert seen.error is None, f"{step!r} failed: {seen.error}"
    value = seen.value
    if not isinstance(step, str):
        return list(value["tags"])
    if mode == "asyncpg":
        return [value[2]]
    return [r[0] for r in value]


def _as_update_tag(tag: str) -> str:
    return "UPDATE " + tag.removeprefix("DELETE ") if tag.startswith("DELETE ") else tag


def _check_marks_match_captures(sg: Any, db: str, ops: list[dict[str, Any]]) -> None:
    """Every marked row carries the mark its operation's capture recorded, and each mark
    value is carried by exactly the rows its operations counted."""
    want: dict[datetime, int] = {}
    with sg.connect(db) as c:
        for o in ops:
            for cap in captures(sg, db, o["id"]):
                mark = c.execute("SELECT %s::timestamptz", [cap["mark_text"]]).fetchone()[0]
                want[mark] = want.get(mark, 0) + cap["n_rows"]
        have = dict(
            c.execute(
                "SELECT deleted_at, count(*) FROM customers WHERE deleted_at IS NOT NULL GROUP BY 1"
            ).fetchall()
        )
    assert have == want


def _returned(seen: Seen, step: Any, mode: str) -> list[list[str]]:
    """The rows each result of a string step returned, order aside."""
    if not isinstance(step, str) or seen.value is None:
        return []
    if mode == "asyncpg":
        return [sorted(map(repr, seen.value[1]))]
    return [sorted(map(repr, r[3] or ())) for r in seen.value]


@pytest.mark.parametrize(("name", "mode"), PAIRS, ids=[f"{n}-{m}" for n, m in PAIRS])
def test_delete_form(
    sd_proxy: Any,
    sg: Any,
    twins: Callable[..., list[str]],
    pristine_data: dict[str, Any],
    name: str,
    mode: str,
) -> None:
    """Through softguard vs the plain DELETE (a fresh twin): the client sees the same;
    vs the hand-written soft delete (run on the softguard twin once undo has made it the
    original again): the same tags' counts, RETURNING values and resulting data."""
    form = FORMS[name]
    soft_db, plain_db = twins(2)
    proxied = run(sd_proxy.dsn(soft_db), form.steps, mode)
    plain = run(sg.dsn(plain_db), form.steps, mode)

    # command tags: DELETE n through softguard
    tags = [_tags(s, step, mode) for s, step in zip(proxied, form.steps, strict=True)]
    assert tags == form.tags
    returned = [
        _returned(p, step, mode) if i not in form.opaque else []
        for i, (p, step) in enumerate(zip(proxied, form.steps, strict=True))
    ]

    # everything else the client sees is what the plain DELETE shows
    for i in form.opaque:
        proxied[i].value = plain[i].value = None
    notices = dh.compare_runs(plain, proxied, form.notices, form.steps)
    noticed = [check_sd_notice(n) for n in notices]

    # the ledger: one operation per statement that marked rows, as announced
    ops = ledger_ops(sg, soft_db)
    assert [o["row_counts"]["tables"] for o in ops] == [{"public.customers": n} for n in form.ops]
    # one NOTICE per kept operation, in order (a rolled-back one was announced too); the
    # rows are the ledger's (the NOTICE has no count)
    kept = [o["id"] for o in ops]
    assert [i for i in noticed if i in kept] == kept, (noticed, ops)
    parts = form.parts or [[n] for n in form.ops]
    for o, rows in zip(ops, parts, strict=True):
        assert o["kind"] == "DELETE" and o["state"] == "active"
        assert "DELETE FROM" in o["statement"]
        if all(isinstance(s, str) for s in form.steps):
            # the client's text (a multi-statement string: its DELETEs)
            assert all(any(part in s for s in form.steps) for part in o["statement"].split("; ")), (
                o["statement"]
            )
        assert [(x["identity"], x["event"], x["rows"]) for x in o["objects"]] == [
            ("public.customers", "soft_delete", n) for n in rows
        ]
        assert [
            (c["table_identity"], c["event"], c["n_rows"]) for c in captures(sg, soft_db, o["id"])
        ] == [("public.customers", "soft_delete", n) for n in rows]

    # the data: rows marked, none removed; nothing else touched
    state = customers_state(sg, soft_db)
    assert len(state[2]) == sum(form.ops)
    assert all(by == sg.server.superuser for _id, by in state[2])
    assert state[0] == 2000
    assert other_tables(sg.data(soft_db), "public.customers") == other_tables(
        pristine_data, "public.customers"
    )
    if ops:
        _check_marks_match_captures(sg, soft_db, ops)

    # undo clears every mark softguard wrote: the original data, exactly
    for o, rows in reversed(list(zip(ops, parts, strict=True))):
        assert undo_sql(sg, soft_db, o["id"]) == [
            f"operation {o['id']}: cleared the soft-delete mark (deleted_at) of {n} rows of"
            " public.customers"
            for n in rows
        ]
    assert sg.data(soft_db) == pristine_data

    # the hand-written soft delete, directly on that (original again) copy: UPDATE n for
    # DELETE n, the same values returned (old marks spelled NULL), the same data
    by_hand = run(sg.dsn(soft_db), form.update, mode)
    hand_tags = [_tags(s, step, mode) for s, step in zip(by_hand, form.update, strict=True)]
    assert hand_tags == [[_as_update_tag(t) for t in ts] for ts in form.tags]
    for i, (h, step) in enumerate(zip(by_hand, form.update, strict=True)):
        if i not in form.opaque and isinstance(form.steps[i], str):
            assert _returned(h, step, mode) == returned[i], form.steps[i]
    assert customers_state(sg, soft_db) == state


@pytest.mark.parametrize(
    ("using", "old_marks"),
    [
        ("reservations r", True),  # each USING item has a name: the old row's columns
        ("reservations r JOIN vehicles v ON v.id = r.vehicle_id", False),  # documented limit
    ],
)
def test_delete_using_returning_star(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], using: str, old_marks: bool
) -> None:
    """`RETURNING *` over USING tables: the old marks (NULL), as the DELETE returns them,
    when every USING item can be named; over a join without an alias the new marks
    (decision 0008). Everything else matches the plain DELETE."""
    stmt = (
        f"DELETE FROM customers c USING {using}"
        " WHERE r.customer_id = c.id AND r.id = 2014 RETURNING *"
    )
    soft_db, plain_db = twins(2)
    proxied = run(sd_proxy.dsn(soft_db), [stmt], "simple")
    plain = run(sg.dsn(plain_db), [stmt], "simple")
    ((tag, _n, desc, rows),) = proxied[0].value
    ((plain_tag, _pn, plain_desc, plain_rows),) = plain[0].value
    assert (tag, desc) == (plain_tag, plain_desc) == ("DELETE 1", plain_desc)
    names = [d[0] for d in desc]
    at, by = names.index("deleted_at"), names.index("deleted_by")
    (row,), (plain_row,) = rows, plain_rows
    assert (plain_row[at], plain_row[by]) == (None, None)
    if old_marks:
        assert row == plain_row
    else:
        mark = marks(sg, soft_db, [15])[15]
        assert (row[at], row[by]) == mark and mark[0] is not None  # the new mark
        assert [v for i, v in enumerate(row) if i not in (at, by)] == [
            v for i, v in enumerate(plain_row) if i not in (at, by)
        ]
    assert len(proxied[0].notices) == 1  # the softguard NOTICE
    check_sd_op(sg, soft_db, proxied[0].notices[0][2], rows=1)


# ----------------------------------------------------------------------- cascades


def test_fk_cascade_does_not_fire(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine_data: dict[str, Any]
) -> None:
    soft_db, plain_db = twins(2)
    stmt = "DELETE FROM customers WHERE id IN (1, 2, 3)"
    reservations = "SELECT count(*) FROM reservations WHERE customer_id IN (1, 2, 3)"
    assert scalar(sg, soft_db, reservations) == 15
    proxied = run(sd_proxy.dsn(soft_db), [stmt], "simple")
    plain = run(sg.dsn(plain_db), [stmt], "simple")
    (notice,) = dh.compare_runs(plain, proxied, [1], [stmt])
    assert proxied[0].value[0][0] == "DELETE 3"
    op = check_sd_op(sg, soft_db, notice, rows=3)
    # the plain DELETE cascaded; the soft delete did not: the rows still exist
    assert scalar(sg, plain_db, reservations) == 0
    assert scalar(sg, soft_db, reservations) == 15
    assert scalar(sg, soft_db, "SELECT count(*) FROM customers WHERE id IN (1, 2, 3)") == 3
    data = sg.data(soft_db)
    for table in ("public.reservations", "billing.payments", "billing.refunds"):
        assert data[table] == pristine_data[table], table
    (o,) = ledger_ops(sg, soft_db)
    assert o["id"] == op
    assert o["row_counts"] == {"estimate": False, "tables": {"public.customers": 3}}
    assert [x["identity"] for x in o["objects"]] == ["public.customers"]


# ----------------------------------------------------------------------- done-when


def test_done_when_delete_undo_purge(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine_data: dict[str, Any]
) -> None:
    (db,) = twins(1)
    direct = sg.dsn(db)
    stmt = "DELETE FROM customers WHERE id <= 10 RETURNING id"
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        cur = c.execute(stmt)
        assert cur.statusmessage == "DELETE 10"
        assert sorted(r[0] for r in cur.fetchall()) == list(range(1, 11))
    (notice,) = got
    op = check_sd_op(sg, db, notice, rows=10)

    # the ten rows remain, marked
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000
    marked = marks(sg, db, range(1, 12))
    assert all(marked[i][0] is not None and marked[i][1] == "postgres" for i in range(1, 11))
    assert marked[11] == (None, None)
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 10
    (o,) = ledger_ops(sg, db)
    assert (o["id"], o["kind"], o["statement"], o["state"]) == (op, "DELETE", stmt, "active")
    assert [(x["identity"], x["event"]) for x in o["objects"]] == [
        ("public.customers", "soft_delete")
    ]
    assert [(c["event"], c["n_rows"]) for c in captures(sg, db, op)] == [("soft_delete", 10)]

    # softguard undo clears exactly those marks
    done = cli("undo", str(op), "--yes", "--dsn", direct)
    assert done.returncode == 0, done.stderr
    assert (
        f"operation {op}: cleared the soft-delete mark (deleted_at) of 10 rows of public.customers"
    ) in done.stdout
    assert sg.data(db) == pristine_data

    # deleted again, then purged: gone for good, with their reservations (cascade)
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        assert c.execute(stmt).statusmessage == "DELETE 10"
    op2 = check_sd_op(sg, db, got[0], rows=10)
    assert op2 > op
    assert scalar(sg, db, "SELECT count(*) FROM reservations WHERE customer_id <= 10") == 50
    purged = cli("purge", "--older-than", "0s", "--yes", "--dsn", direct)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 1990
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE id <= 10") == 0
    assert scalar(sg, db, "SELECT count(*) FROM reservations WHERE customer_id <= 10") == 0
    assert scalar(sg, db, "SELECT count(*) FROM reservations") == 10000 - 50
    assert scalar(sg, db, "SELECT state FROM softguard.operations WHERE id = %s", [op2]) == "purged"
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 0


# ----------------------------------------------------------------------- undo precision


def _soft_delete(proxy: Any, sg: Any, db: str, stmt: str, tag: str) -> int:
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        assert c.execute(stmt.encode()).statusmessage == tag
    (notice,) = got
    return check_sd_op(sg, db, notice, rows=int(tag.split()[1]))


def test_undo_clears_only_its_own_marks(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    (db,) = twins(1)
    # the application itself soft-deleted row 9 earlier
    sg.execute(
        db,
        "UPDATE customers SET deleted_at = '2020-01-01 00:00+00', deleted_by = 'app' WHERE id = 9",
    )
    op_a = _soft_delete(
        sd_proxy, sg, db, "DELETE FROM customers WHERE id <= 5 OR id = 9", "DELETE 5"
    )
    # someone (directly) restores row 3 and soft-deletes it again, with another mark
    sg.execute(
        db,
        "UPDATE customers SET deleted_at = NULL, deleted_by = NULL WHERE id = 3",
        "UPDATE customers SET deleted_at = '2030-01-01 00:00+00', deleted_by = 'someone'"
        " WHERE id = 3",
    )
    op_b = _soft_delete(sd_proxy, sg, db, "DELETE FROM customers WHERE id IN (6, 7)", "DELETE 2")
    before = marks(sg, db, range(1, 11))
    mark_a, mark_b = before[1][0], before[6][0]
    assert mark_a is not None and mark_b is not None

    assert undo_sql(sg, db, op_a) == [
        f"operation {op_a}: cleared the soft-delete mark (deleted_at) of 4 rows of"
        " public.customers (1 left alone: deleted, or marked again, since)"
    ]
    after = marks(sg, db, range(1, 11))
    for i in (1, 2, 4, 5):
        assert after[i] == (None, None), i
    assert after[3] == (datetime.fromisoformat("2030-01-01T00:00:00+00:00"), "someone")
    assert after[6] == after[7] == (mark_b, "postgres")
    assert after[8] == (None, None)
    assert after[9] == (datetime.fromisoformat("2020-01-01T00:00:00+00:00"), "app")
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 4

    # op B is untouched by that and undoes on its own
    assert undo_sql(sg, db, op_b) == [
        f"operation {op_b}: cleared the soft-delete mark (deleted_at) of 2 rows of public.customers"
    ]
    assert marks(sg, db, [6, 7]) == {6: (None, None), 7: (None, None)}


# ----------------------------------------------------------------------- purge precision


def test_purge_deletes_only_rows_still_carrying_a_live_mark(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], tmp_path: Path
) -> None:
    (db,) = twins(1)
    # rows the application soft-deleted itself: never softguard's to purge
    sg.execute(
        db,
        "UPDATE customers SET deleted_at = now() - interval '1 day', deleted_by = 'app'"
        " WHERE id BETWEEN 50 AND 52",
    )
    op_undone = _soft_delete(
        sd_proxy, sg, db, "DELETE FROM customers WHERE id BETWEEN 1 AND 5", "DELETE 5"
    )
    undo_sql(sg, db, op_undone)
    op_p = _soft_delete(
        sd_proxy, sg, db, "DELETE FROM customers WHERE id BETWEEN 10 AND 14", "DELETE 5"
    )
    op_q = _soft_delete(sd_proxy, sg, db, "DELETE FROM customers WHERE id IN (30, 31)", "DELETE 2")
    # someone re-marks row 12 (another mark) and restores row 31, directly
    sg.execute(
        db,
        "UPDATE customers SET deleted_at = '2031-01-01 00:00+00', deleted_by = 'other'"
        " WHERE id = 12",
        "UPDATE customers SET deleted_at = NULL, deleted_by = NULL WHERE id = 31",
    )
    (cap_p,) = captures(sg, db, op_p)
    survivors = [1, 2, 3, 4, 5, 12, 31, 50, 51, 52]
    gone = [10, 11, 13, 14, 30]
    archive = tmp_path / "archive"

    done = cli(
        "purge", "--older-than", "0s", "--yes", "--archive", str(archive), "--dsn", sg.dsn(db)
    )
    assert done.returncode == 0, done.stdout + done.stderr

    left = scalar(
        sg,
        db,
        "SELECT array_agg(id ORDER BY id) FROM customers WHERE id = ANY(%s)",
        [survivors + gone],
    )
    assert left == survivors
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000 - len(gone)
    assert (
        scalar(sg, db, "SELECT count(*) FROM reservations WHERE customer_id = ANY(%s)", [gone]) == 0
    )
    assert scalar(
        sg, db, "SELECT count(*) FROM reservations WHERE customer_id = ANY(%s)", [survivors]
    ) == 5 * len(survivors)
    after = marks(sg, db, survivors)
    assert [i for i in survivors if after[i][0] is None] == [1, 2, 3, 4, 5, 31]
    assert after[12] == (datetime.fromisoformat("2031-01-01T00:00:00+00:00"), "other")
    assert {after[i][1] for i in (50, 51, 52)} == {"app"}
    with sg.connect(db) as c:
        states = dict(
            c.execute(
                "SELECT id, state FROM softguard.operations WHERE id = ANY(%s)",
                [[op_p, op_q]],
            ).fetchall()
        )
    assert states == {op_p: "purged", op_q: "purged"}

    # the archive holds the rows purge hard-deleted (row 12 was no longer op P's)
    path = archive / f"op-{op_p}" / f"soft-deleted-rows-{cap_p['id']}.csv"
    assert path.is_file(), sorted(str(p) for p in archive.rglob("*"))
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert sorted(int(r["id"]) for r in rows) == [10, 11, 13, 14]
    assert {r["email"] for r in rows} == {f"c{i}@example.com" for i in (10, 11, 13, 14)}
    assert all(r["deleted_at"] and r["deleted_by"] == "postgres" for r in rows)


# ----------------------------------------------------------------------- TRUNCATE, DROP


def test_truncate_and_drop_keep_their_reversible_behaviour(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine_data: dict[str, Any]
) -> None:
    (db,) = twins(1)
    soft = _soft_delete(sd_proxy, sg, db, "DELETE FROM customers WHERE id <= 3", "DELETE 3")
    marked = marks(sg, db, [1, 2, 3])

    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        assert c.execute("TRUNCATE customers CASCADE").statusmessage == "TRUNCATE TABLE"
    assert len(got) == 1 and got[0].startswith("softguard: TRUNCATE TABLE"), got
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 0
    assert scalar(sg, db, "SELECT count(*) FROM reservations") == 0
    ops = ledger_ops(sg, db)
    assert [o["kind"] for o in ops] == ["DELETE", "TRUNCATE"]
    undo_sql(sg, db, ops[1]["id"])
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000
    assert marks(sg, db, [1, 2, 3]) == marked  # the soft-deleted rows came back marked

    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        assert c.execute("DROP TABLE customers CASCADE").statusmessage == "DROP TABLE"
    assert len(got) == 1 and got[0].startswith("softguard: DROP TABLE"), got
    assert scalar(sg, db, "SELECT to_regclass('public.customers') IS NULL") is True
    ops = ledger_ops(sg, db)
    assert [o["kind"] for o in ops] == ["DELETE", "TRUNCATE", "DROP TABLE"]
    undo_sql(sg, db, ops[2]["id"])
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000
    assert marks(sg, db, [1, 2, 3]) == marked

    # the soft delete is undone as before, and the data is the original again
    undo_sql(sg, db, soft)
    assert sg.data(db) == pristine_data
    # and soft delete still applies to the restored table
    op = _soft_delete(sd_proxy, sg, db, "DELETE FROM customers WHERE id = 4", "DELETE 1")
    assert marks(sg, db, [4])[4][1] == "postgres"
    assert op > ops[2]["id"]


# ----------------------------------------------------------------------- boolean mark


def test_boolean_mark(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine_data: dict[str, Any]
) -> None:
    (db,) = twins(1)
    sg.execute(db, "UPDATE billing.refunds SET is_deleted = true WHERE id = 20")
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        cur = c.execute("DELETE FROM billing.refunds WHERE id <= 10 RETURNING id, is_deleted")
        assert cur.statusmessage == "DELETE 10"
        assert sorted(cur.fetchall()) == [(i, False) for i in range(1, 11)]
        assert c.execute("DELETE FROM billing.refunds WHERE id <= 12").statusmessage == "DELETE 2"
        # row 20 was already marked (by the application): not counted, no operation
        assert c.execute("DELETE FROM billing.refunds WHERE id = 20").statusmessage == "DELETE 0"
    assert len(got) == 2, got
    op1 = check_sd_op(sg, db, got[0], 10, "billing.refunds", "is_deleted")
    op2 = check_sd_op(sg, db, got[1], 2, "billing.refunds", "is_deleted")
    assert scalar(sg, db, "SELECT count(*) FROM billing.refunds") == 1000
    assert scalar(
        sg, db, "SELECT array_agg(id ORDER BY id) FROM billing.refunds WHERE is_deleted"
    ) == [*range(1, 13), 20]
    assert [(o["kind"], o["row_counts"]["tables"]) for o in ledger_ops(sg, db)] == [
        ("DELETE", {"billing.refunds": 10}),
        ("DELETE", {"billing.refunds": 2}),
    ]
    assert undo_sql(sg, db, op1) == [
        f"operation {op1}: cleared the soft-delete mark (is_deleted) of 10 rows of billing.refunds"
    ]
    assert scalar(
        sg, db, "SELECT array_agg(id ORDER BY id) FROM billing.refunds WHERE is_deleted"
    ) == [11, 12, 20]
    undo_sql(sg, db, op2)
    sg.execute(db, "UPDATE billing.refunds SET is_deleted = false WHERE id = 20")
    assert sg.data(db) == pristine_data


# ----------------------------------------------------------------------- quarantine entry


def test_quarantine_entry_before_a_pattern(
    pattern_proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine_data: dict[str, Any]
) -> None:
    """First matching entry wins: reservations (mode quarantine) is hard-deleted, captured;
    customers (public.*) is soft-deleted. A table public.* matches that lacks deleted_at
    (locations) is not a soft-delete table (softguard/ledger/soft_delete_tables.py: a
    pattern covers the tables that have the mark column): its DELETE is the ordinary
    captured one."""
    (db,) = twins(1)
    dsn = pattern_proxy.dsn(db, application_name="sd-test-app")
    with psycopg.connect(dsn, autocommit=True) as c:
        got = sg_notices(c)
        cur = c.execute("DELETE FROM reservations WHERE customer_id = 1")
        assert cur.statusmessage == "DELETE 5"
        cur = c.execute("DELETE FROM customers WHERE id IN (2, 3) RETURNING id, deleted_by")
        assert (cur.statusmessage, sorted(cur.fetchall())) == ("DELETE 2", [(2, None), (3, None)])
        cur = c.execute("DELETE FROM locations WHERE id = 20")
        assert cur.statusmessage == "DELETE 1"
    assert len(got) == 3, got
    assert got[0].startswith("softguard: DELETE FROM public.reservations is reversible"), got
    op_soft = check_sd_op(sg, db, got[1], rows=2)
    assert got[2].startswith("softguard: DELETE FROM public.locations is reversible"), got
    # the hard deletes happened, with their cascades
    assert scalar(sg, db, "SELECT count(*) FROM reservations WHERE customer_id = 1") == 0
    assert scalar(sg, db, "SELECT count(*) FROM billing.payments") == 10000 - 5
    assert scalar(sg, db, "SELECT count(*) FROM locations") == 19
    assert scalar(sg, db, "SELECT count(*) FROM vehicles WHERE location_id IS NULL") == 10
    # the soft delete kept its rows (and their reservations)
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000
    assert scalar(sg, db, "SELECT count(*) FROM reservations WHERE customer_id IN (2, 3)") == 10
    soft = marks(sg, db, [2, 3])
    assert soft[2][0] is not None and soft[2] == soft[3]
    assert soft[2][1] == "sd-test-app"  # deleted_by_value = "application_name"
    ops = ledger_ops(sg, db)
    assert [(o["kind"], o["objects"][0]["identity"], o["objects"][0]["event"]) for o in ops] == [
        ("DELETE", "public.reservations", "delete"),
        ("DELETE", "public.customers", "soft_delete"),
        ("DELETE", "public.locations", "delete"),
    ]
    assert ops[1]["id"] == op_soft
    assert ops[0]["row_counts"]["tables"] == {
        "public.reservations": 5,
        "billing.payments": 5,
    }
    for o in reversed(ops):
        undo_sql(sg, db, o["id"])
    assert sg.data(db) == pristine_data


# ----------------------------------------------------------------------- MERGE (limitation)


def test_merge_delete_marks_rows(sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]) -> None:
    """MERGE ... WHEN MATCHED THEN DELETE marks the rows (those marked already are left
    alone and not counted); its other actions run as written; undo clears the marks."""
    if sg.server.version_num < 150000:
        pytest.skip("MERGE needs PostgreSQL 15")
    soft_db, plain_db = twins(2)
    sg.execute(soft_db, "UPDATE customers SET deleted_at = '2020-01-01' WHERE id = 4")
    sg.execute(plain_db, "UPDATE customers SET deleted_at = '2020-01-01' WHERE id = 4")
    stmt = (
        "MERGE INTO customers t USING (SELECT g AS id FROM generate_series(1, 6) g) s"
        " ON t.id = s.id WHEN MATCHED AND s.id <= 4 THEN DELETE"
        " WHEN MATCHED THEN UPDATE SET phone = 'merged'"
    )
    for mode in ("simple", "prepared"):
        db = soft_db if mode == "simple" else plain_db
        with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
            got = sg_notices(c)
            cur = c.execute(stmt, prepare=mode == "prepared")
            # the plain MERGE would say MERGE 6: row 4 was soft-deleted already
            assert cur.statusmessage == "MERGE 5"
        assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000
        assert scalar(sg, db, "SELECT count(*) FROM customers WHERE phone = 'merged'") == 2
        assert (
            scalar(
                sg, db, "SELECT count(*) FROM customers WHERE id <= 4 AND deleted_at IS NOT NULL"
            )
            == 4
        )
        (op,) = ledger_ops(sg, db)
        assert op["kind"] == "MERGE" and op["statement"] == stmt
        assert op["row_counts"]["tables"] == {"public.customers": 3}
        assert len(got) == 1 and got[0].startswith("softguard: MERGE INTO public.customers (soft")
        undo_sql(sg, db, op["id"])
        assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 1


# ----------------------------------------------------------------------- misconfiguration


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_AT_START = {
    "missing_column": (
        'table = "public.customers"\ncolumn = "deleted_at"\n',
        ["public.customers", "column 'deleted_at' does not exist"],
    ),
    "boolean_on_timestamptz": (
        'table = "public.customers"\ncolumn = "removed_at"\nmark = "boolean"\n',
        [
            "public.customers",
            "column 'removed_at' is timestamp with time zone",
            "mark = 'boolean' needs boolean",
        ],
    ),
    "deleted_by_integer": (
        'table = "public.customers"\ncolumn = "removed_at"\ndeleted_by = "deleted_by"\n',
        ["public.customers", "deleted_by column 'deleted_by' is integer", "needs a text type"],
    ),
    "no_primary_key": (
        'table = "public.notes"\ncolumn = "deleted_at"\n',
        ["public.notes", "no primary key"],
    ),
    "value_does_not_fit": (
        'table = "public.customers"\ncolumn = "removed_at"\nmark = "expression"\n'
        "value = \"'soon'\"\n",
        ["public.customers", "'removed_at'", "does not fit"],
    ),
}


@pytest.fixture(scope="module")
def bad_db(pg_server: TestServer, sd_pool: Any) -> Any:
    """A copy where customers lacks deleted_at, deleted_by is integer, removed_at is
    timestamptz, and public.notes has no key."""
    db = sd_pool.take()
    try:
        with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
            c.execute(
                b"ALTER TABLE customers DROP COLUMN deleted_at,"
                b" ALTER COLUMN deleted_by TYPE integer USING NULL,"
                b" ADD COLUMN removed_at timestamptz;"
                b" CREATE TABLE public.notes (body text, deleted_at timestamptz)"
            )
        yield db
    finally:
        sd_pool.drop([db])


@pytest.mark.parametrize("case", list(BAD_AT_START))
def test_serve_refuses_to_start_on_a_misconfigured_table(
    pg_server: TestServer, bad_db: str, tmp_path: Path, case: str
) -> None:
    entry, expected = BAD_AT_START[case]
    config = _write(tmp_path / "bad.toml", "[[soft_delete]]\n" + entry)
    code, out, err = serve_once(config, pg_server.superuser_dsn(bad_db))
    assert code == 2, (code, out, err)
    assert "listening on" not in out
    for text in expected:
        assert text in err, (text, err)
    assert f"in database '{bad_db}'" in err


def test_serve_starts_when_the_configuration_fits(
    pg_server: TestServer, sd_pool: Any, tmp_path: Path
) -> None:
    """The control: the same check passes on a database whose tables fit (serve starts
    listening; stopped then)."""
    db = sd_pool.take()
    try:
        config = _write(
            tmp_path / "good.toml",
            '[[soft_delete]]\ntable = "public.customers"\ncolumn = "deleted_at"\n'
            'deleted_by = "deleted_by"\n',
        )
        code, out, err = serve_once(config, pg_server.superuser_dsn(db))
        assert code is None, (code, out, err)
        assert f"soft_delete checked against database '{db}'" in out
        assert "listening on" in out
    finally:
        sd_pool.drop([db])


BAD_CONFIG = {
    "expression_without_value": (
        'table = "public.customers"\ncolumn = "deleted_at"\nmark = "expression"\n',
        "mark = 'expression' needs value",
    ),
    "value_with_column_reference": (
        'table = "public.customers"\ncolumn = "deleted_at"\nmark = "expression"\n'
        'value = "deleted_at + 1"\n',
        "value may not refer to columns",
    ),
    "table_without_schema": (
        'table = "customers"\ncolumn = "deleted_at"\n',
        "expected schema.table",
    ),
    "soft_without_column": ('table = "public.customers"\n', "needs column = '...'"),
    "unknown_mark": (
        'table = "public.customers"\ncolumn = "deleted_at"\nmark = "flag"\n',
        "soft_delete.0.mark",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_invalid_configuration_is_refused(pg_server: TestServer, tmp_path: Path, case: str) -> None:
    entry, expected = BAD_CONFIG[case]
    config = _write(tmp_path / "bad.toml", "[[soft_delete]]\n" + entry)
    code, out, err = serve_once(config, pg_server.superuser_dsn("postgres"))
    assert code == 2, (code, out, err)
    assert "invalid configuration" in err and "soft_delete.0" in err, err
    assert expected in err, err


def test_misconfigured_table_in_another_database_refuses_delete(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    (db,) = twins(1)
    sg.execute(db, "ALTER TABLE customers DROP COLUMN deleted_at")
    before = sg.data(db)
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        for prepare in (False, True):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
                c.execute("DELETE FROM customers WHERE id <= %s", [5], prepare=prepare)
            message = err.value.diag.message_primary or ""
            assert (
                message == REFUSED_PREFIX + "column 'deleted_at' does not exist (or is generated)"
            )
            assert err.value.diag.sqlstate == "55000"
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("DELETE FROM customers WHERE id <= 5 RETURNING id")
        # the rest of the session works: reads, and DELETEs on other tables (captured)
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2000,)
        assert c.execute("DELETE FROM billing.payments WHERE id = 1").statusmessage == "DELETE 1"
    assert len(got) == 1 and got[0].startswith("softguard: DELETE FROM billing.payments"), got
    after = sg.data(db)
    assert other_tables(after, "billing.payments") == other_tables(before, "billing.payments")
    assert [o["kind"] for o in ledger_ops(sg, db)] == ["DELETE"]


def test_table_ddl_through_softguard_is_seen_at_once(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """The soft-delete tables are read again after table DDL that goes through softguard:
    fixing the table makes the very next DELETE a soft delete."""
    (db,) = twins(1)
    sg.execute(db, "ALTER TABLE customers DROP COLUMN deleted_at")
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            c.execute("DELETE FROM customers WHERE id = 1")
        c.execute("ALTER TABLE customers ADD COLUMN deleted_at timestamptz")
        assert c.execute("DELETE FROM customers WHERE id <= 3").statusmessage == "DELETE 3"
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 3
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000


def test_table_ddl_in_a_transaction_is_seen_soon_after_commit(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """A DELETE inside the DDL's transaction makes softguard read the tables before the
    DDL is committed; they are read once more shortly after, not a minute later."""
    (db,) = twins(1)
    sg.execute(db, "ALTER TABLE customers DROP COLUMN deleted_at")
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        c.execute("DELETE FROM billing.refunds WHERE id = 2")  # the ledger, installed first
        with c.transaction():
            c.execute("ALTER TABLE customers ADD COLUMN deleted_at timestamptz")
            c.execute("DELETE FROM billing.refunds WHERE id = 1")  # read now: not committed
        tags = []
        for attempt in range(40):  # bounded: the re-read is due 2 s after the first
            try:
                tags.append(
                    c.execute("DELETE FROM customers WHERE id = %s", [attempt + 1]).statusmessage
                )
                break
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.25)  # refused: the first read saw no deleted_at yet
    assert tags == ["DELETE 1"]
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL") == 1
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 2000


# ----------------------------------------------------------------------- CURRENT OF, marked


def test_current_of_on_an_already_marked_row(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """Documented limitation (decision 0008): with WHERE CURRENT OF an already-marked row
    is counted (DELETE 1, where "not counted again" would say DELETE 0); its mark is kept
    and no operation is recorded."""
    (db,) = twins(1)
    sg.execute(
        db,
        "UPDATE customers SET deleted_at = '2020-01-01 00:00+00', deleted_by = 'app'"
        " WHERE id = 101",
    )
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        with c.transaction():
            c.execute(CURSOR)
            c.execute("FETCH 1 FROM c")
            tag = c.execute("DELETE FROM customers WHERE CURRENT OF c").statusmessage
    assert marks(sg, db, [101])[101] == (
        datetime.fromisoformat("2020-01-01T00:00:00+00:00"),
        "app",
    )
    assert got == []
    assert ledger_ops(sg, db) == []
    assert tag == "DELETE 1"


# ----------------------------------------------------------------------- multi-statement


def test_multi_statement_string_is_one_operation_per_delete(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """Decision 0012: each DELETE of one multi-statement Query is its own operation with
    its own NOTICE. A hard DELETE's operation records the client's whole string; a soft
    delete's, the DELETE itself."""
    (db,) = twins(1)
    hard = (
        "DELETE FROM billing.payments WHERE id <= 3; SELECT 1;"
        " DELETE FROM billing.payments WHERE id BETWEEN 3 AND 6"
    )
    first = "DELETE FROM customers WHERE id <= 3"
    second = "DELETE FROM customers WHERE id BETWEEN 3 AND 6"
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        cur = c.execute(hard.encode())
        cur = c.execute(f"{first}; SELECT 1; {second}".encode())
        assert [r[0] for r in results(cur)] == ["DELETE 3", "SELECT 1", "DELETE 3"]
    ops = ledger_ops(sg, db)
    assert [(o["statement"], o["row_counts"]["tables"]) for o in ops] == [
        (hard, {"billing.payments": 3}),
        (hard, {"billing.payments": 3}),
        (first, {"public.customers": 3}),
        (second, {"public.customers": 3}),
    ]
    assert len(got) == 4
    assert check_sd_op(sg, db, got[3], rows=3) == ops[3]["id"]
    assert sorted(i for i, _by in customers_state(sg, db)[2]) == [1, 2, 3, 4, 5, 6]


def test_multi_statement_operations_name_a_delete_that_is_a_prefix_of_another(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    (db,) = twins(1)
    first = "DELETE FROM customers WHERE id = 10"
    second = "DELETE FROM customers WHERE id = 1"
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        cur = c.execute(f"{first}; {second}".encode())
        assert [r[0] for r in results(cur)] == ["DELETE 1", "DELETE 1"]
    ops = ledger_ops(sg, db)
    assert [(o["statement"], o["row_counts"]["tables"]) for o in ops] == [
        (first, {"public.customers": 1}),
        (second, {"public.customers": 1}),
    ]
    assert sorted(i for i, _by in customers_state(sg, db)[2]) == [1, 10]


# ----------------------------------------------------------------------- search_path


def test_search_path_naming_another_table_is_refused(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """The proxy rewrites `customers` for public.customers; if the session's search_path
    makes it another table, the statement fails instead of soft-deleting the wrong rows."""
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE SCHEMA other",
        "CREATE TABLE other.customers (id int PRIMARY KEY, deleted_at timestamptz,"
        " deleted_by text)",
        "INSERT INTO other.customers (id) SELECT generate_series(1, 5)",
    )
    with psycopg.connect(sd_proxy.dsn(db), autocommit=True) as c:
        c.execute("SET search_path = other, public")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
            c.execute("DELETE FROM customers WHERE id <= 2")
        assert err.value.diag.message_primary == (
            "softguard: the DELETE names other.customers, which is not the soft-delete table"
            " public.customers"
        )
        # qualified, it is the soft-delete table
        assert c.execute("DELETE FROM public.customers WHERE id <= 2").statusmessage == "DELETE 2"
    assert scalar(sg, db, "SELECT count(*) FROM other.customers WHERE deleted_at IS NULL") == 5
    assert scalar(sg, db, "SELECT count(*) FROM public.customers WHERE deleted_at IS NOT NULL") == 2


# ----------------------------------------------------------------------- odd statements

ODD = [
    "DELETE FROM customers WHERE email = $$it's$$ RETURNING id",
    "DELETE FROM customers /* ; DELETE FROM vehicles */ WHERE id = 1 -- trailing",
    'DELETE FROM "customers" WHERE id IN (SELECT id FROM customers WHERE id < 3 FOR UPDATE)',
    "WITH a AS (SELECT 5 AS id), b AS (DELETE FROM customers c USING a WHERE c.id = a.id"
    " RETURNING c.id) SELECT * FROM b",
    "DELETE FROM customers WHERE id = ANY('{6,7}'::int[]) RETURNING id, upper(full_name) AS n,"
    " deleted_at IS NULL AS live",
    "DELETE FROM customers AS c WHERE EXISTS (SELECT 1 FROM reservations r"
    " WHERE r.customer_id = c.id AND r.status = 'active') RETURNING c.id, c.deleted_by",
    "DELETE FROM customers WHERE id = 9 RETURNING customers, (customers).deleted_at",
    "DELETE FROM public.customers WHERE id = (SELECT max(id) FROM public.customers) RETURNING *",
    "DELETE FROM customers WHERE nosuch = 1",
    "DELETE FROM customers c USING nosuch n WHERE c.id = n.id",
    "DELETE FROM customers WHERE id = 'x'",
    "DELETE FROM customers WHERE id = 1 RETURNING nosuch",
]


def _client_view(dsn: str, stmt: str, extended: bool) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            cur = c.execute(stmt.encode(), prepare=True) if extended else c.execute(stmt.encode())
        except psycopg.Error as e:
            return ("error", e.diag.sqlstate, e.diag.message_primary, e.diag.statement_position)
        desc = [(d.name, d.type_code) for d in cur.description] if cur.description else None
        rows = sorted(map(repr, cur.fetchall())) if cur.description else None
        return (cur.statusmessage, desc, rows)


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("stmt", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_odd_statements_look_like_the_plain_delete(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]], stmt: str, extended: bool
) -> None:
    """Hostile or unusual DELETEs: what the client sees through softguard (tag, columns,
    rows, or the error with its position) is what the plain DELETE shows."""
    soft_db, plain_db = twins(2)
    assert _client_view(sd_proxy.dsn(soft_db), stmt, extended) == _client_view(
        sg.dsn(plain_db), stmt, extended
    )
    assert scalar(sg, soft_db, "SELECT count(*) FROM customers") == 2000


# ----------------------------------------------------------------- the table's own trigger


def test_soft_delete_with_an_updated_at_trigger(
    sd_proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """Regression of ledger version 9 (decision 0031): a BEFORE UPDATE trigger stamping
    updated_at made every soft delete an UPDATE capture, which purge never hard-deletes.
    Now: a soft delete, the stamped rows kept whole too; undo restores them exactly; purge
    after retention hard-deletes the rows still marked."""
    (db,) = twins(1)
    direct = sg.dsn(db)
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute(
            "ALTER TABLE customers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT '2020-01-01';"
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;"
            "CREATE TRIGGER touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch()"
        )
    before = sg.data(db)
    stmt = "DELETE FROM customers WHERE id <= 5"
    op = _soft_delete(sd_proxy, sg, db, stmt, "DELETE 5")
    assert [
        (c["event"], c["n_rows"], (c["info"] or {}).get("claim")) for c in captures(sg, db, op)
    ] == [
        ("soft_delete", 5, "bound"),
        ("update", 5, None),
    ]
    stamped = "SELECT count(*) FROM customers WHERE updated_at > '2020-01-01'"
    assert scalar(sg, db, stamped) == 5

    done = cli("undo", str(op), "--yes", "--dsn", direct)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sg.data(db) == before
    assert scalar(sg, db, stamped) == 0

    op2 = _soft_delete(sd_proxy, sg, db, stmt, "DELETE 5")
    purged = cli("purge", "--older-than", "0s", "--yes", "--dsn", direct)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert scalar(sg, db, "SELECT count(*) FROM customers WHERE id <= 5") == 0
    assert scalar(sg, db, "SELECT count(*) FROM customers") == 1995
    assert scalar(sg, db, "SELECT state FROM softguard.operations WHERE id = %s", [op2]) == "purged"
