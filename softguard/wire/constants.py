"""Protocol constants (PostgreSQL Frontend/Backend Protocol, chapter 55 of the manual)."""

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# PostgreSQL's own ceiling for a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
# The largest message length PostgreSQL accepts (PQ_LARGE_MESSAGE_LIMIT is 1 GiB - 1).
MAX_MESSAGE_LENGTH = 0x3FFFFFFF

# Message types a frontend may send after startup.
FRONTEND_TYPES = frozenset(b"QPBEDCHSXFdcfp")

# Authentication request codes carried in 'R' messages.
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# Transaction status byte of ReadyForQuery.
TX_IDLE = ord("I")
TX_IN_BLOCK = ord("T")
TX_FAILED = ord("E")
