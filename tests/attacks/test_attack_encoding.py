"""Issue 18 items 1 and 2: the proxy reads one statement, the server runs another.

Client encodings whose multi-byte characters take an ASCII backslash as trailing byte
turn `E'<x>\\'; DROP ...; --'` into one harmless SELECT for a UTF-8 reader and into a
SELECT plus a real DROP for the server. Text that is invalid UTF-8, or that a newer grammar
cannot parse, is "unparseable" to softguard and runs on the server.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from attacker import Arena, deny_arena_fixture, fixtures
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from softguard.sql.classify import Kind, classify
from softguard.sql.grammar import NEWER_KEYWORDS

arena_template, arena = fixtures()

# PostgreSQL encoding -> Python codec; encodings with ASCII trailing bytes.
# (JOHAB and UHC are not here: PostgreSQL verifies their trailing bytes as 0xA1-0xFE, resp.
# letters only, so no backslash or quote can hide in them; they are in NATIVE below.)
SMUGGLING = {
    "SJIS": "shift_jis",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
}


def smuggler(encoding: str) -> bytes:
    """UTF-8 bytes of one character whose last byte, in `encoding`, leads a two-byte
    character that swallows a following backslash."""
    codec = SMUGGLING[encoding]
    for cp in range(0xC0, 0xD800):
        b = chr(cp).encode("utf-8")
        probe = b"E'" + b + b"\\'"
        try:
            text = probe.decode(codec)
        except UnicodeDecodeError:
            continue
        if "\\" not in text and text.encode(codec) == probe:
            return b
    raise AssertionError(f"no smuggling character for {encoding}")


def payload(encoding: str, destroy: str) -> bytes:
    return b"SELECT E'" + smuggler(encoding) + b"\\'; " + destroy.encode() + b"; --'"


def server_reads(arena: Arena, text: bytes, encoding: str) -> str:
    """What the server makes of `text` in `encoding` (proves the smuggling is real)."""
    return str(arena.direct("SELECT convert_from(%s::bytea, %s)", [text, encoding])[0][0])


arena_deny = deny_arena_fixture('delete = "deny"\ntruncate = "deny"\n')


@pytest.mark.parametrize("encoding", sorted(SMUGGLING))
def test_drop_smuggled_through_client_encoding(arena: Arena, encoding: str) -> None:
    text = payload(encoding, "DROP TABLE big")
    assert "DROP TABLE big; --'" in server_reads(arena, text, encoding)
    arena.attempt([text], client_encoding=encoding)


DESTROY = {
    "truncate": "TRUNCATE big",
    "drop_column": "ALTER TABLE parent DROP COLUMN name",
    "drop_cascade": "DROP TABLE parent CASCADE",
    "do_block": "DO $$ BEGIN EXECUTE 'DROP TABLE typed'; END $$",
    "delete": "DELETE FROM big",
}


# do_block: read right, the DO block is opaque (allowed by default); its dynamic DROP is
# refused by the backstop in the database (decision 0012).
@pytest.mark.parametrize("kind", sorted(DESTROY))
def test_other_statements_smuggled_in_sjis(arena: Arena, kind: str) -> None:
    arena.attempt([payload("SJIS", DESTROY[kind])], client_encoding="SJIS")


@pytest.mark.parametrize("how", ["set", "options", "set_config"])
def test_encoding_switched_after_startup(arena: Arena, how: str) -> None:
    text = payload("SJIS", "DROP TABLE big")
    before, last = arena.snapshot(), arena.last_op()
    if how == "options":
        out = arena.attack([text], options="-c client_encoding=SJIS")
    else:
        switch = (
            "SET client_encoding = 'SJIS'"
            if how == "set"
            else "SELECT set_config('client_encoding', 'SJIS', false)"
        )
        out = arena.attack([switch, text])
    arena.verdict(before, last, out)


@pytest.mark.parametrize("destroy", ["DELETE FROM big", "TRUNCATE big"])
def test_smuggling_defeats_deny_policy(arena_deny: Arena, destroy: str) -> None:
    before, last = arena_deny.snapshot(), arena_deny.last_op()
    out = arena_deny.attack([payload("GBK", destroy)], client_encoding="GBK")
    assert out.sqlstate == "42501", f"denied category ran: {out.describe()}"
    arena_deny.verdict(before, last, out)


def test_superuser_smuggles_a_ledger_write(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    arena.attack(["DELETE FROM parent WHERE id = 1"])
    out = arena.attack(
        [payload("BIG5", 'DELETE FROM U&"\\0073oftguard".captured_rows')],
        who="super",
        client_encoding="BIG5",
    )
    arena.verdict(before, last, out)


# -- item 2: text softguard cannot parse ----------------------------------------------------

# A non-ASCII character in each encoding whose bytes are invalid UTF-8. (For JOHAB a Hanja:
# PostgreSQL converts Hangul to JOHAB bytes that its own input check then rejects.)
NATIVE = {
    "LATIN1": "é",
    "WIN1252": "€",
    "UHC": "한",
    "EUC_KR": "한",
    "SJIS": "ア",
    "BIG5": "中",
    "KOI8R": "ж",
    "EUC_JP": "ア",
    "WIN1251": "ж",
    "LATIN2": "ő",
    "JOHAB": "中",
    "GB18030": "中",
    "SHIFT_JIS_2004": "ア",
    "EUC_CN": "中",
}


@pytest.mark.parametrize("encoding", sorted(NATIVE))
def test_invalid_utf8_is_not_a_free_pass(arena: Arena, encoding: str) -> None:
    char = bytes(arena.direct("SELECT convert_to(%s, %s)", [NATIVE[encoding], encoding])[0][0])
    with pytest.raises(UnicodeDecodeError):
        (char + b"'").decode("utf-8")
    arena.attempt([b"TRUNCATE big; SELECT '" + char + b"'"], client_encoding=encoding)


GRAMMAR = {
    "drop": "DROP TABLE big; CREATE TEMP TABLE system_user(x int)",
    "truncate": "TRUNCATE typed; CREATE TEMP TABLE system_user(x int)",
    "drop_column": "ALTER TABLE parent DROP COLUMN name; CREATE TEMP TABLE system_user(x int)",
    "drop_schema": "DROP SCHEMA public CASCADE; CREATE TEMP TABLE system_user(x int)",
}


@pytest.mark.parametrize("name", sorted(GRAMMAR))
def test_newer_grammar_keywords_are_not_a_free_pass(arena: Arena, name: str) -> None:
    if arena.server.version_num >= 160000:
        pytest.skip("system_user is a keyword of this server too")
    arena.attempt([GRAMMAR[name]])


def test_unparseable_text_the_server_rejects_changes_nothing(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["DROP TABLE big; SELEC 1"])
    assert out.error is not None
    assert arena.snapshot() == before and arena.ops_since(last) == []


def test_sjis_statement_without_tricks_is_protected(arena: Arena) -> None:
    """Control: a plain DROP under SJIS is made reversible."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["DROP TABLE big"], client_encoding="SJIS")
    assert arena.ops_since(last), out.describe()
    arena.verdict(before, last, out)


