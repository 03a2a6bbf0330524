"""The same text as a server with ``standard_conforming_strings = off`` reads it.

With the setting on (the default since 9.1) a backslash in a plain ``'...'`` literal is a
character; with it off (``SET``, a startup parameter, ``ALTER ROLE/DATABASE ... SET``)
every plain literal is an escape string, so ``SELECT 'a\\'; DROP TABLE t; --'`` is one
string to pglast (whose lexer assumes on) and a SELECT plus a DROP to the server.
libpg_query has no switch for it, so `escaped_reading(text)` rewrites the text instead:
every literal the server would read as an escape string is written out as the standard
string of the same value, which pglast then reads as that server does. Bit strings
(``B''``, ``X''``) have no escapes and ``U&''`` literals are rejected with the setting
off, whose content is then kept as sent (the server fails the text anyway).
Comments (``--``, nested ``/* */``), quoted names and dollar quotes are skipped as the
server's lexer skips them.
"""

from __future__ import annotations

import re

__all__ = ["escaped_reading"]

# Characters that continue a name or keyword (PostgreSQL's ident_cont, plus >= 0x80).
_IDENT = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]")
_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
# Whitespace holding a newline between two literals continues the first one.
_CONTINUE = re.compile(r"[ \t\f\r]*\n[ \t\n\f\r]*'")
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.S
)
# An escape that makes no character softguard can place (NUL, a lone surrogate, a byte
# of the server encoding): some letter stands in, the statement's structure is the same.
_STAND_IN = "\u00e9"


def escaped_reading(text: str) -> str | None:
    """*text* as pglast must see it to read it as a server with
    standard_conforming_strings off does, or None when the two readings are the same
    text (no plain literal holds a backslash) or the text does not lex there (a literal
    or comment left open: the server rejects the whole text)."""
    if "\\" not in text or "'" not in text:
        return None
    out: list[str] = []
    i, n, last, changed = 0, len(text), 0, False
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            i = _comment_end(text, i)
            if i < 0:
                return None
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                return None
            i = end + 1
            while text.startswith('"', i):  # a doubled quote inside the name
                end = text.find('"', i + 1)
                if end < 0:
                    return None
                i = end + 1
        elif c == "$" and (i == 0 or not _IDENT.match(text[i - 1])):
            m = _DOLLAR.match(text, i)
            if m is None:
                i += 1
                continue
            end = text.find(m.group(0), m.end())
            if end < 0:
                return None
            i = end + len(m.group(0))
        elif c == "'":
            kind = _literal_kind(text, i)
            if kind == "plain":
                value, end = _escape_literal(text, i)
                if end < 0:
                    return None
                # E'...': the value becomes a standard string, so the E goes
                start = i - 1 if i > 0 and text[i - 1] in "eE" and _starts_token(text, i - 1) else i
                literal = "'" + value.replace("'", "''") + "'"
                changed = changed or text[start:end] != literal
                out.append(text[last:start])
                out.append(literal)
                last = i = end
            else:
                end = _verbatim_end(text, i)
                if end < 0:
                    return None
                i = end
        else:
            i += 1
    if not changed:
        return None
    out.append(text[last:])
    return "".join(out)


def _literal_kind(text: str, quote: int) -> str:
    """ "bits" for B''/X'', "unicode" for U&'', else "plain" (with the setting off, plain,
    N'' and E'' literals are all escape strings)."""
    if quote >= 1 and text[quote - 1] in "bBxX" and _starts_token(text, quote - 1):
        return "bits"
    if quote >= 2 and text[quote - 1] == "&" and text[quote - 2] in "uU":
        before = text[quote - 3] if quote >= 3 else ""
        if not before or not _IDENT.match(before):
            return "unicode"
    return "plain"


def _verbatim_end(text: str, quote: int) -> int:
    """The end of a literal without backslash escapes (bit strings, U&''), continuation
    segments included, or -1 if it is left open."""
    i = quote
    while True:
        end = text.find("'", i + 1)
        while end >= 0 and text.startswith("''", end):
            end = text.find("'", end + 2)
        if end < 0:
            return -1
        m = _CONTINUE.match(text, end + 1)
        if m is None:
            return end + 1
        i = m.end() - 1


def _escape_literal(text: str, quote: int) -> tuple[str, int]:
    """The value of the escape string opening at *quote* (continuation segments joined)
    and the index after it; (-1 as index) if it is left open."""
    parts: list[str] = []
    i = quote + 1
    n = len(text)
    while True:
        start = i
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
            elif c == "'":
                if text.startswith("''", i):
                    i += 2
                else:
                    break
            else:
                i += 1
        if i >= n:
            return "", -1
        parts.append(_unescape(text[start:i]))
        m = _CONTINUE.match(text, i + 1)
        if m is None:
            return "".join(parts), i + 1
        i = m.end()


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        octal, hexa, u4, u8, other = m.groups()
        if other is not None:
            return _SIMPLE_ESCAPES.get(other, other)
        code = int(octal, 8) if octal else int(hexa or u4 or u8, 16)
        if code == 0 or ((octal or hexa) and code >= 0x80) or 0xD800 <= code <= 0xDFFF:
            return _STAND_IN
        return chr(code) if code <= 0x10FFFF else _STAND_IN

    return _ESCAPE.sub(one, body.replace("''", "'"))


def _comment_end(text: str, start: int) -> int:
    depth, i, n = 0, start, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _starts_token(text: str, at: int) -> bool:
    return at == 0 or not _IDENT.match(text[at - 1])
