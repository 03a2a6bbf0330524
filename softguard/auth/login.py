"""The two logins of a session whose authentication softguard ends: the client's, to
softguard (``ClientLogin``, checked against the users file), and softguard's, to the
server (``ServerLogin``, with a password softguard holds). Sans-IO: each takes message
bodies and returns the messages to send.

What the client is told on failure is what PostgreSQL tells it (28P01, "password
authentication failed for user ..."), whether the user is unknown, the password wrong or
the database not allowed, so a client cannot probe which users exist. The log says which.
"""

from __future__ import annotations

import secrets
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

from softguard.auth.passfile import PassFile
from softguard.auth.scram import (
    AuthFailed,
    ScramClient,
    ScramServer,
    Verifier,
    md5_password_response,
    tls_server_end_point,
)
from softguard.auth.users import User, UsersFile
from softguard.wire.constants import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
)

__all__ = ["ClientLogin", "Credentials", "LoginRefused", "ServerLogin", "certificate_binding"]

_R = ord("R")
_P = ord("p")


def _auth_message(code: int, data: bytes = b"") -> bytes:
    body = struct.pack("!I", code) + data
    return bytes((_R,)) + struct.pack("!I", len(body) + 4) + body


def _password_message(body: bytes) -> bytes:
    return bytes((_P,)) + struct.pack("!I", len(body) + 4) + body


class LoginRefused(Exception):
    """The login failed: ``sqlstate`` and ``message`` for the client, ``reason`` for
    the log only."""

    def __init__(self, sqlstate: str, message: str, reason: str) -> None:
        super().__init__(reason)
        self.sqlstate = sqlstate
        self.message = message
        self.reason = reason


@dataclass
class Credentials:
    """What softguard holds to end authentication itself: who may log in, and the
    passwords for the server. Replaced whole on reload."""

    users: UsersFile
    passfile: PassFile | None = None
    password: str | None = None  # one password for every role (upstream DSN / environment)
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 5432
    tls_binding: bytes | None = None  # tls-server-end-point of softguard's certificate
    mock_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def load(
        cls,
        users_file: Path,
        passfile: Path | None,
        password: str | None,
        upstream_host: str,
        upstream_port: int,
        tls_cert: Path | None,
    ) -> Credentials:
        return cls(
            UsersFile.load(users_file),
            PassFile.load(passfile) if passfile is not None else None,
            password,
            upstream_host,
            upstream_port,
            certificate_binding(tls_cert) if tls_cert is not None else None,
        )

    def server_password(self, database: str, role: str) -> str | None:
        if self.passfile is not None:
            host = "localhost" if self.upstream_host.startswith("/") else self.upstream_host
            found = self.passfile.lookup(host, self.upstream_port, database, role)
            if found is not None:
                return found
        return self.password


