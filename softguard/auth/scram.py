"""SCRAM-SHA-256 as PostgreSQL speaks it (RFC 5802, RFC 7677; the manual's "SASL
Authentication" section), both sides, without I/O.

PostgreSQL's dialect: the client sends an empty user name in its first message (the user
is the startup packet's), channel binding is ``tls-server-end-point`` only, and a verifier
is stored as ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

__all__ = [
    "MECHANISM",
    "MECHANISM_PLUS",
    "AuthFailed",
    "ScramClient",
    "ScramServer",
    "Verifier",
    "md5_password_response",
    "saslprep",
    "tls_server_end_point",
]

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
_NONCE_BYTES = 18  # as PostgreSQL's SCRAM_RAW_NONCE_LEN
_SALT_BYTES = 16


class AuthFailed(Exception):
    """The exchange failed. ``str()`` is for the log; the client is told only that
    authentication failed (28P01) or the message was malformed (08P01)."""

    def __init__(self, reason: str, *, protocol: bool = False) -> None:
        super().__init__(reason)
        self.protocol = protocol  # the peer broke the exchange's syntax (08P01)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise AuthFailed(f"invalid base64 {text[:40]!r}", protocol=True) from exc


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep of a password, as PostgreSQL applies it: a password that is not
    valid under the profile is used as given (so any byte string stays usable)."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in password
        if not stringprep.in_table_b1(c)
    )
    text = unicodedata.normalize("NFKC", mapped)
    if not text:
        return password
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(c) for c in text for check in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in text):
        # Bidirectional text must start and end with RandALCat, and hold no LCat.
        if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
            return password
        if any(stringprep.in_table_d2(c) for c in text):
            return password
    return text


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)


@dataclass(frozen=True)
class Verifier:
    """What a server stores instead of a password."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
    ) -> Verifier:
        salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
        salted = _salted_password(password, salt, iterations)
        return cls(
            iterations,
            salt,
            _sha256(_hmac(salted, b"Client Key")),
            _hmac(salted, b"Server Key"),
        )

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Read ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``."""
        try:
            method, iter_salt, keys = text.strip().split("$")
            iterations, salt = iter_salt.split(":")
            stored, server = keys.split(":")
            n = int(iterations)
        except ValueError:
            raise ValueError("not a SCRAM-SHA-256 verifier") from None
        if method != MECHANISM or n < 1:
            raise ValueError("not a SCRAM-SHA-256 verifier")
        try:
            parts = [_unb64(salt), _unb64(stored), _unb64(server)]
        except AuthFailed:
            raise ValueError("not a SCRAM-SHA-256 verifier: bad base64") from None
        if len(parts[1]) != 32 or len(parts[2]) != 32:
            raise ValueError("not a SCRAM-SHA-256 verifier: keys must be 32 bytes")
        return cls(n, *parts)

    def format(self) -> str:
        return (
            f"{MECHANISM}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    @classmethod
    def mock(cls, user: str, secret: bytes) -> Verifier:
        """A verifier no password matches, stable per user name: an unknown user goes
        through the whole exchange and fails at the end, like a wrong password, so the
        answers do not tell which users exist (PostgreSQL does the same)."""
        salt = _hmac(secret, b"salt:" + user.encode("utf-8"))[:_SALT_BYTES]
        key = _hmac(secret, b"key:" + user.encode("utf-8"))
        return cls(DEFAULT_ITERATIONS, salt, key, key)


def _attributes(message: str, expected: str) -> dict[str, str]:
    """``a=x,b=y`` in the order *expected* gives (one letter each); extensions refused."""
    parts = message.split(",")
    out: dict[str, str] = {}
    for letter, part in zip(expected, parts, strict=False):
        if len(part) < 2 or part[0] != letter or part[1] != "=":
            raise AuthFailed(f"expected attribute {letter!r} in {message[:80]!r}", protocol=True)
        out[letter] = part[2:]
    if len(parts) < len(expected):
        raise AuthFailed(f"missing attributes in {message[:80]!r}", protocol=True)
    for part in parts[len(expected) :]:
        # Extensions are ignored, as PostgreSQL does, but must be well formed; a mandatory
        # one ("m=") cannot be honoured.
        if len(part) < 2 or not part[0].isalpha() or part[1] != "=" or part[0] == "m":
            raise AuthFailed(f"unsupported SCRAM attribute {part[:20]!r}", protocol=True)
    return out


def _printable_nonce(nonce: str) -> None:
    if not nonce or any(not (0x21 <= ord(c) <= 0x7E) or c == "," for c in nonce):
        raise AuthFailed("invalid nonce", protocol=True)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthFailed("SCRAM message is not UTF-8", protocol=True) from exc


class ScramServer:
    """The server side of one exchange: softguard authenticating a client.

    ``channel_binding`` is the ``tls-server-end-point`` hash of softguard's certificate
    when the client connection is TLS (then SCRAM-SHA-256-PLUS is offered), else None.
    """

    def __init__(
        self, verifier: Verifier, channel_binding: bytes | None = None, nonce: str | None = None
    ) -> None:
        self._verifier = verifier
        self._binding = channel_binding
        self._server_nonce = nonce or _b64(secrets.token_bytes(_NONCE_BYTES))
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._done = False

    def mechanisms(self) -> list[str]:
        return [MECHANISM_PLUS, MECHANISM] if self._binding is not None else [MECHANISM]

    def first(self, mechanism: str, data: bytes) -> bytes:
        """The client's first message -> the server's first message."""
        if mechanism not in self.mechanisms():
            raise AuthFailed(f"mechanism {mechanism!r} was not offered", protocol=True)
        text = _decode(data)
        flag, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2:
            raise AuthFailed("malformed SCRAM client-first-message", protocol=True)
        if mechanism == MECHANISM_PLUS:
            if flag != "p=tls-server-end-point":
                raise AuthFailed(
                    "SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point",
                    protocol=True,
                )
        elif flag == "y" and self._binding is not None:
            # The client could bind but believes we cannot: a man in the middle removed
            # the PLUS mechanism from what we offered (RFC 5802 section 6).
            raise AuthFailed("channel binding was offered but the client did not use it")
        elif flag not in ("n", "y"):
            raise AuthFailed(f"unexpected channel binding flag {flag[:20]!r}", protocol=True)
        if authzid:
            raise AuthFailed("an authorization identity is not supported", protocol=True)
        attrs = _attributes(bare, "nr")
        _printable_nonce(attrs["r"])
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = attrs["r"] + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first.encode("ascii")

    def final(self, data: bytes) -> bytes:
        """The client's final message -> the server's final message (``v=...``), or
        AuthFailed when the proof or the channel binding does not match."""
        if not self._server_first or self._done:
            raise AuthFailed("SCRAM exchange out of order", protocol=True)
        self._done = True
        text = _decode(data)
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise AuthFailed("SCRAM client-final-message has no proof", protocol=True)
        attrs = _attributes(without_proof, "cr")
        expected = self._gs2_header.encode("ascii")
        if self._gs2_header.startswith("p="):
            assert self._binding is not None
            expected += self._binding
        if not hmac.compare_digest(_unb64(attrs["c"]), expected):
            raise AuthFailed("SCRAM channel binding does not match")
        if attrs["r"] != self._nonce:
            raise AuthFailed("SCRAM nonce does not match", protocol=True)
        proof = _unb64(proof_part)
        if len(proof) != 32:
            raise AuthFailed("SCRAM proof has the wrong length", protocol=True)
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        v = self._verifier
        signature = _hmac(v.stored_key, auth_message.encode("utf-8"))
        client_key = _xor(proof, signature)
        if not hmac.compare_digest(_sha256(client_key), v.stored_key):
            raise AuthFailed("password does not match")
        return f"v={_b64(_hmac(v.server_key, auth_message.encode('utf-8')))}".encode("ascii")


class ScramClient:
    """The client side of one exchange: softguard authenticating to the server with a
    password it holds. ``channel_binding`` is the server certificate's
    ``tls-server-end-point`` hash when the upstream connection is TLS, else None."""

    def __init__(
        self,
        password: str,
        channel_binding: bytes | None = None,
        nonce: str | None = None,
        user: str = "",  # PostgreSQL ignores it (the startup packet's user counts)
    ) -> None:
        self._password = password
        self._user = user.replace("=", "=3D").replace(",", "=2C")
        self._binding = channel_binding
        self._client_nonce = nonce or _b64(secrets.token_bytes(_NONCE_BYTES))
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_signature = b""

    def choose(self, offered: list[str]) -> str:
        if self._binding is not None and MECHANISM_PLUS in offered:
            self._gs2_header = "p=tls-server-end-point,,"
            return MECHANISM_PLUS
        if MECHANISM in offered:
            self._gs2_header = "y,," if self._binding is not None else "n,,"
            return MECHANISM
        raise AuthFailed(f"the server offers no mechanism softguard speaks: {offered}")

    def first(self) -> bytes:
        if not self._gs2_header:
            raise AuthFailed("choose() a mechanism first", protocol=True)
        self._client_first_bare = f"n={self._user},r={self._client_nonce}"
        return (self._gs2_header + self._client_first_bare).encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        text = _decode(server_first)
        attrs = _attributes(text, "rsi")
        if not attrs["r"].startswith(self._client_nonce) or attrs["r"] == self._client_nonce:
            raise AuthFailed("the server's nonce does not extend ours", protocol=True)
        _printable_nonce(attrs["r"])
        try:
            iterations = int(attrs["i"])
        except ValueError:
            raise AuthFailed("invalid iteration count", protocol=True) from None
        if not 1 <= iterations <= 10_000_000:
            raise AuthFailed(f"iteration count {iterations} out of range", protocol=True)
        salted = _salted_password(self._password, _unb64(attrs["s"]), iterations)
        client_key = _hmac(salted, b"Client Key")
        cbind = self._gs2_header.encode("ascii")
        if self._gs2_header.startswith("p="):
            assert self._binding is not None
            cbind += self._binding
        without_proof = f"c={_b64(cbind)},r={attrs['r']}"
        auth_message = ",".join((self._client_first_bare, text, without_proof)).encode("utf-8")
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """Check the server's signature: a server that does not know the password
        cannot produce it (mutual authentication)."""
        text = _decode(server_final)
        if text.startswith("e="):
            raise AuthFailed(f"the server rejected the exchange: {text[2:80]}")
        attrs = _attributes(text, "v")
        if not self._server_signature or not hmac.compare_digest(
            _unb64(attrs["v"]), self._server_signature
        ):
            raise AuthFailed("the server's SCRAM signature does not match")


def md5_password_response(user: str, password: str, salt: bytes) -> bytes:
    """The answer to AuthenticationMD5Password: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")


