"""The byte-level readings of NoticeResponse/ErrorResponse bodies (``parse_fields``,
``without_context``) give the answers of the field-by-field readings they replaced, on
real notices and on random and corrupted bodies."""

from __future__ import annotations

import random

import pytest

from softguard.wire.errors import ServerProtocolError
from softguard.wire.messages import message, parse_fields
from softguard.wire.results import _without_context, without_context


def _reference_fields(body: bytes) -> dict[str, str]:
    """``parse_fields`` as it was written first: one ``find`` per field."""
    out: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise ServerProtocolError("unterminated field in error/notice message")
        out[code] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


def _answer(f: object, *args: object) -> object:
    try:
        return f(*args)  # type: ignore[operator]
    except ServerProtocolError as exc:
        return ("raised", exc.message)


_TRIGGER_NOTICE = (
    b"SNOTICE\0VNOTICE\0C00000\0"
    b"Msoftguard: DELETE public.t is reversible as operation 42 until 2026-12-14\0"
    b"WPL/pgSQL function softguard._capture_rows() line 80 at RAISE\0"
    b"Fpl_exec.c\0L3911\0Rexec_stmt_raise\0\0"
)


def test_a_trigger_notice_loses_exactly_its_context_fields() -> None:
    out = without_context(ord("N"), _TRIGGER_NOTICE)
    assert out == message(
        b"N",
        b"SNOTICE\0VNOTICE\0C00000\0"
        b"Msoftguard: DELETE public.t is reversible as operation 42 until 2026-12-14\0\0",
    )
    assert out == _without_context(ord("N"), _TRIGGER_NOTICE)


def _random_body(rng: random.Random) -> bytes:
    codes = b"SVCMWqpFLRDHPSVCMWF\x00\xff"
    texts = [
        b"",
        b"softguard: DELETE public.t is reversible as operation 7 until 2026-12-14",
        b"NOTICE",
        b"softguard: DROP TABLE t is reversible as operation 1 until 2030-01-01",
        b"softguard: x",
        b"softguar",
        "caf\u00e9".encode(),
        b"\xff\xfe bad utf-8",
        b"line 6 at RAISE",
    ]
    count = rng.randrange(8)
    # Mostly distinct codes, as a server sends them; sometimes repeated ones.
    chosen = rng.sample(codes, count) if rng.random() < 0.7 else rng.choices(codes, k=count)
    fields = [bytes((code,)) + rng.choice(texts) + b"\0" for code in chosen]
    body = b"".join(fields) + rng.choice([b"\0", b"\0", b"\0", b"", b"\0trailing\0", b"\0\0"])
    if body and rng.random() < 0.3:  # corrupt, cut or extend one byte
        i = rng.randrange(len(body))
        what = rng.randrange(3)
        if what == 0:
            body = body[:i] + bytes((rng.randrange(256),)) + body[i + 1 :]
        elif what == 1:
            body = body[:i]
        else:
            body = body[:i] + bytes((rng.choice(b"\0M W"),)) + body[i:]
    return body


@pytest.mark.parametrize("seed", range(4))
def test_byte_level_readings_agree_with_the_reference_on_random_bodies(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):  # bounded
        body = _random_body(rng)
        assert _answer(parse_fields, body) == _answer(_reference_fields, body), body
        mtype = rng.choice(b"NE")
        assert _answer(without_context, mtype, body) == _answer(
            _without_context, mtype, body
        ), body
