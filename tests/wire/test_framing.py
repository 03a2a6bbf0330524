"""Sans-IO tests of the framer: bytes in, messages and forwardable bytes out."""

from __future__ import annotations

import random
import struct

import pytest

from softguard.wire import ClientProtocolError, Framer, MessageTooLarge, parse_query_text
from softguard.wire.constants import FRONTEND_TYPES


def msg(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


WANT = frozenset(b"QP")


def replay(
    stream: bytes, cuts: list[int], want: frozenset[int] = WANT
) -> tuple[bytes, list[bytes]]:
    """Feed ``stream`` split at ``cuts``; return (forwarded bytes, wanted raw messages).

    Forwarding follows the caller contract of softguard.proxy.session: bytes between
    wanted messages go out as they come, wanted messages go out whole.
    """
    framer = Framer(want=want, allowed=FRONTEND_TYPES)
    out = bytearray()
    wanted: list[bytes] = []
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for piece in pieces:
        buf, msgs, held = framer.feed(piece)
        cursor = 0
        for m in msgs:
            if m.start > cursor:
                out += buf[cursor : m.start]
            out += m.raw
            wanted.append(m.raw)
            cursor = m.end
        out += buf[cursor : len(buf) - held]
    assert framer.at_boundary
    return bytes(out), wanted


STREAM = (
    msg(b"Q", b"select 1\0")
    + msg(b"d", b"x" * 1000)
    + msg(b"P", b"s1\0delete from t where id = $1\0\0\0")
    + msg(b"B", b"\0s1\0\0\0\0\0\0\0")
    + msg(b"E", b"\0\0\0\0\0")
    + msg(b"S", b"")
    + msg(b"Q", "sélect 'ü'\0".encode())
)


def test_whole_stream_in_one_chunk_is_forwarded_unchanged() -> None:
    out, wanted = replay(STREAM, [])
    assert out == STREAM
    assert [w[:1] for w in wanted] == [b"Q", b"P", b"Q"]


@pytest.mark.parametrize("seed", range(200))
def test_any_split_preserves_bytes_and_messages(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
    out, wanted = replay(STREAM, cuts)
    assert out == STREAM
    assert [w[:1] for w in wanted] == [b"Q", b"P", b"Q"]


def test_every_single_byte_split() -> None:
    out, wanted = replay(STREAM, list(range(1, len(STREAM))))
    assert out == STREAM
    assert len(wanted) == 3


def test_unwanted_large_message_is_not_held() -> None:
    framer = Framer(want=WANT, allowed=FRONTEND_TYPES)
    big = msg(b"d", b"y" * 100_000)
    buf, msgs, held = framer.feed(big[:10])
    assert (msgs, held) == ([], 0)  # forwarded at once, not buffered
    buf, msgs, held = framer.feed(big[10:50_000])
    assert (msgs, held, len(buf)) == ([], 0, 49_990)
    assert not framer.at_boundary
    framer.feed(big[50_000:])
    assert framer.at_boundary


def test_wanted_message_is_held_until_complete() -> None:
    framer = Framer(want=WANT, allowed=FRONTEND_TYPES)
    q = msg(b"Q", b"select 42\0")
    _, msgs, held = framer.feed(q[:7])
    assert msgs == [] and held == 7
    _, msgs, held = framer.feed(q[7:])
    assert len(msgs) == 1 and msgs[0].start == -1 and msgs[0].body == b"select 42\0"
    assert msgs[0].raw == q


@pytest.mark.parametrize(
    "data, text",
    [
        (b"\x01\0\0\0\x04", "invalid message type 0x01"),
        (b"Z\0\0\0\x05I", "invalid message type 'Z'"),
        (b"Q\0\0\0\x03", "invalid message length 3"),
        (b"Q\x7f\xff\xff\xff", "invalid message length 2147483647"),
    ],
)
def test_bad_frames_raise_protocol_violation(data: bytes, text: str) -> None:
    framer = Framer(want=WANT, allowed=FRONTEND_TYPES)
    with pytest.raises(ClientProtocolError) as info:
        framer.feed(data)
    assert text in info.value.message
    assert info.value.sqlstate == "08P01"


def test_oversize_inspected_message_is_refused_before_buffering() -> None:
    framer = Framer(want=WANT, allowed=FRONTEND_TYPES, max_want_length=1024)
    with pytest.raises(MessageTooLarge) as info:
        framer.feed(b"Q" + struct.pack("!I", 10_000) + b"select")
    assert info.value.sqlstate == "54000"


def test_set_want_none_hands_out_everything() -> None:
    framer = Framer(want=None)
    stream = msg(b"R", b"\0\0\0\0") + msg(b"K", b"\0\0\0\1abcd") + msg(b"Z", b"I")
    _, msgs, held = framer.feed(stream)
    assert [chr(m.type) for m in msgs] == ["R", "K", "Z"] and held == 0


def _lone_last_agrees_with_feed(framer: Framer, chunk: bytes, mtype: int, length: int) -> None:
    """``lone_last`` answers True only where ``feed`` hands out that one last message and
    leaves the framer at a boundary."""
    said = framer.lone_last(chunk, mtype, length)
    try:
        buf, msgs, held = framer.feed(chunk)
    except ClientProtocolError:
        assert not said
        return
    if said:
        assert buf is chunk and held == 0 and framer.at_boundary
        last = len(chunk) - 1 - length
        assert [(m.type, m.start, m.end) for m in msgs] == [(mtype, last, len(chunk))]


def test_lone_last_is_a_chunk_whose_only_wanted_message_ends_it() -> None:
    framer = Framer(want=frozenset(b"QPSF"), allowed=FRONTEND_TYPES)
    sync = msg(b"S", b"")
    bind_execute = msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0")
    assert framer.lone_last(bind_execute + sync, ord("S"), 4)
    assert framer.lone_last(sync, ord("S"), 4)
    assert not framer.lone_last(bind_execute, ord("S"), 4)  # no Sync
    assert not framer.lone_last(msg(b"Q", b"x\0") + sync, ord("S"), 4)  # a wanted Query
    assert not framer.lone_last(bind_execute + sync + msg(b"H", b""), ord("S"), 4)  # not last
    assert not framer.lone_last(bind_execute[:-1] + sync, ord("S"), 4)  # torn message
    assert not framer.lone_last(msg(b"Z", b"") + sync, ord("S"), 4)  # not a client message
    assert not framer.lone_last(b"B\0\0\0\x02" + sync, ord("S"), 4)  # length under 4
    framer.feed(bind_execute[:3])  # a header split across chunks: not at a boundary
    assert not framer.lone_last(sync, ord("S"), 4)


def test_lone_last_agrees_with_feed_on_random_chunks() -> None:
    rng = random.Random(17)
    kinds = [b"B", b"E", b"D", b"S", b"Q", b"H", b"Z"]
    for _ in range(3000):
        parts = [msg(rng.choice(kinds), b"x" * rng.randrange(4)) for _ in range(rng.randrange(4))]
        chunk = b"".join(parts) + msg(b"S", b"")
        if rng.random() < 0.3:  # corrupt one byte
            i = rng.randrange(len(chunk))
            chunk = chunk[:i] + bytes((rng.randrange(256),)) + chunk[i + 1 :]
        _lone_last_agrees_with_feed(
            Framer(want=frozenset(b"QPSF"), allowed=FRONTEND_TYPES), chunk, ord("S"), 4
        )


def test_parse_then_sync_agrees_with_feed_on_random_chunks() -> None:
    """``parse_then_sync`` gives a text only where ``feed`` hands out exactly that Parse and
    the closing Sync, leaving the framer at a boundary, and the text is the Parse's."""
    rng = random.Random(23)
    kinds = [b"B", b"E", b"D", b"S", b"Q", b"H", b"P"]
    said_some = 0
    for _ in range(4000):
        body = rng.choice([b"", b"s1"]) + b"\0" + rng.choice([b"select 1", b"x\0y"]) + b"\0\0\0"
        parts = [msg(rng.choice(kinds), b"x" * rng.randrange(4)) for _ in range(rng.randrange(3))]
        chunk = msg(b"P", body) + b"".join(parts) + msg(b"S", b"")
        if rng.random() < 0.3:  # corrupt one byte
            i = rng.randrange(len(chunk))
            chunk = chunk[:i] + bytes((rng.randrange(256),)) + chunk[i + 1 :]
        framer = Framer(want=frozenset(b"QPSF"), allowed=FRONTEND_TYPES)
        text = framer.parse_then_sync(chunk)
        try:
            buf, msgs, held = framer.feed(chunk)
        except ClientProtocolError:
            assert text is None
            continue
        if text is not None:
            said_some += 1
            assert buf is chunk and held == 0 and framer.at_boundary
            assert [m.type for m in msgs] == [ord("P"), ord("S")]
            assert msgs[0].start == 0 and msgs[1].end == len(chunk)
            assert parse_query_text(ord("P"), msgs[0].body) == text
    assert said_some > 1000