# Signature algorithm OIDs (DER bodies) -> the hash tls-server-end-point uses (RFC 5929
# section 4.1: MD5 and SHA-1 are replaced by SHA-256).
_SIGNATURE_HASHES = {
    bytes.fromhex("2a864886f70d010104"): "sha256",  # md5WithRSAEncryption
    bytes.fromhex("2a864886f70d010105"): "sha256",  # sha1WithRSAEncryption
    bytes.fromhex("2a864886f70d01010e"): "sha224",
    bytes.fromhex("2a864886f70d01010b"): "sha256",
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
    bytes.fromhex("2a8648ce3d040301"): "sha224",  # ecdsa-with-SHA224
    bytes.fromhex("2a8648ce3d040302"): "sha256",
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
    bytes.fromhex("2a8648ce3d0401"): "sha256",  # ecdsa-with-SHA1
}


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER item at *pos*."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def tls_server_end_point(cert_der: bytes) -> bytes | None:
    """The ``tls-server-end-point`` channel binding data of a certificate: its hash under
    the hash of its signature algorithm. None when that hash is undefined (for example
    Ed25519 certificates; PostgreSQL cannot bind those either)."""
    try:
        tag, start, _end = _der_item(cert_der, 0)  # Certificate
        if tag != 0x30:
            return None
        _t, _s, tbs_end = _der_item(cert_der, start)  # tbsCertificate
        tag, alg_start, _alg_end = _der_item(cert_der, tbs_end)  # signatureAlgorithm
        if tag != 0x30:
            return None
        tag, oid_start, oid_end = _der_item(cert_der, alg_start)
        if tag != 0x06:
            return None
    except (IndexError, ValueError):
        return None
    name = _SIGNATURE_HASHES.get(cert_der[oid_start:oid_end])
    return hashlib.new(name, cert_der).digest() if name else None
