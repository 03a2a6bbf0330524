"""The PostgreSQL server the tests run against, and per-module scratch databases.

Either the server named by $SOFTGUARD_TEST_DSN (a superuser DSN; hba and TLS are then
whatever that server has), or a session-wide `softguard.embedded.EmbeddedPostgres` set up
to exercise every auth method the proxy must relay:

    role         password     pg_hba method (TCP from 127.0.0.1)
    sg_scram     scram-pw     scram-sha-256
    sg_md5       md5-pw       md5 (password stored as md5)
    sg_password  password-pw  password (cleartext)
    sg_tls       tls-pw       scram-sha-256, hostssl only (hostnossl -> reject)
    sg_trust     -            trust (like every other role)

and ssl=on with a certificate issued by a trustme CA (`TestServer.ca_file`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from softguard.embedded import EmbeddedError, EmbeddedPostgres, find_pg_bin_dir

from .cli import run_cli
from .ports import free_port

ROLE_PASSWORDS: dict[str, str | None] = {
    "sg_scram": "scram-pw",
    "sg_md5": "md5-pw",
    "sg_password": "password-pw",
    "sg_tls": "tls-pw",
    "sg_trust": None,
}

HBA_LINES = [
    "local all all trust",
    "hostssl all sg_tls 127.0.0.1/32 scram-sha-256",
    "hostnossl all sg_tls 127.0.0.1/32 reject",
    "host all sg_scram 127.0.0.1/32 scram-sha-256",
    "host all sg_md5 127.0.0.1/32 md5",
    "host all sg_password 127.0.0.1/32 password",
    # the managed-like owner role (tests/deployments/test_managed.py)
    "host all sg_managed 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 trust",
]

_START_ATTEMPTS = 5

TEST_SETTINGS = {
    # Test tier only: durability is not needed for throwaway data.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    # The ledger's catalog walks (recursive CTEs: undo's `_foreign_code`, DROP's readers of a
    # column, ...) are estimated at millions, far above jit_above_cost: PostgreSQL then JIT
    # compiles, optimizes and inlines each at every call, ~2 s of CPU for a query that runs
    # in 40-70 ms (`_foreign_code` on a rental table: 2.3-2.5 s with JIT, 0.04-0.07 s
    # without; 97 % of an undo of DROP TYPE ... CASCADE). `_foreign_code` now turns JIT off
    # itself (ledger 13); the others' cost was not measured apart. JIT changes no result,
    # only the time: off, as catalog_check.py already had it for its own query
    # (docs/testing.md).
    # SOFTGUARD_TEST_JIT=on runs the suite with PostgreSQL's default instead.
    "jit": "on" if os.environ.get("SOFTGUARD_TEST_JIT") == "on" else "off",
}


@dataclass
class TLSFiles:
    """A trustme CA and server certificates for 127.0.0.1/localhost."""

    ca_file: Path
    server_cert: Path  # leaf + chain, PEM
    server_key: Path
    proxy_cert: Path
    proxy_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")
    proxy = ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")
    files = TLSFiles(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        proxy_cert=directory / "proxy.crt",
        proxy_key=directory / "proxy.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    for leaf, cert, key in (
        (server, files.server_cert, files.server_key),
        (proxy, files.proxy_cert, files.proxy_key),
    ):
        with open(cert, "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
    return files


@dataclass
class TestServer:
    """Where the test PostgreSQL is and what it was set up with."""

    __test__ = False  # not a test class

    host: str
    port: int
    superuser: str
    superuser_password: str | None
    bin_dir: Path
    tls: TLSFiles | None  # set when the server has ssl=on with our CA
    embedded: EmbeddedPostgres | None = None
    auth_roles: bool = False  # hba is ours: each sg_* role uses its own method
    version_num: int = 0
    ssl_on: bool = False  # the server accepts TLS (our CA or not)
    data_dir: Path | None = None  # the embedded server's, made here: removed by remove_data()

    def remove_data(self) -> None:
        """Stop the embedded server and remove its data directory (the session's end)."""
        if self.embedded is not None:
            self.embedded.cleanup()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def dsn(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **params: str,
    ) -> str:
        return build_dsn(self.host, self.port, dbname, user or self.superuser, password, params)

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return self.dsn(dbname, self.superuser, self.superuser_password)

    def upstream_dsn(self, **params: str) -> str:
        """What the proxy gets as --upstream: host and port only (+ e.g. sslmode)."""
        base = f"postgresql://{self.host}:{self.port}"
        return base + (
            "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote) if params else ""
        )

    def bin(self, name: str) -> Path:
        return self.bin_dir / name

    def create_database(self, template: str | None = None) -> str:
        """A fresh database: empty, or a copy of ``template`` (a file copy: a template
        with the ledger installed saves the ~0.4 s of server CPU of each install)."""
        name = "sg_t_" + uuid.uuid4().hex[:12]
        query = "CREATE DATABASE {}" + (" TEMPLATE {}" if template else "")
        names = [sql.Identifier(name)] + ([sql.Identifier(template)] if template else [])
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as c:
            c.execute(sql.SQL(query + self.copy_strategy()).format(*names))
        return name

    def copy_strategy(self) -> str:
        """The fastest CREATE DATABASE for the tests' small templates: FILE_COPY copies the
        files (about half the time of PostgreSQL 15's default, WAL_LOG, which writes every
        page to the WAL; fsync is off here, so its checkpoints are cheap)."""
        return " STRATEGY FILE_COPY" if self.version_num >= 150000 else ""

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def install_ledger(self, dbname: str) -> None:
        """`softguard init` on a database, as the README deploys it (the command run in
        this process: support.cli; tests/cli and tests/ledger start the process itself)."""
        r = run_cli("init", "--dsn", self.superuser_dsn(dbname))
        assert r.returncode == 0, r.stdout + r.stderr

    def run_sql_file(self, dbname: str, path: Path) -> None:
        """Load a SQL script with the server's own psql (scripts may use psql syntax)."""
        subprocess.run(
            [
                str(self.bin("psql")),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(path),
                "-d",
                self.superuser_dsn(dbname),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def ensure_role(self, name: str, password: str) -> None:
        """A login role, created once per server (test sessions may share the server)."""
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is None:
                c.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(name), sql.Literal(password)
                    )
                )

    @contextmanager
    def scratch_database(self) -> Iterator[str]:
        name = self.create_database()
        try:
            yield name
        finally:
            self.drop_database(name)


def build_dsn(
    host: str,
    port: int,
    dbname: str,
    user: str,
    password: str | None,
    params: dict[str, str] | None = None,
) -> str:
    q = urllib.parse.quote
    auth = q(user, safe="")
    if password is not None:
        auth += ":" + q(password, safe="")
    dsn = f"postgresql://{auth}@{host}:{port}/{q(dbname, safe='')}"
    if params:
        dsn += "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return dsn


def _has_openssl(bin_dir: Path) -> bool:
    pg_config = bin_dir / "pg_config"
    try:
        out = subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, timeout=10
        ).stdout
    except OSError:
        return False
    return "--with-openssl" in out or "--with-ssl=openssl" in out


