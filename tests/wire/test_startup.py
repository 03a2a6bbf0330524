"""Startup packets and the messages softguard builds or rewrites."""

from __future__ import annotations

import struct

import pytest

from softguard.wire import (
    CancelRequest,
    ClientProtocolError,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupReader,
    error_response,
    parse_fields,
    parse_query_text,
    strip_scram_plus,
)
from softguard.wire.constants import PROTOCOL_3_0, PROTOCOL_3_2


def packet(code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(payload), code) + payload


def test_startup_message_3_0_and_3_2() -> None:
    for version in (PROTOCOL_3_0, PROTOCOL_3_2):
        raw = packet(version, b"user\0alice\0database\0shop\0application_name\0agent\0\0")
        pkt, rest = StartupReader().feed(raw)
        assert isinstance(pkt, StartupMessage) and rest == b""
        assert (pkt.user, pkt.database, pkt.application_name) == ("alice", "shop", "agent")
        assert pkt.raw == raw and pkt.minor == version & 0xFFFF


def test_database_defaults_to_user() -> None:
    pkt, _ = StartupReader().feed(packet(PROTOCOL_3_0, b"user\0bob\0\0"))
    assert isinstance(pkt, StartupMessage) and pkt.database == "bob"


def test_packet_split_across_chunks_and_rest_returned() -> None:
    raw = packet(80877103)
    reader = StartupReader()
    assert reader.feed(raw[:3]) == (None, b"")
    pkt, rest = reader.feed(raw[3:] + b"extra")
    assert isinstance(pkt, SSLRequest) and rest == b"extra"


def test_gssenc_and_cancel() -> None:
    pkt, _ = StartupReader().feed(packet(80877104))
    assert isinstance(pkt, GSSENCRequest)
    key = b"k" * 32  # protocol 3.2 keys are longer than 4 bytes
    pkt, _ = StartupReader().feed(packet(80877102, struct.pack("!I", 4242) + key))
    assert isinstance(pkt, CancelRequest) and pkt.pid == 4242 and pkt.key == key


@pytest.mark.parametrize(
    "raw, sqlstate, text",
    [
        (struct.pack("!I", 4), "08P01", "invalid length of startup packet"),
        (struct.pack("!I", 1_000_000), "08P01", "invalid length of startup packet"),
        (packet(2 << 16, b"user\0x\0\0"), "0A000", "unsupported frontend protocol 2.0"),
        (packet(PROTOCOL_3_0, b"user\0x"), "08P01", "expected terminator"),
        (packet(PROTOCOL_3_0, b"user\0\0"), "08P01", "parameter without a value"),
        (b"GET / HTTP/1.1\r\n\r\n", "08P01", "invalid length of startup packet"),
    ],
)
def test_bad_startup_packets(raw: bytes, sqlstate: str, text: str) -> None:
    with pytest.raises(ClientProtocolError) as info:
        StartupReader().feed(raw)
    assert info.value.sqlstate == sqlstate and text in info.value.message


def test_error_response_round_trip() -> None:
    raw = error_response("42P01", 'relation "x" does not exist', severity="FATAL", hint="h")
    assert raw[:1] == b"E" and struct.unpack("!I", raw[1:5])[0] == len(raw) - 1
    fields = parse_fields(raw[5:])
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "42P01",
        "M": 'relation "x" does not exist',
        "H": "h",
    }


def test_query_text_of_query_and_parse() -> None:
    assert parse_query_text(ord("Q"), b"select 1\0") == b"select 1"
    assert parse_query_text(ord("P"), b"s\0delete from t\0\0\0") == b"delete from t"
    with pytest.raises(ClientProtocolError):
        parse_query_text(ord("Q"), b"select 1")
    with pytest.raises(ClientProtocolError):
        parse_query_text(ord("P"), b"s\0delete")


def test_scram_plus_is_withdrawn() -> None:
    body = struct.pack("!I", 10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    assert strip_scram_plus(body) == struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"