def certificate_binding(cert_file: Path) -> bytes | None:
    """The ``tls-server-end-point`` binding of the first certificate in a PEM file (the
    one softguard presents to clients)."""
    text = cert_file.read_text(encoding="ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        return None
    return tls_server_end_point(ssl.PEM_cert_to_DER_cert(text[begin : end + len(end_marker)]))


def _failed(user: str) -> LoginRefused:
    return LoginRefused("28P01", f'password authentication failed for user "{user}"', "")


class ClientLogin:
    """softguard checks the client: SCRAM-SHA-256 (with channel binding over TLS)."""

    def __init__(self, credentials: Credentials, user: str, database: str, tls: bool) -> None:
        self.user = user
        self.database = database
        self._known: User | None = credentials.users.get(user)
        verifier = (
            self._known.verifier
            if self._known is not None
            else Verifier.mock(user, credentials.mock_secret)
        )
        self._scram = ScramServer(verifier, credentials.tls_binding if tls else None)
        self._started = False
        self.done = False

    @property
    def role(self) -> str:
        """The database role the session runs as (known once ``done``)."""
        assert self._known is not None
        return self._known.role

    def opening(self) -> bytes:
        """AuthenticationSASL: the mechanisms offered."""
        names = b"".join(m.encode("ascii") + b"\0" for m in self._scram.mechanisms())
        return _auth_message(AUTH_SASL, names + b"\0")

    def password_message(self, body: bytes) -> bytes:
        """A 'p' message from the client -> what to answer. After the last answer
        (AuthenticationSASLFinal) ``done`` is set; AuthenticationOk is the server's."""
        try:
            if not self._started:
                self._started = True
                return _auth_message(AUTH_SASL_CONTINUE, self._initial(body))
            final = self._scram.final(body)
        except AuthFailed as exc:
            if exc.protocol:
                raise LoginRefused("08P01", f"malformed SCRAM message: {exc}", str(exc)) from None
            refused = _failed(self.user)
            refused.reason = str(exc) if self._known is not None else "no such softguard user"
            raise refused from None
        if self._known is None:  # unreachable: a mock verifier matches no proof
            raise _failed(self.user)
        if not self._known.may_open(self.database):
            refused = _failed(self.user)
            refused.reason = f"database {self.database!r} is not in the user's databases"
            raise refused
        self.done = True
        return _auth_message(AUTH_SASL_FINAL, final)

    def _initial(self, body: bytes) -> bytes:
        name, sep, rest = body.partition(b"\0")
        if not sep or len(rest) < 4:
            raise AuthFailed("malformed SASLInitialResponse", protocol=True)
        (length,) = struct.unpack_from("!i", rest)
        data = rest[4:]
        if length != len(data):
            raise AuthFailed("SASLInitialResponse length does not match", protocol=True)
        return self._scram.first(name.decode("ascii", "replace"), data)


class ServerLogin:
    """softguard logs in to the server as ``role`` with a password it holds: SCRAM
    (channel-bound when the server's certificate is known), MD5 or cleartext, whichever
    the server asks for."""

    def __init__(self, role: str, password: str | None, server_cert_binding: bytes | None) -> None:
        self.role = role
        self._password = password
        self._binding = server_cert_binding
        self._scram: ScramClient | None = None

    def request(self, body: bytes) -> bytes | None:
        """An 'R' message body from the server -> the answer to send it, or None when
        the message is AuthenticationOk (pass it to the client)."""
        (code,) = struct.unpack_from("!I", body)
        data = body[4:]
        if code == AUTH_OK:
            return None
        password = self._password
        if password is None:
            raise LoginRefused(
                "28000",
                f'softguard holds no password for role "{self.role}" on the server',
                f"the server asks for a password (method {code}) and none is held for "
                f"role {self.role!r}: add it to the upstream passfile",
            )
        try:
            if code == AUTH_SASL:
                offered = [m.decode("ascii", "replace") for m in data.split(b"\0") if m]
                self._scram = ScramClient(password, self._binding)
                mechanism = self._scram.choose(offered)
                first = self._scram.first()
                return _password_message(
                    mechanism.encode("ascii") + b"\0" + struct.pack("!i", len(first)) + first
                )
            if code == AUTH_SASL_CONTINUE and self._scram is not None:
                return _password_message(self._scram.final(data))
            if code == AUTH_SASL_FINAL and self._scram is not None:
                self._scram.verify(data)
                return b""
            if code == AUTH_MD5 and len(data) == 4:
                return _password_message(md5_password_response(self.role, password, data) + b"\0")
            if code == AUTH_CLEARTEXT:
                return _password_message(password.encode("utf-8") + b"\0")
        except AuthFailed as exc:
            raise LoginRefused(
                "28P01",
                f'softguard could not log in to the server as role "{self.role}"',
                str(exc),
            ) from None
        raise LoginRefused(
            "28000",
            f'softguard could not log in to the server as role "{self.role}"',
            f"the server asks for authentication method {code}, which softguard does not "
            "speak (it speaks SCRAM-SHA-256, MD5 and cleartext passwords)",
        )
