"""The shape cache's number regex, written to start with a digit for speed, finds what
the lookbehind-first regex it replaced found: the same matches, the same decimals."""

from __future__ import annotations

import random
import re

import pytest

from softguard.speedups import compiled
from softguard.sql.cache import _NUMBERS, shape_of

_REFERENCE = re.compile(rb"(?<![\w$.\x80-\xff])(?:(\d+\.\d+)|\d{1,9})(?![\w$.\x80-\xff])")


def _reference_shape(sql: bytes) -> bytes:
    return _REFERENCE.sub(lambda m: b"0.0" if m.group(1) else b"0", sql)


@pytest.mark.parametrize("seed", range(3))
def test_number_matches_agree_with_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = b"0123456789012345..  ax_$-+(),;\xc3\xa9\n"
    for _ in range(20000):  # bounded
        sql = bytes(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        ours = [(m.start(), m.end(), bool(m.group(1))) for m in _NUMBERS.finditer(sql)]
        theirs = [(m.start(), m.end(), bool(m.group(1))) for m in _REFERENCE.finditer(sql)]
        assert ours == theirs, sql
        assert shape_of(sql) == _reference_shape(sql), sql
        # The session memo's key, as the compiled fast path computes it (decision 0034).
        assert compiled is None or compiled.shape_of(sql) == shape_of(sql), sql


def test_pgbench_texts_fold_as_before() -> None:
    sql = b"UPDATE pgbench_accounts SET abalance = abalance + -2841 WHERE aid = 77712;"
    assert shape_of(sql) == b"UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;"
    assert shape_of(b"SELECT 1.5, 1234567890, x1, 2") == b"SELECT 0.0, 1234567890, x1, 0"


@pytest.mark.skipif(compiled is None, reason="softguard._hotpath is not built")
@pytest.mark.parametrize(
    "sql",
    [b"", b"1", b"12345678901", b"1.5", b"1.", b".5", b"x1.5", b"1.5x", b"1.5.3", b"-1.25e3",
     b"$1", b"a$1", b"\xc3\xa91", b"1\xc3\xa9", b"1234567890.5", b"123456789", b"'7'", b"\"7\"",
     b"1_000", b"0x1F", b"(1,2.0,3)", b"9.99999999999"],
)  # fmt: skip
def test_the_compiled_shape_is_the_regexs(sql: bytes) -> None:
    assert compiled is not None
    assert compiled.shape_of(sql) == shape_of(sql) == _reference_shape(sql)
