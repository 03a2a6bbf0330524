"""softguard.wire.function_call.function_call_int_arg: lo_open's mode read from a
FunctionCall body, in text and binary format; None for anything it cannot read."""

from __future__ import annotations

import struct

import pytest

from softguard.wire.function_call import function_call_int_arg, lo_open_mode


def body(formats: list[int], args: list[bytes | None]) -> bytes:
    out = struct.pack("!Ih", 952, len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    out += struct.pack("!h", len(args))
    for a in args:
        out += struct.pack("!i", -1) if a is None else struct.pack("!i", len(a)) + a
    return out + struct.pack("!h", 0)


@pytest.mark.parametrize(
    ("data", "index", "expected"),
    [
        (body([0], [b"4242", b"131072"]), 1, 131072),
        (body([], [b"4242", b" +262144 "]), 1, 262144),
        (body([1], [struct.pack("!I", 4242), struct.pack("!i", 131072)]), 1, 131072),
        (body([0, 1], [b"4242", struct.pack("!i", 262144)]), 1, 262144),
        (body([0], [b"4242", b"0x20000"]), 1, None),  # PostgreSQL 16 reads hex: unknown
        (body([0], [b"4242", None]), 1, None),
        (body([0], [b"4242"]), 1, None),
        (body([0], [b"4242", b"131072"])[:16], 1, None),
        (b"\0\0", 1, None),
    ],
)
def test_int_arg(data: bytes, index: int, expected: int | None) -> None:
    assert function_call_int_arg(data, index) == expected


def test_lo_open_mode() -> None:
    assert lo_open_mode(body([0], [b"4242", b"131072"])) == 131072
    assert lo_open_mode(body([0], [b"4242", b"0x20000"])) is None  # unknown: as a write
    assert lo_open_mode(body([1], [struct.pack("!i", 0)])) == 0  # wrong arity: server refuses
    assert lo_open_mode(b"\0\0\0") is None
