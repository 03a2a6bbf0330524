"""Rewrite plans keep everything but the replaced statements byte for byte."""

from __future__ import annotations

import pytest

from softguard.sql import classify
from softguard.sql.rewrite import (
    Replacement,
    apply,
    cascade_variant,
    char_offset,
    dollar_quote,
    drop_call,
    refusal,
)


def test_only_the_replaced_statement_changes() -> None:
    sql = "select 'é'; drop table \"Weird\" ; select 2".encode()
    stmts = classify(sql.decode()).statements
    plan = apply(sql, [Replacement(stmts[1], "X")])
    assert plan.text == "select 'é'; X; select 2".encode()
    # positions in untouched text map back exactly, character-wise
    assert plan.original_position(plan.text.decode().index("2") + 1) == sql.decode().index("2") + 1
    assert char_offset(sql, stmts[1].location) == sql.decode().index("drop")


@pytest.mark.parametrize(
    "stmt, expected",
    [
        ("DROP TABLE a", "DROP TABLE a CASCADE"),
        ("drop table if exists s.a, b restrict", "DROP TABLE IF EXISTS s.a, b CASCADE"),
        ('DROP FUNCTION "F"(int)', 'DROP FUNCTION "F" (integer) CASCADE'),
        ("DROP SCHEMA billing", "DROP SCHEMA billing CASCADE"),
    ],
)
def test_cascade_variant(stmt: str, expected: str) -> None:
    assert cascade_variant(stmt) == expected


def test_dollar_quote_avoids_the_text() -> None:
    tag = dollar_quote("abc")
    assert tag.startswith("$sg") and tag.endswith("$")
    call = drop_call("DROP TABLE t", {"offset": 0, "action": "DROP TABLE"})
    assert call.startswith("CALL softguard.drop_op(")
    assert classify(call).statements[0].action == "CALL"


def test_refusal_is_one_valid_statement() -> None:
    text = refusal("42501", "softguard: it's $$ refused", hint="say 'no'")
    result = classify(text)
    assert len(result.statements) == 1 and result.statements[0].action == "DO"
