"""Building and reading the few messages softguard handles itself."""

from __future__ import annotations

from struct import Struct

from softguard.wire.errors import ClientProtocolError, ServerProtocolError

_INT32 = Struct("!I")
_HEADER = Struct("!cI")

SCRAM_PLUS = b"SCRAM-SHA-256-PLUS"


def message(mtype: bytes, body: bytes) -> bytes:
    return _HEADER.pack(mtype, len(body) + 4) + body


def _fields(
    severity: str,
    sqlstate: str,
    text: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    parts = [
        b"S" + severity.encode() + b"\0",
        b"V" + severity.encode() + b"\0",
        b"C" + sqlstate.encode() + b"\0",
        b"M" + text.replace("\0", "").encode() + b"\0",
    ]
    if detail:
        parts.append(b"D" + detail.replace("\0", "").encode() + b"\0")
    if hint:
        parts.append(b"H" + hint.replace("\0", "").encode() + b"\0")
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ErrorResponse ('E'). ``severity`` FATAL tells the client the session ends."""
    return message(b"E", _fields(severity, sqlstate, text, detail, hint))


def notice_response(
    text: str,
    *,
    severity: str = "NOTICE",
    sqlstate: str = "00000",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return message(b"N", _fields(severity, sqlstate, text, detail, hint))


def ready_for_query(status: int) -> bytes:
    return message(b"Z", bytes((status,)))


TERMINATE = message(b"X", b"")


def parse_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter code."""
    out: dict[str, str] = {}
    # One split in C instead of a find per field: each part is a field's code and text; an
    # empty part is the terminator (what follows it is not read); the part after the last
    # NUL is empty unless a field is unterminated.
    parts = body.split(b"\0")
    last = len(parts) - 1
    for i in range(last):  # bounded by the body's NULs
        part = parts[i]
        if not part:
            return out
        out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    if parts[last]:
        raise ServerProtocolError("unterminated field in error/notice message")
    return out


def with_hint(body: bytes, hint: str) -> bytes:
    """An ErrorResponse/NoticeResponse body with a HINT field added (or replaced)."""
    fields = parse_fields(body)
    fields["H"] = hint
    return (
        b"".join(code.encode() + value.encode() + b"\0" for code, value in fields.items()) + b"\0"
    )


def parse_query_text(mtype: int, body: bytes) -> bytes:
    """The SQL text of a Query ('Q') or Parse ('P') message body, without its NUL."""
    if mtype == 0x51:  # 'Q': query\0
        end = body.find(b"\0")
        if not body or end != len(body) - 1:
            raise ClientProtocolError("invalid Query message: text not NUL-terminated")
        return body[:end]
    # 'P': statement-name\0 query\0 int16 nparams, int32 * nparams
    name_end = body.find(b"\0")
    if name_end < 0:
        raise ClientProtocolError("invalid Parse message: unterminated statement name")
    end = body.find(b"\0", name_end + 1)
    if end < 0:
        raise ClientProtocolError("invalid Parse message: unterminated query text")
    return body[name_end + 1 : end]


def auth_code(body: bytes) -> int:
    if len(body) < 4:
        raise ServerProtocolError("authentication message too short")
    code: int = _INT32.unpack_from(body)[0]
    return code


def strip_scram_plus(body: bytes) -> bytes:
    """Withdraw SCRAM-SHA-256-PLUS from an AuthenticationSASL offer.

    Channel binding ties SCRAM to the TLS channel the server sees; softguard terminates
    the client's TLS itself, so a client that bound to softguard's certificate would
    fail at the server. Offering only the plain mechanisms keeps SCRAM working.
    """
    names = body[4:].split(b"\0")
    kept = [n for n in names if n and n != SCRAM_PLUS]
    return body[:4] + b"".join(n + b"\0" for n in kept) + b"\0"
