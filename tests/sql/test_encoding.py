"""One reading of the text: classify the characters the server parses, in every client
encoding, and refuse bytes whose statements depend on the encoding (issue 18 item 1)."""

from __future__ import annotations

import pytest

from softguard.policy import Action, Policy, PolicyConfig, Rule, SessionInfo
from softguard.sql import Classifier, Kind, classify
from softguard.sql.encoding import (
    ASCII_UNSAFE,
    PLACEHOLDER,
    canonical_encoding,
    decode,
    other_readings,
    wire_offset,
)
from softguard.sql.reading import classify_wire

SESSION = SessionInfo("app", "db", "psql", "127.0.0.1")
# Every client encoding PostgreSQL 14-18 supports.
ALL_ENCODINGS = (
    "UTF8", "SQL_ASCII", "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6",
    "LATIN7", "LATIN8", "LATIN9", "LATIN10", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7",
    "ISO_8859_8", "WIN866", "WIN874", "WIN1250", "WIN1251", "WIN1252", "WIN1253", "WIN1254",
    "WIN1255", "WIN1256", "WIN1257", "WIN1258", "KOI8R", "KOI8U", "EUC_JP", "EUC_JIS_2004",
    "EUC_CN", "EUC_KR", "EUC_TW", "MULE_INTERNAL", *ASCII_UNSAFE,
)  # fmt: skip
# Encodings in which a backslash can be a character's trailing byte (UHC's ASCII trails are
# letters only, JOHAB's trails are never ASCII).
SMUGGLING = ("SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030")


def refused_or_protected(data: bytes, encoding: str) -> bool:
    result = Classifier().classify_bytes(data, encoding)
    decisions = Policy().decide(result, SESSION, source="query", log_it=False)
    return result.kind is not Kind.SAFE and any(d.action is not Action.ALLOW for d in decisions)


# -- the issue's reproduction, in every encoding -------------------------------------------

SMUGGLE_UTF8 = "SELECT E'\u3042\\'; DROP TABLE big; --'".encode()  # あ = E3 81 82


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_the_issue_example_never_passes(encoding: str) -> None:
    data = b"SELECT E'\xc3\x81\\'; DROP TABLE big; --'"
    assert refused_or_protected(data, encoding)


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_a_drop_hidden_behind_a_multibyte_backslash_never_passes(encoding: str) -> None:
    assert refused_or_protected(SMUGGLE_UTF8, encoding)


@pytest.mark.parametrize("encoding", SMUGGLING)
def test_the_smuggled_drop_is_what_the_true_encoding_reads(encoding: str) -> None:
    # A client that really is in *encoding* sends a backslash as the trail of a character.
    lead = b"\x95" if encoding in ("SJIS", "SHIFT_JIS_2004") else b"\xa4"
    data = b"SELECT E'" + lead + b"\\'; DROP TABLE big; --'"
    (reading,) = [r for r in other_readings(data, "UTF8") if encoding in r.encodings]
    assert "DROP TABLE" in [s.action for s in classify(reading.text).statements]
    for claimed in ("UTF8", "LATIN1", encoding):
        assert refused_or_protected(data, claimed), claimed


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE big",
        "DELETE FROM big",
        "ALTER TABLE big DROP COLUMN c",
        "DO $$BEGIN DELETE FROM big; END$$",
        "SELECT pg_terminate_backend(1)",
    ],
)
@pytest.mark.parametrize("encoding", SMUGGLING)
def test_other_destructive_statements_do_not_pass_either(statement: str, encoding: str) -> None:
    data = SMUGGLE_UTF8.replace(b"DROP TABLE big", statement.encode())
    result = Classifier().classify_bytes(data, "UTF8")
    assert result.kind is Kind.UNPARSEABLE and result.ambiguous
    assert refused_or_protected(data, encoding)


def test_an_ambiguous_text_is_refused_even_where_unparseable_is_allowed() -> None:
    policy = Policy(PolicyConfig(unparseable="allow", rules=[Rule(unparseable="allow")]))
    result = Classifier().classify_bytes(SMUGGLE_UTF8, "UTF8")
    (decision,) = policy.decide(result, SESSION, source="query", log_it=False)
    assert decision.action is Action.DENY
    assert "client encoding" in decision.reason


