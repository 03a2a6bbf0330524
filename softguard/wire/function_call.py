"""FunctionCall ('F') messages: which function, and the answer when softguard refuses one.

A FunctionCall runs a function by OID with no SQL text, so the SQL classifier never sees
it. The policy decides by OID (`softguard.policy.Policy.decide_function_call`); a refused
call is answered here: ErrorResponse (42501) and the ReadyForQuery the client waits for.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

from struct import Struct

from softguard.wire.errors import ClientProtocolError
from softguard.wire.messages import error_response, ready_for_query

__all__ = ["function_call_oid", "function_call_refusal"]

_OID = Struct("!I")

REFUSAL_HINT = (
    "Run the function with a SELECT (for example SELECT lo_unlink(1234)) so softguard can "
    "inspect it."
)


def function_call_oid(body: bytes) -> int:
    """The OID of the function a FunctionCall body (after the type byte and length) calls."""
    if len(body) < 4:
        raise ClientProtocolError("FunctionCall message too short")
    return int(_OID.unpack_from(body)[0])


def function_call_refusal(reason: str, status: int) -> bytes:
    """ErrorResponse (SQLSTATE 42501, *reason*, a HINT to use SELECT) followed by
    ReadyForQuery(*status*). *status* is the transaction status of the last
    ReadyForQuery the server sent: the call never reached it, so its state is unchanged."""
    return error_response("42501", reason, hint=REFUSAL_HINT) + ready_for_query(status)
