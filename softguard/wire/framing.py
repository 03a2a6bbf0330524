"""Incremental message framing for one direction of a connection.

A ``Framer`` walks message headers across chunk boundaries without joining buffers:
messages nobody needs to read are only skipped over (their bytes are forwarded as they
arrive, however large), while messages of a *wanted* type are handed out whole, with
their offsets in the buffer so the caller can forward, drop or replace them.

Invariant: the bytes of a wanted message are never forwardable before the message is
complete; everything else is forwardable at once. ``feed`` returns ``held``, the number
of bytes at the end of the returned buffer that must not be forwarded yet.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from struct import Struct

from softguard.speedups import FramerBase
from softguard.wire.constants import MAX_MESSAGE_LENGTH
from softguard.wire.errors import ClientProtocolError, MessageTooLarge, ProtocolViolation

_INT32 = Struct("!I")
_unpack_int32 = _INT32.unpack_from
_PARSE, _SYNC = b"PS"


@dataclass(slots=True)
class Message:
    """One complete wanted message. ``start`` is -1 if it began in an earlier chunk."""

    type: int
    body: bytes
    start: int
    end: int

    @property
    def raw(self) -> bytes:
        return bytes((self.type,)) + _INT32.pack(len(self.body) + 4) + self.body


class Framer(FramerBase):
    """Splits a byte stream of typed protocol messages (everything after startup).

    ``want``: message types handed out whole (None: every type).
    ``allowed``: the only types accepted (None: any); others raise ``error_class``.
    """

    # The rest are FramerBase's: fields the compiled fast path reads (softguard/speedups.py).
    __slots__ = ("_acc_total", "_allowed", "_error_class", "_want")

    def __init__(
        self,
        *,
        want: frozenset[int] | None,
        allowed: frozenset[int] | None = None,
        max_length: int = MAX_MESSAGE_LENGTH,
        max_want_length: int = MAX_MESSAGE_LENGTH,
        error_class: type[ProtocolViolation] = ClientProtocolError,
    ) -> None:
        self._want = want
        self._allowed = allowed
        self._max_length = max_length
        self._max_want = max_want_length
        self._error_class = error_class
        self._skip = 0  # body bytes still to pass of a message nobody reads
        self._head = b""  # an incomplete header (< 5 bytes) held from the last chunk
        self._acc: bytearray | None = None  # an incomplete wanted message
        self._acc_total = 0
        self._lone_limit = 1 + min(max_length, max_want_length)
        self._readable: frozenset[int] = frozenset()
        self._stop: frozenset[int] = frozenset()
        self.set_want(want)

    @property
    def at_boundary(self) -> bool:
        """True when the stream so far ends exactly at a message boundary."""
        return not self._skip and not self._head and self._acc is None

    def set_want(self, want: frozenset[int] | None) -> None:
        self._want = want
        self._readable, self._stop = _lone_sets(want, self._allowed)

    def lone(self, data: bytes, mtype: int) -> bool:
        """True when ``data`` is exactly one whole message of the wanted type ``mtype`` and
        the stream is at a message boundary: what ``feed`` would hand out as the only
        message, leaving the framer as it was. The caller may take it without feeding it
        (the relay's one-Query-per-chunk path, pgbench -S)."""
        n = len(data)
        return (
            5 < n <= self._lone_limit
            and data[0] == mtype
            and mtype in self._readable
            and _unpack_int32(data, 1)[0] == n - 1
            and self._acc is None
            and not self._head
            and not self._skip
        )

    def lone_last(self, data: bytes, mtype: int, length: int, start: int = 0) -> bool:
        """True when ``data`` is whole messages from a message boundary, none of them
        wanted but the last, which is of the wanted type ``mtype`` and has the length
        field ``length`` (4 or more): what ``feed`` would hand out as its only message,
        leaving the framer as it was. The caller may take the chunk without feeding it
        (answers ending in ReadyForQuery, a client's Bind/Execute/Sync). ``start``: where
        the walk begins (``parse_then_sync`` has read the bytes before it)."""
        n = len(data)
        last = n - 1 - length
        if (
            last < 0
            or data[last] != mtype
            or _unpack_int32(data, last + 1)[0] != length
            or mtype not in self._readable
            or length > self._max_want
            or n > self._max_length
            or self._acc is not None
            or self._head
            or self._skip
        ):
            return False
        # Every length read below is < n <= max_length; one under 4 is left to ``feed``.
        stop = self._stop
        unpack = _unpack_int32
        pos = start
        while pos < last:  # bounded: each step passes a whole message (5 bytes or more)
            if data[pos] in stop:
                return False
            (size,) = unpack(data, pos + 1)
            if size < 4:
                return False
            pos += 1 + size
        return pos == last

    def parse_then_sync(self, data: bytes) -> bytes | None:
        """The query text of the Parse that ``data`` begins with, when ``data`` is that
        whole Parse from a message boundary, then whole messages none of them wanted but
        the last, a Sync (a driver's Parse/Bind/Describe/Execute/Sync): what ``feed``
        would hand out as its only two messages, leaving the framer as it was. None for
        any other chunk, and for a Parse ``parse_query_text`` would refuse (``feed``'s
        caller reports it)."""
        n = len(data)
        if n < 5 or data[0] != _PARSE or _PARSE not in self._readable:
            return None
        (size,) = _unpack_int32(data, 1)
        end = 1 + size
        if not 4 <= size <= self._max_want or end > n or not self.lone_last(data, _SYNC, 4, end):
            return None
        name_end = data.find(b"\0", 5, end)
        text_end = data.find(b"\0", name_end + 1, end) if name_end >= 0 else -1
        return data[name_end + 1 : text_end] if text_end >= 0 else None

    def feed(self, data: bytes) -> tuple[bytes, list[Message], int]:
        """Consume ``data``; return ``(buf, messages, held)``.

        ``buf`` is ``data`` or, when a header straddled chunks, the held bytes followed
        by ``data``. Offsets of ``messages`` refer to ``buf``.
        """
        msgs: list[Message] = []
        pos = 0
        acc = self._acc
        if acc is not None:
            need = self._acc_total - len(acc)
            if len(data) < need:
                acc += data
                return data, msgs, len(data)
            acc += data[:need]
            self._acc = None
            msgs.append(Message(acc[0], bytes(acc[5:]), -1, need))
            buf = data
            pos = need
        elif self._head:
            buf = self._head + data
            self._head = b""
        else:
            buf = data
            skip = self._skip
            if skip:
                if skip >= len(data):
                    self._skip = skip - len(data)
                    return data, msgs, 0
                self._skip = 0
                pos = skip

        n = len(buf)
        want = self._want
        allowed = self._allowed
        max_length = self._max_length
        unpack = _unpack_int32
        while True:
            if pos + 5 > n:
                if pos < n:
                    self._head = buf[pos:]
                return buf, msgs, n - pos
            mtype = buf[pos]
            (length,) = unpack(buf, pos + 1)
            if allowed is not None and mtype not in allowed:
                raise self._error_class(f"invalid message type {_show_type(mtype)}")
            if not 4 <= length <= max_length:
                raise self._error_class(
                    f"invalid message length {length} for message type {_show_type(mtype)}"
                )
            end = pos + 1 + length
            if want is None or mtype in want:
                if length > self._max_want:
                    raise MessageTooLarge(
                        f"message of type {_show_type(mtype)} is {length} bytes, more than "
                        f"softguard inspects (max_inspect_bytes = {self._max_want})"
                    )
                if end <= n:
                    msgs.append(Message(mtype, buf[pos + 5 : end], pos, end))
                    pos = end
                    continue
                self._acc = bytearray(buf[pos:])
                self._acc_total = 1 + length
                return buf, msgs, n - pos
            if end <= n:
                pos = end
                continue
            self._skip = end - n
            return buf, msgs, 0


@functools.lru_cache(maxsize=32)
def _lone_sets(
    want: frozenset[int] | None, allowed: frozenset[int] | None
) -> tuple[frozenset[int], frozenset[int]]:
    """For ``lone`` and ``lone_last``: the types handed out whole, and the types that end
    their walk (wanted, or refused). A few framer configurations exist: computed once."""
    readable = frozenset(
        t for t in range(256) if (want is None or t in want) and (allowed is None or t in allowed)
    )
    stop = frozenset(
        t
        for t in range(256)
        if want is None or t in want or (allowed is not None and t not in allowed)
    )
    return readable, stop


def _show_type(mtype: int) -> str:
    if 0x20 < mtype < 0x7F:
        return f"'{chr(mtype)}'"
    return f"0x{mtype:02x}"
