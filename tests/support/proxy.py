"""Running `python -m softguard serve` as a subprocess for the tests.

`ProxyFactory` starts proxies (one per distinct argument list, shared for the session
unless `fresh=True`), waits until the listen port accepts TCP, and stops them at the end
(SIGTERM, then SIGKILL). Each proxy's stderr/stdout go to a log file whose tail the
conftest prints when a test that used it fails.

With SOFTGUARD_TEST_VIA=direct the factory hands back `DirectTarget`s instead: the same
interface pointing straight at PostgreSQL, to check the tests themselves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .pg import TestServer, build_dsn
from .ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0


def via_direct() -> bool:
    return os.environ.get("SOFTGUARD_TEST_VIA", "proxy") == "direct"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


class ProxyStartError(RuntimeError):
    pass


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> bool:
    """Wait until ``proc`` accepts TCP on host:port (True) or exits or ``timeout`` passes
    (False; see ``proc.poll()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class _Target:
    server: TestServer
    host: str
    port: int

    def dsn(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **params: str,
    ) -> str:
        """A libpq URI through this target; user defaults to the test superuser."""
        if user is None:
            user, password = self.server.superuser, self.server.superuser_password
        return build_dsn(self.host, self.port, dbname, user, password, params)


class Proxy(_Target):
    """One `softguard serve` subprocess."""

    def __init__(self, server: TestServer, args: list[str], log_path: Path) -> None:
        self.server = server
        self.host = "127.0.0.1"
        self.port = free_port()
        self.args = args
        self.log_path = log_path
        self.cmd = [
            sys.executable,
            "-m",
            "softguard",
            "serve",
            "--listen",
            f"{self.host}:{self.port}",
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def is_direct(self) -> bool:
        return False

    def start(self) -> None:
        for _attempt in range(3):
            with open(self.log_path, "ab") as log:
                log.write(f"--- $ {' '.join(self.cmd)}\n".encode())
                log.flush()
                env = dict(os.environ)
                env.setdefault("PYTHONUNBUFFERED", "1")
                self.proc = subprocess.Popen(
                    self.cmd,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            if wait_listening(self.proc, self.host, self.port, START_TIMEOUT):
                return
            code = self.proc.poll()
            if code is None:
                self.kill()
                raise ProxyStartError(
                    f"proxy did not accept TCP on {self.host}:{self.port} within "
                    f"{START_TIMEOUT}s: {' '.join(self.cmd)}\n{self.tail()}"
                )
            if "Address already in use" in self.tail(5):
                self.port = free_port()
                self.cmd[5] = f"{self.host}:{self.port}"
                continue
            raise ProxyStartError(
                f"proxy exited with code {code} during startup: {' '.join(self.cmd)}\n{self.tail()}"
            )
        raise ProxyStartError(f"proxy could not find a free port\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def __repr__(self) -> str:
        return f"<Proxy {self.host}:{self.port} args={self.args}>"


class DirectTarget(_Target):
    """Same interface as Proxy, but straight to PostgreSQL (SOFTGUARD_TEST_VIA=direct)."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.host = server.host
        self.port = server.port
        self.proc = None
        self.log_path = Path(os.devnull)
        self.args: list[str] = []

    @property
    def is_direct(self) -> bool:
        return True

    @property
    def alive(self) -> bool:
        return True

    def tail(self, lines: int = 40) -> str:
        return "(direct: no proxy)"

    def stop(self, timeout: float = 10.0) -> None:
        pass

    def kill(self) -> None:
        pass


class ProxyFactory:
    """`factory(*extra_args, upstream=None, fresh=False)` -> a running Proxy."""

    def __init__(self, server: TestServer, log_dir: Path) -> None:
        self.server = server
        self.log_dir = log_dir
        self._shared: dict[tuple[str, ...], Proxy] = {}
        self.instances: list[Proxy] = []

    def __call__(
        self, *extra_args: str, upstream: str | None = None, fresh: bool = False
    ) -> Proxy | DirectTarget:
        if via_direct():
            return DirectTarget(self.server)
        args = ["--upstream", upstream or self.server.upstream_dsn(), *extra_args]
        key = tuple(args)
        if not fresh:
            existing = self._shared.get(key)
            if existing is not None and existing.alive:
                return existing
        proxy = Proxy(self.server, args, self.log_dir / f"proxy-{len(self.instances)}.log")
        self.instances.append(proxy)
        proxy.start()
        if not fresh:
            self._shared[key] = proxy
        return proxy

    def stop_all(self) -> None:
        for proxy in self.instances:
            proxy.stop()


Target = Proxy | DirectTarget
