"""What remained after the trust work: a forged soft-delete mark, a denied DELETE hidden in
code the proxy cannot read, softguard's names spelled with escapes a plain literal decodes
when standard_conforming_strings is off.

The owner of the tables attacks through softguard. Each test asserts what must hold:
refused (42501, naming what refused it), or recorded and undone exactly.
"""

from __future__ import annotations

import json

import pytest
from attacker import Arena, deny_arena_fixture, fixtures

from softguard.policy import TAMPER_MESSAGE
from softguard.sql.tamper import mentions_softguard

# A table shaped for soft delete; the proxy need not know it: the attacker writes the
# setting the capture trigger reads itself.
SOFT_TABLE = """
CREATE TABLE orders (id int PRIMARY KEY, important text NOT NULL, amount numeric,
                     deleted_at timestamptz, deleted_by text);
INSERT INTO orders SELECT g, 'precious ' || g, g * 1.50, NULL, NULL
  FROM generate_series(1, 6) g;
UPDATE orders SET deleted_at = '2024-01-01 00:00:00+00', deleted_by = 'earlier' WHERE id = 6;
GRANT ALL ON orders TO PUBLIC;
"""

arena_template, arena = fixtures(SOFT_TABLE)


arena_updates = deny_arena_fixture('update = "protect"\n')
arena_deny = deny_arena_fixture(
    "[[policy.rules]]\n"
    'name = "no-destroying"\n'
    'delete = "deny"\nupdate = "deny"\ntruncate = "deny"\ndrop = "deny"\n'
)


# -- 1. the soft-delete mark is the session's to write; what it claims is checked -----------


def _info(
    column: str = "deleted_at",
    kind: str = "timestamp",
    mark: object = None,
    by: str | None = "deleted_by",
) -> str:
    return json.dumps(
        {
            "column": column,
            "mark_kind": kind,
            "by_column": by,
            "by_value": "role",
            "statement": "DELETE FROM orders",
            "verb": "DELETE",
            "table": "public.orders",
            "mark": mark,
            "by": "nobody",
        }
    )


def _forge(info: str) -> str:
    """set_config of the trigger's setting, under a name the proxy never reads."""
    return (
        f"PERFORM set_config(concat('soft', 'guard.sd_', 'orders'::regclass::oid), '{info}', true)"
    )


def _begin_call(info: str) -> str:
    """soft_delete_begin called by the session itself, through EXECUTE."""
    return (
        "EXECUTE format('SELECT %I.soft_delete_begin(''orders''::regclass, ''public.orders'', "
        f"%L::jsonb, now())', 'soft' || 'guard', '{info}')"
    )


