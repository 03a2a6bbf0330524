"""Does a SQL text reach into softguard's own schemas?

softguard keeps its ledger in schema ``softguard`` and quarantined objects in
``softguard_quarantine`` and ``softguard_q<op>_<name>`` schemas, and large row captures in
``softguard_rows``, of the protected database.
No statement through the proxy may read, change, drop or grant on them, nor point
``search_path`` or a ``regclass`` literal at them, nor name softguard's capture triggers or
event triggers (PostgreSQL fires no event trigger for ALTER / DROP EVENT TRIGGER: this is
the one check that sees those). The check is deliberately conservative: any identifier
or string literal naming one of those counts. A string value counts too when its
backslash escapes, decoded as escape strings (``\\163`` for ``s``) or ``U&`` strings
decode them, level after level, spell a name: with standard_conforming_strings off a plain
``'...'`` literal is an escape string, and a DO block's or a function's body, one string
here, holds literals its language reads later.
Text that does not contain the letters ``softguard`` at all, nor an escape that could
spell them (``U&`` identifiers and strings, a backslash in a quoted string), is cleared
in ~0.2 µs.
"""

from __future__ import annotations

import re
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from softguard.contract import TAG_MARKER
from softguard.sql.tree import load_json

# A value names softguard's schemas when "softguard" is followed by the end, a schema
# separator or quoting/list punctuation, or by "_quarantine" / "_q<digits>_" / "_rows" (the
# typed captures' schema, decision 0030, as a whole word); it names its
# triggers and event triggers (zz_softguard_capture_*, softguard_capture_*,
# softguard_mode_guard) by "_capture_" and "_mode_".
_TAG_MARKER = TAG_MARKER.strip("/*").encode()
_NAMES_SOFTGUARD = re.compile(
    r"softguard(?:_quarantine|_q\d+_|_rows\b|_capture_|_mode_|\s*(?:[.,\"]|$))", re.IGNORECASE
)


def mentions_softguard(sql: bytes) -> bool:
    """True if *sql* names softguard's ledger or quarantine schemas anywhere."""
    lowered = sql.lower()
    if not may_name_softguard(lowered):
        return False
    if _TAG_MARKER in lowered or lowered.lstrip().startswith(b"/*softguard:"):
        return True  # only softguard may mark a statement's tag or its client text
    text = sql.decode("utf-8", "replace")
    try:
        tree = load_json(parse_sql_json(text))
    except (ParseError, ValueError, RecursionError):
        # Unparseable text that spells the name: the server cannot run it either, but
        # refusing is the safe answer.
        return _names_softguard(text)
    return _any_value_matches(tree)


def may_name_softguard(lowered: bytes) -> bool:
    """Could the lower-cased text name softguard: spell it, or spell a name without its
    letters (U&"\\0073..." identifiers or strings, E'\\163...' strings, and '\\163...'
    strings, escape strings where standard_conforming_strings is off: only the decoded
    values tell)? False decides ``mentions_softguard`` without parsing, for every text
    that differs from this one only in its digits."""
    # find, not ``in``: ``bytes in bytes`` formats and discards a TypeError each time.
    return (
        lowered.find(b"softguard") >= 0
        or lowered.find(b"u&") >= 0
        or (lowered.find(b"\\") >= 0 and lowered.find(b"'") >= 0)
        # 'soft'<newline>'guard': string constants separated by a newline are one
        or (
            lowered.find(b"\n") >= 0
            and lowered.find(b"'") >= 0
            and _CONTINUED_BYTES.search(lowered) is not None
        )
    )


# A string constant continued on a later line ('soft'<newline>'guard' is 'softguard'):
# whitespace with a newline between two quotes, -- comments allowed (scan.l's
# whitespace_with_newline). The bytes form asks whether one may be there (a quote, a line
# break, a quote: rare in ordinary SQL, whose lines end in a quote then a comma or word).
_CONTINUED_BYTES = re.compile(rb"'[ \t\f\r]*(?:--[^\n]*)?\n(?:[ \t\n\f\r]|--[^\n]*\n)*'")
_CONTINUATION = re.compile(r"'(?:[ \t\f\r]|--[^\n]*)*\n(?:[ \t\n\f\r]|--[^\n]*\n)*'")
# U&'...' UESCAPE 'c' (and U&"..." UESCAPE 'c'): escapes written with another character,
# at any level (quotes doubled inside a body).
_UESCAPE = re.compile(r"uescape\s*'+([^'\s])'", re.IGNORECASE)


def _any_value_matches(tree: Any) -> bool:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and _names_softguard(node):
            return True
    return False


# Escapes within escapes (a literal in a body in a literal) add one level each; deeper
# than this no statement goes, and the value is refused rather than passed.
_MAX_ESCAPE_LEVELS = 8

# One backslash escape as an escape string reads it: octal, hex, \u, \U, or the next
# character itself (\n and the like make control characters, no letter).
_ESCAPE = re.compile(
    r"\\(?:(?P<oct>[0-7]{1,3})|x(?P<hex>[0-9A-Fa-f]{1,2})|u(?P<u4>[0-9A-Fa-f]{4})"
    r"|U(?P<u8>[0-9A-Fa-f]{8})|(?P<other>.))",
    re.S,
)
# One escape as a U&'' string or U&"" name reads it (the default escape character).
_UNICODE_ESCAPE = re.compile(r"\\(?:(?P<u4>[0-9A-Fa-f]{4})|\+(?P<u6>[0-9A-Fa-f]{6})|(?P<other>\\))")


def _names_softguard(value: str) -> bool:
    """Whether *value* names softguard as written, or read with its backslash escapes
    decoded as escape strings or U&'' strings decode them, level after level."""
    search = _NAMES_SOFTGUARD.search
    if search(value) is not None:
        return True
    readings = {value}
    for _ in range(_MAX_ESCAPE_LEVELS):
        # a reading no pattern changes has been read whole
        readings = {
            decoded
            for text in readings
            for pattern in _patterns(text)
            if (decoded := pattern.sub(_decode_escape, text)) != text
        }
        if not readings:
            return False
        if any(search(text) is not None for text in readings):
            return True
    return True  # escapes nested deeper than a statement holds: refused, not passed


def _patterns(text: str) -> list[re.Pattern[str]]:
    """The ways one more level of `text` may read: backslash escapes (escape strings, U&
    strings), escapes with a UESCAPE character the text declares, continued constants."""
    out = [_ESCAPE, _UNICODE_ESCAPE] if "\\" in text else []
    for c in {m[1] for m in _UESCAPE.finditer(text)} if "scape" in text.lower() else ():
        e = re.escape(c)
        out.append(
            re.compile(
                rf"{e}(?:(?P<u4>[0-9A-Fa-f]{{4}})|\+(?P<u6>[0-9A-Fa-f]{{6}})|(?P<other>{e}))"
            )
        )
    if "\n" in text and "'" in text:
        out.append(_CONTINUATION)
    return out


def _decode_escape(m: re.Match[str]) -> str:
    if m.re is _CONTINUATION:
        return ""  # the two constants joined
    if m["other"] is not None:
        return str(m["other"])
    if m.re is _ESCAPE and m["oct"] is not None:
        code = int(m["oct"], 8)
    else:
        code = int(next(v for v in m.groupdict().values() if v is not None), 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"
