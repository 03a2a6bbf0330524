"""A real PgBouncer between softguard and the test server (issue 10 item 8, threat model G12).

`PgBouncer(server, users, pool_mode)` writes a config into a short temporary directory and
runs `pgbouncer` on a free loopback port in front of the test server: trust
authentication by default (the test server trusts 127.0.0.1 too), the users allowed in its
auth file (PgBouncer's `trust` still requires the name there; with `passwords`, their
plain passwords, which PgBouncer also logs in to the server with), one `*` database entry, and
`ignore_startup_parameters` for what softguard and the drivers send that PgBouncer does
not know. Like PostgreSQL, PgBouncer refuses to run as root: as root it runs as the
embedded server's OS account. `tail()` is its log; `stop()` ends it (SIGTERM, then SIGKILL).

`logs_on_failure(config, bouncer)` adds PgBouncer's log tail to the report of every test
that failed while it ran. `require_pgbouncer()` is the binary's path; without it the
caller is skipped outside CI and fails in CI (.ci/run installs the Debian package).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from softguard.embedded import OS_USER

from .ci_skips import ci_enabled
from .pg import TestServer, build_dsn, short_tempdir
from .proxy import ProxyStartError, _tail, free_port, wait_listening

START_TIMEOUT = 15.0
# What softguard adds to the startup packet (its settings; `options` on its own ledger
# connection, for lock_timeout), and what drivers send that PgBouncer does not forward
# (JDBC and psycopg2 send extra_float_digits). Any other one PgBouncer refuses at login.
IGNORED_STARTUP_PARAMETERS = (
    "softguard.capture",
    "softguard.retention",
    "options",
    "extra_float_digits",
)


def require_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found:
        return found
    reason = "pgbouncer not installed (apt-get install pgbouncer; .ci/run installs it)"
    if ci_enabled():
        pytest.fail(reason)
    pytest.skip(reason)


class PgBouncer:
    """One `pgbouncer` process in front of `server`."""

    def __init__(
        self,
        server: TestServer,
        users: Sequence[str],
        pool_mode: str = "session",
        binary: str | None = None,
        ignored: Sequence[str] = IGNORED_STARTUP_PARAMETERS,
        auth_type: str = "trust",
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.users = list(users)
        # auth_type: how clients (softguard) log in to PgBouncer; passwords: what PgBouncer
        # logs in to the server with, for roles whose pg_hba entry demands one.
        self.auth_type = auth_type
        self.passwords = dict(passwords or {})
        self.pool_mode = pool_mode
        self.ignored = list(ignored)
        self.binary = binary or require_pgbouncer()
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_user = server.superuser
        self.dir = short_tempdir("sg-pgb-")
        self.log_path = self.dir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> str:
        """softguard's --upstream: PgBouncer speaks no TLS here."""
        return f"postgresql://{self.host}:{self.port}?sslmode=disable"

    def admin(self, command: str) -> list[dict[str, object]]:
        """A command of PgBouncer's admin console (`SHOW SERVERS`, ...), rows as dicts.
        The console speaks the simple query protocol only: a client-side cursor."""
        dsn = build_dsn(self.host, self.port, "pgbouncer", self.admin_user, None)
        with (
            psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as c,
            c.cursor() as cur,
        ):
            cur.execute(command)
            if cur.description is None:  # KILL, RESUME, ...
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _write_config(self) -> Path:
        userlist = self.dir / "userlist.txt"
        userlist.write_text(
            "".join(
                f'"{u}" "{self.passwords.get(u, "")}"\n' for u in {*self.users, self.admin_user}
            )
        )
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server.host} port={self.server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"auth_type = {self.auth_type}\n"
            f"auth_file = {userlist}\n"
            f"admin_users = {self.admin_user}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"ignore_startup_parameters = {','.join(self.ignored)}\n"
            "server_tls_sslmode = disable\n"
            "max_client_conn = 200\n"
            "default_pool_size = 20\n"
        )
        return ini

    def _run_as(self) -> tuple[int, int] | None:
        """(uid, gid) of the account to run as when we are root, owning the directory."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(OS_USER)
        except KeyError:
            pytest.fail(f"running as root and no OS user {OS_USER!r} to run pgbouncer as")
        for path in (self.dir, *self.dir.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return entry.pw_uid, entry.pw_gid

    def start(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            ini = self._write_config()
            ids = self._run_as()
            with open(self.log_path, "ab") as log:
                log.write(f"--- $ {self.binary} {ini} (port {self.port})\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [self.binary, str(ini)],
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    user=None if ids is None else ids[0],
                    group=None if ids is None else ids[1],
                    extra_groups=None if ids is None else [],
                )
            if wait_listening(self.proc, self.host, self.port, START_TIMEOUT):
                return
            if self.proc.poll() is None:
                self.stop()
                raise ProxyStartError(f"pgbouncer did not listen in time:\n{self.tail()}")
            if "Address already in use" not in self.tail(5):
                raise ProxyStartError(f"pgbouncer exited during startup:\n{self.tail()}")
        raise ProxyStartError(f"pgbouncer found no free port:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # SIGTERM: immediate shutdown (SIGINT would wait for its clients to leave).
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class _LogOnFailure:
    """A pytest plugin for the lifetime of one PgBouncer (registered by logs_on_failure)."""

    def __init__(self, bouncer: PgBouncer) -> None:
        self.bouncer = bouncer

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed:
            b = self.bouncer
            report.sections.append(
                (f"pgbouncer {b.pool_mode} {b.host}:{b.port} log tail", b.tail())
            )
        return report


@contextmanager
def logs_on_failure(config: pytest.Config, bouncer: PgBouncer) -> Iterator[None]:
    plugin = _LogOnFailure(bouncer)
    config.pluginmanager.register(plugin)
    try:
        yield
    finally:
        config.pluginmanager.unregister(plugin)