def test_smuggling_is_real_on_a_direct_connection(arena: Arena) -> None:
    """Control for the tests above: the payload does drop the table on the server."""
    with psycopg.connect(arena.direct_dsn("owner", client_encoding="SJIS"), autocommit=True) as c:
        c.execute(payload("SJIS", "DROP TABLE nokey"))
    assert arena.direct("SELECT to_regclass('public.nokey')")[0][0] is None


# -- standard_conforming_strings = off --------------------------------------------------------

# With the setting on `'a\''` is one literal that runs on to the last quote; with it off the
# backslash escapes the first quote, the literal ends, and the DROP runs.
SCS_PAYLOAD = "SELECT 'a\\''; DROP TABLE big; --'"


def _scs_off_steps(arena: Arena, how: str) -> tuple[list[str], dict[str, str]]:
    """The attack's steps and connection parameters for each way to turn the setting off."""
    if how == "set":
        return ["SET standard_conforming_strings = off", SCS_PAYLOAD], {}
    if how == "set_config":
        return ["SELECT set_config('standard_conforming_strings', 'off', false)", SCS_PAYLOAD], {}
    if how == "options":
        return [SCS_PAYLOAD], {"options": "-c standard_conforming_strings=off"}
    if how == "alter_role":
        arena.direct(
            f"ALTER ROLE {arena.owner} IN DATABASE {arena.db} SET standard_conforming_strings = off"
        )
    elif how == "alter_database":
        arena.direct(f"ALTER DATABASE {arena.db} SET standard_conforming_strings = off")
    return [SCS_PAYLOAD], {}


SCS_WAYS = ["set", "set_config", "options", "alter_role", "alter_database"]


@pytest.mark.parametrize("how", SCS_WAYS)
def test_backslash_smuggling_with_standard_conforming_strings_off(arena: Arena, how: str) -> None:
    steps, params = _scs_off_steps(arena, how)
    out, _ = arena.attempt(steps, **params)
    assert out.error is not None and "standard_conforming_strings" in str(out.error), out.describe()


