"""TRUNCATE, ALTER TABLE ... DROP COLUMN and opt-in UPDATE through softguard, compared with
a direct twin, then undone (DESIGN.md §2-§4, decisions 0006/0007); the issue's Done-when
with `softguard undo` run as a subprocess; a key re-used since the DELETE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from support.data_harness import (
    check_notice,
    cli,
    compare_runs,
    results,
    row_ops,
    run,
    tables,
    undo_all,
)

MODES = ["simple", "prepared", "unnamed", "asyncpg"]

# name -> (steps, softguard notices per step, kinds of the committed operations)
TRUNCATE_CASES: dict[str, tuple[list[str], list[int], list[str]]] = {
    "list_restart_identity": (
        ["TRUNCATE billing.refunds, billing.payments RESTART IDENTITY"],
        [1],
        ["TRUNCATE"],
    ),
    "fk_refused": (["TRUNCATE customers"], [0], []),
    "only_inheritance_parent": (["TRUNCATE ONLY vehicle_notes"], [1], ["TRUNCATE"]),
    "only_partitioned_refused": (["TRUNCATE ONLY events"], [0], []),
    "partitioned": (["TRUNCATE TABLE events"], [1], ["TRUNCATE"]),
    "cascade": (["TRUNCATE customers CASCADE"], [1], ["TRUNCATE"]),
    "cascade_restart_identity": (
        ["TRUNCATE TABLE ONLY customers, vehicles RESTART IDENTITY CASCADE"],
        [1],
        ["TRUNCATE"],
    ),
    "no_such_table": (["TRUNCATE nosuch"], [0], []),
    "rollback": (["BEGIN", "TRUNCATE billing.refunds", "ROLLBACK"], [0, 1, 0], []),
    "in_transaction_with_delete": (
        [
            "BEGIN",
            "DELETE FROM customers WHERE id < 5",
            "TRUNCATE billing.refunds RESTART IDENTITY",
            "COMMIT",
        ],
        [0, 1, 1, 0],
        ["DELETE", "TRUNCATE"],
    ),
}
TRUNCATE_PAIRS = [(n, m) for n in TRUNCATE_CASES for m in MODES]


@pytest.mark.parametrize(
    ("name", "mode"), TRUNCATE_PAIRS, ids=[f"{n}-{m}" for n, m in TRUNCATE_PAIRS]
)
def test_truncate_like_direct_then_undo(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any, name: str, mode: str
) -> None:
    steps, expected_sg, kinds = TRUNCATE_CASES[name]
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    notices = compare_runs(direct, proxied, expected_sg, steps)
    after = sg.data(proxied_db)
    # rows and sequence values as direct (RESTART IDENTITY restarts them)
    assert after == sg.data(direct_db)
    ops = row_ops(sg, proxied_db)
    assert [o["kind"] for o in ops] == kinds
    if kinds:
        assert {o["id"] for o in ops} == {check_notice(n) for n in notices}
    for n in notices:
        if "TRUNCATE" in n:
            check_notice(n, "TRUNCATE TABLE")
    undo_all(sg, proxied_db, [o["id"] for o in ops])
    assert sg.data(proxied_db) == pristine[1], "rows / sequence values not back"


def test_truncate_notice_names_tables_and_counts(
    proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    (db,) = twins(1)
    (seen,) = run(
        proxy.dsn(db), ["TRUNCATE billing.refunds, billing.payments RESTART IDENTITY"], "simple"
    )
    assert seen.error is None and seen.value[0][0] == "TRUNCATE TABLE"
    sgn = [n[2] for n in seen.notices if (n[2] or "").startswith("softguard:")]
    assert len(sgn) == 1
    (op,) = row_ops(sg, db)
    assert check_notice(sgn[0], "TRUNCATE TABLE", "billing.refunds, billing.payments") == op["id"]
    assert op["row_counts"]["tables"] == {"billing.refunds": 1000, "billing.payments": 10000}
    assert op["statement"] == "TRUNCATE billing.refunds, billing.payments RESTART IDENTITY"


@pytest.mark.parametrize("mode", MODES)
def test_drop_column_like_direct_then_undo(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any, mode: str
) -> None:
    steps = [
        "ALTER TABLE vehicles DROP COLUMN specs",
        "SELECT * FROM vehicles WHERE id < 3 ORDER BY id",
        "ALTER TABLE vehicles DROP COLUMN IF EXISTS specs",
        "ALTER TABLE vehicles DROP COLUMN nosuch",
    ]
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    (notice,) = compare_runs(direct, proxied, [1, 0, 0, 0], steps)
    tag = proxied[0].value[2] if mode == "asyncpg" else proxied[0].value[0][0]
    assert tag == "ALTER TABLE"
    assert sg.schema_dump(proxied_db) == sg.schema_dump(direct_db)
    assert tables(sg.data(proxied_db)) == tables(sg.data(direct_db))
    (op,) = row_ops(sg, proxied_db)
    assert op["kind"] == "ALTER TABLE"
    assert check_notice(notice, "ALTER TABLE DROP COLUMN") == op["id"]
    undo_all(sg, proxied_db, [op["id"]])
    assert sg.schema_dump(proxied_db) == pristine[0]
    assert sg.data(proxied_db) == pristine[1]


# ----------------------------------------------------------------------- UPDATE

UPDATE_STEPS = [
    "UPDATE vehicles SET daily_rate = daily_rate + 1, specs = '{}' WHERE id <= 10",
    "UPDATE reservations SET status = 'cancelled' WHERE id <= 50 RETURNING id, status",
    "INSERT INTO customers (id, email, full_name) VALUES (1, 'x@example.com', 'X')"
    " ON CONFLICT (id) DO UPDATE SET full_name = excluded.full_name",
    "UPDATE customers SET phone = NULL WHERE id < 0",
]


def test_update_captured_with_protect_updates(
    proxy_factory: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any
) -> None:
    protecting = proxy_factory("--protect-updates", fresh=True)
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), UPDATE_STEPS, "simple")
    proxied = run(protecting.dsn(proxied_db), UPDATE_STEPS, "simple")
    notices = compare_runs(direct, proxied, [1, 1, 1, 0], UPDATE_STEPS)
    ops = row_ops(sg, proxied_db)
    assert [o["kind"] for o in ops] == ["UPDATE"] * 3
    assert [check_notice(n, "UPDATE") for n in notices] == [o["id"] for o in ops]
    assert [o["row_counts"]["tables"] for o in ops] == [
        {"public.vehicles": 10},
        {"public.reservations": 50},
        {"public.customers": 1},
    ]
    # the data as direct, apart from the trigger-set updated_at (now() differs)
    got, want = sg.data(proxied_db), sg.data(direct_db)
    got.pop("public.reservations"), want.pop("public.reservations")
    assert got == want
    undo_all(sg, proxied_db, [o["id"] for o in ops])
    assert sg.data(proxied_db) == pristine[1], "old values not restored"


def test_update_not_captured_by_default(
    proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    direct_db, proxied_db = twins(2)
    # a protected DELETE first, so the ledger (and its triggers) exist in the database
    steps = ["DELETE FROM billing.refunds WHERE id = 1", *UPDATE_STEPS]
    direct = run(sg.dsn(direct_db), steps, "simple")
    proxied = run(proxy.dsn(proxied_db), steps, "simple")
    compare_runs(direct, proxied, [1, 0, 0, 0, 0], steps)
    assert [o["kind"] for o in row_ops(sg, proxied_db)] == ["DELETE"]


# ----------------------------------------------------------------------- Done-when


def _late_customer(c: psycopg.Connection[Any]) -> Any:
    return c.execute(
        "INSERT INTO customers (email, full_name) VALUES ('late@example.com', 'Late Comer')"
        " RETURNING id"
    ).fetchall()


def _param_delete(c: psycopg.Connection[Any]) -> Any:
    cur = c.cursor()
    cur.execute("DELETE FROM billing.payments WHERE amount > %s RETURNING id, amount", [440])
    return results(cur)


def test_issue_done_when_undo_with_cli(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any
) -> None:
    steps: list[Any] = [
        "DELETE FROM customers WHERE id % 10 = 0",
        _param_delete,
        "TRUNCATE billing.refunds, billing.payments RESTART IDENTITY",
        "ALTER TABLE vehicles DROP COLUMN specs",
    ]
    direct_db, db = twins(2)
    direct = run(sg.dsn(direct_db), steps, "simple")
    proxied = run(proxy.dsn(db), steps, "simple")
    notices = compare_runs(direct, proxied, [1, 1, 1, 1], steps)
    assert proxied[0].value[0][0] == "DELETE 200"
    assert proxied[1].value[0][0].startswith("DELETE ") and proxied[1].value[0][3]
    assert proxied[2].value[0][0] == "TRUNCATE TABLE"
    assert proxied[3].value[0][0] == "ALTER TABLE"
    assert sg.schema_dump(db) == sg.schema_dump(direct_db)
    assert sg.data(db) == sg.data(direct_db)
    ops = row_ops(sg, db)
    assert [o["kind"] for o in ops] == ["DELETE", "DELETE", "TRUNCATE", "ALTER TABLE"]
    assert [check_notice(n) for n in notices] == [o["id"] for o in ops]

    (late,) = run(proxy.dsn(db), [_late_customer], "simple")
    assert late.error is None
    ((late_id,),) = late.value
    assert late_id == 2001

    ids = [str(o["id"]) for o in ops]
    done = cli("undo", *ids, "--yes", "--dsn", sg.dsn(db))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"undone: {', '.join(reversed(ids))}" in done.stdout, done.stdout

    # the original plus that customer
    assert sg.schema_dump(db) == pristine[0]
    got = sg.data(db)
    want = dict(pristine[1])
    assert got["seq public.customers_id_seq"] == (2001, True)
    want["seq public.customers_id_seq"] = (2001, True)
    assert got["public.customers"][0] == want["public.customers"][0] + 1
    got.pop("public.customers"), want.pop("public.customers")
    assert got == want
    with sg.connect(db) as c:
        assert c.execute(
            "SELECT id, full_name FROM customers WHERE email = 'late@example.com'"
        ).fetchall() == [(2001, "Late Comer")]
        c.execute("DELETE FROM customers WHERE id = 2001")
    assert tables(sg.data(db)) == tables(pristine[1])
    states = {o["id"]: o["state"] for o in row_ops(sg, db)}
    assert set(states.values()) == {"undone"}, states


def test_reused_key_needs_on_conflict_skip(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], pristine: Any
) -> None:
    (db,) = twins(1)
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        assert c.execute("DELETE FROM customers WHERE id % 10 = 0").statusmessage == "DELETE 200"
        c.execute(
            "INSERT INTO customers (id, email, full_name) VALUES (10, 'again@example.com', 'Again')"
        )
    (op,) = row_ops(sg, db)
    before = sg.data(db)

    failed = cli("undo", str(op["id"]), "--yes", "--dsn", sg.dsn(db))
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "(id)=(10)" in failed.stderr, failed.stderr
    assert "--on-conflict skip" in failed.stderr, failed.stderr
    assert "nothing was changed" in failed.stderr, failed.stderr
    assert sg.data(db) == before
    assert row_ops(sg, db)[0]["state"] == "active"

    done = cli("undo", str(op["id"]), "--yes", "--on-conflict", "skip", "--dsn", sg.dsn(db))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "restored 199 rows into public.customers (1 skipped: key re-used since)" in (
        done.stdout
    ), done.stdout
    got, want = sg.data(db), pristine[1]
    assert got["public.customers"][0] == 2000
    assert {k: v for k, v in got.items() if k != "public.customers"} == {
        k: v for k, v in want.items() if k != "public.customers"
    }
    with sg.connect(db) as c:
        assert c.execute("SELECT full_name FROM customers WHERE id = 10").fetchone() == ("Again",)
