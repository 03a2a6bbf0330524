"""The users file (verifiers softguard checks clients against) and the passfile (passwords
softguard holds for the server): what they accept, refuse, and how they are written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from softguard.auth.passfile import PassFile, PassFileError
from softguard.auth.scram import Verifier
from softguard.auth.users import User, UsersFile, UsersFileError


def test_users_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    users = UsersFile.load(path, missing_ok=True)
    # passwords with a space and a dash: base64 (the verifiers) cannot contain them
    first, second = "agent pass-one", "odd pass-two"
    users.put(User("agent-1", Verifier.from_password(first), "app", ("shop",)))
    users.put(User('odd "name"\\', Verifier.from_password(second), "odd"))
    users.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert first not in text and second not in text and "pass-" not in text  # verifiers only
    again = UsersFile.load(path)
    assert again.users == users.users
    agent = again.get("agent-1")
    assert agent is not None and agent.may_open("shop") and not agent.may_open("other")
    assert again.remove("agent-1") and not again.remove("agent-1")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[users.a]\nrole = 'x'\n", "not a SCRAM-SHA-256 verifier"),
        ("[users.a]\nverifier = 'md5abc'\n", "not a SCRAM-SHA-256 verifier"),
        ("[users.a]\npassword = 'x'\n", "unknown keys"),
        ("[other]\n", "unknown top-level keys"),
        ("[users]\na = 1\n", "expected a table"),
        ("not toml [", "not valid TOML"),
        ("[users.a]\nverifier = '{v}'\ndatabases = 'x'\n", "must be a list"),
        ("[users.a]\nverifier = '{v}'\nrole = ''\n", "not a valid name"),
    ],
)
def test_users_file_refuses_invalid_entries(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text.replace("{v}", Verifier.from_password("pw").format()))
    with pytest.raises(UsersFileError, match=error) as info:
        UsersFile.load(path)
    assert str(path) in str(info.value)


def test_missing_users_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="does not exist"):
        UsersFile.load(tmp_path / "nope.toml")
    assert UsersFile.load(tmp_path / "nope.toml", missing_ok=True).users == {}


def _passfile(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pgpass"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_passfile_lookup_follows_libpq(tmp_path: Path) -> None:
    path = _passfile(
        tmp_path,
        "# comment\n"
        "127.0.0.1:5432:shop:app:first\n"
        "127.0.0.1:5432:shop:app:shadowed\n"
        "*:*:*:ops:with\\:colon\\\\back\n"
        "malformed line\n"
        "localhost:*:*:*:socket\n",
    )
    pf = PassFile.load(path)
    assert pf.lookup("127.0.0.1", 5432, "shop", "app") == "first"
    assert pf.lookup("127.0.0.1", 5433, "shop", "app") is None
    assert pf.lookup("10.0.0.1", 1, "x", "ops") == "with:colon\\back"
    assert pf.lookup("localhost", 5432, "any", "anyone") == "socket"


def test_passfile_readable_by_others_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PassFileError, match="chmod 0600"):
        PassFile.load(_passfile(tmp_path, "*:*:*:*:pw\n", 0o644))
    with pytest.raises(PassFileError, match="does not exist"):
        PassFile.load(tmp_path / "missing")
