"""Issue 11 item 6 against a deliberate client: replacing a definition or resetting a
sequence is recorded and undone exactly, whatever text carries it (other spellings, DO
blocks, functions, procedures, prepared statements), as the table owner and as a superuser.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, fixtures

arena_template, arena = fixtures()

PRICE = "CREATE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 100'"


def _prepared(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'",
        prepare=True,
    )


def _bound_restart(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1 WHERE %s", [True], prepare=True)
    conn.execute("ALTER SEQUENCE counter RESTART WITH 1", prepare=True)


ATTACKS: dict[str, tuple[list[Any], list[Any]]] = {
    "lower_case": (
        [PRICE],
        ["create or replace function price(int) returns int language sql as 'select 0'"],
    ),
    "quoted_qualified": (
        [PRICE],
        [
            'CREATE OR REPLACE FUNCTION "public"."price"(int4) RETURNS '
            "int4 LANGUAGE sql AS 'SELECT 0'"
        ],
    ),
    "comment_in_between": (
        [PRICE],
        [
            "CREATE /* x */ OR -- y\n REPLACE FUNCTION price(int) "
            "RETURNS int LANGUAGE sql AS 'SELECT 0'"
        ],
    ),
    "sql_standard_body": (
        [PRICE],
        ["CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql RETURN 0"],
    ),
    "do_execute_built": (
        [PRICE],
        [
            "DO $$ BEGIN EXECUTE concat('CREATE OR REPLACE ', "
            "'FUNCTION price(int) RETURNS int LANGUAGE sql AS ', "
            "quote_literal('SELECT 0')); END $$"
        ],
    ),
    "function_replaces": (
        [
            PRICE,
            "CREATE FUNCTION swap() RETURNS void LANGUAGE plpgsql AS "
            "$$ BEGIN CREATE OR REPLACE FUNCTION price(int) RETURNS int "
            "LANGUAGE sql AS 'SELECT 0'; END $$",
        ],
        ["SELECT swap()"],
    ),
    "procedure_replaces": (
        [
            PRICE,
            "CREATE PROCEDURE swap() LANGUAGE plpgsql AS "
            "$$ BEGIN EXECUTE 'CREATE OR REPLACE VIEW names AS SELECT id, "
            "''gone''::text AS name FROM parent'; END $$",
            "CREATE VIEW names AS SELECT id, name FROM parent",
        ],
        ["CALL swap()"],
    ),
    "prepared": ([PRICE], [_prepared]),
    "replace_twice_in_one_transaction": (
        [PRICE],
        [
            "BEGIN; CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 1'; "
            "CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 2'; COMMIT"
        ],
    ),
    "rule": (
        [
            "CREATE TABLE r (v int)",
            "CREATE RULE keep AS ON INSERT TO r DO ALSO INSERT INTO nokey VALUES (NEW.v, 'kept')",
        ],
        ["CREATE OR REPLACE RULE keep AS ON INSERT TO r DO INSTEAD NOTHING"],
    ),
    "sequence_restart_in_do": (
        [],
        ["DO $$ BEGIN EXECUTE 'ALTER SEQUENCE counter RESTART'; END $$"],
    ),
    "sequence_prepared": ([], [_bound_restart]),
    "sequence_parameters": (
        [],
        ["ALTER SEQUENCE counter INCREMENT BY -1 MINVALUE -100 RESTART WITH -5"],
    ),
    "sequence_if_exists": ([], ["alter sequence if exists public.counter restart with 2"]),
}


@pytest.mark.parametrize("who", ["owner", "super"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_replaced_state_is_recorded_and_undone(arena: Arena, name: str, who: str) -> None:
    setup, attack = ATTACKS[name]
    arena.attack(setup, who=who)
    out, ops = arena.attempt(attack, who=who)
    assert out.error is None, out.describe()
    assert ops, "nothing was recorded"


def test_the_history_cannot_be_read_or_forged(arena: Arena) -> None:
    """The kept definitions are softguard's: a client neither reads nor rewrites them, nor
    forges the sequence snapshot an ALTER SEQUENCE is compared with."""
    arena.attack([PRICE])
    for stmt in (
        "SELECT * FROM softguard.definitions",
        "UPDATE softguard.definitions SET definition = 'x'",
        "DELETE FROM softguard.definitions",
        "SELECT softguard._definition_keep('pg_proc'::regclass, 'price(int)'::regprocedure)",
    ):
        out = arena.attack([stmt])
        assert out.error is not None and out.sqlstate == "42501", (stmt, out.describe())
    # a forged snapshot is overwritten at ddl_command_start: the real old value is kept
    out, ops = arena.attempt(
        [
            "BEGIN",
            "DO $$ BEGIN PERFORM set_config(concat('softguard', '.seq_before'), '{}', true); "
            "END $$",
            "ALTER SEQUENCE counter RESTART WITH 1",
            "COMMIT",
        ]
    )
    assert out.error is None and ops, out.describe()


def test_a_forged_probe_setting_does_not_skip_the_recording(arena: Arena) -> None:
    """softguard.probe = 'on' makes the definitions triggers stand aside (softguard's own
    probe): set by the client, the machinery's ddl_command_end probe aborts every DDL."""
    arena.attack([PRICE])
    arena.attempt(
        [
            "DO $$ BEGIN PERFORM set_config(concat('softguard', '.probe'), 'on', false); END $$",
            "CREATE OR REPLACE FUNCTION price(int) RETURNS int LANGUAGE sql AS 'SELECT 0'",
        ]
    )
    arena.attempt(
        [
            "DO $$ BEGIN PERFORM set_config(concat('softguard', '.probe'), 'on', false); END $$",
            "ALTER SEQUENCE counter RESTART WITH 1",
        ]
    )
