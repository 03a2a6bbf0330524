"""softguard's settings: one pydantic model, passed explicitly (no globals).

Precedence, highest first: command-line flags, ``SOFTGUARD_*`` environment variables,
the TOML file given with ``--config``, defaults.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from softguard.policy import ByteSize, PolicyConfig
from softguard.soft_delete_config import SoftDeleteRule

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class CaptureBudget:
    """What softguard.settings holds (softguard/ledger/budget.py keeps it equal)."""

    max_capture_bytes: int
    min_free_disk_percent: float


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SOFTGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    listen: str = Field("127.0.0.1:6432", description="HOST:PORT the proxy listens on")
    upstream: str | None = Field(
        None,
        description="DSN of the PostgreSQL server (host, port, sslmode, optional "
        "credentials); unset: start an embedded throwaway server",
    )
    workers: int = Field(1, ge=1, le=64, description="processes sharing the port (SO_REUSEPORT)")
    tls_cert: Path | None = Field(None, description="certificate for client TLS")
    tls_key: Path | None = Field(None, description="private key for client TLS")
    upstream_pooler: Literal["none", "session", "transaction"] = Field(
        "none",
        description="'session' when a session-mode pooler or a TCP proxy sits between "
        "softguard and the server; 'transaction' for a transaction-mode pooler (protection "
        "is then registered per login role: decision 0026); otherwise sessions whose server "
        "sees another client port are refused",
    )
    users_file: Path | None = Field(
        None,
        description="clients log in to softguard with the SCRAM verifiers in this file "
        "(`softguard user`) and softguard logs in to the server itself; unset: "
        "authentication is relayed between client and server",
    )
    upstream_passfile: Path | None = Field(
        None,
        description="passwords softguard logs in to the server with (libpq passfile "
        "format, mode 0600), for sessions and for its own ledger connections",
    )
    upstream_password: SecretStr | None = Field(
        None,
        description="one password for every role on the server (prefer "
        "upstream_passfile); set it through SOFTGUARD_UPSTREAM_PASSWORD, not a file",
    )
    require_tls: bool = Field(
        False, description="refuse clients that do not negotiate TLS (needs tls_cert/tls_key)"
    )
    max_client_conn: int = Field(5000, ge=1, description="client connections per process")
    max_inspect_bytes: int = Field(
        64 << 20, ge=1024, description="largest Query/Parse message held for inspection"
    )
    client_stall_timeout: float = Field(
        60.0, gt=0, description="seconds a client may stall in the middle of a message"
    )
    startup_timeout: float = Field(60.0, gt=0, description="seconds to finish startup and auth")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to reach the upstream")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds open transactions get to finish"
    )
    classify_cache_size: int = Field(4096, ge=0, description="classifications cached by text")
    soft_delete_refresh: float = Field(
        60.0, gt=0, description="seconds after which a database's soft-delete tables are re-read"
    )
    log_level: LogLevel = "info"
    log_file: Path | None = Field(
        None, description="append the log to this file (reopened when moved); unset: stderr"
    )
    data_dir: Path | None = Field(None, description="data directory of the embedded server")
    metrics: str | None = Field(
        None,
        description="HOST:PORT of the Prometheus endpoint (worker i of N on PORT+i); unset: off",
    )
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig())
    soft_delete: list[SoftDeleteRule] = Field(
        default_factory=list,
        description="tables whose DELETEs become the application's soft delete (an UPDATE "
        "of a mark column); first matching entry wins",
    )
    purge_every: float | None = Field(
        None,
        gt=0,
        description="run purge from serve every this many seconds (a duration like '1h' or "
        "'30m' is accepted); unset: never (run softguard purge yourself)",
    )
    purge_dsn: str | None = Field(
        None,
        description="superuser DSN the scheduled purge connects with (its database name is "
        "replaced by each database purged); unset: the upstream DSN",
    )
    purge_databases: list[str] | None = Field(
        None,
        description="databases the scheduled purge covers; unset: every database of the "
        "server that has the softguard ledger",
    )
    max_quarantine_bytes: int | None = Field(
        None,
        ge=0,
        description="warn loudly (never evict) when a database's quarantine holds more",
    )
    max_capture_bytes: ByteSize = Field(
        1 << 30,
        ge=0,
        description="most one statement may copy into the ledger (DELETE, UPDATE, TRUNCATE "
        "rows); over it the statement is refused (54000) and changes nothing. A size like "
        "'64kB', '512MB' or '1GiB' is accepted",
    )
    min_free_disk_percent: float = Field(
        10.0,
        ge=0,
        le=100,
        description="refuse a capture that would leave less of the disk free (only where "
        "softguard can measure the server's disk: a server on this host)",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value)
        return value

    @field_validator("purge_dsn")
    @classmethod
    def _check_purge_dsn(cls, value: str | None) -> str | None:
        if value is not None:
            from psycopg import Error, conninfo

            try:
                conninfo.conninfo_to_dict(value)
            except Error as exc:
                raise ValueError(f"not a valid DSN: {exc}") from None
        return value

    @property
    def capture_budget(self) -> CaptureBudget:
        return CaptureBudget(self.max_capture_bytes, self.min_free_disk_percent)

    @property
    def captures_updates(self) -> bool:
        """Does this configuration need UPDATE capture in the database (decision 0023): a
        rule protects or denies UPDATE, or a soft delete marks rows with an UPDATE."""
        return self.policy.protects_updates or bool(self.soft_delete)

    @field_validator("purge_every", mode="before")
    @classmethod
    def _parse_purge_every(cls, value: Any) -> Any:
        return parse_duration_seconds(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return self

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        # Read now, so that a bad file is one clear error at start, not a failed login.
        from softguard.auth.passfile import PassFile
        from softguard.auth.users import UsersFile

        if self.users_file is not None:
            UsersFile.load(self.users_file)
        if self.upstream_passfile is not None:
            PassFile.load(self.upstream_passfile)
        return self

    @property
    def listen_host(self) -> str:
        return parse_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_hostport(self.listen)[1]

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics is None else parse_hostport(self.metrics)


_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_seconds(text: str) -> float:
    """'90s', '30m', '1h', '7d', '2w', '1h30m' or a number of seconds -> seconds."""
    s = text.strip().lower()
    if _DURATION.match(s):
        return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(s)))
    try:
        return float(s)
    except ValueError:
        raise ValueError(
            f"expected a duration like 90s, 30m, 1h, 7d (or seconds), got {text!r}"
        ) from None


def parse_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]:")
    else:
        host, sep, rest = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    try:
        port = int(rest)
    except ValueError:
        raise ValueError(f"port must be a number in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build the settings: ``flags`` (None meaning not given) > env > file > defaults."""
    file_values = _read_toml(config_file) if config_file is not None else {}

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_values))

    try:
        layered = _Layered(**{k: v for k, v in flags.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(_explain(exc, config_file)) from exc
    return layered


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # Keys may sit at the top level or under a [softguard] table.
    table = values.get("softguard")
    return dict(table) if isinstance(table, dict) else values


def _explain(exc: ValueError, config_file: Path | None) -> str:
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        lines.append(f"{where}: {err['msg']}")
    origin = f" (flags, SOFTGUARD_* environment, {config_file})" if config_file else ""
    return "invalid configuration" + origin + ":\n  " + "\n  ".join(lines)
