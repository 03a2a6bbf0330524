"""Issue 10 items 1 and 3: protection as a session setting, a forgeable ledger.

The owner of the tables (and, where it matters, another role or a superuser) tries to
switch capture off, shorten retention, attach rows to an undone operation, choose the
recorded client address, or write the ledger, under names the proxy's text check never
sees. Each test asserts what must hold: refused, or recorded and undone exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from attacker import Arena, Outcome, chr_built, fixtures, uident

arena_template, arena = fixtures()

CAPTURE_OFF = {
    "concat": "SELECT set_config(concat('soft', 'guard.capture'), '', false)",
    "pipes": "SELECT set_config('soft' || 'guard.capture', '', false)",
    "chr": f"SELECT set_config({chr_built('softguard.capture')}, '', false)",
    "format": "SELECT set_config(format('%sguard.%s', 'soft', 'capture'), 'off', false)",
    "uident_set": f"SET {uident('softguard')}.capture = ''",
    "upper": "SELECT set_config(upper('SOFTGUARD.CAPTURE'), '', false)",
    "reverse": "SELECT set_config(reverse('erutpac.draugtfos'), '', false)",
    "local_in_tx": "BEGIN; SELECT set_config(concat('soft','guard.capture'), '', true); "
    "DELETE FROM parent WHERE id = 2; COMMIT",
    "do_block": "DO $$ BEGIN PERFORM set_config(concat('soft','guard.capture'), '', false); END $$",
    "prepare_execute": "PREPARE p(text) AS SELECT set_config($1, '', false); "
    "EXECUTE p(concat('soft', 'guard.capture'))",
    "select_from_pg_settings": "UPDATE pg_settings SET setting = '' "
    "WHERE name = concat('soft', 'guard.capture')",
}


@pytest.mark.parametrize(
    "spelling",
    [pytest.param(k) for k in sorted(CAPTURE_OFF)],
)
def test_capture_cannot_be_switched_off(arena: Arena, spelling: str) -> None:
    arena.attempt([CAPTURE_OFF[spelling], "DELETE FROM parent WHERE id = 2"])


def test_capture_off_by_bound_parameter(arena: Arena) -> None:
    arena.attempt(
        [
            lambda c: c.execute("SELECT set_config(%s, '', false)", ["softguard.capture"]),
            "DELETE FROM parent WHERE id = 3",
        ]
    )


def test_capture_off_in_pipeline(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()

    def pipelined(c: psycopg.Connection[Any]) -> None:
        with c.pipeline():
            c.execute(
                "SELECT set_config(%s::text, %s::text, false)",
                ["softguard.capture", ""],
                prepare=True,
            )
            c.execute("DELETE FROM child WHERE id = %s", [4])

    out = arena.attack([pipelined])
    arena.verdict(before, last, out)


def test_capture_off_with_asyncpg(arena: Arena) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    before, last = arena.snapshot(), arena.last_op()

    async def attack() -> None:
        c = await asyncpg.connect(arena.proxied_dsn())
        try:
            stmt = await c.prepare("SELECT set_config($1, '', false)")
            await stmt.fetch("softguard.capture")
            await c.execute("DELETE FROM parent WHERE id = 4")
        finally:
            await c.close()

    asyncio.run(attack())
    arena.verdict(before, last, arena.attack([]))


def test_capture_off_from_startup_options(arena: Arena) -> None:
    """`options=-c softguard.capture=` is the client's; the proxy's startup value wins."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        ["DELETE FROM parent WHERE id = 2"], options="-csoftguard.capture= -csoftguard.retention=0"
    )
    ops = arena.verdict(before, last, out)
    assert len(ops) == 1


def test_capture_off_from_role_default(arena: Arena) -> None:
    """A role may set its own defaults (ALTER ROLE ... SET); they must not reach capture."""
    before, last = arena.snapshot(), arena.last_op()
    arena.attack([f"ALTER ROLE CURRENT_USER SET {uident('softguard')}.capture = ''"])
    out = arena.attack(["DELETE FROM parent WHERE id = 5"])
    arena.direct(f"ALTER ROLE {arena.owner} RESET ALL")
    ops = arena.verdict(before, last, out)
    assert len(ops) == 1


def test_capture_off_by_other_role(arena: Arena) -> None:
    arena.attempt([CAPTURE_OFF["concat"], "DELETE FROM big WHERE id < 10"], who="other")


def test_capture_off_by_superuser(arena: Arena) -> None:
    arena.attempt([CAPTURE_OFF["uident_set"], "DELETE FROM big WHERE id < 10"], who="super")


@pytest.mark.parametrize("value", ["0", "-86400", "1"])
def test_retention_cannot_be_shortened(arena: Arena, value: str) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            f"SELECT set_config({chr_built('softguard.retention')}, '{value}', false)",
            "DELETE FROM parent WHERE id = 1",
        ]
    )
    ops = arena.ledger_view(last)
    assert ops, "nothing recorded"
    assert all(o["retention_days"] >= 6 for o in ops), ops
    arena.verdict(before, last, out)


def test_rows_cannot_join_an_undone_operation(arena: Arena) -> None:
    first = arena.last_op()
    arena.attack(["DELETE FROM big WHERE id = 1"])
    (decoy,) = [o["id"] for o in arena.ops_since(first)]
    assert arena.undo([decoy]).returncode == 0
    arena.attempt(
        [
            "WITH s AS MATERIALIZED (SELECT set_config(concat('soft', 'guard.cur_op'), "
            "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text "
            f"|| '/{decoy}/DELETE', true) AS v) "
            "DELETE FROM big WHERE id BETWEEN 2 AND 9 AND (SELECT v FROM s) IS NOT NULL",
        ]
    )


