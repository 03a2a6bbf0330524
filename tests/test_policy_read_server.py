"""Policy decisions over what the server will run: ALTER subcommands in any order,
unparseable text, FunctionCall messages (issues 10 and 18)."""

from __future__ import annotations

import struct

import psycopg
import pytest

from softguard.policy import FASTPATH_FUNCTIONS, Action, Policy, PolicyConfig, Rule, SessionInfo
from softguard.sql import Classifier, Kind, classify
from softguard.sql.grammar import NEWER_KEYWORDS
from softguard.wire.function_call import REFUSAL_HINT, function_call_oid, function_call_refusal
from softguard.wire.messages import parse_fields

SESSION = SessionInfo("app", "db", "psql", "127.0.0.1")


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE t ADD COLUMN x int, DROP COLUMN c",
        "ALTER TABLE t DROP CONSTRAINT k, DROP COLUMN c",
        "ALTER TABLE t DROP CONSTRAINT k, ALTER COLUMN c TYPE int USING c::int",
        "ALTER TABLE t ALTER COLUMN c SET DEFAULT 1, DROP CONSTRAINT k, DROP COLUMN c",
    ],
)
def test_an_alter_is_protected_whatever_subcommand_comes_first(sql: str) -> None:
    (decision,) = Policy().decide(classify(sql), SESSION, source="query", log_it=False)
    assert decision.action is Action.PROTECT
    assert decision.category == "alter"


# -- unparseable text (issue 18 item 2) ------------------------------------------------------


_KEYWORDS = sorted(set().union(*NEWER_KEYWORDS.values()))


def decide_text(sql: str, policy: Policy | None = None) -> list[Action]:
    result = Classifier().classify_bytes(sql.encode())
    decisions = (policy or Policy()).decide(result, SESSION, source="query", log_it=False)
    return [d.action for d in decisions]


@pytest.mark.parametrize("word", _KEYWORDS)
def test_a_newer_keyword_cannot_hide_a_drop(word: str) -> None:
    # PostgreSQL 14/15 create a function named so; pglast's grammar (18) rejects the text.
    sql = f"DROP TABLE child; CREATE FUNCTION {word}() RETURNS int LANGUAGE sql AS 'select 1'"
    result = Classifier().classify_bytes(sql.encode())
    assert result.kind is Kind.UNPARSEABLE and not result.inert, result
    assert decide_text(sql) == [Action.DENY]


@pytest.mark.parametrize("word", _KEYWORDS)
def test_a_newer_keyword_as_a_name_in_harmless_text_is_left_to_the_server(word: str) -> None:
    sql = f"CREATE FUNCTION {word}() RETURNS int LANGUAGE sql AS 'select 1'; SELECT 1"
    result = Classifier().classify_bytes(sql.encode())
    assert result.kind is Kind.UNPARSEABLE and result.inert
    assert decide_text(sql) == [Action.ALLOW]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id = 1 AND json_table = 2",
        "TRUNCATE t; SELECT merge_action FROM x",
        "UPDATE t SET system_user = 1",
        "ALTER TABLE t DROP COLUMN json_value",
        "DROP TABLE json_exists",
    ],
)
def test_newer_keywords_used_as_names_never_let_destruction_pass(sql: str) -> None:
    actions = decide_text(sql)
    assert actions and Action.ALLOW not in actions


def test_an_old_lexer_reading_is_not_proven_harmless() -> None:
    # PostgreSQL 14 reads "1or" as "1 or"; grammar 18 rejects the text.
    assert decide_text("DELETE FROM t WHERE id = 1or true") == [Action.DENY]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FRM t",
        "select 1; drop table big_refs; selec 2",
        "DROP TABLE",
        "DELETE FROM t WHERE 'unterminated",
    ],
)
def test_text_the_server_rejects_too_is_left_to_the_server(sql: str) -> None:
    result = Classifier().classify_bytes(sql.encode())
    assert result.kind is Kind.UNPARSEABLE and result.inert
    strict = Policy(PolicyConfig(unparseable="deny"))
    assert decide_text(sql, strict) == [Action.ALLOW]


def test_unparseable_defaults_to_deny_and_can_be_allowed() -> None:
    assert PolicyConfig().unparseable == "deny"
    sql = "DROP TABLE child; CREATE TEMP TABLE system_user(x int)"
    assert decide_text(sql, Policy(PolicyConfig(unparseable="allow"))) == [Action.ALLOW]


# -- FunctionCall (issue 18 item 3) ----------------------------------------------------------


def test_fastpath_oids_name_the_same_builtin_functions_on_the_server(
    direct_conn: psycopg.Connection,
) -> None:
    rows = direct_conn.execute(
        "SELECT p.oid::int, p.proname FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'pg_catalog' AND p.oid = ANY(%s)",
        (list(FASTPATH_FUNCTIONS),),
    ).fetchall()
    assert dict(rows) == FASTPATH_FUNCTIONS


@pytest.mark.parametrize(
    "oid",
    [
        2096,  # pg_terminate_backend(int)
        2646,  # set_config(text, text, bool)
        1,
        16384,
        2**32 - 1,
    ],
)
def test_function_calls_outside_the_list_are_refused(oid: int) -> None:
    decision = Policy(PolicyConfig(dangerous="allow")).decide_function_call(oid, SESSION)
    assert decision.action is Action.DENY
    assert "softguard" in decision.reason and str(oid) in decision.reason


def test_function_calls_are_decided_like_the_same_sql_call() -> None:
    policy = Policy()
    # lo_open for reading (INV_READ); for writing, or with a mode it cannot read, as a write
    assert policy.decide_function_call(952, SESSION, 0x40000).action is Action.ALLOW
    assert policy.decide_function_call(952, SESSION, 0x20000).action is Action.DENY
    assert policy.decide_function_call(952, SESSION).action is Action.DENY
    assert policy.decide_function_call(953, SESSION).action is Action.ALLOW  # lo_close
    # a write cannot go through softguard's wrappers (decision 0016): refused unless allowed
    unlink = policy.decide_function_call(964, SESSION)
    assert unlink.action is Action.DENY and unlink.category == "large_object"
    allowing = Policy(PolicyConfig(rules=[Rule(role="app", large_object="allow")]))
    assert allowing.decide_function_call(964, SESSION).action is Action.ALLOW
    refusing = Policy(PolicyConfig(rules=[Rule(role="app", large_object="deny")]))
    assert refusing.decide_function_call(1004, SESSION).action is Action.DENY  # lo_truncate


def test_function_call_oid_and_refusal_bytes() -> None:
    # OID, one format code (binary), one argument (4 bytes), result format text
    body = struct.pack("!Ihhhi", 964, 1, 1, 1, 4) + b"\0\0\0\x07" + struct.pack("!h", 0)
    assert function_call_oid(body) == 964
    with pytest.raises(Exception, match="too short"):
        function_call_oid(b"\0\0")
    data = function_call_refusal("softguard: no", ord("T"))
    assert data[:1] == b"E"
    length = struct.unpack("!I", data[1:5])[0]
    fields = parse_fields(data[5 : 1 + length])
    assert fields["C"] == "42501" and fields["M"] == "softguard: no"
    assert fields["H"] == REFUSAL_HINT and "SELECT" in REFUSAL_HINT
    assert data[1 + length :] == b"Z\0\0\0\x05T"
