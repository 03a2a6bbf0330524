"""Soft deletes bound to the session's key (docs/decisions/0031-soft-delete-bound.md).

softguard's own rewrite of a DELETE on a soft-delete table carries the session's mark: the
capture trigger believes that claim without joining the transition tables, when the
UPDATE it captures is the marked text's own statement and nothing of the table rewrites
its rows. The owner of the tables attacks through softguard: forged and replayed marks,
code run from inside the marked statement, BEFORE UPDATE triggers of its own (created or
enabled in the same transaction, ENABLE ALWAYS / REPLICA, on one partition, on an
inheritance child), the extended protocol. Each attack gets the one verdict: refused with
the data intact, or recorded and undone exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from attacker import Arena, Template, template_fixture
from support.pgbouncer import PgBouncer, logs_on_failure
from support.proxy import ProxyFactory, via_direct

SOFT_TABLES = """
CREATE TABLE orders (id int PRIMARY KEY, important text NOT NULL, amount numeric,
                     deleted_at timestamptz, deleted_by text);
INSERT INTO orders SELECT g, 'precious ' || g, g * 1.50, NULL, NULL
  FROM generate_series(1, 6) g;
UPDATE orders SET deleted_at = '2024-01-01 00:00:00+00', deleted_by = 'earlier' WHERE id = 6;
CREATE TABLE memo (id int PRIMARY KEY, important text NOT NULL, deleted_at timestamptz,
                   deleted_by text);
CREATE TABLE memo_old (note text) INHERITS (memo);
INSERT INTO memo VALUES (1, 'precious 1', NULL, NULL), (2, 'precious 2', NULL, NULL);
INSERT INTO memo_old VALUES (50, 'precious 50', NULL, NULL, 'archived');
CREATE TABLE parts (id int PRIMARY KEY, important text NOT NULL, deleted_at timestamptz,
                    deleted_by text) PARTITION BY RANGE (id);
CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);
CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (200);
INSERT INTO parts SELECT g, 'precious ' || g, NULL, NULL FROM generate_series(1, 4) g;
INSERT INTO parts SELECT g, 'precious ' || g, NULL, NULL FROM generate_series(101, 104) g;
-- the application owns its tables (public's owner is its role): triggers, rules, ALTER
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['orders', 'memo', 'memo_old', 'parts', 'parts_low', 'parts_high'] LOOP
        EXECUTE format('ALTER TABLE %I OWNER TO %I', t,
                       (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'));
    END LOOP;
END $$;
"""

CONFIG = """
[[soft_delete]]
table = "public.orders"
column = "deleted_at"
deleted_by = "deleted_by"
database = "sg_atk_*"

[[soft_delete]]
table = "public.memo"
column = "deleted_at"
deleted_by = "deleted_by"
database = "sg_atk_*"

[[soft_delete]]
table = "public.parts"
column = "deleted_at"
deleted_by = "deleted_by"
database = "sg_atk_*"
"""

arena_template = template_fixture(SOFT_TABLES)


@pytest.fixture
def arena(arena_template: Template, proxy_factory: ProxyFactory, tmp_path: Path) -> Iterator[Arena]:
    config = tmp_path / "soft.toml"
    config.write_text(CONFIG)
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("soft delete is the proxy's rewrite: nothing to test directly")
    for arena in arena_template.clone(proxy):
        # what softguard init --config does for [[soft_delete]] (the proxy's role may not)
        arena.direct("SELECT softguard._set_capture_updates(true)")
        yield arena


@pytest.fixture(scope="module")
def tx_bouncer(arena_template: Template, pytestconfig: pytest.Config) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode between softguard and the server (decision 0026)."""
    if via_direct():
        pytest.skip("about softguard behind PgBouncer (SOFTGUARD_TEST_VIA=direct)")
    bouncer = PgBouncer(
        arena_template.server, [arena_template.owner, arena_template.other], pool_mode="transaction"
    )
    try:
        bouncer.start()
        with logs_on_failure(pytestconfig, bouncer):
            yield bouncer
    finally:
        bouncer.cleanup()


@pytest.fixture
def tx_arena(
    arena_template: Template, proxy_factory: ProxyFactory, tx_bouncer: PgBouncer, tmp_path: Path
) -> Iterator[Arena]:
    config = tmp_path / "soft.toml"
    config.write_text(CONFIG)
    proxy = proxy_factory(
        "--config", str(config), "--upstream-pooler", "transaction",
        upstream=tx_bouncer.upstream, fresh=True,
    )  # fmt: skip
    for arena in arena_template.clone(proxy):
        arena.direct("SELECT softguard._set_capture_updates(true)")
        yield arena


def claims(arena: Arena, ops: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(event, how its claim was judged) of each capture of `ops`, in order."""
    if not ops:
        return []
    rows = arena.direct(
        "SELECT event, info->>'claim' FROM softguard.captures WHERE op_id = ANY(%s) ORDER BY id",
        [[o["id"] for o in ops]],
    )
    return [(r[0], r[1]) for r in rows]


# Code the proxy cannot read (names built at run time: the tamper check reads texts only).
SG = "'soft' || 'guard'"

# the rewritten text of the soft delete calling it, kept in a setting of the session
GRAB = (
    "CREATE FUNCTION grab() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
    "PERFORM set_config('loot.q', current_query(), false); RETURN true; END $$"
)


def _replay_body(source: str, then: str) -> str:
    """PL/pgSQL (DECLARE ... up to the END): call soft_delete_begin with the arguments and
    mark found in the text `source` (an SQL expression) gives, then run `then`."""
    return (
        "DECLARE q text := (" + source + "); "
        "a text[] := regexp_match(q, '(''\\{.*\\}'')\\s*AS jsonb\\), CAST\\(now\\(\\) AS "
        "timestamp with time zone\\), ''([0-9a-f]{64})'''); BEGIN "
        "IF a IS NULL THEN RAISE EXCEPTION 'no mark in %', q; END IF; "
        f"EXECUTE format('SELECT %I.soft_delete_begin(''orders''::regclass, ''public.orders'', "
        f"%s::jsonb, now(), %L)', {SG}, a[1], a[2]); {then}; "
    )


def _replay(source: str, then: str) -> str:
    """The same in a DO block."""
    return "DO $$ " + _replay_body(source, then) + "END $$"


INFO = (
    '{"column": "deleted_at", "mark_kind": "timestamp", "by_column": "deleted_by", '
    '"by_value": "role", "statement": "DELETE FROM orders", "verb": "DELETE", "verify": false}'
)


# -- 1. softguard's own rewrite is bound and believed ------------------------------------------


def test_genuine_soft_delete_is_bound(arena: Arena) -> None:
    out, ops = arena.attempt(["DELETE FROM orders WHERE id < 4"])
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops
    assert claims(arena, ops) == [("soft_delete", "bound")]


def test_prepared_and_pipelined_soft_deletes_are_bound(arena: Arena) -> None:
    """The extended protocol: one Parse executed three times, then a pipeline."""

    def prepared(c: psycopg.Connection[Any]) -> None:
        for i in (1, 2, 3):
            c.execute("DELETE FROM orders WHERE id = %s", [i], prepare=True)

    def pipelined(c: psycopg.Connection[Any]) -> None:
        with c.pipeline():
            c.execute("DELETE FROM orders WHERE id = %s", [4])
            c.execute("DELETE FROM parts WHERE id = %s", [101])

    out, ops = arena.attempt([prepared, pipelined])
    assert out.error is None, out.describe()
    assert claims(arena, ops) == [("soft_delete", "bound")] * 5


def test_sql_prepare_and_multi_statement_texts_stay_checked(arena: Arena) -> None:
    """EXECUTE p runs a text that is not the marked one; a text of two statements is not
    marked: both checked as before, still soft deletes."""
    out, ops = arena.attempt(
        [
            "PREPARE p AS DELETE FROM orders WHERE id = $1",
            "EXECUTE p(1)",
            "DELETE FROM orders WHERE id = 2; DELETE FROM orders WHERE id = 3",
        ]
    )
    assert out.error is None, out.describe()
    assert claims(arena, ops) == [("soft_delete", "checked")] * 3


def test_behind_a_transaction_pooler_nothing_is_bound(tx_arena: Arena) -> None:
    """No session key behind a transaction-mode pooler (any backend of the role could hand
    it to the client): the claim stays unmarked and is checked, as in version 9."""
    judged = _soft_delete_undone(tx_arena, ["DELETE FROM orders WHERE id < 4"])
    assert judged == [("soft_delete", "checked")], judged


# -- 2. forged and replayed marks ---------------------------------------------------------------

FORGED_INFO = INFO[:-1] + (
    ', "table": "public.orders", "mark": null, "by": "x", "sig": "' + "ab" * 32 + '"}'
)


def test_forged_setting_with_a_made_up_mark(arena: Arena) -> None:
    out, ops = arena.attempt(
        [
            "DO $$ BEGIN PERFORM set_config(concat('soft', 'guard.sd_', "
            f"'orders'::regclass::oid), '{FORGED_INFO}', true); "
            "UPDATE orders SET important = 'garbage'; END $$"
        ]
    )
    assert out.error is None, out.describe()
    assert ops and ("soft_delete", "bound") not in claims(arena, ops)


def test_forged_call_with_a_made_up_mark(arena: Arena) -> None:
    made_up = (
        f"SELECT $q$CAST('{INFO}' AS jsonb), CAST(now() AS timestamp with time zone), "
        f"'{'cd' * 32}'$q$"
    )
    out, ops = arena.attempt([_replay(made_up, "UPDATE orders SET important = 'garbage'")])
    assert out.error is None, out.describe()
    assert ops and ("soft_delete", "bound") not in claims(arena, ops)


def test_mark_replayed_from_an_earlier_statement(arena: Arena) -> None:
    """A function in the DELETE's WHERE keeps the marked text; a later DO block replays
    its arguments and mark before an UPDATE of its own."""
    arena.attack([GRAB])
    out, ops = arena.attempt(
        [
            "DELETE FROM orders WHERE id = 1 AND grab()",
            _replay("SELECT current_setting('loot.q')", "UPDATE orders SET important = 'garbage'"),
        ]
    )
    assert out.error is None, out.describe()
    judged = claims(arena, ops)
    assert judged[0] == ("soft_delete", "bound"), judged
    assert ("soft_delete", "bound") not in judged[1:], judged


def test_mark_replayed_from_inside_the_marked_statement(arena: Arena) -> None:
    """Code the marked DELETE calls reads the running text and replays its mark before an
    UPDATE it runs itself: that UPDATE is not the text's own statement."""
    arena.attack(
        [
            "CREATE FUNCTION evil() RETURNS boolean LANGUAGE plpgsql AS $f$ "
            + _replay_body(
                "SELECT current_query()", "UPDATE orders SET important = 'garbage' WHERE id = 3"
            )
            + "RETURN true; END $f$"
        ]
    )
    out, ops = arena.attempt(["DELETE FROM orders WHERE id = 2 AND evil()"])
    assert out.error is None, out.describe()
    assert ops, "nothing recorded"


def test_mark_value_overwritten_from_inside_the_marked_statement(arena: Arena) -> None:
    """Code the marked DELETE calls rewrites the claim's mark value (the one part the mark
    cannot bind) after softguard's call made it: the rows written say otherwise."""
    arena.attack(
        [
            "CREATE FUNCTION shift(i int) RETURNS boolean LANGUAGE plpgsql AS $f$ DECLARE "
            "n text := concat('soft', 'guard.sd_', 'orders'::regclass::oid); "
            "BEGIN IF i = 3 AND current_setting(n, true) <> '' THEN "
            "PERFORM set_config(n, jsonb_set(current_setting(n)::jsonb, '{mark}', "
            "'\"2001-01-01T00:00:00+00:00\"')::text, true); END IF; RETURN true; END $f$"
        ]
    )
    out, ops = arena.attempt(["DELETE FROM orders WHERE id IN (2, 3) AND shift(id)"])
    assert out.error is None, out.describe()
    assert ("soft_delete", "bound") not in claims(arena, ops)


def test_mark_replayed_from_another_session(arena: Arena) -> None:
    """pg_stat_activity keeps another session's last text, mark included: another
    backend's key signed it."""
    with arena.connect() as victim:
        victim.execute("DELETE FROM orders WHERE id = 1")
        pid = victim.info.backend_pid
        out, ops = arena.attempt(
            [
                _replay(
                    f"SELECT query FROM pg_stat_activity WHERE pid = {pid}",
                    "UPDATE orders SET important = 'garbage'",
                )
            ]
        )
    assert out.error is None, out.describe()
    assert ops and ("soft_delete", "bound") not in claims(arena, ops)


# -- 3. the table's own triggers and rules -----------------------------------------------------

BLANK = (
    "CREATE FUNCTION blank() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.important := 'garbage'; NEW.amount := NULL; RETURN NEW; END $$"
)


def _soft_delete_undone(arena: Arena, steps: list[Any]) -> list[tuple[str, str | None]]:
    out, ops = arena.attempt(steps)
    assert out.error is None, out.describe()
    assert ops, "nothing recorded"
    return claims(arena, ops)


def test_before_update_trigger_blanking_columns(arena: Arena) -> None:
    """A genuine soft delete on a table whose trigger changes data columns: the rows it
    changed are kept whole besides the marks, undo restores them."""
    arena.attack(
        [BLANK, "CREATE TRIGGER b BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION blank()"]
    )
    judged = _soft_delete_undone(arena, ["DELETE FROM orders WHERE id < 4"])
    assert judged == [("soft_delete", "bound"), ("update", None)], judged


def test_before_update_trigger_moving_keys(arena: Arena) -> None:
    arena.attack(
        [
            "CREATE FUNCTION move() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.id := NEW.id + 100; RETURN NEW; END $$",
            "CREATE TRIGGER m BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION move()",
        ]
    )
    judged = _soft_delete_undone(arena, ["DELETE FROM orders WHERE id < 3"])
    assert {event for event, _ in judged} == {"update"}, judged  # the UPDATE it became


@pytest.mark.parametrize(
    "steps",
    [
        [
            "BEGIN",
            "CREATE TRIGGER b BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION blank()",
            "DELETE FROM orders WHERE id < 4",
            "COMMIT",
        ],
        [
            "BEGIN",
            "ALTER TABLE orders ENABLE TRIGGER b",
            "DELETE FROM orders WHERE id < 4",
            "COMMIT",
        ],
        ["ALTER TABLE orders ENABLE ALWAYS TRIGGER b", "DELETE FROM orders WHERE id < 4"],
        ["ALTER TABLE orders ENABLE REPLICA TRIGGER b", "DELETE FROM orders WHERE id < 4"],
    ],
    ids=["created_in_transaction", "enabled_in_transaction", "enable_always", "enable_replica"],
)
def test_trigger_switched_on_around_the_delete(arena: Arena, steps: list[str]) -> None:
    setup = [BLANK]
    if "CREATE TRIGGER" not in steps[1]:
        setup += [
            "CREATE TRIGGER b BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION blank()",
            "ALTER TABLE orders DISABLE TRIGGER b",
        ]
    arena.attack(setup)
    judged = _soft_delete_undone(arena, steps)
    assert judged[0] == ("soft_delete", "bound"), judged
    if "REPLICA" not in steps[0]:  # a REPLICA trigger does not fire: nothing changed
        assert judged[1:] == [("update", None)], judged


def test_trigger_on_one_partition(arena: Arena) -> None:
    arena.attack(
        [
            BLANK.replace("NEW.amount := NULL; ", ""),
            "CREATE TRIGGER b BEFORE UPDATE ON parts_high FOR EACH ROW EXECUTE FUNCTION blank()",
        ]
    )
    judged = _soft_delete_undone(arena, ["DELETE FROM parts WHERE id IN (2, 3, 102)"])
    assert judged == [("soft_delete", "bound"), ("update", None)], judged


def test_trigger_on_an_inheritance_child(arena: Arena) -> None:
    arena.attack(
        [
            BLANK.replace("NEW.amount := NULL; ", ""),
            "CREATE TRIGGER b BEFORE UPDATE ON memo_old FOR EACH ROW EXECUTE FUNCTION blank()",
        ]
    )
    judged = _soft_delete_undone(arena, ["DELETE FROM memo WHERE id IN (1, 50)"])
    assert judged == [("soft_delete", "bound"), ("update", None)], judged


def test_update_rule_keeps_the_check(arena: Arena) -> None:
    """A rule may add statements to the marking UPDATE's: any UPDATE rule keeps the check."""
    arena.attack(["CREATE RULE r AS ON UPDATE TO orders DO ALSO NOTIFY orders_changed"])
    judged = _soft_delete_undone(arena, ["DELETE FROM orders WHERE id = 1"])
    assert judged == [("soft_delete", "checked")], judged


def test_data_modifying_with_is_not_bound(arena: Arena) -> None:
    """A WITH that updates the same table shares the marking UPDATE's transition tables."""
    judged = _soft_delete_undone(
        arena,
        [
            "WITH w AS (UPDATE orders SET important = 'garbage' WHERE id = 5 RETURNING 1) "
            "DELETE FROM orders WHERE id = 1"
        ],
    )
    assert ("soft_delete", "bound") not in judged, judged
