"""Sans-IO PostgreSQL protocol codec (protocol 3.0 and 3.2).

Owns: splitting byte streams into messages, reading startup packets, building the few
messages softguard itself sends (ErrorResponse, NoticeResponse, ...), and rewriting the
authentication offer.

Rules that always hold here:
- No I/O: nothing in this package imports asyncio or socket. Bytes in, values/bytes out.
- Bytes that nobody must inspect are never copied into Python objects beyond slicing.
- Malformed input raises a ``ProtocolViolation`` subclass carrying the SQLSTATE the peer
  should be told; the codec never guesses past a bad frame.
"""

from softguard.wire.errors import (
    ClientProtocolError,
    MessageTooLarge,
    ProtocolViolation,
    ServerProtocolError,
)
from softguard.wire.framing import Framer, Message
from softguard.wire.messages import (
    error_response,
    notice_response,
    parse_fields,
    parse_query_text,
    strip_scram_plus,
)
from softguard.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupReader,
)

__all__ = [
    "CancelRequest",
    "ClientProtocolError",
    "Framer",
    "GSSENCRequest",
    "Message",
    "MessageTooLarge",
    "ProtocolViolation",
    "SSLRequest",
    "ServerProtocolError",
    "StartupMessage",
    "StartupReader",
    "error_response",
    "notice_response",
    "parse_fields",
    "parse_query_text",
    "strip_scram_plus",
]