def setup_roles(superuser_dsn: str) -> None:
    """Create (or reset) the sg_* roles with their passwords stored in the right format."""
    with psycopg.connect(superuser_dsn, autocommit=True) as c:
        for role, password in ROLE_PASSWORDS.items():
            exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            if not exists:
                c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            if password is None:
                continue
            method = "md5" if role == "sg_md5" else "scram-sha-256"
            c.execute("SELECT set_config('password_encryption', %s, false)", [method])
            c.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        c.execute("RESET password_encryption")


# Where the embedded server keeps its data when it can: a memory file system. The suite
# copies a database per test (arenas, twins, rental copies: about two thousand a run) and
# drops it again; on ext4 each copy's thousand-odd files cost the kernel's inode
# allocator ~0.2 s of CPU (`perf`: find_inode_bit, recently_deleted), on tmpfs ~0.02 s.
# Durability is off anyway (TEST_SETTINGS). Used only with room to spare for every
# worker's server (their WAL included); otherwise the data stays under /tmp.
MEMORY_FS = Path("/dev/shm")
MEMORY_FS_MIN_FREE = 4 << 30


def _data_parent() -> Path | None:
    """Where the embedded server's data directory goes: $SOFTGUARD_TEST_DATA_PARENT when
    set (e.g. /tmp, to compare), else the memory file system when it qualifies, else None
    (tempfile's default, /tmp)."""
    chosen = os.environ.get("SOFTGUARD_TEST_DATA_PARENT")
    if chosen:
        return Path(chosen)
    return _memory_fs()


