"""Settings precedence and validation: flags > SOFTGUARD_* env > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from softguard.config import ConfigError, Settings, load_settings, parse_hostport


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "softguard.toml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("SOFTGUARD_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert isinstance(s, Settings)
    assert (s.listen, s.workers, s.upstream, s.log_level) == ("127.0.0.1:6432", 1, None, "info")


def test_flags_beat_env_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, 'workers = 3\nlisten = "127.0.0.1:7000"\nlog_level = "error"\n')
    monkeypatch.setenv("SOFTGUARD_WORKERS", "2")
    monkeypatch.setenv("SOFTGUARD_LOG_LEVEL", "warning")
    s = load_settings(cfg, workers=None, log_level="debug")
    assert s.workers == 2  # env over file
    assert s.log_level == "debug"  # flag over env
    assert s.listen == "127.0.0.1:7000"  # file over default
    assert load_settings(cfg, workers=5).workers == 5


def test_softguard_table_in_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[softguard]\nupstream = "postgresql://127.0.0.1:5999"\n')
    assert load_settings(cfg).upstream == "postgresql://127.0.0.1:5999"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("workers = 0", "workers"),
        ("bogus = 1", "bogus"),
        ('listen = "nohost"', "HOST:PORT"),
        ('tls_cert = "/x.pem"', "tls_cert and tls_key"),
        ("workers = ", "not valid TOML"),
    ],
)
def test_bad_file_values_are_explained(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:6432", ("127.0.0.1", 6432)),
        ("[::1]:5", ("::1", 5)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["6432", ":6432", "h:x", "h:70000", "[::1]6432"])
def test_parse_hostport_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(value)