def test_client_address_cannot_be_chosen(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            f"SELECT set_config({chr_built('softguard.client_addr')}, '6.6.6.6', false)",
            "DELETE FROM parent WHERE id = 2",
        ]
    )
    ops = arena.ops_since(last)
    assert ops and all("6.6.6.6" not in str(o["client_addr"]) for o in ops), ops
    arena.verdict(before, last, out)


def ledger_attack(
    arena: Arena,
    steps: list[str],
    who: str = "super",
    check: Callable[[Outcome, list[dict[str, Any]]], None] | None = None,
) -> None:
    """An ordinary captured DELETE, then `steps` against the ledger it wrote: the deleted
    rows must still come back."""
    before, last = arena.snapshot(), arena.last_op()
    arena.attack(["DELETE FROM big WHERE id < 20"])
    out = arena.attack(steps, who=who)
    if check is not None:
        check(out, arena.ops_since(last))
    arena.verdict(before, last, out)


INTERNAL_ON = f"SELECT set_config({chr_built('softguard.internal')}, 'on', false)"


def _ledger_kept(out: Outcome, ops: list[dict[str, Any]]) -> None:
    assert ops, "the ledger was emptied"


def test_superuser_cannot_empty_the_ledger(arena: Arena) -> None:
    ledger_attack(
        arena,
        [
            INTERNAL_ON,
            "DO $$ BEGIN EXECUTE format('DELETE FROM %I.%I', concat('soft', 'guard'), "
            "'captured_rows'); EXECUTE format('DELETE FROM %I.%I', concat('soft', 'guard'), "
            "'captures'); EXECUTE format('DELETE FROM %I.%I', concat('soft', 'guard'), "
            "'operations'); END $$",
        ],
        check=_ledger_kept,
    )


# -- issue 10 item 3: forging the ledger --------------------------------------------------


def _refused(out: Outcome, ops: list[dict[str, Any]]) -> None:
    assert out.sqlstate == "42501", out.describe()


def test_owner_cannot_empty_the_ledger(arena: Arena) -> None:
    """The owner has no privilege on the ledger, whatever softguard.internal says."""
    ledger_attack(
        arena,
        [
            INTERNAL_ON,
            "DO $$ BEGIN EXECUTE format('DELETE FROM %I.%I', concat('soft', 'guard'), "
            "'captured_rows'); END $$",
        ],
        who="owner",
        check=_refused,
    )


@pytest.mark.parametrize("who", ["owner", "other"])
def test_operation_cannot_be_forged(arena: Arena, who: str) -> None:
    last = arena.last_op()
    out = arena.attack(
        [
            f"SELECT {uident('softguard')}._op_begin('TRUNCATE payroll', "
            '\'{"client_addr": "6.6.6.6", "retention_seconds": 1}\'::jsonb, \'TRUNCATE\')',
        ],
        who=who,
    )
    print(out.describe())
    assert arena.ops_since(last) == [], "a forged operation is in the ledger"
    assert out.sqlstate == "42501", out.describe()


@pytest.mark.xfail(
    strict=True,
    reason="issue 10 item 3: _op_begin, _op_message, _truncate_finish and _capture_column "
    "stay executable by PUBLIC: truncate_op and alter_op run as the client and call them. "
    "Their inputs are checked and an operation that records no work does not commit "
    "(test_attack_ledger.py); making them unreachable needs the operation opened by the "
    "capture triggers themselves",
)
def test_no_security_definer_function_is_public(arena: Arena) -> None:
    rows = arena.direct(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = "
        "'softguard'::regnamespace AND p.prosecdef AND has_function_privilege(%s, p.oid, "
        "'EXECUTE') ORDER BY 1",
        [arena.owner],
    )
    print(rows)
    # What the application role may call must take nothing it can forge: one entry point
    # at most per reversible path, checked by the tests above. Today: everything.
    assert [
        r[0]
        for r in rows
        if "_op_begin" in r[0]
        or "_op_message" in r[0]
        or "_truncate_finish" in r[0]
        or "_capture_column" in r[0]
        or "purge" in r[0]
    ] == []


def test_superuser_cannot_delete_captured_rows(arena: Arena) -> None:
    ledger_attack(
        arena,
        [
            "DO $$ BEGIN EXECUTE format('DELETE FROM %I.captured_rows', "
            "concat('soft', 'guard')); END $$"
        ],
    )


def _all_active(out: Outcome, ops: list[dict[str, Any]]) -> None:
    assert all(o["state"] == "active" for o in ops), ops


def test_superuser_cannot_rewrite_operation_state(arena: Arena) -> None:
    ledger_attack(
        arena,
        [
            "DO $$ BEGIN EXECUTE format('UPDATE %I.operations SET state = ''undone'', "
            "expires_at = now() - interval ''1 day''', concat('soft', 'guard')); END $$",
        ],
        check=_all_active,
    )


def test_owner_cannot_purge_its_operation(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    arena.attack(["DELETE FROM big WHERE id < 20"])
    (op,) = [o["id"] for o in arena.ops_since(last)]
    out = arena.attack([f"SELECT {uident('softguard')}.purge_op({op})"])
    arena.verdict(before, last, out)
