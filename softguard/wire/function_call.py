"""FunctionCall ('F') messages: which function, and the answer when softguard refuses one.

A FunctionCall runs a function by OID with no SQL text, so the SQL classifier never sees
it. The policy decides by OID (`softguard.policy.Policy.decide_function_call`); a refused
call is answered here: ErrorResponse (42501) and the ReadyForQuery the client waits for.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from struct import Struct
from struct import error as struct_error

from softguard.wire.errors import ClientProtocolError
from softguard.wire.messages import error_response, ready_for_query

__all__ = [
    "function_call_args",
    "function_call_int_arg",
    "function_call_oid",
    "function_call_refusal",
    "lo_open_mode",
]

_OID = Struct("!I")
_INT16 = Struct("!h")
_INT32 = Struct("!i")
# What int4in reads the same way as Python's int(); anything else (hex, underscores): None.
_DECIMAL = re.compile(r"\s*[+-]?[0-9]{1,10}\s*")

REFUSAL_HINT = (
    "Run the function with a SELECT (for example SELECT lo_unlink(1234)) so softguard can "
    "inspect it."
)


def function_call_oid(body: bytes) -> int:
    """The OID of the function a FunctionCall body (after the type byte and length) calls."""
    if len(body) < 4:
        raise ClientProtocolError("FunctionCall message too short")
    return int(_OID.unpack_from(body)[0])


def function_call_args(body: bytes) -> list[tuple[int, bytes | None]] | None:
    """The arguments of a FunctionCall body as (format code, value or None for NULL);
    None when the body is malformed (the server rejects it)."""
    try:
        (nformats,) = _INT16.unpack_from(body, 4)
        formats = [_INT16.unpack_from(body, 6 + 2 * i)[0] for i in range(max(nformats, 0))]
        pos = 6 + 2 * len(formats)
        (nargs,) = _INT16.unpack_from(body, pos)
        pos += 2
        args: list[tuple[int, bytes | None]] = []
        for i in range(max(nargs, 0)):
            (length,) = _INT32.unpack_from(body, pos)
            pos += 4
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            if length < 0:
                args.append((fmt, None))
                continue
            if pos + length > len(body):
                return None
            args.append((fmt, body[pos : pos + length]))
            pos += length
    except (IndexError, struct_error):
        return None
    return args


def function_call_int_arg(body: bytes, index: int) -> int | None:
    """Argument *index* (0-based) of a FunctionCall body read as an integer (int4 in binary
    format, or plain decimal digits in text format); None when absent, NULL or not read."""
    args = function_call_args(body)
    if args is None or not 0 <= index < len(args):
        return None
    fmt, value = args[index]
    if value is None:
        return None
    if fmt == 1:
        return int(_INT32.unpack(value)[0]) if len(value) == 4 else None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return int(text) if _DECIMAL.fullmatch(text) else None


def lo_open_mode(body: bytes) -> int | None:
    """The mode of a FunctionCall of ``lo_open(oid, mode)``: None when it cannot be read
    (the policy then assumes writing); 0 when the call does not carry two arguments (the
    server refuses that arity: nothing is opened)."""
    args = function_call_args(body)
    if args is not None and len(args) != 2:
        return 0
    return function_call_int_arg(body, 1)


def function_call_refusal(reason: str, status: int) -> bytes:
    """ErrorResponse (SQLSTATE 42501, *reason*, a HINT to use SELECT) followed by
    ReadyForQuery(*status*). *status* is the transaction status of the last
    ReadyForQuery the server sent: the call never reached it, so its state is unchanged."""
    return error_response("42501", reason, hint=REFUSAL_HINT) + ready_for_query(status)
