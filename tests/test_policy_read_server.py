"""Policy decisions over what the server will run: ALTER subcommands in any order,
unparseable text, FunctionCall messages (issues 10 and 18)."""

from __future__ import annotations

import pytest

from softguard.policy import Action, Policy, PolicyConfig, SessionInfo
from softguard.sql import classify

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

from softguard.sql import Classifier, Kind  # noqa: E402
from softguard.sql.grammar import NEWER_KEYWORDS  # noqa: E402

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