FORGED = {
    # an ordinary UPDATE recorded as a soft delete kept only key and marks: `important` lost
    "set_config_do": f"DO $$ BEGIN {_forge(_info())}; "
    "UPDATE orders SET important = 'garbage', deleted_at = now(); END $$",
    "soft_delete_begin_do": f"DO $$ BEGIN {_begin_call(_info())}; "
    "UPDATE orders SET important = 'garbage'; END $$",
    "set_config_in_one_query": "SELECT set_config(concat('soft', 'guard.sd_', "
    f"'orders'::regclass::oid), '{_info()}', true); UPDATE orders SET important = 'garbage'",
    "set_config_in_a_transaction": "BEGIN; SELECT set_config(concat('soft', 'guard.sd_', "
    f"'orders'::regclass::oid), '{_info()}', true); UPDATE orders SET amount = 0; COMMIT",
    # the data column named as the mark: only rows already carrying "the mark" were skipped
    "data_column_as_mark": f"DO $$ BEGIN {_forge(_info('important', 'timestamp', None, None))}; "
    "UPDATE orders SET important = 'garbage'; END $$",
    # the data column named as the mark, with the value written as the mark
    "data_column_as_expression_mark": "DO $$ BEGIN "
    f"{_forge(_info('important', 'expression', 'garbage', None))}; "
    "UPDATE orders SET important = 'garbage'; END $$",
    # the data column named as "deleted_by": its old values kept as the by column's
    "data_column_as_by": f"DO $$ BEGIN {_forge(_info(by='important'))}; "
    "UPDATE orders SET deleted_at = now(), important = 'garbage' WHERE deleted_at IS NULL; "
    "END $$",
    # keys moved: undo finds rows by key
    "keys_moved": f"DO $$ BEGIN {_forge(_info())}; "
    "UPDATE orders SET id = id + 100, deleted_at = now() WHERE deleted_at IS NULL; END $$",
    # a row already marked: its old mark was skipped by the capture
    "marked_row_re_marked": f"DO $$ BEGIN {_forge(_info())}; "
    "UPDATE orders SET deleted_at = now(), deleted_by = 'x'; END $$",
    # a generated column would not do: the trigger compares what the statement wrote
    "by_function": "CREATE FUNCTION pg_temp.forge() RETURNS void LANGUAGE plpgsql AS $$ "
    f"BEGIN {_forge(_info())}; UPDATE orders SET important = 'garbage'; END $$; "
    "SELECT pg_temp.forge()",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_soft_delete_mark_keeps_the_old_values(arena_updates: Arena, name: str) -> None:
    """Under update = "protect" every UPDATE keeps its old values, whatever the session
    tells the capture trigger the statement was."""
    out, ops = arena_updates.attempt([FORGED[name]])
    assert out.error is None, out.describe()
    assert ops, "the UPDATE was recorded nowhere"


def test_genuine_mark_only_update_stays_a_soft_delete(arena_updates: Arena) -> None:
    """The setting told the truth (only the marks of unmarked rows written): still one
    soft-delete capture, key and marks, undone by clearing them."""
    marking = (
        "EXECUTE format('UPDATE orders SET deleted_at = (SELECT %I.soft_delete_begin("
        "''orders''::regclass, ''public.orders'', %L::jsonb, now())), deleted_by = current_user"
        f" WHERE deleted_at IS NULL AND id < 4', 'soft' || 'guard', '{_info()}')"
    )
    out, ops = arena_updates.attempt([f"DO $$ BEGIN {marking}; END $$"])
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops
    events = [e["event"] for o in ops for e in o["objects"]]
    assert events == ["soft_delete"], ops


# -- 2. a denied category stays denied in code the proxy cannot read ---------------------------

# category: what the database's refusal names (None: the proxy refuses first, reading the
# body it is sent, in its own words)
HIDDEN: dict[str, tuple[str, str | None]] = {
    "delete_do": ("DO $$ BEGIN DELETE FROM big WHERE id < 5; END $$", "delete"),
    "delete_execute": (
        "DO $$ BEGIN EXECUTE 'DELETE FROM ' || 'big WHERE id < 5'; END $$",
        "delete",
    ),
    "delete_function": (
        "CREATE FUNCTION gone() RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN DELETE FROM big WHERE id < 5; END $$; SELECT gone()",
        None,
    ),
    "delete_procedure": (
        "CREATE PROCEDURE gone_p() LANGUAGE sql AS 'DELETE FROM big WHERE id < 5'; CALL gone_p()",
        None,
    ),
    "delete_cascade_do": ("DO $$ BEGIN DELETE FROM parent WHERE id = 1; END $$", "delete"),
    "update_do": ("DO $$ BEGIN UPDATE big SET payload = 'gone'; END $$", "update"),
    "truncate_do": ("DO $$ BEGIN TRUNCATE big; END $$", "truncate"),
    "drop_do": ("DO $$ BEGIN DROP TABLE nokey; END $$", "drop"),
    # a forged soft-delete setting: judged as the DELETE it claims to be, denied too
    "forged_soft_delete": (
        f"DO $$ BEGIN {_forge(_info())}; UPDATE orders SET important = 'x'; END $$",
        "delete",
    ),
}


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_denied_category_is_refused_in_opaque_code(arena_deny: Arena, name: str) -> None:
    text, category = HIDDEN[name]
    out, ops = arena_deny.attempt([text])
    arena_deny.direct("DROP FUNCTION IF EXISTS gone()")
    arena_deny.direct("DROP PROCEDURE IF EXISTS gone_p()")
    assert out.sqlstate == "42501", out.describe()
    message = str(out.error)
    if category is not None:
        assert f"({category} on tables *.*)" in message, message
    assert "no-destroying" in message, f"the refusal names no rule: {message}"
    assert not ops, ops


def test_allowed_work_of_a_denied_session_still_runs(arena_deny: Arena) -> None:
    """Only the denied categories are refused: INSERT and SELECT in a DO block run."""
    out = arena_deny.attack(
        ["DO $$ BEGIN INSERT INTO nokey VALUES (9, 'z'); END $$", "SELECT count(*) FROM big"]
    )
    assert out.error is None, out.describe()
    arena_deny.direct("DELETE FROM nokey WHERE a = 9")


# -- 3. softguard's names in escapes a plain literal decodes with the setting off --------------

SCS_OFF = {
    "set_config_cur_op": "SELECT set_config('\\163oftguard.cur_op', '1/1/DELETE', true)",
    "set_config_capture": "SELECT set_config('\\163oftguard.capture', '', false)",
    "hex_escape": "SELECT set_config('\\x73oftguard.capture', '', false)",
    "regclass": "SELECT '\\163oftguard.operations'::regclass",
    "do_execute": "DO $$ BEGIN EXECUTE 'SELECT count(*) FROM \\163oftguard.operations'; END $$",
    "do_execute_nested": "DO $$ BEGIN EXECUTE 'DO $b$ BEGIN PERFORM "
    "set_config(''\\\\163oftguard.capture'', '''', false); END $b$'; END $$",
    "do_unicode_in_body": "DO $$ BEGIN PERFORM set_config(U&'\\0073oftguard.capture', '', "
    "false); END $$",
    "sd_setting": "SELECT set_config('\\163oftguard.sd_1', '{}', true)",
}


@pytest.mark.parametrize("name", sorted(SCS_OFF))
def test_escaped_names_are_refused_with_conforming_strings_off(arena: Arena, name: str) -> None:
    out, ops = arena.attempt(
        [SCS_OFF[name], "DELETE FROM parent WHERE id = 2"],
        options="-c standard_conforming_strings=off",
    )
    assert out.sqlstate == "42501" and str(out.error) == TAMPER_MESSAGE, out.describe()
    assert not ops, ops


@pytest.mark.parametrize("name", sorted(SCS_OFF))
def test_proxy_sees_escaped_names(name: str) -> None:
    assert mentions_softguard(SCS_OFF[name].encode())


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 'a\\nb', E'x\\\\y'",
        "SELECT 'C:\\\\path\\\\file'",
        "SELECT '\\163oftware'",
        'INSERT INTO t VALUES (\'{"a": "x\\"y"}\')',
    ],
)
def test_escapes_naming_nothing_pass(text: str) -> None:
    assert not mentions_softguard(text.encode())