def _memory_fs() -> Path | None:
    """MEMORY_FS when it is a writable tmpfs with MEMORY_FS_MIN_FREE bytes free."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
        stat = os.statvfs(MEMORY_FS)
    except OSError:
        return None
    tmpfs = any(m.split()[1:3] == [str(MEMORY_FS), "tmpfs"] for m in mounts if m.strip())
    free = stat.f_bavail * stat.f_frsize
    if tmpfs and free >= MEMORY_FS_MIN_FREE and os.access(MEMORY_FS, os.W_OK | os.X_OK):
        return MEMORY_FS
    return None


def start_test_server(workdir: Path) -> TestServer:
    """Start (or attach to) the server for this test session."""
    external = os.environ.get("SOFTGUARD_TEST_DSN")
    if external:
        info = psycopg.conninfo.conninfo_to_dict(external)
        with psycopg.connect(external, autocommit=True) as c:
            version = c.info.server_version
            ssl_on = c.execute("SHOW ssl").fetchone() == ("on",)
        setup_roles(external)
        bin_dir = Path(os.environ.get("SOFTGUARD_PG_BIN") or find_pg_bin_dir())
        return TestServer(
            host=str(info.get("host") or "127.0.0.1"),
            port=int(info.get("port") or 5432),
            superuser=str(info.get("user") or "postgres"),
            superuser_password=str(info["password"]) if info.get("password") else None,
            bin_dir=bin_dir,
            tls=None,
            version_num=version,
            ssl_on=ssl_on,
        )

    bin_dir = find_pg_bin_dir()
    tls = make_tls_files(workdir) if _has_openssl(bin_dir) else None
    parent = _data_parent()
    for attempt in range(_START_ATTEMPTS):
        # a temporary data dir: removed by pg.cleanup(), or (made here, under `parent`)
        # by TestServer.remove_data()
        data_dir = Path(tempfile.mkdtemp(prefix="softguard-pg-", dir=parent)) if parent else None
        if data_dir is not None:
            # a session that ends without its fixtures' teardown must not leave the data
            # in memory; registered before the server's own atexit stop, so it runs after it
            atexit.register(shutil.rmtree, data_dir, True)
        pg = EmbeddedPostgres(
            data_dir,
            # of this xdist worker's share: another worker's test cannot pick it meanwhile
            port=free_port(),
            bin_dir=bin_dir,
            server_settings=TEST_SETTINGS,
            hba_lines=HBA_LINES,
            ssl_cert=tls.server_cert if tls else None,
            ssl_key=tls.server_key if tls else None,
        )
        try:
            pg.start()
            setup_roles(pg.dsn())
            with psycopg.connect(pg.dsn()) as c:
                version = c.info.server_version
        except EmbeddedError as exc:
            _discard(pg, data_dir)
            # a process outside this test session took the port first
            if "could not bind" in str(exc) and attempt + 1 < _START_ATTEMPTS:
                continue
            raise
        except BaseException:
            _discard(pg, data_dir)
            raise
        break
    return TestServer(
        host=pg.host,
        port=pg.port,
        superuser=pg.superuser,
        superuser_password=None,
        bin_dir=pg.bin_dir,
        tls=tls,
        embedded=pg,
        auth_roles=True,
        version_num=version,
        ssl_on=tls is not None,
        data_dir=data_dir,
    )


def _discard(pg: EmbeddedPostgres, data_dir: Path | None) -> None:
    pg.cleanup()
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)


def short_tempdir(prefix: str) -> Path:
    # Unix socket paths must stay short: keep test dirs directly under /tmp.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
