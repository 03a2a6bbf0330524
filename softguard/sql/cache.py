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

from softguard.sql.classify import SAFE_EMPTY, Classification, Kind, classify
from softguard.sql.prefilter import may_be_destructive

__all__ = ["Classifier", "ClassifierStats"]

# Numeric literals (not digits inside identifiers or $n parameters). Two texts that differ
# only in these have the same statements, kinds, actions and policy categories; only
# offsets and quoted numeric names may differ.
_NUMBERS = re.compile(rb"(?<![\w$])\d+(?:\.\d+)?")


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
        self.stats.parsed += 1
        try:
            text = sql.decode("utf-8")
        except UnicodeDecodeError as exc:
            result = Classification(Kind.UNPARSEABLE, (), error=f"invalid UTF-8: {exc}")
        else:
            result = classify(text)
        if self._size and len(sql) <= self._max_text_bytes:
            cache[sql] = result
            if len(cache) > self._size:
                cache.popitem(last=False)
                self.stats.evictions += 1
        return result

    def classify_shape(self, sql: bytes) -> Classification:
        """Like `classify_bytes`, but may answer with the classification of a text that
        differs only in numeric literals (pgbench's and most ORMs' inlined values).

        Good for deciding *what kind* of statement this is and which policy category it
        falls in; not for its byte offsets or quoted numeric names: a caller that rewrites
        the text must use `classify_bytes`.
        """
        if not may_be_destructive(sql):
            self.stats.prefiltered += 1
            return SAFE_EMPTY
        exact = self._cache.get(sql)
        if exact is not None:
            self._cache.move_to_end(sql)
            self.stats.cache_hits += 1
            return exact
        key = _NUMBERS.sub(b"0", sql)
        shapes = self._shapes
        hit = shapes.get(key)
        if hit is not None:
            shapes.move_to_end(key)
            self.stats.cache_hits += 1
            return hit
        result = self.classify_bytes(sql)
        if self._size and len(sql) <= self._max_text_bytes:
            shapes[key] = result
            if len(shapes) > self._size:
                shapes.popitem(last=False)
        return result

    def clear(self) -> None:
        self._cache.clear()
        self._shapes.clear()
