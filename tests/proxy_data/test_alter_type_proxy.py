"""ALTER TABLE ... ALTER COLUMN ... TYPE through softguard (migration 0004), compared with a
direct twin: same tag, rows and errors, one softguard NOTICE; then undone: the old type
and the exact values (numeric(10,2) -> integer rounds) come back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from support.data_harness import compare_runs, row_ops, run, tables, undo_all

MODES = ["simple", "prepared", "unnamed", "asyncpg"]
CENTS = "UPDATE vehicles SET daily_rate = daily_rate + 0.45 WHERE id % 3 = 0"
NOTICE = re.compile(
    r"^softguard: ALTER TABLE (?P<action>ALTER COLUMN TYPE|DROP COLUMN) (?P<what>.+)"
    r" is reversible as operation (?P<op>\d+) until (?P<until>\d{4}-\d{2}-\d{2})$"
)


def check_notice(text: str, action: str, what: str) -> int:
    m = NOTICE.match(text)
    assert m, f"softguard notice has an unexpected form: {text!r}"
    assert (m["action"], m["what"]) == (action, what), text
    until = date.fromisoformat(m["until"])
    assert date.today() + timedelta(days=6) <= until <= date.today() + timedelta(days=8)
    return int(m["op"])


def with_cents(sg: Any, *dbs: str) -> None:
    for db in dbs:
        with sg.connect(db) as c:
            c.execute(CENTS)


@pytest.mark.parametrize("mode", MODES)
def test_alter_type_like_direct_then_undo(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], mode: str
) -> None:
    steps = [
        "ALTER TABLE vehicles ALTER COLUMN daily_rate TYPE integer",
        "SELECT id, daily_rate FROM vehicles WHERE id < 7 ORDER BY id",
        "ALTER TABLE vehicles ALTER COLUMN nosuch TYPE integer",
    ]
    direct_db, proxied_db = twins(2)
    with_cents(sg, direct_db, proxied_db)
    before = sg.schema_dump(proxied_db), sg.data(proxied_db)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    (notice,) = compare_runs(direct, proxied, [1, 0, 0], steps)
    tag = proxied[0].value[2] if mode == "asyncpg" else proxied[0].value[0][0]
    assert tag == "ALTER TABLE"
    assert sg.schema_dump(proxied_db) == sg.schema_dump(direct_db)
    assert tables(sg.data(proxied_db)) == tables(sg.data(direct_db))
    (op,) = row_ops(sg, proxied_db)
    assert op["kind"] == "ALTER TABLE" and op["statement"] == steps[0]
    assert check_notice(notice, "ALTER COLUMN TYPE", "public.vehicles.daily_rate") == op["id"]
    assert op["row_counts"]["tables"] == {"public.vehicles": 200}
    assert undo_all(sg, proxied_db, [op["id"]]) == [
        f"operation {op['id']}: column public.vehicles.daily_rate back to numeric(10,2),"
        " 200 values restored"
    ]
    assert (sg.schema_dump(proxied_db), sg.data(proxied_db)) == before


def test_drop_column_and_type_change_in_one_statement(
    proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    steps = [
        "ALTER TABLE billing.refunds DROP COLUMN reason,"
        " ALTER COLUMN amount TYPE integer USING round(amount * 100)::integer"
    ]
    direct_db, proxied_db = twins(2)
    direct = run(sg.dsn(direct_db), steps, "simple")
    proxied = run(proxy.dsn(proxied_db), steps, "simple")
    (notice,) = compare_runs(direct, proxied, [1], steps)
    assert tables(sg.data(proxied_db)) == tables(sg.data(direct_db))
    (op,) = row_ops(sg, proxied_db)
    what = (
        "billing.refunds.reason (restored as the last column), ALTER COLUMN TYPE "
        "billing.refunds.amount"
    )
    assert check_notice(notice, "DROP COLUMN", what) == op["id"]
    assert len(undo_all(sg, proxied_db, [op["id"]])) == 2
    # the dropped column comes back last; the values are the pristine ones
    with sg.connect(proxied_db) as c:
        got = c.execute(
            "SELECT md5(string_agg(format('%s %s %s %s', id, payment_id, amount, reason), ','"
            " ORDER BY id)) FROM billing.refunds"
        ).fetchone()
    (fresh,) = twins(1)
    with sg.connect(fresh) as c:
        want = c.execute(
            "SELECT md5(string_agg(format('%s %s %s %s', id, payment_id, amount, reason), ','"
            " ORDER BY id)) FROM billing.refunds"
        ).fetchone()
    assert got == want
