"""softguard.sql.reading and softguard.sql.backslash: the readings a text can have on the
server (client encoding, standard_conforming_strings), without a server."""

from __future__ import annotations

import pytest

from softguard.sql.backslash import escaped_reading
from softguard.sql.classify import Kind
from softguard.sql.reading import classify_wire

# text -> how a server with standard_conforming_strings off reads it (None: as with it on)
ESCAPED = {
    "SELECT 'x'": None,
    "SELECT 'a\\''; DROP TABLE t; --'": "SELECT  E'a\\''; DROP TABLE t; --'",
    "SELECT E'a\\'; DROP TABLE t; --'": None,  # read the same either way
    "SELECT 'a\\\\'": "SELECT  E'a\\\\'",
    "SELECT n'a\\'x'": "SELECT n E'a\\'x'",
    "SELECT b'\\'; DROP TABLE t; --'": None,  # bit strings have no escapes
    "SELECT x'\\'": None,
    "SELECT U&'a\\0041'": None,  # rejected with the setting off
    "/* 'a\\' /* nested */ */ SELECT 1; -- '\\'": None,
    "SELECT $$a\\'$$, $t$ '\\' $t$": None,
    'SELECT "a\\\'"': None,
    # a literal continued over a newline (a comment between) is one escape string
    "SELECT 'a' -- c\n'b\\''; DROP TABLE t; --'": "SELECT  E'a' -- c\n'b\\''; DROP TABLE t; --'",
    "SELECT b'1'\n'\\'": None,
    "SELECT 'a\\": None,  # left open: the server rejects the text
    "SELECT 'a\\'' /*": None,
    "SELECT 'ab''": None,
    'SELECT "ab\\': None,
}


@pytest.mark.parametrize("text", sorted(ESCAPED))
def test_escaped_reading(text: str) -> None:
    assert escaped_reading(text) == ESCAPED[text]


REFUSED = [
    "SELECT 'a\\''; DROP TABLE t; --'",
    "SELECT 'a\\''; DELETE FROM t; --'",
    "SELECT 'a\\''; TRUNCATE t; --'",
    "SELECT 1 WHERE 'a\\'' = 'b'; DROP TABLE t; --'",
    "DELETE FROM t WHERE name = 'O\\'Brien'",  # a DELETE only with the setting off
    "SELECT 'a\\'; DROP TABLE t; --'",  # a DROP only with the setting on
    "SELECT 'é\\''; DROP TABLE t; --'",
    "SELECT 'a' -- c\n'b\\''; DROP TABLE t; --'",  # continued literal
]
ALLOWED = {
    "SELECT 'C:\\dir'": Kind.SAFE,
    "SELECT 'a\\'; SELECT 1; --'": Kind.SAFE,  # harmless both ways
    "DROP TABLE t; SELECT 'C:\\'": Kind.DESTRUCTIVE,  # does not lex with the setting off
    "SELECT E'a\\'; DROP TABLE t; --'": Kind.SAFE,  # E'' reads the same both ways
    "DELETE FROM t WHERE name = E'O\\'Brien'": Kind.DESTRUCTIVE,
}


@pytest.mark.parametrize("text", REFUSED)
def test_text_whose_meaning_depends_on_the_setting_is_refused(text: str) -> None:
    result = classify_wire(text.encode())[0]
    assert result.kind is Kind.UNPARSEABLE and result.ambiguous
    assert "standard_conforming_strings" in (result.error or "")


@pytest.mark.parametrize("text", sorted(ALLOWED))
def test_text_that_means_the_same_either_way(text: str) -> None:
    result = classify_wire(text.encode())[0]
    assert result.kind is ALLOWED[text] and not result.ambiguous


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK", "LATIN1", "UTF8"])
def test_both_readings_in_other_encodings(encoding: str) -> None:
    """An encoding's own reading is checked for the setting too."""
    text = (
        "SELECT 'ア\\''; DROP TABLE t; --'".encode("cp932")
        if encoding == "SJIS"
        else (
            "SELECT 'é\\''; DROP TABLE t; --'".encode(
                "latin-1" if encoding == "LATIN1" else "utf-8"
            )
        )
    )
    result = classify_wire(text, encoding)[0]
    assert result.kind is Kind.UNPARSEABLE and result.ambiguous
