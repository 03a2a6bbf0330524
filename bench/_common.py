"""Shared helpers for the scripts in bench/.

Owns: child processes the bench starts (each in its own session, so stopping one stops its
whole group and nothing else), free loopback ports, memory of a process tree read from
/proc, pgbench invocation and output parsing, idle PostgreSQL sessions opened with raw
sockets, and a description of the machine.

Always holds: every process started through `ManagedProcess` is stopped by `stop()`
(SIGTERM, then SIGKILL after a grace period); everything listens and connects on 127.0.0.1
only. Nothing here imports softguard: the bench measures it from outside, like a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------
# Ports and processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE to the hard limit; children started later inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard


class ManagedProcess:
    """A child process in its own session, its output going to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} before listening "
                    f"on port {port}; log {self.log_path}:\n{self.log_tail()}"
                )
            if port_open(port):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not listen on port {port} within {timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and its group (its own session: nothing else is in it)."""
        try:
            if self.alive():
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=grace)
            # The group may outlive its leader (forked workers): make sure it is gone.
            _signal_group(self.proc.pid, signal.SIGKILL)
        finally:
            self._log.close()


def serve_argv(port: int, pg_port: int) -> list[str]:
    """`softguard serve` on 127.0.0.1:`port` in front of the server on `pg_port`, at the
    default log level, as deployed (issue 13)."""
    return [
        sys.executable,
        "-m",
        "softguard",
        "serve",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        f"postgresql://{LOOPBACK}:{pg_port}?sslmode=disable",
    ]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_bounded(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command to completion in its own session; kill its group after `timeout`.

    Returns (exit code, combined output); exit code -9 and a note on timeout.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        text = out.decode(errors="replace")
        return -9, text + f"\n[bench] killed after {timeout:.0f} s timeout\n"
    except BaseException:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace")


# ---------------------------------------------------------------------------------------
# Memory of a process tree


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants, found through the PPid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kib_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class TreeMemory:
    pids: list[int]
    rss_kib: int  # sum of VmRSS: counts pages shared between processes once per process
    pss_kib: int  # sum of Pss: shared pages divided among their sharers

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    @property
    def pss_mib(self) -> float:
        return self.pss_kib / 1024


def tree_memory(root: int) -> TreeMemory:
    pids = tree_pids(root)
    rss = sum(_kib_field(f"/proc/{p}/status", "VmRSS") for p in pids)
    pss = sum(_kib_field(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return TreeMemory(pids=pids, rss_kib=rss, pss_kib=pss)


# ---------------------------------------------------------------------------------------
# CPU used by others (this machine is shared: a test suite running meanwhile skews results)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `root`'s live tree, plus what its reaped children
    used (cutime, cstime): summed over a proxy and all its workers."""
    user = system = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) + int(fields[13])  # utime cutime
        system += int(fields[12]) + int(fields[14])  # stime cstime
    return user / _CLK_TCK, system / _CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of `root`'s tree (see `tree_cpu_split`)."""
    return sum(tree_cpu_split(root))


