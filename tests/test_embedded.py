"""Where the embedded server's binaries come from (softguard.embedded.find_pg_bin_dir), and
what `serve` and `demo` say when there are none.

"No binaries" is simulated with the locator's parameters (an empty directory for
/usr/lib/postgresql, no bundled packages) and a PATH without pg_config; nothing is
uninstalled. The bundled package itself is checked for real: the `test` extra installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import softguard.embedded as embedded
from softguard.embedded import (
    BUNDLED_PACKAGES,
    PORT_FILE,
    EmbeddedError,
    EmbeddedPostgres,
    NoServerBinaries,
    bundled_pg_bin_dir,
    find_pg_bin_dir,
)

# Runs the CLI with a locator that sees no machine binaries and no bundled package.
_CLI_WITHOUT_BINARIES = """
import functools, sys
from pathlib import Path
import softguard.embedded as embedded
embedded.find_pg_bin_dir = functools.partial(
    embedded.find_pg_bin_dir, debian_root=Path(sys.argv.pop(1)), packages=()
)
from softguard.cli.main import main
sys.argv[0] = "softguard"
main()
"""


def _fake_install(bin_dir: Path, names: tuple[str, ...] = ("postgres", "initdb")) -> Path:
    bin_dir.mkdir(parents=True)
    for name in names:
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return bin_dir


@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $SOFTGUARD_PG_BIN, no pg_config on PATH; returns an empty debian_root."""
    monkeypatch.delenv("SOFTGUARD_PG_BIN", raising=False)
    empty_path = tmp_path / "path"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    root = tmp_path / "usr-lib-postgresql"
    root.mkdir()
    return root


def test_no_binaries_anywhere_says_how_to_get_them(bare_machine: Path) -> None:
    with pytest.raises(NoServerBinaries) as caught:
        find_pg_bin_dir(debian_root=bare_machine, packages=())
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install 'softguard[embedded]'" in message
    assert "install" in message and "PostgreSQL" in message
    assert "SOFTGUARD_PG_BIN" in message


def test_machine_binaries_come_before_the_bundled_package(
    bare_machine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_install(bare_machine / "15" / "bin")
    _fake_install(bare_machine / "18" / "bin", ("postgres",))  # no initdb: skipped
    package = tmp_path / "site" / "fake_pg_wheel"
    (package / "__init__.py").parent.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _fake_install(package / "pginstall" / "bin")
    bundled18 = _fake_install(package / "pginstall18" / "bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    packages = (("fake_pg_wheel", ("pginstall18/bin", "pginstall/bin")),)

    assert find_pg_bin_dir(debian_root=bare_machine, packages=packages) == (
        bare_machine / "15" / "bin"
    )
    # Without machine binaries, the package's preferred install.
    empty = tmp_path / "none"
    empty.mkdir()
    assert find_pg_bin_dir(debian_root=empty, packages=packages) == bundled18
    assert bundled_pg_bin_dir(packages) == bundled18
    # $SOFTGUARD_PG_BIN beats both.
    chosen = _fake_install(tmp_path / "chosen")
    monkeypatch.setenv("SOFTGUARD_PG_BIN", str(chosen))
    assert find_pg_bin_dir(debian_root=bare_machine, packages=packages) == chosen


def test_the_embedded_extra_bundles_a_postgresql_18_server() -> None:
    # The classifier parses PostgreSQL 18's grammar (pglast 8); the bundled server is 18 too.
    bin_dir = bundled_pg_bin_dir()
    assert bin_dir is not None, f"none of {[m for m, _ in BUNDLED_PACKAGES]} is installed"
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"\(PostgreSQL\) 18\.", out.stdout), out.stdout


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["serve", "--listen", "127.0.0.1:0"], "--upstream"),
        (["demo"], "softguard[embedded]"),
    ],
)
def test_serve_and_demo_without_binaries_exit_2_with_one_line(
    bare_machine: Path, args: list[str], mentions: str
) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_BINARIES, str(bare_machine), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1, res.stderr
    assert "pip install 'softguard[embedded]'" in errors[0]
    assert mentions in errors[0]


# -- a --data-dir across restarts (issue 12, the operator's day) -------------------------


@pytest.fixture
def data_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from support.pg import short_tempdir
    from support.ports import free_port

    # A port kept across a restart must not be picked by another xdist worker meanwhile.
    monkeypatch.setattr(embedded, "_free_port", free_port)
    parent = short_tempdir("sg-emb-")
    parent.chmod(0o755)  # as root, the server runs as softguard-pg and must reach it
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def _server(data_dir: Path) -> EmbeddedPostgres:
    return EmbeddedPostgres(data_dir, server_settings={"fsync": "off"})


def test_a_data_dir_keeps_its_port_and_says_when_it_is_taken(data_parent: Path) -> None:
    data = data_parent / "data"
    first = _server(data)
    first.start()
    port = first.port
    first.stop()
    assert (data / PORT_FILE).read_text().strip() == str(port)

    again = _server(data)
    assert again.port == port
    again.start()
    assert again.port == port and again.port_note is None
    again.stop()

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        moved = _server(data)
        moved.start()
        try:
            assert moved.port != port
            assert moved.port_note == f"port {port} was taken; now on port {moved.port}"
        finally:
            moved.stop()
    assert (data / PORT_FILE).read_text().strip() == str(moved.port)


def test_a_stale_postmaster_pid_is_removed(data_parent: Path) -> None:
    data = data_parent / "data"
    server = _server(data)
    server.start()
    server.stop()
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=30)
    (data / "postmaster.pid").write_text(f"{gone.pid}\n{data}\n")
    again = _server(data)
    again.start()  # a dead pid's lock file does not stop the start
    again.stop()


def test_a_live_postmaster_on_the_data_dir_is_a_clear_error(data_parent: Path) -> None:
    data = data_parent / "data"
    running = _server(data)
    running.start()
    try:
        assert running._proc is not None
        with pytest.raises(EmbeddedError, match=r"still running .* `kill -INT \d+`") as exc:
            _server(data).start()
        assert str(running._proc.pid) in str(exc.value)
    finally:
        running.stop()
