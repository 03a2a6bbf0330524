"""The characters the server will parse: a Query/Parse text read in a client encoding.

PostgreSQL converts a statement's bytes from the session's ``client_encoding`` before it
parses them. In the ASCII-safe encodings (UTF8, LATIN*, WIN*, KOI8*, ISO_8859_*, EUC_*,
MULE_INTERNAL) a byte < 0x80 is always that ASCII character, so every one of them gives
the same statement structure; only the letters inside names and strings differ. In the
ASCII-unsafe ones (SJIS, SHIFT_JIS_2004, BIG5, GBK, GB18030, UHC, JOHAB) a lead byte >= 0x80
takes the next byte(s) into one character whatever they are (pg_wchar.c decides a
character's length from its lead byte only), so a trailing ``\\`` or letter stops being
ASCII: ``E'\\xC3\\x81\\'; DROP TABLE big; --'`` is one string in UTF-8 and a string
followed by a DROP in SJIS.

`decode(data, client_encoding)` is the reading under the encoding the proxy believes in.
`other_readings(data, client_encoding)` is every other structure the same bytes can have
in any client encoding, for when that belief is stale (a pipelined ``SET
client_encoding``, or ``set_config()`` spelled dynamically, changes the encoding before
the ParameterStatus reaches the proxy). Those readings keep ASCII bytes and replace every
non-ASCII character by `PLACEHOLDER`: good for comparing what the statements *are*, not
for their names. Pure ASCII text reads the same in every encoding: no reading is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ASCII_UNSAFE",
    "PLACEHOLDER",
    "Reading",
    "canonical_encoding",
    "decode",
    "other_readings",
    "python_codec",
    "wire_offset",
]

# An identifier letter to PostgreSQL's lexer (any character >= 0x80 is one).
PLACEHOLDER = "\u00e9"
_PLACEHOLDER_BYTES = PLACEHOLDER.encode()

# PostgreSQL client encoding -> Python codec that reads it (None: no codec; the reading
# under the stale-encoding rules still applies).
_CODECS: dict[str, str | None] = {
    "UTF8": "utf-8",
    "SQL_ASCII": "utf-8",  # not converted: the server checks the bytes as its own (UTF8)
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_CN": "gb2312",
    "EUC_KR": "euc_kr",
    "EUC_TW": None,
    "MULE_INTERNAL": None,
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "cp950",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}
# PostgreSQL's own aliases (encnames.c), as clean_encoding_name() leaves them.
_ALIASES = {
    "unicode": "UTF8",
    "utf8": "UTF8",
    "sqlascii": "SQL_ASCII",
    "iso88591": "LATIN1",
    "iso88592": "LATIN2",
    "iso88593": "LATIN3",
    "iso88594": "LATIN4",
    "iso88599": "LATIN5",
    "iso885910": "LATIN6",
    "iso885913": "LATIN7",
    "iso885914": "LATIN8",
    "iso885915": "LATIN9",
    "iso885916": "LATIN10",
    "alt": "WIN866",
    "win": "WIN1251",
    "tcvn": "WIN1258",
    "tcvn5712": "WIN1258",
    "vscii": "WIN1258",
    "abc": "WIN1258",
    "koi8": "KOI8R",
    "mskanji": "SJIS",
    "shiftjis": "SJIS",
    "win932": "SJIS",
    "windows932": "SJIS",
    "win936": "GBK",
    "windows936": "GBK",
    "win949": "UHC",
    "windows949": "UHC",
    "win950": "BIG5",
    "windows950": "BIG5",
}
_ALIASES.update({re.sub("[^a-z0-9]", "", name.lower()): name for name in _CODECS})
for _n in range(1250, 1259):
    _ALIASES[f"windows{_n}"] = f"WIN{_n}"
_ALIASES["windows866"] = "WIN866"
_ALIASES["windows874"] = "WIN874"

ASCII_UNSAFE = ("SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030", "UHC", "JOHAB")

# One multibyte character as the server takes it: PostgreSQL's mblen decides the length
# from the lead byte (src/common/wchar.c), and the conversion to the server encoding
# rejects a trailing byte no character of the encoding has. ASCII trails: SJIS, BIG5, GBK
# 0x40-0x7E; UHC letters only; GB18030 digits in its four-byte form (0x30-0x39 second and
# fourth); JOHAB none (its verifier wants 0xA1-0xFE). Non-ASCII trails are all accepted, a
# superset. SJIS 0xA1-0xDF is a one-byte kana. A lead whose trail is missing or invalid
# makes the server reject the whole text in that encoding; the reading then keeps the
# byte alone (an extra, harmless reading).
_MULTIBYTE = {
    "SJIS": rb"[\x81-\x9f\xe0-\xfc][\x40-\x7e\x80-\xfc]|[\x80-\xff]",
    "BIG5": rb"[\x80-\xff][\x40-\x7e\x80-\xff]|[\x80-\xff]",
    "UHC": rb"[\x80-\xff][\x41-\x5a\x61-\x7a\x80-\xff]|[\x80-\xff]",
    "GB18030": rb"[\x81-\xfe][\x30-\x39][\x81-\xfe][\x30-\x39]"
    rb"|[\x81-\xfe][\x40-\x7e\x80-\xfe]|[\x80-\xff]",
    "JOHAB": rb"\x8f[\xa1-\xfe]{2}|[\x80-\xff][\xa1-\xfe]|[\x80-\xff]",
    "ASCII-safe": rb"[\x80-\xff]",
}
_SAME_READING = {"SHIFT_JIS_2004": "SJIS", "GBK": "BIG5"}
_READERS = {name: re.compile(pattern) for name, pattern in _MULTIBYTE.items()}


@dataclass(frozen=True, slots=True)
class Reading:
    """How the bytes read in some client encodings (``encodings``: PostgreSQL names, or
    "ASCII-safe" for all of those): ASCII as sent, other characters as `PLACEHOLDER`."""

    encodings: tuple[str, ...]
    text: str


def canonical_encoding(name: str) -> str | None:
    """PostgreSQL's name for a client_encoding as a client may spell it (``'sjis'``,
    ``'Shift_JIS'``, ``'win1252'``, ``'UNICODE'``), or None if the server knows no such
    client encoding. ParameterStatus always reports the canonical name."""
    return _ALIASES.get(re.sub("[^a-z0-9]", "", name.lower()))


def python_codec(client_encoding: str) -> str | None:
    """The Python codec that reads *client_encoding* (any spelling), or None when there
    is none here (unknown, EUC_TW, MULE_INTERNAL)."""
    canonical = canonical_encoding(client_encoding)
    return _CODECS.get(canonical) if canonical is not None else None


def decode(data: bytes, client_encoding: str) -> str:
    """*data* as characters, read in *client_encoding*.

    Raises ValueError when the encoding is unknown, has no codec here (EUC_TW,
    MULE_INTERNAL), or the bytes are not valid in it (UnicodeDecodeError)."""
    codec = python_codec(client_encoding)
    if codec is None:
        raise ValueError(f"softguard cannot read client_encoding {client_encoding!r}")
    return data.decode(codec)


def family(client_encoding: str) -> str:
    """The reading rule an encoding follows: one of ASCII_UNSAFE's rules, or "ASCII-safe"."""
    canonical = canonical_encoding(client_encoding) or "ASCII-safe"
    if canonical not in ASCII_UNSAFE:
        return "ASCII-safe"
    return _SAME_READING.get(canonical, canonical)