def test_invalid_utf8_that_latin1_makes_a_truncate_is_refused() -> None:
    data = "TRUNCATE big; SELECT 'é'".encode("latin-1")
    result = Classifier().classify_bytes(data, "UTF8")
    assert result.kind is Kind.UNPARSEABLE and result.ambiguous
    # Read in the encoding it really is in, it is a TRUNCATE like any other.
    result = Classifier().classify_bytes(data, "LATIN1")
    assert result.kind is Kind.DESTRUCTIVE and result.statements[0].action == "TRUNCATE"


# -- legitimate non-ASCII text keeps its meaning -------------------------------------------

# client encoding -> (a name written in it, Python's codec for it)
_NAMES = {
    "UTF8": ("donnée", "utf-8"),
    "LATIN1": ("donnée", "latin-1"),
    "LATIN2": ("žluť", "iso8859-2"),
    "WIN1251": ("данные", "cp1251"),
    "KOI8R": ("данные", "koi8-r"),
    "ISO_8859_7": ("δεδομένα", "iso8859-7"),
    "EUC_JP": ("表", "euc_jp"),
    "EUC_KR": ("자료", "euc_kr"),
    "SJIS": ("データ表", "cp932"),
    "SHIFT_JIS_2004": ("データ表", "shift_jis_2004"),
    "BIG5": ("資料", "cp950"),
    "GBK": ("数据", "gbk"),
    "GB18030": ("数据", "gb18030"),
    "UHC": ("자료", "cp949"),
    "JOHAB": ("자료", "johab"),
}


@pytest.mark.parametrize("encoding", sorted(_NAMES))
def test_a_delete_in_each_encoding_reads_with_its_own_names(encoding: str) -> None:
    name, codec = _NAMES[encoding]
    data = f"SELECT '{name}'; DELETE FROM \"{name}\" WHERE note = '{name}'".encode(codec)
    result = Classifier().classify_bytes(data, encoding)
    assert result.kind is Kind.DESTRUCTIVE and not result.ambiguous
    stmt = result.statements[1]
    assert stmt.action == "DELETE" and stmt.targets[0].name == name
    start = wire_offset(data, encoding, stmt.location)
    assert data[start:].lstrip().startswith(b"DELETE")


def test_ascii_text_has_no_other_reading_and_keeps_the_exact_cache_key() -> None:
    assert other_readings(b"DROP TABLE t", "SJIS") == ()
    classifier = Classifier()
    first = classifier.classify_bytes(b"DROP TABLE t", "SJIS")
    assert classifier.classify_bytes(b"DROP TABLE t", "UTF8") is first


def test_the_cache_keeps_encodings_apart() -> None:
    classifier = Classifier()
    data = "TRUNCATE big; SELECT 'é'".encode("latin-1")
    assert classifier.classify_bytes(data, "LATIN1").kind is Kind.DESTRUCTIVE
    assert classifier.classify_bytes(data, "UTF8").ambiguous
    assert classifier.classify_shape(data, "UTF8").ambiguous


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("sjis", "SJIS"), ("Shift_JIS", "SJIS"), ("win1252", "WIN1252"), ("unicode", "UTF8"),
     ("iso-8859-1", "LATIN1"), ("euc-jp", "EUC_JP"), ("koi8", "KOI8R"), ("x", None)],
)  # fmt: skip
def test_encoding_names_are_read_like_postgres(spelling: str, name: str | None) -> None:
    assert canonical_encoding(spelling) == name


def test_unknown_or_unreadable_encodings_are_never_read_as_harmless() -> None:
    for encoding in ("EUC_TW", "MULE_INTERNAL", "nonsense"):
        with pytest.raises(ValueError):
            decode(b"\xa4\xa4", encoding)
        data = b"SELECT '\xa4\xa4'; DROP TABLE big"
        assert refused_or_protected(data, encoding)


def test_placeholder_readings_keep_every_ascii_byte() -> None:
    data = "DELETE FROM t WHERE a = 'é'".encode()
    for reading in other_readings(data, "SJIS"):
        assert reading.text.replace(PLACEHOLDER, "").startswith("DELETE FROM t WHERE a = '")


def test_classify_wire_gives_wire_offsets_of_constants_only_in_utf8() -> None:
    result, constants = classify_wire("DELETE FROM é WHERE id = 5".encode(), "UTF8")
    assert result.kind is Kind.DESTRUCTIVE and constants == frozenset({26})
    _, constants = classify_wire("DELETE FROM é WHERE id = 5".encode("latin-1"), "LATIN1")
    assert constants is None
