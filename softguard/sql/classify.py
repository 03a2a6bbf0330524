"""classify(sql): what would this SQL text do, by PostgreSQL's own grammar (pglast).

Pure: no I/O, never raises on bad SQL. The parse tree is libpg_query's JSON
(`parse_sql_json` + `orjson`, `softguard.sql.tree`), walked iteratively so hostile nesting
cannot exhaust the Python stack: `softguard.sql.analyze` walks it, `softguard.sql.rules`
holds the per-node rules, `softguard.sql.names` builds targets; the data model is
`softguard.sql.model`. Text pglast cannot parse is read again as older servers' grammars
read it (`softguard.sql.grammar`).
"""

from __future__ import annotations

from dataclasses import replace

from softguard.sql.analyze import CONSTANTS_UP_TO, classify_nested, classify_text
from softguard.sql.grammar import name_readings, old_lexer_differs
from softguard.sql.model import (
    MAX_BODY_DEPTH,
    SAFE_EMPTY,
    Classification,
    Kind,
    Statement,
    Target,
    quote_ident,
)
from softguard.sql.tree import load_json

__all__ = [
    "MAX_BODY_DEPTH",
    "SAFE_EMPTY",
    "Classification",
    "Kind",
    "Statement",
    "Target",
    "classify",
    "classify_nested",
    "classify_with_constants",
    "load_json",
    "quote_ident",
    "unparseable",
]


def classify(sql: str) -> Classification:
    """Classify every statement of *sql*. Pure; never raises on bad SQL."""
    return _classify(sql, 0, None)


def classify_with_constants(sql: str) -> tuple[Classification, frozenset[int] | None]:
    """classify(), plus the UTF-8 byte offsets of the numeric constants the statement uses
    as plain values (``WHERE id = 42``, ``LIMIT 10``; a negative one at its ``-``), or None
    when the text did not parse. No rule reads such a value, so texts that differ only
    there classify alike (`softguard.sql.cache` relies on it); numbers anywhere else
    (``EXPLAIN (ANALYZE 1)``, strings, names, comments) are not listed."""
    found: list[int] = []
    result = _classify(sql, 0, found)
    if result.kind is Kind.UNPARSEABLE or len(sql) > CONSTANTS_UP_TO:
        return result, None
    return result, frozenset(found)


def _classify(sql: str, depth: int, constants: list[int] | None) -> Classification:
    result = classify_text(sql, depth, constants)
    if depth == 0 and result.kind is Kind.UNPARSEABLE:
        return unparseable(sql, result)
    return result


def unparseable(text: str, result: Classification) -> Classification:
    """*result*, the UNPARSEABLE classification of *text*, marked ``inert`` when the server
    rejects the text too: it does not parse with the keywords that older servers take as
    names read as names (softguard.sql.grammar), nor lexes differently there. A parse
    tree softguard could not inspect is never inert: the server runs it."""
    error = result.error or ""
    if error.startswith(_NOT_INSPECTED):
        return result
    quoted = name_readings(text)
    if quoted is not None:
        older = classify_text(quoted, 0)
        if older.kind is not Kind.UNPARSEABLE:
            if older.kind is Kind.SAFE:
                return replace(result, inert=True)
            what = ", ".join(s.summary() for s in older.statements if s.kind is not Kind.SAFE)
            return replace(
                result,
                error=f"{error}; PostgreSQL 14-17 take some of its words as names, and "
                f"then it runs {what}",
            )
    if old_lexer_differs(text):
        return replace(
            result, error=f"{error}; PostgreSQL 14 reads a number followed by letters as two"
        )
    return replace(result, inert=True)


_NOT_INSPECTED = ("parse tree not inspectable", "softguard could not inspect")
