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

from softguard.sql.classify import SAFE_EMPTY, Classification
from softguard.sql.prefilter import may_be_destructive
from softguard.sql.reading import classify_wire

__all__ = ["Classifier", "ClassifierStats"]

# Candidate numeric literals: a maximal run of digits (at most 9: larger ones lex as
# another kind of constant), or digits.digits, delimited by bytes that cannot extend a
# token. A text's shape replaces them with 0 / 0.0; the shape is only remembered when every
# candidate is a constant the statement uses as a plain value (`_numbers_are_values`).
# Written to begin with a digit (the byte before it tested by a lookbehind over both), so
# that the regex engine skips ahead to digits instead of trying a lookbehind at every byte:
# the matches of `(?<![\w$.\x80-\xff])(?:(\d+\.\d+)|\d{1,9})(?![\w$.\x80-\xff])`, at
# 60 % of its cost (group 1: the digits after the first of a decimal).
_NUMBERS = re.compile(rb"\d(?<![\w$.\x80-\xff]\d)(?:(\d*\.\d+)|\d{0,8})(?![\w$.\x80-\xff])")


def _key(sql: bytes, client_encoding: str) -> bytes:
    """The exact cache's key: the bytes, and for non-ASCII text the encoding read in
    (NUL cannot occur in a statement text, so keys cannot collide)."""
    if sql.isascii():
        return sql
    return client_encoding.encode("ascii", "replace") + b"\0" + sql


def shape_of(sql: bytes) -> bytes:
    """*sql* with its candidate numbers read as 0 (``0.0`` for a decimal): the shape
    cache's key."""
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

    def classify_bytes(
        self, sql: bytes | bytearray | memoryview, client_encoding: str = "UTF8"
    ) -> Classification:
        """Classify *sql* as it comes off the wire (no trailing NUL) in the session's
        *client_encoding* (the last value the server reported in ParameterStatus, or the
        startup parameter): see `softguard.sql.reading.classify_wire`. Text the server
        could read as different statements in another client encoding is UNPARSEABLE
        with ``ambiguous=True``; text not valid in *client_encoding* that no encoding
        makes harmful is UNPARSEABLE (the server rejects it)."""
        if type(sql) is not bytes:
            sql = bytes(sql)  # bytearray / memoryview from a receive buffer
        if not may_be_destructive(sql):
            self.stats.prefiltered += 1
            return SAFE_EMPTY
        key = _key(sql, client_encoding)
        cache = self._cache
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            self.stats.cache_hits += 1
            return hit
        return self._parse(sql, key, client_encoding)[0]

    def _parse(
        self, sql: bytes, key: bytes, client_encoding: str
    ) -> tuple[Classification, frozenset[int] | None]:
        """Classify and remember *sql* under *key*; also its numeric constants (see
        `classify_with_constants`)."""
        self.stats.parsed += 1
        result, constants = classify_wire(sql, client_encoding)
        cache = self._cache
        if self._size and len(sql) <= self._max_text_bytes:
            cache[key] = result
            if len(cache) > self._size:
                cache.popitem(last=False)
                self.stats.evictions += 1
        return result, constants

    def classify_shape(self, sql: bytes, client_encoding: str = "UTF8") -> Classification:
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
        exact_key = _key(sql, client_encoding)
        exact = self._cache.get(exact_key)
        if exact is not None:
            self._cache.move_to_end(exact_key)
            self.stats.cache_hits += 1
            return exact
        key = shape_of(sql)
        shapes = self._shapes
        hit = shapes.get(key)
        if hit is not None:
            shapes.move_to_end(key)
            self.stats.cache_hits += 1
            return hit
        result, constants = self._parse(sql, exact_key, client_encoding)
        if self._size and len(sql) <= self._max_text_bytes and _numbers_are_values(sql, constants):
            shapes[key] = result
            if len(shapes) > self._size:
                shapes.popitem(last=False)
        return result

    def remembered_shape(self, sql: bytes, classification: Classification) -> bytes | None:
        """*sql*'s shape when `classify_shape` answers *classification* for every text of
        that shape (it keeps shapes whose numbers are all plain values), else None."""
        key = shape_of(sql)
        return key if self._shapes.get(key) is classification else None

    def clear(self) -> None:
        self._cache.clear()
        self._shapes.clear()
