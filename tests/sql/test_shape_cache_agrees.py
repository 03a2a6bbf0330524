"""Classifier.classify_shape (on the path of every statement) answers what an uncached
`classify_bytes` answers: over every case of tests/sql/cases/classify.txt, with the shape
cache warmed by texts that differ only in numbers, the classification and the default
policy's decisions are the same (offsets aside: callers that rewrite use the exact text).

The cache may make classification faster, never different: digits that carry meaning (an
EXPLAIN option's value, the hex digits of a U& escape, a type modifier) once shared one
shape key, so a warmed harmless text answered for a destructive one; those cases stay
named below."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from softguard.policy import Policy, SessionInfo
from softguard.sql import Classification, Classifier, Kind, classify

CASES = Path(__file__).parent / "cases" / "classify.txt"
INPUTS = [
    "" if line == "<empty>" else line
    for line in CASES.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith(("#", "=> "))
]
_NUMBER = re.compile(r"(?<![\w$])\d+(?:\.\d+)?")
SESSION = SessionInfo("app", "shop", "", "127.0.0.1:5000")
# Texts whose digits carry meaning: the shape key once treated them as values.
MEANINGFUL_DIGITS = {
    "EXPLAIN (ANALYZE 0) DELETE FROM t",
    'SELECT U&"pg\\005fterminate\\005fbackend"(1)',
    "DROP FUNCTION IF EXISTS s.f(int[], varchar(10), s.mytype, double precision,"
    " timestamp with time zone)",
}


def summary(c: Classification) -> Any:
    """What decides the policy: kinds, actions, commands, targets, flags (not offsets).
    A SAFE text is not put to the policy at all, and the prefilter's SAFE carries no
    statements: its kind is all that counts."""
    if c.kind is Kind.SAFE:
        return c.kind
    return (
        c.kind,
        [(s.kind, s.action, s.command, s.targets, s.cascade, s.if_exists) for s in c.statements],
    )


def decisions(c: Classification) -> Any:
    if c.kind is Kind.SAFE:
        return []
    return [
        (d.action, d.category, d.reason)
        for d in Policy().decide(c, SESSION, source="query", log_it=False)
    ]


def variants(sql: str) -> list[str]:
    """The same text with its numbers changed (what the shape cache treats as one)."""
    out = {_NUMBER.sub(n, sql) for n in ("0", "1", "2", "10", "4.5")}
    out.discard(sql)
    return sorted(out)


def test_the_fixture_has_numbers_to_vary() -> None:
    assert len(INPUTS) >= 120
    assert sum(1 for s in INPUTS if variants(s)) >= 30


def test_meaningful_digit_cases_are_fixture_cases() -> None:
    assert MEANINGFUL_DIGITS <= set(INPUTS)


@pytest.mark.parametrize("sql", INPUTS, ids=[s[:60] for s in INPUTS])
def test_shape_cached_equals_uncached(sql: str) -> None:
    want = Classifier().classify_bytes(sql.encode())
    assert summary(want) == summary(classify(sql)) or want.kind is Kind.SAFE
    for warm in variants(sql):
        cache = Classifier()
        cache.classify_shape(warm.encode())
        got = cache.classify_shape(sql.encode())
        assert summary(got) == summary(want), (warm, sql)
        assert decisions(got) == decisions(want), (warm, sql)
    # cold, and after an exact-text hit
    cache = Classifier()
    assert summary(cache.classify_shape(sql.encode())) == summary(want)
    assert summary(cache.classify_shape(sql.encode())) == summary(want)
    assert summary(cache.classify_bytes(sql.encode())) == summary(want)


def test_one_cache_warmed_by_every_case_answers_each_as_uncached() -> None:
    """One Classifier, as in the proxy: every case and its variants go through it (so a
    shape key shared by different statements shows), then each case is asked again."""
    cases = INPUTS
    cache = Classifier()
    for sql in cases:
        for text in (*variants(sql), sql):
            cache.classify_shape(text.encode())
    wrong = [
        sql
        for sql in cases
        if summary(cache.classify_shape(sql.encode()))
        != summary(Classifier().classify_bytes(sql.encode()))
    ]
    assert wrong == []


def test_a_warmed_harmless_escape_does_not_answer_for_a_destructive_one() -> None:
    # U&"\0071g_..." is qg_terminate_backend (nothing); U&"\0070g_..." is pg_terminate_backend
    cache = Classifier()
    assert cache.classify_shape(b'SELECT U&"\\0071g_terminate_backend"(1)').kind is Kind.SAFE
    got = cache.classify_shape(b'SELECT U&"\\0070g_terminate_backend"(1)')
    assert got.kind is Kind.DESTRUCTIVE


def test_shape_cache_is_used() -> None:
    """The comparison above exercises the cache: a numeric variant is a hit, not a parse."""
    cache = Classifier()
    cache.classify_shape(b"DELETE FROM t WHERE id = 1")
    parsed = cache.stats.parsed
    cache.classify_shape(b"DELETE FROM t WHERE id = 2")
    assert (cache.stats.parsed, cache.stats.cache_hits) == (parsed, 1)
