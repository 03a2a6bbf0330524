"""Where pglast's grammar and the server's differ, as data, and what that means for text
pglast cannot parse.

pglast parses with libpg_query's PostgreSQL 18 grammar; softguard fronts PostgreSQL
14-18. A word that grammar 18 does not take as a plain name but an older server does
makes text unparseable to softguard that the older server runs:
``DROP TABLE child; CREATE TEMP TABLE system_user(x int)`` is a DROP on PostgreSQL 15.
`NEWER_KEYWORDS` lists them (docs/decisions/0011-reading-what-the-server-runs.md says how
they were measured); `name_readings(text)` gives the text with each of them, where the
lexer finds it as a keyword, written as a quoted name instead, which is how an older
server reads it. PostgreSQL 14 also lexes ``123abc`` as ``123 abc`` (later versions
reject it): `old_lexer_differs(text)` says whether a text has such a number.
"""

from __future__ import annotations

import re

from pglast.parser import ParseError, scan

__all__ = ["NEWER_KEYWORDS", "name_readings", "old_lexer_differs"]

# Keywords of grammar 18 that are reserved, or column-name / type-or-function-name only,
# but plain identifiers on older servers; by the first major version that has them so.
# Where the version was uncertain the later one is listed: quoting a word the server does
# reserve can only refuse text the server would reject anyway.
NEWER_KEYWORDS: dict[int, frozenset[str]] = {
    16: frozenset({"system_user", "json_array", "json_arrayagg", "json_object", "json_objectagg"}),
    17: frozenset(
        {
            "json",
            "json_exists",
            "json_query",
            "json_scalar",
            "json_serialize",
            "json_table",
            "json_value",
            "merge_action",
        }
    ),
}
_ALL_NEWER = frozenset().union(*NEWER_KEYWORDS.values())

_JUNK_AFTER_NUMBER = re.compile(r"(?<![\w$])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?[A-Za-z_\x80-\U0010ffff]")


def name_readings(text: str) -> str | None:
    """*text* with every keyword of `NEWER_KEYWORDS` that the lexer finds (not inside
    strings, quoted names or comments) written as a quoted lower-case name, or None when
    there is none (or the text does not lex)."""
    try:
        tokens = scan(text)
    except (ParseError, ValueError, RecursionError):
        return None
    parts: list[str] = []
    last = 0
    for token in tokens:
        word = token.name.lower()
        if word not in _ALL_NEWER or token.kind == "NO_KEYWORD":
            continue
        # scan() gives character offsets, the end inclusive
        parts.append(text[last : token.start])
        parts.append(f'"{word}"')
        last = token.end + 1
    if not parts:
        return None
    parts.append(text[last:])
    return "".join(parts)


def old_lexer_differs(text: str) -> bool:
    """Does *text* hold a number followed by a letter (``1or``, ``0x1F``), which
    PostgreSQL 14 reads as two tokens and later versions as one token or an error?
    Conservative: also matches inside strings and comments."""
    return _JUNK_AFTER_NUMBER.search(text) is not None
