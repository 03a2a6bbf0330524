"""DELETE and MERGE ... DELETE through softguard, compared with the same statements run
directly on a twin (DESIGN.md §2-§4, decision 0006, README "Reversible data changes").

For every form: the same tag, RETURNING rows and RowDescription, errors, notices (minus
exactly one `softguard:` NOTICE per operation that removed at least one row), transaction
status and resulting data as direct; the ledger then holds exactly those operations, and
undo (directly, as the superuser) brings the data back to the original exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from support.data_harness import (
    check_notice,
    compare_runs,
    results,
    row_ops,
    run,
    tables,
    undo_all,
)

MODES = ["simple", "prepared", "unnamed", "asyncpg"]

CURSOR_STEPS = [
    "BEGIN",
    "DECLARE c CURSOR FOR SELECT id, amount FROM billing.refunds WHERE id > 10 ORDER BY id"
    " FOR UPDATE",
    "FETCH 2 FROM c",
    "DELETE FROM billing.refunds WHERE CURRENT OF c",
    "FETCH 1 FROM c",
    "DELETE FROM billing.refunds WHERE CURRENT OF c RETURNING id, payment_id, amount",
    "CLOSE c",
    "COMMIT",
]

# name -> (steps, softguard notices per step, operations committed, kinds)
CASES: dict[str, tuple[list[str], list[int], list[str]]] = {
    "where": (["DELETE FROM customers WHERE id BETWEEN 101 AND 103"], [1], ["DELETE"]),
    "using": (
        [
            "DELETE FROM reservations r USING customers c"
            " WHERE c.id = r.customer_id AND c.id < 20 AND r.status <> 'active'"
        ],
        [1],
        ["DELETE"],
    ),
    "returning": (
        ["DELETE FROM billing.refunds WHERE id <= 5 RETURNING *, amount * 2 AS twice"],
        [1],
        ["DELETE"],
    ),
    "only": (
        [
            "DELETE FROM ONLY customers WHERE id BETWEEN 40 AND 45",
            "DELETE FROM ONLY vehicle_notes WHERE id = 1 RETURNING note",
        ],
        [1, 1],
        ["DELETE", "DELETE"],
    ),
    "with": (
        ["WITH d AS (DELETE FROM customers WHERE id < 10 RETURNING *) SELECT count(*) FROM d"],
        [1],
        ["DELETE"],
    ),
    "current_of": (CURSOR_STEPS, [0, 0, 0, 1, 0, 1, 0, 0], ["DELETE", "DELETE"]),
    "merge": (
        [
            "MERGE INTO customers t USING (SELECT g AS id FROM generate_series(1, 30) g) s"
            " ON t.id = s.id WHEN MATCHED THEN DELETE"
        ],
        [1],
        ["MERGE"],
    ),
    "partitioned": (
        ["DELETE FROM events WHERE happened_at < '2025-07-01' RETURNING id, happened_at"],
        [1],
        ["DELETE"],
    ),
    "partition": (["DELETE FROM events_2025 WHERE id < 100"], [1], ["DELETE"]),
    "fk_restrict_error": (["DELETE FROM vehicles WHERE id = 1"], [0], []),
    "nothing_removed": (["DELETE FROM customers WHERE id < 0 RETURNING id"], [0], []),
    "rollback": (
        ["BEGIN", "DELETE FROM customers WHERE id < 50", "ROLLBACK"],
        [0, 1, 0],  # the NOTICE was sent inside the transaction; nothing is kept
        [],
    ),
    "failed_transaction": (
        ["BEGIN", "DELETE FROM customers WHERE id < 50", "SELECT 1/0", "COMMIT"],
        [0, 1, 0, 0],
        [],
    ),
    "savepoint": (
        [
            "BEGIN",
            "SAVEPOINT a",
            "DELETE FROM customers WHERE id < 10",
            "ROLLBACK TO SAVEPOINT a",
            "DELETE FROM customers WHERE id BETWEEN 20 AND 25",
            "RELEASE SAVEPOINT a",
            "COMMIT",
        ],
        [0, 0, 1, 0, 1, 0, 0],
        ["DELETE"],
    ),
    "sql_prepare_execute": (
        [
            "PREPARE d(int) AS DELETE FROM customers WHERE id = $1 RETURNING id, email",
            "EXECUTE d(5)",
            "EXECUTE d(6)",
            "EXECUTE d(-1)",
            "DEALLOCATE d",
        ],
        [0, 1, 1, 0, 0],
        ["DELETE", "DELETE"],
    ),
}

PAIRS = [(name, mode) for name in CASES for mode in MODES]


def _check_ledger(
    sg: Any, db: str, notices: list[str], kinds: list[str], pristine_data: Any
) -> list[dict[str, Any]]:
    ops = row_ops(sg, db)
    assert [o["kind"] for o in ops] == kinds, ops
    noticed = [check_notice(n) for n in notices]
    if kinds:
        # every committed operation was announced, with its id
        assert {o["id"] for o in ops} <= set(noticed), (ops, notices)
    for o in ops:
        assert o["state"] == "active"
        assert sum(o["row_counts"]["tables"].values()) >= 1, o
    return ops


@pytest.mark.parametrize(("name", "mode"), PAIRS, ids=[f"{n}-{m}" for n, m in PAIRS])
def test_delete_form(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any, name: str, mode: str
) -> None:
    steps, expected_sg, kinds = CASES[name]
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    notices = compare_runs(direct, proxied, expected_sg, steps)
    for n in notices:
        check_notice(n)
    # the resulting data is the direct twin's
    after = sg.data(proxied_db)
    assert tables(after) == tables(sg.data(direct_db))
    ops = _check_ledger(sg, proxied_db, notices, kinds, pristine[1])
    for o in ops:
        assert o["statement"] in steps, o["statement"]
    if ops:
        assert after != pristine[1]
        undo_all(sg, proxied_db, [o["id"] for o in ops])
    assert sg.data(proxied_db) == pristine[1], "undo did not restore the original data"


# ----------------------------------------------------------------------- $n parameters


def _psycopg_params(prepare: bool) -> list[Callable[[psycopg.Connection[Any]], Any]]:
    def returning(c: psycopg.Connection[Any]) -> Any:
        cur = c.cursor()
        cur.execute(
            "DELETE FROM customers WHERE id = ANY(%s) RETURNING id, email, tags, created_at",
            [[3, 6, 9]],
            prepare=prepare,
        )
        return results(cur)

    def plain(c: psycopg.Connection[Any]) -> Any:
        cur = c.cursor()
        cur.execute("DELETE FROM billing.payments WHERE amount > %s", [445], prepare=prepare)
        return results(cur)

    def error(c: psycopg.Connection[Any]) -> Any:
        cur = c.cursor()
        cur.execute("DELETE FROM vehicles WHERE id = %s", [2], prepare=prepare)
        return results(cur)

    return [returning, plain, error]


async def _apg_fetch(c: Any) -> Any:
    rows = await c.fetch("DELETE FROM customers WHERE id = ANY($1::int[]) RETURNING *", [3, 6, 9])
    return [tuple(r) for r in rows]


async def _apg_execute(c: Any) -> Any:
    return await c.execute("DELETE FROM billing.refunds WHERE id = $1", 7)


async def _apg_executemany(c: Any) -> Any:
    return await c.executemany("DELETE FROM customers WHERE id = $1", [(11,), (12,), (13,), (-1,)])


async def _apg_error(c: Any) -> Any:
    return await c.fetch("DELETE FROM vehicles WHERE id = $1 RETURNING id", 1)


def _pipeline(c: psycopg.Connection[Any]) -> Any:
    with c.pipeline():
        c1 = c.execute("DELETE FROM customers WHERE id = %s RETURNING id", [21])
        c2 = c.execute("DELETE FROM billing.refunds WHERE id < %s", [4])
        c3 = c.execute("SELECT count(*) FROM customers")
    return [results(c1), results(c2), results(c3)]


PARAM_CASES: dict[str, tuple[str, list[Any], list[int], list[str]]] = {
    "psycopg_params_unprepared": ("simple", _psycopg_params(False), [1, 1, 0], ["DELETE"] * 2),
    "psycopg_params_prepared": ("simple", _psycopg_params(True), [1, 1, 0], ["DELETE"] * 2),
    "asyncpg_fetch_execute": (
        "asyncpg",
        [_apg_fetch, _apg_execute, _apg_error],
        [1, 1, 0],
        ["DELETE"] * 2,
    ),
    "asyncpg_executemany": ("asyncpg", [_apg_executemany], [3], ["DELETE"] * 3),
    "psycopg_pipeline": ("simple", [_pipeline], [2], ["DELETE"] * 2),
}


@pytest.mark.parametrize("name", list(PARAM_CASES))
def test_delete_with_parameters(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any, name: str
) -> None:
    mode, steps, expected_sg, kinds = PARAM_CASES[name]
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    notices = compare_runs(direct, proxied, expected_sg, steps)
    assert tables(sg.data(proxied_db)) == tables(sg.data(direct_db))
    ops = _check_ledger(sg, proxied_db, notices, kinds, pristine[1])
    assert sorted(check_notice(n, "DELETE FROM") for n in notices) == [o["id"] for o in ops]
    undo_all(sg, proxied_db, [o["id"] for o in ops])
    assert sg.data(proxied_db) == pristine[1]


# ----------------------------------------------------------------------- cascades


def test_delete_with_cascades_one_operation_then_undo(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any
) -> None:
    stmt = "DELETE FROM customers WHERE id % 10 = 0"
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), [stmt], "simple")
    proxied = run(proxy.dsn(proxied_db), [stmt], "simple")
    (notice,) = compare_runs(direct, proxied, [1], [stmt])
    assert proxied[0].value[0][0] == "DELETE 200"
    assert tables(sg.data(proxied_db)) == tables(sg.data(direct_db))

    (op,) = row_ops(sg, proxied_db)
    assert check_notice(notice, "DELETE FROM", "public.customers") == op["id"]
    assert op["kind"] == "DELETE" and op["statement"] == stmt
    assert op["row_counts"] == {
        "estimate": False,
        "tables": {
            "public.customers": 200,
            "public.reservations": 1000,
            "billing.payments": 1000,  # ON DELETE CASCADE, two levels down
            "billing.refunds": 100,  # ON DELETE SET NULL
        },
    }
    assert [(o["identity"], o["event"], o["original"]) for o in op["objects"]] == [
        ("public.customers", "delete", True),
        ("public.reservations", "delete", False),
        ("billing.payments", "delete", False),
        ("billing.refunds", "update", False),
    ]
    lines = undo_all(sg, proxied_db, [op["id"]])
    assert lines == [
        f"operation {op['id']}: restored 200 rows into public.customers",
        f"operation {op['id']}: restored 1000 rows into public.reservations",
        f"operation {op['id']}: restored 1000 rows into billing.payments",
        f"operation {op['id']}: restored old values of 100 rows of billing.refunds",
    ]
    assert sg.data(proxied_db) == pristine[1]
    assert sg.schema_dump(proxied_db) == pristine[0]


def test_delete_rolled_back_keeps_no_operation(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any
) -> None:
    (db,) = twins(1)
    with psycopg.connect(proxy.dsn(db)) as c:  # not autocommit: psycopg opens BEGIN
        cur = c.execute("DELETE FROM customers WHERE id % 10 = 0")
        assert cur.statusmessage == "DELETE 200"
        c.rollback()
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2000,)
        c.rollback()
    assert row_ops(sg, db) == []
    assert sg.data(db) == pristine[1]
