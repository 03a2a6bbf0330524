"""Reaching the upstream PostgreSQL server: DSN parsing, TLS negotiation, cancel."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from struct import pack
from typing import Protocol, cast

from psycopg.conninfo import conninfo_to_dict

from softguard.wire.constants import SSL_REQUEST_CODE

SSL_REQUEST = pack("!II", 8, SSL_REQUEST_CODE)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class UpstreamError(Exception):
    """The upstream server could not be reached or refused the TLS we need."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    user: str | None = None
    password: str | None = None
    dbname: str | None = None

    @classmethod
    def from_dsn(cls, dsn: str) -> UpstreamTarget:
        try:
            params = conninfo_to_dict(dsn)
        except Exception as exc:
            raise UpstreamError(f"invalid upstream DSN: {exc}") from None
        host = str(params.get("host") or "127.0.0.1").split(",")[0]
        port_text = str(params.get("port") or "5432").split(",")[0]
        try:
            port = int(port_text)
        except ValueError:
            raise UpstreamError(f"invalid port {port_text!r} in upstream DSN") from None
        sslmode = str(params.get("sslmode") or "prefer")
        if sslmode not in _SSLMODES:
            raise UpstreamError(f"invalid sslmode {sslmode!r} in upstream DSN")

        def opt(name: str) -> str | None:
            value = params.get(name)
            return str(value) if value else None

        return cls(
            host=host,
            port=port,
            sslmode=sslmode,
            sslrootcert=opt("sslrootcert"),
            sslcert=opt("sslcert"),
            sslkey=opt("sslkey"),
            user=opt("user"),
            password=opt("password"),
            dbname=opt("dbname"),
        )

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/") or self.host.startswith("@")

    @property
    def display(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def wants_tls(self) -> bool:
        return not self.is_unix and self.sslmode in (
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.sslrootcert)
        if self.sslmode in ("prefer", "require") and self.sslrootcert is None:
            # libpq semantics: require without a root certificate encrypts but does not verify.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.sslmode != "verify-full":
            ctx.check_hostname = False
        if self.sslcert and self.sslkey:
            ctx.load_cert_chain(self.sslcert, self.sslkey)
        return ctx


class SSLAnswerSink(Protocol):
    """An upstream protocol that can hand the one-byte SSLRequest answer to a future."""

    def expect_ssl_answer(self) -> asyncio.Future[bytes]: ...


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    target: UpstreamTarget,
    protocol: asyncio.Protocol,
    sink: SSLAnswerSink,
    ssl_ctx: ssl.SSLContext | None,
) -> asyncio.BaseTransport:
    """Connect ``protocol`` to the upstream and negotiate TLS as ``target.sslmode`` says."""
    try:
        if target.is_unix:
            path = f"{target.host}/.s.PGSQL.{target.port}"
            transport, _ = await loop.create_unix_connection(lambda: protocol, path)
            return transport
        transport, _ = await loop.create_connection(lambda: protocol, target.host, target.port)
    except OSError as exc:
        raise UpstreamError(
            f"cannot connect to upstream server at {target.display}: {exc.strerror or exc}"
        ) from None
    if not target.wants_tls:
        return transport
    try:
        return await _negotiate_tls(loop, target, protocol, sink, ssl_ctx, transport)
    except BaseException:
        # Timed out or cancelled mid-negotiation: never leave the socket behind.
        transport.close()
        raise


async def _negotiate_tls(
    loop: asyncio.AbstractEventLoop,
    target: UpstreamTarget,
    protocol: asyncio.Protocol,
    sink: SSLAnswerSink,
    ssl_ctx: ssl.SSLContext | None,
    transport: asyncio.BaseTransport,
) -> asyncio.BaseTransport:
    writer = cast(asyncio.WriteTransport, transport)
    answer_future = sink.expect_ssl_answer()
    writer.write(SSL_REQUEST)
    answer = await answer_future
    if answer == b"S":
        assert ssl_ctx is not None
        server_hostname = target.host if target.sslmode == "verify-full" else None
        try:
            new = await loop.start_tls(writer, protocol, ssl_ctx, server_hostname=server_hostname)
        except (ssl.SSLError, OSError) as exc:
            transport.close()
            raise UpstreamError(
                f"TLS handshake with upstream {target.display} failed: {exc}"
            ) from None
        assert new is not None
        return new
    if answer == b"N" and target.sslmode == "prefer":
        return transport
    transport.close()
    if answer == b"N":
        raise UpstreamError(
            f"upstream server {target.display} does not support SSL, but sslmode={target.sslmode}"
        )
    raise UpstreamError(f"upstream server {target.display} answered SSLRequest with {answer!r}")
