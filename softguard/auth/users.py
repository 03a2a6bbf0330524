"""softguard's users file: who may connect to softguard, and as which database role.

TOML, one table per user::

    [users."agent-1"]
    verifier = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
    role = "app"            # the database role the session runs as (default: the user's name)
    databases = ["app"]     # optional: the only databases this user may open

Only verifiers are stored, never passwords: a copy of the file does not let anyone log in.
Written atomically (a new file renamed over the old one), mode 0600.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from softguard.auth.scram import Verifier

__all__ = ["User", "UsersFile", "UsersFileError"]

_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,63}")


class UsersFileError(ValueError):
    """The users file cannot be read or holds something invalid; names the file and entry."""


@dataclass(frozen=True)
class User:
    name: str
    verifier: Verifier
    role: str
    databases: tuple[str, ...] = field(default=())

    def may_open(self, database: str) -> bool:
        return not self.databases or database in self.databases


def _check_name(where: str, what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsersFileError(
            f"{where}: {what} {name!r} is not a valid name (1-63 printable characters)"
        )
    return name


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class UsersFile:
    """The users of one file, loaded whole (the file is small; reloaded on SIGHUP)."""

    def __init__(self, path: Path, users: Mapping[str, User]) -> None:
        self.path = path
        self.users = dict(users)

    @classmethod
    def load(cls, path: Path, *, missing_ok: bool = False) -> UsersFile:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return cls(path, {})
            raise UsersFileError(f"users file {path} does not exist") from None
        except OSError as exc:
            raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsersFileError(f"users file {path} is not valid TOML: {exc}") from None
        unknown = set(doc) - {"users"}
        if unknown:
            raise UsersFileError(f"users file {path}: unknown top-level keys {sorted(unknown)}")
        users: dict[str, User] = {}
        for name, entry in (doc.get("users") or {}).items():
            users[name] = cls._entry(path, name, entry)
        return cls(path, users)

    @staticmethod
    def _entry(path: Path, name: str, entry: object) -> User:
        where = f"users file {path}, user {name!r}"
        _check_name(f"users file {path}", "user", name)
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: expected a table")
        unknown = set(entry) - {"verifier", "role", "databases"}
        if unknown:
            raise UsersFileError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            verifier = Verifier.parse(str(entry.get("verifier", "")))
        except ValueError as exc:
            raise UsersFileError(f"{where}: {exc}") from None
        role = _check_name(where, "role", entry.get("role", name))
        databases = entry.get("databases", [])
        if not isinstance(databases, list):
            raise UsersFileError(f"{where}: databases must be a list of names")
        names = tuple(_check_name(where, "database", d) for d in databases)
        return User(name, verifier, role, names)

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def put(self, user: User) -> None:
        self.users[user.name] = user

    def remove(self, name: str) -> bool:
        return self.users.pop(name, None) is not None

    def save(self) -> None:
        lines = [
            "# softguard users: SCRAM verifiers only, never passwords (`softguard user --help`).",
            "",
        ]
        for user in sorted(self.users.values(), key=lambda u: u.name):
            lines.append(f"[users.{_toml_string(user.name)}]")
            lines.append(f"verifier = {_toml_string(user.verifier.format())}")
            lines.append(f"role = {_toml_string(user.role)}")
            if user.databases:
                lines.append("databases = [" + ", ".join(map(_toml_string, user.databases)) + "]")
            lines.append("")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
