"""Classify a Query/Parse text as the server will read it: its bytes, its client encoding.

`classify_wire(data, client_encoding)` classifies the characters the server parses when
the session's client_encoding is *client_encoding*, and checks that no other client
encoding could make the same bytes into different statements (softguard.sql.encoding):
if one could, the answer is UNPARSEABLE with ``ambiguous=True``, which the policy always
refuses. Readings that do not parse are ignored: the server rejects the text in those
encodings. Pure ASCII text reads the same in every encoding and costs nothing extra.

Each reading is also read as a server with ``standard_conforming_strings = off`` reads it
(softguard.sql.backslash): when that runs other statements, and not harmless ones both
ways, the answer is UNPARSEABLE with ``ambiguous=True`` too.
"""

from __future__ import annotations

from typing import Any

from softguard.sql.backslash import escaped_reading
from softguard.sql.classify import (
    Classification,
    Kind,
    Statement,
    classify,
    classify_with_constants,
)
from softguard.sql.encoding import canonical_encoding, decode, other_readings
from softguard.sql.grammar import name_readings

__all__ = ["classify_wire", "signature"]


def classify_wire(
    data: bytes, client_encoding: str = "UTF8"
) -> tuple[Classification, frozenset[int] | None]:
    """The classification of *data* (no trailing NUL) sent in *client_encoding*, and the
    byte offsets of its numeric constants in *data* (see `classify_with_constants`; None
    when they cannot be given in wire bytes). Statement offsets index
    ``decode(data, client_encoding).encode()``; `softguard.sql.encoding.wire_offset`
    turns them into offsets of *data* for encodings other than UTF8."""
    if data.isascii():
        ascii_text = data.decode("ascii")
        result, ascii_constants = classify_with_constants(ascii_text)
        refusal = _escapes_differ(ascii_text, result)
        return (result, ascii_constants) if refusal is None else (refusal, None)
    primary: Classification | None
    constants: frozenset[int] | None = None
    error: str | None
    try:
        text = decode(data, client_encoding)
    except ValueError as exc:
        shown = "UTF-8" if canonical_encoding(client_encoding) == "UTF8" else client_encoding
        primary, error = None, f"invalid {shown} (client_encoding {client_encoding}): {exc}"
    else:
        primary, constants = classify_with_constants(text)
        error = primary.error
        if canonical_encoding(client_encoding) not in ("UTF8", "SQL_ASCII"):
            constants = None
    readable = primary is not None and primary.kind is not Kind.UNPARSEABLE
    expected = signature(primary) if primary is not None and readable else None
    if primary is not None:
        refusal = _escapes_differ(text, primary)
        if refusal is not None:
            return refusal, None
    for reading in other_readings(data, client_encoding, include_own=primary is None):
        other = _classify_any_grammar(reading.text)
        refusal = _escapes_differ(reading.text, other)
        if refusal is not None:
            return refusal, None
        if other.kind is Kind.UNPARSEABLE or (not readable and other.kind is Kind.SAFE):
            continue
        if expected is None or signature(other) != expected:
            names = ", ".join(reading.encodings)
            return (
                Classification(
                    Kind.UNPARSEABLE,
                    (),
                    error=(
                        (f"{error}; " if primary is None else "")
                        + f"the text reads as other statements in client_encoding {names} "
                        f"than in {client_encoding}; softguard refuses text whose meaning "
                        "depends on the client encoding"
                    ),
                    ambiguous=True,
                ),
                None,
            )
    if primary is None:
        # invalid in its encoding and harmless (or unparseable) in every other: rejected
        return Classification(Kind.UNPARSEABLE, (), error=error, inert=True), None
    return primary, constants


def _escapes_differ(text: str, result: Classification) -> Classification | None:
    """The refusal for *text* (classified as *result*) when a server with
    standard_conforming_strings off would run other statements than those *result* has,
    unless both readings are harmless; None when the readings agree or the other one
    does not parse (the server rejects the text then)."""
    escaped = escaped_reading(text)
    if escaped is None:
        return None
    other = _classify_any_grammar(escaped)
    if other.kind is Kind.UNPARSEABLE:
        return None
    readable = result.kind is not Kind.UNPARSEABLE
    if readable and signature(other) == signature(result):
        return None
    if other.kind is Kind.SAFE and (result.kind is Kind.SAFE or not readable):
        return None
    return Classification(
        Kind.UNPARSEABLE,
        (),
        error="the text reads as other statements when standard_conforming_strings is off "
        "(a backslash in a '' literal escapes the next character) than when it is on; "
        "softguard refuses text whose meaning depends on that setting: write backslashes "
        "in E'' literals, or no backslash in '' literals",
        ambiguous=True,
    )


def _classify_any_grammar(text: str) -> Classification:
    """classify(), or, when that fails, the reading an older server's grammar gives."""
    result = classify(text)
    if result.kind is Kind.UNPARSEABLE:
        quoted = name_readings(text)
        if quoted is not None:
            return classify(quoted)
    return result


def signature(result: Classification) -> tuple[Any, ...]:
    """What the statements of *result* are and do, without names or offsets (the names of
    another encoding's reading are placeholders)."""
    return (result.kind, tuple(_statement(s) for s in result.statements))


def _statement(stmt: Statement) -> tuple[Any, ...]:
    return (
        stmt.kind,
        stmt.action,
        stmt.command,
        stmt.cascade,
        stmt.if_exists,
        len(stmt.targets),
        tuple(_statement(n) for n in stmt.nested),
    )
