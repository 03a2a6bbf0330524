"""The same text as a server with ``standard_conforming_strings = off`` reads it.

With the setting on (the default since 9.1) a backslash in a plain ``'...'`` literal is a
character; with it off (``SET``, a startup parameter, ``ALTER ROLE/DATABASE ... SET``)
every plain literal is an escape string, so ``SELECT 'a\\''; DROP TABLE t; --'`` is one
string to pglast (whose lexer assumes on) and a SELECT plus a DROP to the server.
libpg_query has no switch for it, so `escaped_reading(text)` rewrites the text instead:
it lexes the text as that server does and writes ``E`` before every plain literal that
holds a backslash (before the first piece of a literal continued over a newline), which
pglast then reads as that server does. ``E''`` literals read the same either way; bit
strings (``B''``, ``X''``) have no escapes; ``U&''`` literals are rejected with the
setting off, and are skipped as written. Comments (``--``, nested ``/* */``), quoted names
and dollar quotes are skipped as the server's lexer skips them (src/backend/parser/scan.l).
"""

from __future__ import annotations

import re
from functools import cache

__all__ = ["escaped_reading"]

_NOT_AFTER_NAME = r"(?<![A-Za-z0-9_$\u0080-\U0010ffff])"


@cache
def _lexer() -> tuple[re.Pattern[str], re.Pattern[str], dict[str, re.Pattern[str]]]:
    """The lexer's patterns, compiled at first use: compiling them costs ~0.1 s of CPU
    (the Unicode ranges), paid by every process that imports the classifier (each CLI
    command), while most never read a text holding both a quote and a backslash."""
    # One lexical element that changes the lexer's state, as the server reads it with the
    # setting off. Each pattern also matches an element left open (to the end of the text),
    # so a search never backtracks; the group ``open_<kind>`` tells which it was.
    token = re.compile(
        r"(?P<line>--[^\n\r]*+)"
        r"|(?P<block>/\*)"
        r"|(?P<name>\"(?:[^\"]++|\"\")*+(?:\"|(?P<open_name>\Z)))"
        rf"|(?P<dollar>{_NOT_AFTER_NAME}\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*+)?\$)"
        rf"|(?P<bits>{_NOT_AFTER_NAME}[bBxX]'[^']*+(?:'|(?P<open_bits>\Z)))"
        rf"|(?P<unicode>{_NOT_AFTER_NAME}[uU]&'(?:[^']++|'')*+(?:'|(?P<open_unicode>\Z)))"
        rf"|(?P<escape>{_NOT_AFTER_NAME}[eE]'(?:[^'\\]++|\\.|'')*+(?:'|(?P<open_escape>\\?\Z)))"
        r"|(?P<plain>'(?:[^'\\]++|\\.|'')*+(?:'|(?P<open_plain>\\?\Z)))",
        re.S,
    )
    # The continuation of a literal: whitespace holding a newline (comments allowed), then a
    # quote. Generous on purpose (vertical tab): missing one would hide a statement.
    continued = re.compile(
        r"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]++|--[^\n\r]*+[\n\r])*+(?=')"
    )
    segment = {
        "bits": re.compile(r"'[^']*+(?:'|(?P<open>\Z))"),
        "unicode": re.compile(r"'(?:[^']++|'')*+(?:'|(?P<open>\Z))"),
        "escape": re.compile(r"'(?:[^'\\]++|\\.|'')*+(?:'|(?P<open>\\?\Z))", re.S),
    }
    segment["plain"] = segment["escape"]
    return token, continued, segment


def escaped_reading(text: str) -> str | None:
    """*text* as pglast must see it to read it as a server with
    standard_conforming_strings off does, or None when the two readings are the same
    text (no plain literal holds a backslash) or the text does not lex there (a literal,
    quoted name or comment left open: the server rejects the whole text)."""
    if "\\" not in text or "'" not in text:
        return None
    token, continued, segment = _lexer()
    inserts: list[int] = []
    i, n = 0, len(text)
    while i < n:
        m = token.search(text, i)
        if m is None:
            break
        kind = m.lastgroup or ""
        end = m.end()
        if kind == "line":
            pass
        elif kind == "block":
            end = _comment_end(text, m.start())
        elif kind == "dollar":
            close = text.find(m.group(), end)
            end = -1 if close < 0 else close + len(m.group())
        elif m.group(f"open_{kind}") is not None:
            end = -1  # a quoted name or literal left open
        elif kind != "name":
            backslash = kind == "plain" and "\\" in m.group()
            while (more := continued.match(text, end)) is not None:
                piece = segment[kind].match(text, more.end())
                assert piece is not None  # the lookahead saw its quote
                if piece.group("open") is not None:
                    return None
                end = piece.end()
                backslash = backslash or (kind == "plain" and "\\" in piece.group())
            if backslash:
                inserts.append(m.start())
        if end < 0:
            return None
        i = end
    if not inserts:
        return None
    parts: list[str] = []
    last = 0
    for at in inserts:
        # a space keeps a name before the quote (N'...', or a name then a literal) apart
        parts += [text[last:at], " E"]
        last = at
    parts.append(text[last:])
    return "".join(parts)


def _comment_end(text: str, start: int) -> int:
    """The index after the nested ``/* */`` comment opening at *start*, or -1."""
    depth, i = 0, start
    while True:
        m = _COMMENT_MARK.search(text, i)
        if m is None:
            return -1
        depth += 1 if m.group() == "/*" else -1
        i = m.end()
        if depth == 0:
            return i


_COMMENT_MARK = re.compile(r"/\*|\*/")
