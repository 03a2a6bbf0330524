"""The passwords softguard holds for the server, in libpq's passfile format
(``host:port:database:username:password``, ``*`` matches anything, ``\\`` escapes ``:``
and ``\\``; the first matching line wins). The same file serves softguard's own
ledger connections (psycopg reads it as ``passfile``), so one secret store covers both.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PassFile", "PassFileError"]


class PassFileError(ValueError):
    """The passfile cannot be used; names the file and why."""


def _split(line: str) -> list[str] | None:
    fields: list[str] = []
    cur: list[str] = []
    chars = iter(line)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            cur.append(nxt)
        elif c == ":" and len(fields) < 4:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    fields.append("".join(cur))
    return fields if len(fields) == 5 else None


@dataclass(frozen=True)
class _Entry:
    host: str
    port: str
    database: str
    user: str
    password: str

    def matches(self, host: str, port: str, database: str, user: str) -> bool:
        return all(
            pattern == "*" or pattern == value
            for pattern, value in (
                (self.host, host),
                (self.port, port),
                (self.database, database),
                (self.user, user),
            )
        )


class PassFile:
    def __init__(self, path: Path, entries: list[_Entry]) -> None:
        self.path = path
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> PassFile:
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PassFileError(f"passfile {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PassFileError(f"cannot read passfile {path}: {exc}") from None
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            # libpq ignores such a file; softguard refuses it loudly instead.
            raise PassFileError(
                f"passfile {path} is readable by group or others; chmod 0600 it"
            )
        entries = []
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = _split(line)
            if fields is not None:
                entries.append(_Entry(*fields))
        return cls(path, entries)

    def lookup(self, host: str, port: int, database: str, user: str) -> str | None:
        """The password for a connection, or None. A Unix-socket host matches
        ``localhost``, as in libpq."""
        for entry in self._entries:
            if entry.matches(host, str(port), database, user):
                return entry.password
        return None