def other_readings(
    data: bytes, client_encoding: str, *, include_own: bool = False
) -> tuple[Reading, ...]:
    """Every distinct structure *data* has in client encodings other than
    *client_encoding*'s family (also in that family's with *include_own*, for when
    `decode` could not read it); empty for pure ASCII. Each is one regular expression
    substitution over the bytes."""
    if data.isascii():
        return ()
    own = "" if include_own else family(client_encoding)
    found: dict[str, list[str]] = {}
    for encoding in ("ASCII-safe", *ASCII_UNSAFE):
        rule = family(encoding) if encoding != "ASCII-safe" else encoding
        if rule == own:
            continue
        text = _READERS[rule].sub(_PLACEHOLDER_BYTES, data).decode("utf-8")
        found.setdefault(text, []).append(encoding)
    return tuple(Reading(tuple(names), text) for text, names in found.items())


def wire_offset(data: bytes, client_encoding: str, utf8_offset: int) -> int:
    """The offset in *data* (as sent, in *client_encoding*) of the character at byte
    *utf8_offset* of ``decode(data, client_encoding).encode()``: the parser's statement
    offsets count UTF-8 bytes of the decoded text, the wire counts the client's bytes."""
    canonical = canonical_encoding(client_encoding)
    if canonical in ("UTF8", "SQL_ASCII") or data.isascii():
        return utf8_offset
    text = decode(data, client_encoding)
    prefix = text.encode()[:utf8_offset].decode("utf-8", "ignore")
    codec = _CODECS[canonical or ""]
    assert codec is not None  # decode() succeeded
    return len(prefix.encode(codec))
