"""`softguard <command>` run in the test's own process, for tests not about the process.

A `python -m softguard` start costs about half a second of CPU in imports (psycopg,
typer, ...): tests that only need what a command does (install the ledger, undo the
operations an attack left) run the same typer app here, through typer's CliRunner, and
get what `subprocess.run(..., capture_output=True, text=True)` would have returned.
Tests about the process itself (exit on a signal, its environment, its start) keep
spawning it.
"""

from __future__ import annotations

import subprocess
import traceback

from typer.testing import CliRunner

from softguard.cli.main import app


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`softguard *args` in this process: exit code, stdout and stderr as a subprocess's."""
    result = CliRunner().invoke(app, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what the interpreter would have printed before exiting 1
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["softguard", *args], result.exit_code, result.stdout, stderr
    )
