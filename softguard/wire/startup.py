"""The untyped packets a client sends first: StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest. PostgreSQL frames these with a length but no type byte."""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct

from softguard.wire.constants import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET,
    SSL_REQUEST_CODE,
)
from softguard.wire.errors import ClientProtocolError

_INT32 = Struct("!I")
_TWO_INT32 = Struct("!II")


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: dict[str, str]
    raw: bytes = field(repr=False)

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user

    @property
    def application_name(self) -> str:
        return self.params.get("application_name", "")

    def with_settings(self, settings: dict[str, str], *, reserved_prefix: str) -> bytes:
        """The packet with ``settings`` as startup parameters (session defaults), and any
        parameter the client sent whose name starts with ``reserved_prefix`` removed.

        PostgreSQL applies startup parameters after the ``options`` string, so a
        ``-c`` the client put in ``options`` cannot override them either.
        """
        params = {k: v for k, v in self.params.items() if not k.lower().startswith(reserved_prefix)}
        params.update(settings)
        body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
        body = _INT32.pack(self.version) + body + b"\0"
        return _INT32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    key: bytes
    raw: bytes = field(repr=False)


Packet = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


class StartupReader:
    """Accumulates one startup-phase packet; bounded by PostgreSQL's own ceiling."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[Packet | None, bytes]:
        """Return ``(packet, rest)``; ``packet`` is None until one is complete."""
        buf = self._buf + data if self._buf else data
        if len(buf) < 4:
            self._buf = buf
            return None, b""
        (length,) = _INT32.unpack_from(buf)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ClientProtocolError("invalid length of startup packet")
        if len(buf) < length:
            self._buf = buf
            return None, b""
        self._buf = b""
        return parse_packet(buf[:length]), buf[length:]


def parse_packet(raw: bytes) -> Packet:
    (length, code) = _TWO_INT32.unpack_from(raw)
    if code == SSL_REQUEST_CODE:
        return SSLRequest(raw)
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest(raw)
    if code == CANCEL_REQUEST_CODE:
        if length < 16 or length > 8 + 4 + 256:
            raise ClientProtocolError("invalid length of cancel request packet")
        (pid,) = _INT32.unpack_from(raw, 8)
        return CancelRequest(pid, raw[12:length], raw)
    major = code >> 16
    if major != 3:
        raise ClientProtocolError(
            f"unsupported frontend protocol {major}.{code & 0xFFFF}: softguard supports 3.0 to 3.2",
            sqlstate="0A000",
        )
    return StartupMessage(code, _parse_params(raw[8:]), raw)


def _parse_params(body: bytes) -> dict[str, str]:
    if not body or body[-1] != 0:
        raise ClientProtocolError("invalid startup packet layout: expected terminator as last byte")
    pairs = body[:-1]
    if not pairs:
        return {}
    if pairs[-1] != 0:
        raise ClientProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = pairs[:-1].split(b"\0")
    if len(parts) % 2:
        raise ClientProtocolError("invalid startup packet layout: parameter without a value")
    params: dict[str, str] = {}
    # The server decides what the bytes mean; softguard only reads them for logs and rules.
    for i in range(0, len(parts), 2):
        params[parts[i].decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
    return params
