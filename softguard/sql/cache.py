"""Classifier: the proxy's hot-path entry to the SQL seam.

``classify_bytes(sql)`` = bytes prefilter; if provably safe, the shared SAFE result with
``statements == ()`` and no parse; else a bounded LRU cache keyed by the exact bytes; else
a full `classify()`. A prefiltered result carries no statement boundaries: a caller that
needs them (to split a multi-statement Query) must call `classify()` itself.

Not thread-safe: use one Classifier per event loop (the proxy is single-threaded).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from softguard.sql.classify import SAFE_EMPTY, Classification, Kind, classify_with_constants
from softguard.sql.prefilter import may_be_destructive

__all__ = ["Classifier", "ClassifierStats"]

# Candidate numeric literals: a maximal run of digits (at most 9: larger ones lex as
# another kind of constant), or digits.digits, delimited by bytes that cannot extend a
# token. A text's shape replaces them with 0 / 0.0; the shape is only remembered when every
# candidate is a constant the statement uses as a plain value (`_numbers_are_values`).
_NUMBERS = re.compile(rb"(?<![\w$.\x80-\xff])(?:(\d+\.\d+)|\d{1,9})(?![\w$.\x80-\xff])")


def _shape_of(sql: bytes) -> bytes:
    return _NUMBERS.sub(lambda m: b"0.0" if m.group(1) else b"0", sql)


def _numbers_are_values(sql: bytes, constants: frozenset[int] | None) -> bool:
    """True when every candidate number of *sql* is one of the parsed numeric *constants*
    (at its first digit, or at the ``-`` the parser folded into it). Then a text of the
    same shape lexes into the same tokens, differing only in those constants' values,
    which no rule reads: it classifies alike (apart from byte offsets)."""
    if constants is None:
        return False
    for match in _NUMBERS.finditer(sql):
        start = match.start()
        if start in constants:
            continue
        before = start - 1
        while before >= 0 and sql[before] in b" \t\r\n\f\v":
            before -= 1
        if before < 0 or sql[before] != 0x2D or before not in constants:  # 0x2D: "-"
            return False
    return True


@dataclass(slots=True)
class ClassifierStats:
    """Counters for metrics and tests. Every call increments exactly one of the first three."""

    prefiltered: int = 0  # answered SAFE by the bytes prefilter, no parse
    cache_hits: int = 0  # answered from the LRU cache (exact text, or shape)
    parsed: int = 0  # parsed with pglast (then cached if small enough)
    evictions: int = 0  # entries dropped from the full cache


class Classifier:
    """Prefilter -> bounded LRU cache -> classify(). Results are immutable and shared."""

    __slots__ = ("_cache", "_max_text_bytes", "_shapes", "_size", "stats")

    def __init__(self, cache_size: int = 4096, max_text_bytes: int = 16384) -> None:
        """*cache_size* bounds the number of entries; texts longer than *max_text_bytes*
        are classified but not cached, so the cache holds at most about
        cache_size x max_text_bytes bytes of keys (64 MiB with the defaults)."""
        if cache_size < 0 or max_text_bytes < 0:
            raise ValueError("cache_size and max_text_bytes must be >= 0")
        self._size = cache_size
        self._max_text_bytes = max_text_bytes
        self._cache: OrderedDict[bytes, Classification] = OrderedDict()
        self._shapes: OrderedDict[bytes, Classification] = OrderedDict()
        self.stats = ClassifierStats()

    def __len__(self) -> int:
        return len(self._cache)

    def classify_bytes(self, sql: bytes | bytearray | memoryview) -> Classification:
        """Classify *sql* as it comes off the wire (UTF-8 bytes, no trailing NUL).

        Text that is not valid UTF-8 (and not prefiltered) is UNPARSEABLE: a UTF-8 server
        rejects it too; a proxy serving another client_encoding must transcode first.
        """
        if type(sql) is not bytes:
            sql = bytes(sql)  # bytearray / memoryview from a receive buffer
        if not may_be_destructive(sql):
            self.stats.prefiltered += 1
            return SAFE_EMPTY
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            cache.move_to_end(sql)
            self.stats.cache_hits += 1
            return hit
        return self._parse(sql)[0]

    def _parse(self, sql: bytes) -> tuple[Classification, frozenset[int] | None]:
        """Parse and remember *sql* exactly; also its numeric constants (see
        `classify_with_constants`)."""
        self.stats.parsed += 1
        constants: frozenset[int] | None = None
        try:
            text = sql.decode("utf-8")
        except UnicodeDecodeError as exc:
            result = Classification(Kind.UNPARSEABLE, (), error=f"invalid UTF-8: {exc}")
        else:
            result, constants = classify_with_constants(text)
        cache = self._cache
        if self._size and len(sql) <= self._max_text_bytes:
            cache[sql] = result
            if len(cache) > self._size:
                cache.popitem(last=False)
                self.stats.evictions += 1
        return result, constants

    def classify_shape(self, sql: bytes) -> Classification:
        """Like `classify_bytes`, but may answer with the classification of a text that
        differs only in the values of numeric constants (pgbench's and most ORMs' inlined
        values). The answer is the one `classify_bytes` would give, except for byte
        offsets (``location``/``length``): a caller that rewrites the text must use
        `classify_bytes`. Numbers that carry meaning (``EXPLAIN (ANALYZE 1)``, names,
        strings, comments) make a text's shape uncacheable, so they always parse.
        """
        if not may_be_destructive(sql):
            self.stats.prefiltered += 1
            return SAFE_EMPTY
        exact = self._cache.get(sql)
        if exact is not None:
            self._cache.move_to_end(sql)
            self.stats.cache_hits += 1
            return exact
        key = _shape_of(sql)
        shapes = self._shapes
        hit = shapes.get(key)
        if hit is not None:
            shapes.move_to_end(key)
            self.stats.cache_hits += 1
            return hit
        result, constants = self._parse(sql)
        if (
            self._size
            and len(sql) <= self._max_text_bytes
            and _numbers_are_values(sql, constants)
        ):
            shapes[key] = result
            if len(shapes) > self._size:
                shapes.popitem(last=False)
        return result

    def clear(self) -> None:
        self._cache.clear()
        self._shapes.clear()
