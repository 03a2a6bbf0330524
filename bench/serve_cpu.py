"""Instructions per statement of a whole proxy process, under callgrind: load-independent.

``relay_cpu.py`` measures the sans-IO core alone; this measures what the deployed process
spends (uvloop, the asyncio protocol classes, the session layer, timers, metrics,
logging, the core), by running the proxy itself under ``valgrind --tool=callgrind`` while
pgbench drives it through a real PostgreSQL. Instruction counts do not move with the
machine's load, so two builds (or softguard and the bare relay) can be compared on a busy
machine. Kernel time is not counted (it is the same for every proxy: decision 0017).

How: one embedded PostgreSQL (pgbench -i, ``softguard init`` as the README deploys
it); per config and workload, a fresh proxy under callgrind; pgbench ``--warmup``
transactions per client (connections, caches), then ``--small`` and ``--large`` ones,
each followed by a callgrind dump (``callgrind_control --dump``) once the proxy is idle.
Per statement = (Ir of the large run - Ir of the small run) / the statements between
them: connection setup and teardown cancel out.

    python bench/serve_cpu.py                                   # ~10-15 min on 2 cores
    python bench/serve_cpu.py --configs softguard --workloads select
    python bench/serve_cpu.py --profile --configs softguard     # cProfile: Python calls
                                                                # per statement instead

``--syscalls`` runs the proxy without valgrind and attaches ``strace -c -f`` around the
small and the large run instead: system calls per statement, by name (kernel work is what
separates proxies whose user-space cost is alike; strace slows every call, so read the
counts, not its times).

``--profile`` runs the proxy under cProfile (no valgrind) and prints, per statement, the
Python calls of the busiest functions over the small..large runs: what a steady-state
chunk calls.

Configs: ``softguard`` (``python -m softguard serve``, default configuration and log
level), ``softguard-python`` (the same with ``SOFTGUARD_PURE_PYTHON=1``: without the
compiled fast path, decision 0034), ``python-relay`` (``bench/_python_relay.py``: one
callback and one write per chunk, nothing read), ``link-relay`` (``bench/_link_relay.py``:
the same on softguard's links, decision 0040) and ``pgbouncer`` (session mode, when
installed: the C reference).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    find_pg_bin,
    free_port,
    pg_client_env,
    run_bounded,
    serve_argv,
)

BENCH_DB = "softguard_bench"
CONFIGS = ("softguard", "softguard-python", "python-relay", "link-relay", "pgbouncer")


@dataclass(frozen=True)
class Workload:
    name: str
    args: tuple[str, ...]
    per_txn: int  # SQL statements per pgbench transaction


WORKLOADS = {
    "select": Workload("select", ("-S",), 1),
    "prepared": Workload("prepared", ("-S", "-M", "prepared"), 1),
    # Parse/Bind/Describe/Execute/Sync per statement: what drivers send with parameters
    "extended": Workload("extended", ("-S", "-M", "extended"), 1),
    "tpcb-extended": Workload("tpcb-extended", ("-M", "extended"), 7),
    "tpcb": Workload("tpcb", (), 7),
}


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the process has used no CPU for a while (it finished the closes it was sent)."""
    deadline = time.monotonic() + timeout
    last, still = _cpu_ticks(pid), 0
    while time.monotonic() < deadline and still < 4:
        time.sleep(0.25)
        now = _cpu_ticks(pid)
        still = still + 1 if now == last else 0
        last = now