class CpuMeter:
    """Splits the machine's CPU time into ours (this process, the children it reaped such
    as pgbench, and the trees of `anchors`: postmaster, proxies) and everybody else's."""

    def __init__(self, anchors: Sequence[int] = ()) -> None:
        self.anchors = list(anchors)

    def sample(self) -> tuple[float, float, float]:
        """(monotonic time, machine busy seconds, our busy seconds)."""
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            ours += ru.ru_utime + ru.ru_stime
        ours += sum(tree_cpu_seconds(pid) for pid in self.anchors)
        return time.monotonic(), _machine_busy_seconds(), ours

    @staticmethod
    def foreign_percent(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        """CPU used by processes outside the bench between two samples, in % of all cores."""
        wall = b[0] - a[0]
        foreign = (b[1] - a[1]) - (b[2] - a[2])
        return max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


# ---------------------------------------------------------------------------------------
# pgbench


_TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
_XACTS_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


@dataclass
class PgbenchResult:
    argv: list[str]
    returncode: int
    seconds: float
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    error: str | None = None
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_pgbench(argv: list[str], returncode: int, seconds: float, output: str) -> PgbenchResult:
    res = PgbenchResult(argv=argv, returncode=returncode, seconds=seconds)
    res.output_tail = "\n".join(output.strip().splitlines()[-12:])
    if m := _TPS_RE.search(output):
        res.tps = float(m.group(1))
    if m := _LAT_RE.search(output):
        res.latency_ms = float(m.group(1))
    if m := _XACTS_RE.search(output):
        res.transactions = int(m.group(1))
    if m := _FAILED_RE.search(output):
        res.failed = int(m.group(1))
    if returncode != 0:
        res.error = f"pgbench exited with code {returncode}"
    elif res.tps is None or res.latency_ms is None:
        res.error = "could not find tps / latency average in pgbench output"
    elif res.failed:
        res.error = f"{res.failed} failed transactions"
    return res


def run_pgbench(argv: list[str], timeout: float, env: dict[str, str]) -> PgbenchResult:
    t0 = time.monotonic()
    rc, out = run_bounded(argv, timeout=timeout, env=env)
    return parse_pgbench(argv, rc, time.monotonic() - t0, out)


def pg_client_env(password: str | None = None) -> dict[str, str]:
    """Environment for libpq clients: no inherited PG* settings, no TLS (same for every
    config, so all of them are measured on the same plain-TCP footing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    if password:
        env["PGPASSWORD"] = password
    return env


def find_pg_bin(name: str) -> str | None:
    """A PostgreSQL client binary: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    if found := shutil.which(name):
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(candidates[-1]) if candidates else None


# ---------------------------------------------------------------------------------------
# Idle sessions through raw sockets


class StartupError(Exception):
    """The server (or proxy) refused or broke a session startup."""


async def _open_session(
    host: str, port: int, user: str, dbname: str, app: str
) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        params = b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", user), ("database", dbname), ("application_name", app))
        )
        body = struct.pack("!i", 196608) + params + b"\0"
        writer.write(struct.pack("!i", len(body) + 4) + body)
        queried = False
        while True:
            header = await reader.readexactly(5)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            payload = await reader.readexactly(length - 4)
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code != 0:
                    raise StartupError(
                        f"server asked for authentication (code {code}); "
                        "idle sessions need trust authentication"
                    )
            elif kind == b"E":
                fields = dict(
                    (f[:1].decode(), f[1:].decode(errors="replace"))
                    for f in payload.split(b"\0")
                    if f
                )
                raise StartupError(f"{fields.get('C', '?')}: {fields.get('M', '?')}")
            elif kind == b"Z":
                if queried:
                    return writer
                # One query, so that a pooler (PgBouncer) also binds a server connection:
                # every session is then a real session upstream, as it is for a relay.
                queried = True
                writer.write(b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0")
    except BaseException:
        writer.close()
        raise


async def _open_sessions(
    host: str, port: int, user: str, dbname: str, count: int, app: str, concurrency: int
) -> tuple[list[asyncio.StreamWriter], list[str]]:
    gate = asyncio.Semaphore(concurrency)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                writers.append(
                    await asyncio.wait_for(_open_session(host, port, user, dbname, app), 30)
                )
            except (OSError, StartupError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, errors


async def _close_sessions(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        with contextlib.suppress(OSError):
            w.write(b"X\0\0\0\x04")  # Terminate
            w.close()
    for w in writers:
        with contextlib.suppress(OSError, ConnectionError):
            await w.wait_closed()


class IdleSessions:
    """`count` real sessions (startup, trust auth, one `SELECT 1`), held open and idle.

    Runs its own event loop; use as a context manager. `errors` lists the sessions that
    failed to start.
    """

    def __init__(
        self,
        port: int,
        user: str,
        dbname: str,
        count: int,
        app: str = "softguard-bench-idle",
        concurrency: int = 50,
    ) -> None:
        self._args = (LOOPBACK, port, user, dbname, count, app, concurrency)
        self._loop = asyncio.new_event_loop()
        self.writers: list[asyncio.StreamWriter] = []
        self.errors: list[str] = []
        self.open_seconds = 0.0

    def __enter__(self) -> IdleSessions:
        t0 = time.monotonic()
        self.writers, self.errors = self._loop.run_until_complete(_open_sessions(*self._args))
        self.open_seconds = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._loop.run_until_complete(_close_sessions(self.writers))
        finally:
            self._loop.close()


# ---------------------------------------------------------------------------------------
# Description of the machine and the code


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def git_describe(repo: Path = REPO_ROOT) -> dict[str, Any]:
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "HEAD"])
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        commit = None
    try:
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    return {"commit": commit, "dirty": bool(status.strip())}


def machine_info() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_kib = _kib_field("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_total_kib // 1024,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_at_start": os.getloadavg(),
    }


def tool_version(binary: str | None) -> str | None:
    return _first_line([binary, "--version"]) if binary else None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
