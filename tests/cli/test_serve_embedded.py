"""`softguard serve --data-dir` (no --upstream) as an operator runs it: the admin DSN it
prints works for the ledger commands, the port survives a restart, SIGHUP does not kill
it, SIGTERM stops the embedded server too, and a killed serve leaves no postmaster."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from serve_process import Serve, pid_alive
from support.pg import short_tempdir

pytestmark = [pytest.mark.timeout(400)]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    parent = short_tempdir("sg-serve-")
    parent.chmod(0o755)  # as root, the server runs as softguard-pg and must reach it
    yield parent / "data"
    shutil.rmtree(parent, ignore_errors=True)


def _start(data_dir: Path) -> tuple[Serve, int, str]:
    proc = Serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir))
    port = proc.listening_port()
    admin = proc.wait_for(r"export SOFTGUARD_DSN='([^']*)'").group(1)
    return proc, port, admin


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "softguard", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_with_a_data_dir_through_a_day(data_dir: Path) -> None:
    proc, port, admin = _start(data_dir)
    try:
        proxied = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert proxied in proc.output()
        with psycopg.connect(proxied, autocommit=True) as c:
            c.execute("CREATE TABLE day (id int)")
            c.execute("INSERT INTO day VALUES (1), (2)")
            c.execute("DROP TABLE day")
        # the DSN serve printed is the one the ledger commands need
        ops = _cli("ops", "--dsn", admin, "--json")
        assert ops.returncode == 0, ops.stderr
        assert '"kind": "DROP TABLE"' in ops.stdout
        # and the proxy's DSN says what to use instead, without a traceback
        wrong = _cli("ops", "--dsn", proxied)
        assert wrong.returncode == 1
        assert "softguard serve" in wrong.stderr and "Traceback" not in wrong.stderr

        proc.signal(signal.SIGHUP)  # a reload, not an exit
        with psycopg.connect(proxied, autocommit=True) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        postmaster = _postmaster_pid(data_dir)
    finally:
        code = proc.stop()
    assert code == 0, proc.output()
    assert not pid_alive(postmaster)
    assert not (data_dir / "postmaster.pid").exists()

    again, _, admin_again = _start(data_dir)
    try:
        assert admin_again == admin  # the embedded server kept its port
    finally:
        again.stop()


def test_a_killed_serve_leaves_no_postmaster_behind(data_dir: Path) -> None:
    proc, _, admin = _start(data_dir)
    postmaster = _postmaster_pid(data_dir)
    proc.proc.kill()  # SIGKILL: serve cannot clean up
    proc.stop()
    deadline = time.monotonic() + 60
    while pid_alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(postmaster), "the embedded postmaster outlived serve"
    again, _, admin_again = _start(data_dir)
    try:
        assert admin_again == admin
        assert re.search(r"\d+", admin_again)
    finally:
        again.stop()
