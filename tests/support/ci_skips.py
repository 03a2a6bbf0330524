"""pytest plugin: in CI, a skipped test fails the session unless its skip is an expected
environment skip.

A green run must mean the tiers ran: a PostgreSQL built without OpenSSL would otherwise
skip every TLS test and pass. ``ALLOWED`` lists the skips that depend on the machine and
not on softguard (reason patterns, matched with ``re.search``); anything else skipped
while the environment variable CI is set (CI runs with CI=true) sets the session's exit
status to 1. The terminal summary always lists expected and unexpected skips.
Registered in tests/conftest.py; see docs/testing.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import pytest

# (reason pattern, why it may be skipped in CI): the machine or the server's version, never
# a missing build feature the suite exists to test.
ALLOWED: tuple[tuple[str, str], ...] = (
    (r"^environment: no IPv6 loopback", "the CI machine may have no ::1"),
    (r"^MERGE needs PostgreSQL 15", "the server's version"),
    (r"^\\bind needs psql 16\+", "the psql found"),
    (r"^(postgres_fdw|dblink) not available", "the server's contrib modules"),
)


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern, _why in ALLOWED)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


@dataclass(eq=False)  # pluggy keeps plugins in sets: hash by identity
class SkipWatch:
    """The plugin object (one per session): records skips, fails CI on unexpected ones."""

    expected: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[tuple[str, str]] = field(default_factory=list)

    def _add(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        target = self.expected if allowed(reason) else self.unexpected
        target.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._add(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._add(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if ci_enabled() and self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.expected and not self.unexpected and not ci_enabled():
            return
        tr = terminalreporter
        tr.section("skips (tests/support/ci_skips.py)")
        tr.write_line(f"expected (environment) skips: {len(self.expected)}")
        for reason, count in _by_reason(self.expected):
            tr.write_line(f"  {count} x {reason}")
        tr.write_line(f"unexpected skips: {len(self.unexpected)}")
        for nodeid, reason in self.unexpected:
            tr.write_line(f"  {nodeid}: {reason}")
        if self.unexpected:
            if ci_enabled():
                tr.write_line("CI is set: unexpected skips fail this run", red=True, bold=True)
            else:
                tr.write_line("(CI is not set: not failing the run)")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipWatch(), "softguard-ci-skips")


def _by_reason(items: list[tuple[str, str]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for _nodeid, reason in items:
        counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items())