def _totals(path: Path) -> int:
    text = path.read_text(errors="replace")
    found = re.findall(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    if not found:
        raise RuntimeError(f"no totals in {path}")
    return int(found[-1])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="serve-cpu-"))
        os.chmod(self.tmp, 0o777)  # pgbouncer, as another user, writes its dumps here
        self.pg: Any = None
        self.port = 0
        self.user = ""
        self.pgbench = ""
        self.results: dict[str, dict[str, Any]] = {}
        self.as_user: list[str] = []  # how pgbouncer is started when we are root

    def log(self, msg: str) -> None:
        print(f"[serve_cpu] {msg}", file=sys.stderr, flush=True)

    def start_upstream(self) -> None:
        from softguard.embedded import EmbeddedPostgres

        self.pg = EmbeddedPostgres(
            server_settings={"shared_buffers": "128MB", "synchronous_commit": "off"}
        )
        self.pg.start()
        self.port, self.user = self.pg.port, self.pg.superuser
        self.pgbench = str(self.pg.bin("pgbench")) or find_pg_bin("pgbench") or ""
        env = pg_client_env()
        psql = str(self.pg.bin("psql"))
        base = ["-h", LOOPBACK, "-p", str(self.port), "-U", self.user]
        create = [psql, *base, "-c", f"CREATE DATABASE {BENCH_DB}", "postgres"]
        rc, out = run_bounded(create, 60, env)
        if rc != 0:
            raise SystemExit(out)
        rc, out = run_bounded([self.pgbench, "-i", "-q", "-s", "1", *base, BENCH_DB], 300, env)
        if rc != 0:
            raise SystemExit(out)
        dsn = f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{BENCH_DB}?sslmode=disable"
        argv = [sys.executable, "-m", "softguard", "init", "--dsn", dsn]
        rc, out = run_bounded(argv, 300, env)
        if rc != 0:
            raise SystemExit(f"softguard init failed:\n{out[-2000:]}")

    def proxy_argv(self, config: str, port: int) -> list[str] | None:
        if config in ("softguard", "softguard-python"):
            return [*serve_argv(port, self.port), *self.args.softguard_arg]
        if config in ("python-relay", "link-relay"):
            name = "_python_relay.py" if config == "python-relay" else "_link_relay.py"
            relay = str(REPO_ROOT / "bench" / name)
            return [sys.executable, relay, str(port), str(self.port)]
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.access(binary, os.X_OK):
            return None
        d = self.tmp / f"pgbouncer-{port}"
        d.mkdir()
        (d / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (d / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={LOOPBACK} port={self.port}\n[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\nlisten_port = {port}\nunix_socket_dir =\n"
            f"pool_mode = session\nauth_type = trust\nauth_file = {d / 'userlist.txt'}\n"
            "default_pool_size = 20\nignore_startup_parameters = extra_float_digits\n"
            f"logfile = {d / 'pgbouncer.log'}\nlog_connections = 0\nlog_disconnections = 0\n"
        )
        argv = [binary, str(d / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root. Not its -u: valgrind's control pipes, made
            # before the switch, would no longer be its own. The whole run as that user.
            user = "nobody"
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("softguard-pg").pw_name
            pw = pwd.getpwnam(user)
            for p in (d, *d.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # setpriv execs (runuser would fork): the pid stays valgrind's.
            self.as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}"]
            self.as_user += ["--clear-groups", "--"]
        return argv

    def pgbench_run(self, port: int, workload: Workload, transactions: int) -> None:
        argv = [
            self.pgbench,
            "-n",
            "-t",
            str(transactions),
            "-c",
            str(self.args.clients),
            "-j",
            str(min(self.args.clients, 2)),
            *workload.args,
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-U",
            self.user,
            BENCH_DB,
        ]
        env = pg_client_env()
        env["PGCONNECT_TIMEOUT"] = str(int(self.args.timeout))  # a proxy under valgrind is slow
        rc, out = run_bounded(argv, self.args.timeout, env)
        if rc != 0:
            raise RuntimeError(f"pgbench failed (exit {rc}):\n{out[-2000:]}")

    def measure(self, config: str, workload: Workload) -> dict[str, Any] | None:
        port = free_port()
        argv = self.proxy_argv(config, port)
        if argv is None:
            self.log(f"{config}: not installed, skipped")
            return None
        tag = f"{config}-{workload.name}"
        sizes = (self.args.small, self.args.large)
        out = self.tmp / f"{tag}.cg"
        prof = self.tmp / f"{tag}.prof"
        if self.args.profile:
            if config == "pgbouncer":
                return None
            wrapped = [sys.executable, str(Path(__file__).with_name("_profiled.py")), str(prof)]
            wrapped += argv[1:]
        elif self.args.syscalls:
            wrapped = [*(self.as_user if config == "pgbouncer" else []), *argv]
        else:
            wrapped = [
                *(self.as_user if config == "pgbouncer" else []),
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *argv,
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTGUARD_")}
        env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
        if config == "softguard-python":
            env["SOFTGUARD_PURE_PYTHON"] = "1"  # without the compiled fast path (decision 0034)
        proc = ManagedProcess(tag, wrapped, self.tmp / f"{tag}.log", env=env, cwd=REPO_ROOT)
        try:
            proc.wait_for_port(port, timeout=self.args.timeout)
            self.pgbench_run(port, workload, self.args.warmup)
            wait_idle(proc.pid)
            counts: list[dict[str, int]] = []
            marks: list[int] = []
            if self.args.syscalls:
                counts = [self._traced(proc, port, workload, n, tag) for n in sizes]
            else:
                for n in (0, *sizes):
                    if n:
                        self.pgbench_run(port, workload, n)
                        wait_idle(proc.pid)
                    marks.append(self._mark(proc, out, prof, len(marks)))
        finally:
            proc.stop(grace=60)
        statements = (self.args.large - self.args.small) * self.args.clients * workload.per_txn
        if self.args.profile:
            return {"statements": statements}
        if self.args.syscalls:
            calls = {
                name: (counts[1].get(name, 0) - counts[0].get(name, 0)) / statements
                for name in counts[1].keys() | counts[0].keys()
            }
            calls = {k: v for k, v in calls.items() if v >= 0.005}
            total = sum(calls.values())
            self.log(f"{tag}: {total:.2f} system calls per statement")
            return {"statements": statements, "syscalls": calls, "per_stmt": total}
        small, large = marks[1], marks[2]  # each dump counts since the one before
        per = (large - small) / statements
        self.log(f"{tag}: {per:,.0f} instructions per statement")
        return {"ir_small": small, "ir_large": large, "statements": statements, "per_stmt": per}

    def _traced(
        self, proc: ManagedProcess, port: int, workload: Workload, n: int, tag: str
    ) -> dict[str, int]:
        """System calls by name of one pgbench run of n transactions per client."""
        out = self.tmp / f"{tag}-{n}.strace"
        argv = ["strace", "-c", "-f", "-o", str(out), "-p", str(proc.pid)]
        tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert tracer.stderr is not None
            tracer.stderr.readline()  # "Process N attached": the trace has begun
            self.pgbench_run(port, workload, n)
            wait_idle(proc.pid)
        finally:
            tracer.send_signal(signal.SIGINT)  # strace detaches and writes its summary
            tracer.wait(timeout=60)
        counts: dict[str, int] = {}
        for line in out.read_text().splitlines():
            fields = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall"
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
        return counts

    def _mark(self, proc: ManagedProcess, out: Path, prof: Path, i: int) -> int:
        """A callgrind dump (its instructions since the last one), or a cProfile snapshot."""
        if self.args.profile:
            os.kill(proc.pid, 10)  # SIGUSR1: _profiled.py writes prof.<i>
            deadline = time.monotonic() + 60
            while not Path(f"{prof}.{i}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            return 0
        # As the proxy's own user: vgdb wakes a blocked process with ptrace.
        argv = [*(self.as_user if proc.name.startswith("pgbouncer") else [])]
        argv += ["callgrind_control", f"--dump=mark{i}", str(proc.pid)]
        rc = subprocess.run(argv, capture_output=True, timeout=120).returncode
        if rc != 0:
            raise RuntimeError("callgrind_control --dump failed")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            parts = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
            if len(parts) > i:
                with contextlib.suppress(RuntimeError):
                    return _totals(parts[i])
            time.sleep(0.2)
        raise RuntimeError(f"no callgrind dump {i} in {out.parent}")

    def profile_report(self, config: str, workload: Workload, statements: int) -> None:
        tag = f"{config}-{workload.name}"
        prof = self.tmp / f"{tag}.prof"
        snaps = [pstats.Stats(f"{prof}.{i}").stats for i in range(3)]  # type: ignore[attr-defined]
        rows: list[tuple[float, tuple[str, int, str]]] = []
        total = 0.0
        for key, entry in snaps[2].items():
            counts = [snap.get(key, (0, 0))[1] for snap in snaps[:2]] + [entry[1]]
            # calls of the large run minus those of the small one
            calls = ((counts[2] - counts[1]) - (counts[1] - counts[0])) / statements
            if calls > 0.01:
                rows.append((calls, key))
                total += calls
        rows.sort(reverse=True)
        print(f"\n{tag}: {total:.1f} Python-visible calls per statement")
        for calls, (file, line, name) in rows[: self.args.top]:
            where = file.replace(str(REPO_ROOT) + "/", "")
            print(f"  {calls:7.2f}  {name}  ({where}:{line})")

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()
        if self.args.keep_logs:
            self.log(f"files kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="softguard,python-relay", help=", ".join(CONFIGS))
    p.add_argument("--workloads", default="select,prepared,tpcb", help=", ".join(WORKLOADS))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20, help="transactions per client")
    p.add_argument("--small", type=int, default=50, help="transactions per client")
    p.add_argument("--large", type=int, default=250, help="transactions per client")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    p.add_argument("--softguard-arg", action="append", default=[])
    p.add_argument("--profile", action="store_true", help="cProfile call counts, no valgrind")
    p.add_argument("--syscalls", action="store_true", help="strace -c counts, no valgrind")
    p.add_argument("--top", type=int, default=30, help="functions listed with --profile")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.workloads = [WORKLOADS[w] for w in args.workloads.split(",") if w]
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c}")
    if not 0 < args.small < args.large:
        p.error("need 0 < --small < --large")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.syscalls and not shutil.which("strace"):
        raise SystemExit("strace is not installed")
    if not (args.profile or args.syscalls) and not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (or use --profile)")
    bench = Bench(args)
    try:
        bench.start_upstream()
        for workload in args.workloads:
            for config in args.configs:
                try:
                    result = bench.measure(config, workload)
                except RuntimeError as exc:
                    bench.log(f"{config} / {workload.name} not measured: {exc}")
                    continue
                if result is None:
                    continue
                bench.results.setdefault(workload.name, {})[config] = result
                if args.profile:
                    bench.profile_report(config, workload, result["statements"])
    finally:
        bench.close()
    if args.syscalls:
        print("\nsystem calls per statement (strace -c -f, whole proxy process)")
        names = sorted(
            {n for row in bench.results.values() for r in row.values() for n in r["syscalls"]}
        )
        for name, row in bench.results.items():
            print(f"\n{name:<16}" + "".join(f"{c:>16}" for c in args.configs))
            for sc in [*names, "total"]:
                values = [
                    (r["per_stmt"] if sc == "total" else r["syscalls"].get(sc, 0))
                    if (r := row.get(c)) is not None
                    else None
                    for c in args.configs
                ]
                cells = "".join(f"{v:>16.2f}" if v is not None else f"{'-':>16}" for v in values)
                print(f"{sc:<16}{cells}")
    elif not args.profile:
        print("\ninstructions per statement (callgrind, user space, whole proxy process)")
        print(f"{'workload':<10}" + "".join(f"{c:>16}" for c in args.configs))
        for name, row in bench.results.items():
            cells = "".join(
                f"{row[c]['per_stmt']:>16,.0f}" if c in row else f"{'-':>16}" for c in args.configs
            )
            print(f"{name:<10}{cells}")
    if args.json is not None:
        args.json.write_text(json.dumps(bench.results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
