"""The classification cache may make classification faster, never different.

Every case of the classifier's corpus, plus generated variants of it (numbers, booleans,
option lists, whitespace and comments, quoting, case), is classified by a warm shared
`Classifier` (exact and shape caches) and by a fresh `classify()`: the answers must be
equal, byte offsets apart (the shape cache documents that it does not give offsets).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_classify import ALL_CASES

from softguard.sql import Classification, Classifier, Kind, Statement, classify, may_be_destructive
from softguard.sql.classify import SAFE_EMPTY
from softguard.sql.reading import classify_wire


def _strip(stmt: Statement) -> Statement:
    return dataclasses.replace(
        stmt, location=0, length=0, nested=tuple(_strip(n) for n in stmt.nested)
    )


def comparable(result: Classification) -> Classification:
    return dataclasses.replace(result, statements=tuple(_strip(s) for s in result.statements))


def assert_same(cached: Classification, sql: str) -> None:
    """*cached* is what classify() says of *sql*, offsets apart; or the prefilter's shared
    SAFE answer for a text that can only be SAFE (or that the server rejects)."""
    expected = classify_wire(sql.encode())[0]
    if cached is SAFE_EMPTY and not may_be_destructive(sql.encode()):
        assert expected.kind in (Kind.SAFE, Kind.UNPARSEABLE), sql
        return
    assert comparable(cached) == comparable(expected), sql


_NUMBER = re.compile(r"(?<![\w$.])\d+(?:\.\d+)?(?![\w$.])")
_BOOLEAN = re.compile(r"\b(?:true|false|on|off)\b", re.IGNORECASE)
_NUMBER_CHOICES = ("0", "1", "2", "-1", "007", "1.5", "0.0", "99999999999", "1e3", "2147483648")
_BOOLEAN_CHOICES = ("true", "false", "on", "off", "TRUE", "0", "1", "'1'", "'off'")


@st.composite
def variants(draw: st.DrawFn) -> str:
    """A corpus case with its numbers, booleans and spacing changed."""
    sql = draw(st.sampled_from([c[0] for c in ALL_CASES] + EXTRA))
    sql = _NUMBER.sub(lambda m: draw(st.sampled_from(_NUMBER_CHOICES)), sql)
    sql = _BOOLEAN.sub(lambda m: draw(st.sampled_from(_BOOLEAN_CHOICES)), sql)
    if draw(st.booleans()):
        sql = sql.replace(" ", draw(st.sampled_from(["  ", "\n", " /* 1 */ ", "\t"])))
    if draw(st.booleans()):
        sql = sql.upper() if draw(st.booleans()) else sql.lower()
    return sql


# Texts whose meaning hangs on a number, a boolean, an option list or quoting.
EXTRA = [
    "EXPLAIN (ANALYZE 0) DELETE FROM t",
    "EXPLAIN (ANALYZE 1) DELETE FROM t",
    "EXPLAIN (ANALYZE '0') DELETE FROM t WHERE id = 5",
    "EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM t",
    "EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM t",
    "EXPLAIN (COSTS 0, ANALYZE 1, BUFFERS 0) UPDATE t SET a = 1",
    "EXPLAIN (ANALYZE off) DROP TABLE t",
    "SELECT ts_rewrite('a', 'b'), 1",
    "SELECT ts_rewrite('a', 'b', 'c'), 1",
    'DROP TABLE "1"',
    'DROP TABLE "2", t3',
    "DELETE FROM t WHERE id = 1; SELECT 2",
    "SELECT 1; DELETE FROM t WHERE id = 2",
    "UPDATE t SET a = a + 1 WHERE id = -3",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'EXPLAIN (ANALYZE 0) DELETE FROM t'",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'EXPLAIN (ANALYZE 1) DELETE FROM t'",
    "ALTER TABLE t ALTER COLUMN c TYPE varchar(10) USING c::varchar(10), DROP COLUMN d",
    "SELECT 1 -- 1\n; DROP TABLE t",
    "SELECT $1, 1; TRUNCATE t",
]


def test_every_corpus_case_answers_the_same_cached() -> None:
    classifier = Classifier()
    texts = [c[0] for c in ALL_CASES] + EXTRA
    for _ in range(2):  # second round answers from the caches
        for sql in texts:
            data = sql.encode()
            assert_same(classifier.classify_shape(data), sql)
            assert_same(classifier.classify_bytes(data), sql)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(variants(), min_size=1, max_size=12))
def test_generated_variants_answer_the_same_cached(texts: list[str]) -> None:
    classifier = Classifier(cache_size=16)
    for sql in texts + texts[::-1]:
        assert_same(classifier.classify_shape(sql.encode()), sql)


@pytest.mark.parametrize(
    ("harmless", "harmful"),
    [
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),
        ("EXPLAIN (ANALYZE '0') DELETE FROM t", "EXPLAIN (ANALYZE '1') DELETE FROM t"),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t"),
        (
            "EXPLAIN (ANALYZE 0) SELECT pg_terminate_backend(1)",
            "EXPLAIN (ANALYZE 1) SELECT pg_terminate_backend(1)",
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'EXPLAIN (ANALYZE 0) DELETE FROM t'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'EXPLAIN (ANALYZE 1) DELETE FROM t'",
        ),
        ("SELECT 1 FROM t1", "SELECT 1 FROM t1; DROP TABLE t1"),
    ],
)
def test_warming_the_cache_with_the_harmless_form_does_not_excuse_the_harmful(
    harmless: str, harmful: str
) -> None:
    classifier = Classifier()
    for _ in range(3):
        classifier.classify_shape(harmless.encode())
        classifier.classify_bytes(harmless.encode())
    assert classify(harmful).kind is not Kind.SAFE
    assert_same(classifier.classify_shape(harmful.encode()), harmful)
    assert_same(classifier.classify_bytes(harmful.encode()), harmful)


def test_the_shape_cache_still_serves_inlined_values() -> None:
    classifier = Classifier()
    first = classifier.classify_shape(b"UPDATE t SET a = a + 5 WHERE id = 7")
    again = classifier.classify_shape(b"UPDATE t SET a = a + 123 WHERE id = 456")
    assert again is first
    assert classifier.stats.parsed == 1 and classifier.stats.cache_hits == 1
