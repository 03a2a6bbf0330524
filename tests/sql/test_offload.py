"""Large texts are classified in a worker process, with bounded memory (issue 10 item 7)."""

from __future__ import annotations

import asyncio

import pytest

from softguard.sql import Kind, analyze, classify
from softguard.sql.offload import OffLoopClassifier

# Each shape that made one statement cost seconds on the event loop: a long IN list,
# a huge string literal, many statements.
LARGE = {
    "in_list": "DELETE FROM t WHERE id IN (" + ",".join(str(i) for i in range(40000)) + ")",
    "string": "DELETE FROM t WHERE a = '" + "x" * 300_000 + "'",
    "statements": "DELETE FROM t WHERE id = 1;" * 8000 + "DROP TABLE big",
}


@pytest.fixture(scope="module")
def offload() -> OffLoopClassifier:
    classifier = OffLoopClassifier(threshold=100_000)
    yield classifier  # type: ignore[misc]
    classifier.close()


@pytest.mark.parametrize("shape", sorted(LARGE))
def test_a_worker_classifies_large_text_as_classify_does(
    offload: OffLoopClassifier, shape: str
) -> None:
    data = LARGE[shape].encode()
    assert offload.wants(data)
    result = offload.submit(data).result(timeout=240)
    assert result == classify(LARGE[shape])


def test_small_or_cleared_text_stays_inline(offload: OffLoopClassifier) -> None:
    assert not offload.wants(b"DROP TABLE t")
    assert not offload.wants(b"SELECT '" + b"x" * 200_000 + b"'")


def test_the_future_can_be_awaited_from_an_event_loop(offload: OffLoopClassifier) -> None:
    async def main() -> Kind:
        result = await asyncio.wrap_future(offload.submit(LARGE["in_list"].encode()))
        return result.kind

    assert asyncio.run(main()) is Kind.DESTRUCTIVE


def test_a_worker_out_of_memory_answers_not_inspected_and_is_not_passed() -> None:
    starved = OffLoopClassifier(threshold=0, memory_limit=32 << 20)
    try:
        result = starved.submit(LARGE["statements"].encode()).result(timeout=240)
    finally:
        starved.close()
    assert result.kind is Kind.UNPARSEABLE and not result.inert
    assert result.error and "could not inspect" in result.error


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id = 1;" * 40,
        "SELECT 1;  /* c */ DROP TABLE x ; \n\n  DELETE FROM é; " * 10 + " TRUNCATE z",
        "SELECT ';' ; DROP TABLE \";x\"; -- ;\n DELETE FROM t;" * 8,
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$BEGIN DELETE FROM t; END$$;" * 5,
        "CREATE FUNCTION g() RETURNS int BEGIN ATOMIC SELECT 1; DELETE FROM t; END; SELECT 2;" * 6,
        "DELETE FROM t -- ; not the end\n; SELECT 1;" * 9,
        "SELECT 1; /* ; */ DROP TABLE t;" * 9,
    ],
)
def test_large_texts_parsed_in_pieces_classify_as_whole(
    sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = classify(sql)
    monkeypatch.setattr(analyze, "_CHUNK_FROM", 10)
    monkeypatch.setattr(analyze, "_CHUNK", 30)
    assert classify(sql) == whole


def test_a_text_of_too_many_statements_is_not_inspected() -> None:
    few = OffLoopClassifier(threshold=0, max_statements=100)
    try:
        result = few.submit(("DELETE FROM t;" * 101).encode()).result(timeout=240)
        small = few.submit(("DELETE FROM t;" * 100).encode()).result(timeout=240)
    finally:
        few.close()
    assert result.kind is Kind.UNPARSEABLE and not result.inert
    assert result.error and "101 statements" in result.error
    assert small.kind is Kind.DESTRUCTIVE and len(small.statements) == 100
