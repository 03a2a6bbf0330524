"""CREATE OR REPLACE and ALTER SEQUENCE through softguard (issue 11 item 6): the client sees
what it would see directly plus one operation NOTICE; `softguard undo` puts the old
definition or value back; `softguard show` prints the old definition readably."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from support.data_harness import cli, compare_runs, row_ops, run, undo_all

MODES = ["simple", "prepared", "unnamed", "asyncpg"]
SETUP = [
    "CREATE FUNCTION sg_price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'",
    "CREATE VIEW sg_names AS SELECT 1 AS id, 'kept'::text AS name",
    "CREATE SEQUENCE sg_counter START 100",
    "SELECT setval('sg_counter', 150)",
]
PROBE = (
    "SELECT sg_price(2), (SELECT name FROM sg_names), "
    "(SELECT last_value FROM sg_counter), (SELECT is_called FROM sg_counter)"
)
# name -> (steps, softguard notices per step, kinds of the operations)
CASES: dict[str, tuple[list[str], list[int], list[str]]] = {
    "function": (
        ["CREATE OR REPLACE FUNCTION sg_price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'"],
        [1],
        ["CREATE OR REPLACE FUNCTION"],
    ),
    "view_and_sequence_in_one_transaction": (
        [
            "BEGIN",
            "CREATE OR REPLACE VIEW sg_names AS SELECT 1 AS id, 'gone'::text AS name",
            "ALTER SEQUENCE sg_counter RESTART WITH 1",
            "COMMIT",
        ],
        [0, 1, 1, 0],
        ["CREATE OR REPLACE VIEW", "ALTER SEQUENCE"],
    ),
    "rolled_back": (
        [
            "BEGIN",
            "CREATE OR REPLACE FUNCTION sg_price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'",
            "ROLLBACK",
        ],
        [0, 1, 0],
        [],
    ),
    "same_definition": (
        ["CREATE OR REPLACE FUNCTION sg_price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'"],
        [0],
        [],
    ),
    "restart": (["ALTER SEQUENCE sg_counter RESTART"], [1], ["ALTER SEQUENCE"]),
}
PAIRS = [(n, m) for n in CASES for m in MODES]


def _probe(sg: Any, db: str) -> Any:
    with sg.connect(db) as c:
        return c.execute(PROBE).fetchone()


@pytest.mark.parametrize(("name", "mode"), PAIRS, ids=[f"{n}-{m}" for n, m in PAIRS])
def test_replace_like_direct_then_undo(
    proxy: Any, sg: Any, twins: Callable[..., list[str]], name: str, mode: str
) -> None:
    steps, expected_sg, kinds = CASES[name]
    direct_db, proxied_db = twins(2)
    for db in (direct_db, proxied_db):
        sg.execute(db, *SETUP)
    before = _probe(sg, proxied_db)
    direct = run(sg.dsn(direct_db), steps, mode)
    proxied = run(proxy.dsn(proxied_db), steps, mode)
    notices = compare_runs(direct, proxied, expected_sg, steps)
    assert _probe(sg, proxied_db) == _probe(sg, direct_db)
    ops = row_ops(sg, proxied_db)
    assert [o["kind"] for o in ops] == kinds
    for n, op in zip(notices, ops, strict=bool(ops)):  # a rolled-back one leaves no op
        assert re.fullmatch(
            rf"softguard: {op['kind']} \S+ is reversible as operation {op['id']} "
            r"until \d{4}-\d{2}-\d{2}",
            n,
        ), n
    undo_all(sg, proxied_db, [o["id"] for o in ops])
    assert _probe(sg, proxied_db) == before


def test_show_and_undo_from_the_command_line(
    proxy: Any, sg: Any, twins: Callable[..., list[str]]
) -> None:
    (db,) = twins(1)
    sg.execute(db, *SETUP)
    (seen,) = run(
        proxy.dsn(db),
        ["CREATE OR REPLACE FUNCTION sg_price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'"],
        "simple",
    )
    assert seen.error is None
    (op,) = row_ops(sg, db)
    person = cli("show", str(op["id"]), "--dsn", sg.dsn(db))
    assert person.returncode == 0, person.stderr
    assert "put back the previous definition of function public.sg_price(integer)" in (
        " ".join(person.stdout.split())
    )
    shown = cli("show", str(op["id"]), "--details", "--dsn", sg.dsn(db))
    assert shown.returncode == 0, shown.stderr
    assert "function public.sg_price(integer) [named]: replaced in place" in shown.stdout
    assert "undo re-creates its previous definition" in shown.stdout
    assert "SELECT $1 * 100" in shown.stdout
    listed = cli("ops", "--dsn", sg.dsn(db))
    assert "CREATE OR REPLACE FUNCTION" in listed.stdout
    done = cli("undo", str(op["id"]), "--yes", "--dsn", sg.dsn(db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored the previous definition of function public.sg_price(integer)" in done.stdout
    assert _probe(sg, db)[0] == 200