def test_backslash_smuggling_is_real_on_a_direct_connection(arena: Arena) -> None:
    """Control: with the setting off the payload does drop the table on the server."""
    dsn = arena.direct_dsn("owner", options="-c standard_conforming_strings=off")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(SCS_PAYLOAD.replace("big", "nokey").encode())
    assert arena.direct("SELECT to_regclass('public.nokey')")[0][0] is None


@pytest.mark.parametrize(
    "destroy", ["DELETE FROM big", "TRUNCATE big", "ALTER TABLE parent DROP COLUMN name"]
)
def test_backslash_smuggling_defeats_no_policy(arena_deny: Arena, destroy: str) -> None:
    text = f"SELECT 'x\\''; {destroy}; --'"
    arena_deny.attempt([text], options="-c standard_conforming_strings=off")


def test_backslash_smuggling_in_a_prepared_statement(arena: Arena) -> None:
    """The extended protocol's Parse is read the same way."""

    def prepared(c: psycopg.Connection[Any]) -> None:
        c.execute("SET standard_conforming_strings = off")
        c.execute("SELECT 'a\\''; DELETE FROM big; --' WHERE %s", [True], prepare=True)

    arena.attempt([prepared])


def test_backslashes_in_escape_strings_still_work(arena: Arena) -> None:
    """Written in E'' literals, the same text means the same with the setting off or on."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(["SET standard_conforming_strings = off", "SELECT E'a\\\\', E'b\\'c'"])
    assert out.error is None and out.results[-1] == [("a\\", "b'c")], out.describe()
    assert arena.snapshot() == before and arena.ops_since(last) == []


# -- keywords of pglast's grammar that older servers take as names (decision 0011) -----------

_DESTROY_ROTATION = (
    "DROP TABLE big",
    "TRUNCATE typed",
    "DELETE FROM parent",
    "ALTER TABLE parent DROP COLUMN name",
)
_KEYWORD_CASES = {
    word: (version, _DESTROY_ROTATION[i % len(_DESTROY_ROTATION)])
    for i, (version, word) in enumerate(
        sorted((v, w) for v, words in NEWER_KEYWORDS.items() for w in words)
    )
}


def _keyword_text(word: str, destroy: str) -> str:
    # A function name: grammar 18 takes none of these words there, PostgreSQL 15 takes all.
    return (
        f"{destroy}; CREATE FUNCTION {word}(x int) RETURNS int LANGUAGE sql AS 'SELECT 1'; "
        f"DROP FUNCTION {word}(int)"
    )


@pytest.mark.parametrize("word", sorted(_KEYWORD_CASES))
def test_each_newer_keyword_in_a_destructive_text(arena: Arena, word: str) -> None:
    version, destroy = _KEYWORD_CASES[word]
    if arena.server.version_num >= version * 10000:
        pytest.skip(f"{word} is a keyword of this server too (from {version})")
    text = _keyword_text(word, destroy)
    assert classify(text).kind is Kind.UNPARSEABLE  # the path under test
    out, _ = arena.attempt([text])
    assert out.error is not None, out.describe()


def test_newer_keyword_text_runs_on_a_direct_connection(arena: Arena) -> None:
    """Control: the server does run such a text (PostgreSQL < 16)."""
    if arena.server.version_num >= 160000:
        pytest.skip("system_user is a keyword of this server too")
    with arena.connect("owner", via="direct") as c:
        c.execute(_keyword_text("system_user", "DROP TABLE nokey").encode())
    assert arena.direct("SELECT to_regclass('public.nokey')")[0][0] is None


def test_keyword_list_against_the_server(arena: Arena) -> None:
    """Measured on the server the suite runs: every word pglast's grammar does not take as
    a plain name (reserved, column-name or type/function-name keyword) that this server
    takes as a name (unreserved keyword, or not a keyword) is in NEWER_KEYWORDS."""
    server = dict(arena.direct("SELECT word, catcode FROM pg_get_keywords()"))
    restricted = RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS
    names_here = {w for w in restricted if server.get(w, "U") == "U"}
    listed = frozenset().union(*NEWER_KEYWORDS.values())
    assert names_here <= listed, sorted(names_here - listed)
    # and the list holds only words this server takes as names, or keywords it has from
    # the version the list says
    for version, words in NEWER_KEYWORDS.items():
        for word in words:
            if arena.server.version_num < version * 10000:
                assert server.get(word, "U") == "U", (word, server.get(word))
