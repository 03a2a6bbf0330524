"""README promises that had no test of their own (issue 17). docs/testing.md maps each
promise to its test here.

Each test drives a real `softguard serve` against the real server and checks what the
README says, from the outside: what a client sees, what the ledger holds, what the
metrics endpoint reports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql
from support.faults import SYNC, TERMINATE, msg, raw_session
from support.pg import TestServer
from support.proxy import REPO_ROOT, Target, free_port, wait_listening
from support.softdelete_harness import sg_notices

from softguard.config import ConfigError, load_settings
from softguard.sql import Classifier


def _proxied(target: Target) -> None:
    if target.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")


# ------------------------------------------------- startup parameters the client cannot change


async def _delete_with_settings(dsn: str, settings: dict[str, str], stmt: str) -> list[str]:
    """Run ``stmt`` over asyncpg (whose server_settings become startup parameters), after
    RESET ALL and DISCARD ALL; the softguard NOTICEs received."""
    notices: list[str] = []
    conn = await asyncpg.connect(dsn, server_settings=settings, timeout=15)
    try:
        conn.add_log_listener(lambda _c, m: notices.append(m.message))
        await conn.execute("RESET ALL")
        await conn.execute("DISCARD ALL")
        await conn.execute(stmt)
    finally:
        await conn.close()
    return [n for n in notices if n.startswith("softguard:")]


def test_client_cannot_change_its_registration(
    proxy: Target, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """README (Reversible data changes): "nothing the client can set or call removes or
    lowers that registration" (decision 0012): a client's own softguard.* startup
    parameters, a `-c softguard.capture=off` in its options, RESET ALL and DISCARD ALL
    leave capture on and the recorded client address the real one (set_config() and the
    other spellings: tests/attacks/test_attack_settings.py)."""
    _proxied(proxy)
    (db,) = twins(1)
    forged = {
        "softguard.capture": "off",
        "softguard.retention": "1",
        "softguard.client_addr": "203.0.113.9",
        "options": "-c softguard.capture=off",
    }
    stmt = "DELETE FROM billing.refunds WHERE id <= 3"
    got = asyncio.run(_delete_with_settings(proxy.dsn(db), forged, stmt))
    assert len(got) == 1 and "is reversible as operation" in got[0], got
    (op,) = [o for o in sg.operations(db) if o["kind"] == "DELETE"]
    assert op["statement"] == stmt
    with sg.connect(db) as c:
        row = c.execute(
            "SELECT client_addr, expires_at - created_at > interval '1 day',"
            " (SELECT count(*) FROM softguard.captures WHERE op_id = %s)"
            " FROM softguard.operations WHERE id = %s",
            [op["id"], op["id"]],
        ).fetchone()
    assert row is not None
    client_addr, long_retention, captures = row
    assert client_addr.split(":")[0] == "127.0.0.1", client_addr
    assert long_retention  # the proxy's retention (7 days), not the forged 1 second
    assert captures >= 1


# ------------------------------------------------- the 55000 refusal naming softguard init


@pytest.fixture
def nonsuper_db(pg_server: TestServer) -> Iterator[str]:
    """A database without the ledger, owned by sg_trust (a non-superuser, trust auth)."""
    if not pg_server.auth_roles:
        pytest.skip("needs the embedded server's roles and pg_hba (SOFTGUARD_TEST_DSN set)")
    with pg_server.scratch_database() as name:
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            c.execute(sql.SQL("ALTER DATABASE {} OWNER TO sg_trust").format(sql.Identifier(name)))
            c.execute("ALTER SCHEMA public OWNER TO sg_trust")
            c.execute("SET ROLE sg_trust")
            c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            c.execute("INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 5) g")
        yield name


def _refusal(dsn: str, stmt: str) -> psycopg.errors.Diagnostic:
    with psycopg.connect(dsn, autocommit=True) as c:
        with pytest.raises(psycopg.Error) as err:
            c.execute(stmt)
    return err.value.diag


INIT_REFUSAL = (
    "softguard: cannot make this statement reversible: the softguard ledger is not installed in"
    ' database "{db}" and softguard could not install it ('
)
INIT_COMMAND = "). Run: softguard init --dsn <superuser DSN of that database>"


@pytest.mark.parametrize("stmt", ["DELETE FROM notes WHERE id = 1", "DROP TABLE notes"])
def test_refusal_names_softguard_init_for_a_non_superuser(
    proxy: Target, pg_server: TestServer, nonsuper_db: str, stmt: str
) -> None:
    """README (Reversible DROP): the ledger needs superuser credentials in the upstream
    DSN, or trust; "If it cannot be installed, protected statements are refused with
    SQLSTATE 55000 and the command to run". Here the upstream DSN has no credentials and
    the client is a non-superuser: the install fails, the statement is refused, nothing
    changes."""
    _proxied(proxy)
    diag = _refusal(proxy.dsn(nonsuper_db, "sg_trust"), stmt)
    assert diag.sqlstate == "55000"
    text = diag.message_primary or ""
    assert text.startswith(INIT_REFUSAL.format(db=nonsuper_db)), text
    assert text.endswith(INIT_COMMAND), text
    reason = text[len(INIT_REFUSAL.format(db=nonsuper_db)) : -len(INIT_COMMAND)]
    assert "superuser" in reason or "permission denied" in reason, reason
    with psycopg.connect(pg_server.superuser_dsn(nonsuper_db)) as c:
        assert c.execute("SELECT count(*) FROM notes").fetchone() == (5,)
        assert c.execute("SELECT to_regnamespace('softguard')").fetchone() == (None,)


def test_a_superuser_after_a_refused_non_superuser_installs_the_ledger(
    proxy: Target, pg_server: TestServer, nonsuper_db: str
) -> None:
    """The refusal is the non-superuser's: a superuser's session right after it (within
    the seconds a failure is remembered) installs the ledger, and its DELETE is reversible."""
    _proxied(proxy)
    assert _refusal(proxy.dsn(nonsuper_db, "sg_trust"), "DELETE FROM notes").sqlstate == "55000"
    with psycopg.connect(proxy.dsn(nonsuper_db), autocommit=True) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("DELETE FROM notes WHERE id = 1")
    assert any("is reversible as operation" in n for n in notices), notices


def test_refusal_names_softguard_init_when_the_upstream_dsn_is_not_a_superuser(
    proxy_factory: Any, pg_server: TestServer, nonsuper_db: str
) -> None:
    """The same with the upstream DSN carrying a non-superuser's credentials."""
    upstream = f"postgresql://sg_scram:scram-pw@{pg_server.host}:{pg_server.port}"
    p = proxy_factory(upstream=upstream)
    _proxied(p)
    diag = _refusal(p.dsn(nonsuper_db, "sg_trust"), "DELETE FROM notes WHERE id = 1")
    assert diag.sqlstate == "55000"
    text = diag.message_primary or ""
    assert text.startswith(INIT_REFUSAL.format(db=nonsuper_db)), text
    assert text.endswith(INIT_COMMAND), text


# ------------------------------------------------- DROP INDEX CONCURRENTLY


def test_drop_index_concurrently_passes_unprotected(
    proxy: Target, sg: Any, twins: Callable[..., list[str]]
) -> None:
    """README (Known limits): "DROP INDEX CONCURRENTLY passes unprotected (an index holds
    no data)": the server drops it, no NOTICE, no operation; a plain DROP INDEX is still
    reversible."""
    _proxied(proxy)
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE INDEX notes_a ON vehicle_notes (note)",
        "CREATE INDEX notes_b ON vehicle_notes (id, note)",
    )
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        assert c.execute("DROP INDEX CONCURRENTLY notes_a").statusmessage == "DROP INDEX"
        assert got == []
        assert c.execute("DROP INDEX notes_b").statusmessage == "DROP INDEX"
        assert len(got) == 1 and got[0].startswith("softguard: DROP INDEX"), got
    with sg.connect(db) as c:
        assert c.execute("SELECT to_regclass('public.notes_a')").fetchone() == (None,)
    ops = sg.operations(db)
    assert [o["kind"] for o in ops] == ["DROP INDEX"], ops
    assert "notes_b" in ops[0]["statement"]


# ------------------------------------------------- FunctionCall


def _function_call(oid: int, *args: bytes) -> bytes:
    """FunctionCall with binary arguments and a binary result."""
    body = struct.pack("!IHH", oid, 1, 1) + struct.pack("!H", len(args))
    body += b"".join(struct.pack("!i", len(a)) + a for a in args)
    return msg(b"F", body + struct.pack("!H", 1))


def _function_calls(host: str, port: int, user: str, db: str) -> list[list[tuple[bytes, bytes]]]:
    answers = []
    with raw_session(host, port, user, db) as c:
        for call in (
            _function_call(177, struct.pack("!i", 2), struct.pack("!i", 40)),  # int4pl
            _function_call(952, struct.pack("!i", 0)),  # lo_open(0, ...): wrong arity
            _function_call(4294967000, b"x"),  # no such function
            _function_call(958, struct.pack("!i", 99)),  # lo_tell(99): no such descriptor
            _function_call(1317, b"abc"),  # length(text)
            msg(b"Q", b"SELECT 1\0"),
        ):
            c.send(call)
            answers.append([(m.type, m.body) for m in c.read_until_ready()])
        c.send(SYNC + TERMINATE)
    return answers


def _fields(body: bytes) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


def test_function_call_through_the_proxy(proxy: Target, pg_server: TestServer, dbname: str) -> None:
    """README (What the proxy guarantees): a FunctionCall of a large-object function (what
    libpq's lo_* API sends) gets the server's own answer; any other FunctionCall is refused
    with 42501 and a HINT to use SELECT (the proxy cannot read what it does); the session
    goes on either way, in the same transaction state."""
    _proxied(proxy)
    user = pg_server.superuser
    direct = _function_calls(pg_server.host, pg_server.port, user, dbname)
    proxied = _function_calls(proxy.host, proxy.port, user, dbname)
    assert direct[0] == [(b"V", struct.pack("!ii", 4, 42)), (b"Z", b"I")]
    assert direct[4] == [(b"V", struct.pack("!ii", 4, 3)), (b"Z", b"I")]
    for i in (0, 2, 4):  # not a large-object function: refused, whatever it is
        (etype, ebody), ready = proxied[i]
        fields = _fields(ebody)
        assert (etype, fields["C"], ready) == (b"E", "42501", (b"Z", b"I")), proxied[i]
        assert "FunctionCall" in fields["M"] and "SELECT" in fields["H"], fields
    for i in (1, 3, 5):  # large-object functions and SQL: the server's own answers
        assert proxied[i] == direct[i]
    assert [m[0][0] for m in direct[1:4]] == [b"E", b"E", b"E"]
    assert [t for t, _ in direct[5]] == [b"T", b"D", b"C", b"Z"]


# ------------------------------------------------- multi-host upstream DSN


def test_only_the_first_host_of_a_multi_host_dsn_is_used(
    proxy_factory: Any, pg_server: TestServer, dbname: str
) -> None:
    """README (Known limits): "Only the first host of a multi-host upstream DSN is used":
    the server listed first serves; listed second, after a dead one, it is never tried."""
    dead = free_port()
    host, port = pg_server.host, pg_server.port
    first = proxy_factory(upstream=f"postgresql://{host}:{port},{host}:{dead}/postgres")
    _proxied(first)
    with psycopg.connect(first.dsn(dbname), connect_timeout=15) as c:
        assert c.execute("SELECT inet_server_port()").fetchone() == (port,)
    second = proxy_factory(upstream=f"postgresql://{host}:{dead},{host}:{port}/postgres")
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(second.dsn(dbname), connect_timeout=15).close()
    assert "08006" in str(err.value) or "softguard" in str(err.value), err.value
    assert second.alive


# ------------------------------------------------- IPv6 --listen


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_listen_end_to_end(pg_server: TestServer, dbname: str, tmp_path: Path) -> None:
    """README (serve options): `--listen [::1]:6432` for IPv6: a client connects over IPv6,
    runs statements, and a DROP is reversible as over IPv4."""
    if not _has_ipv6_loopback():
        pytest.skip("environment: no IPv6 loopback (::1) on this machine")
    port = free_port("::1")
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTGUARD_")}
    cmd = [sys.executable, "-m", "softguard", "serve", "--listen", f"[::1]:{port}"]
    cmd += ["--upstream", pg_server.upstream_dsn()]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        assert wait_listening(proc, "::1", port, 30), log.read_text()
        dsn = f"postgresql://{pg_server.superuser}@[::1]:{port}/{dbname}"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=15) as c:
            got = sg_notices(c)
            assert c.execute("SELECT inet_client_addr()").fetchone() is not None
            c.execute("CREATE TABLE v6 (id int)")
            c.execute("INSERT INTO v6 VALUES (1)")
            assert c.execute("DROP TABLE v6").statusmessage == "DROP TABLE"
        assert len(got) == 1 and got[0].startswith("softguard: DROP TABLE public.v6"), got
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------- classify_cache_size


def test_classify_cache_size_is_a_setting(tmp_path: Path) -> None:
    """README (serve options): `classify_cache_size` (TOML key or SOFTGUARD_ env), 4096 by
    default, >= 0."""
    config = tmp_path / "c.toml"
    config.write_text("classify_cache_size = 2\n")
    assert load_settings(config).classify_cache_size == 2
    config.write_text("")
    assert load_settings(config).classify_cache_size == 4096
    config.write_text("classify_cache_size = -1\n")
    with pytest.raises(ConfigError, match="classify_cache_size"):
        load_settings(config)


def test_classify_cache_holds_at_most_classify_cache_size_texts() -> None:
    """ "classifications cached by statement text": the same text again is a hit, not a
    parse; at most N texts are kept (least recently used leave); 0 caches nothing."""
    texts = [f"DELETE FROM t{i} WHERE a = b".encode() for i in range(5)]
    c = Classifier(cache_size=2)
    for t in texts:
        c.classify_bytes(t)
    assert (len(c), c.stats.parsed, c.stats.evictions) == (2, 5, 3)
    c.classify_bytes(texts[-1])
    assert (c.stats.parsed, c.stats.cache_hits) == (5, 1)
    c.classify_bytes(texts[0])  # evicted: parsed again
    assert c.stats.parsed == 6
    off = Classifier(cache_size=0)
    off.classify_bytes(texts[0])
    off.classify_bytes(texts[0])
    assert (len(off), off.stats.parsed) == (0, 2)


def test_classify_cache_size_zero_still_protects(
    proxy_factory: Any, sg: Any, twins: Callable[..., list[str]], tmp_path: Path
) -> None:
    config = tmp_path / "nocache.toml"
    config.write_text("classify_cache_size = 0\n")
    p = proxy_factory("--config", str(config), fresh=True)
    _proxied(p)
    (db,) = twins(1)
    with psycopg.connect(p.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        for _ in range(2):
            c.execute(
                "DELETE FROM billing.refunds WHERE id = (SELECT min(id) FROM billing.refunds)"
            )
    assert len(got) == 2, got
    assert [o["kind"] for o in sg.operations(db)] == ["DELETE", "DELETE"]


# ------------------------------------------------- softguard_ledger_scrape_errors_total


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = ""
    for _attempt in range(100):  # the endpoint may start a moment after the proxy's port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                text = r.read().decode()
            break
        except urllib.error.URLError:
            time.sleep(0.1)
    assert text, f"no metrics on port {port}"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _errors(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return samples.get(("softguard_ledger_scrape_errors_total", ()), 0.0)


def _databases(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {
        dict(labels)["database"]
        for name, labels in samples
        if name == "softguard_ledger_operations"
    }


def test_ledger_scrape_errors_count_slow_and_failed_reads(
    proxy_factory: Any, pg_server: TestServer, twins: Callable[..., list[str]]
) -> None:
    """README (Observability): softguard_ledger_scrape_errors_total counts "ledger reads
    that failed or took over 3 s (that database is left out of the scrape)". A ledger
    locked by another session is a slow read; a database gone since is a failed one."""
    mport = free_port()
    p = proxy_factory("--metrics", f"127.0.0.1:{mport}", fresh=True)
    _proxied(p)
    slow, gone = twins(2)
    with psycopg.connect(p.dsn(slow), autocommit=True) as c:
        c.execute("DELETE FROM billing.refunds WHERE id = 1")  # the ledger is now ready
    with psycopg.connect(pg_server.superuser_dsn(slow)) as locker:
        locker.execute("LOCK TABLE softguard.operations IN ACCESS EXCLUSIVE MODE")
        s = _scrape(mport)  # waits for the read's own timeout (3 s), then answers without it
        locker.rollback()
    assert slow not in _databases(s)
    # The counter is rendered before the ledger is read: the next scrape shows it (from
    # the cached ledger answer, or a new read that now succeeds).
    assert _errors(_scrape(mport)) == 1

    with psycopg.connect(p.dsn(gone), autocommit=True) as c:
        c.execute("DELETE FROM billing.refunds WHERE id = 1")
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(gone)))
    s = _scrape(mport)  # a database became ready since: not the cached answer
    assert slow in _databases(s) and gone not in _databases(s)
    # 2, or more if the cached answer expired (10 s) and the gone database was read again
    assert _errors(_scrape(mport)) >= 2


# ------------------------------------------------- soft-delete tables re-read periodically

REFRESH = 1.0  # soft_delete_refresh for this test's proxy (60 s by default)
REFRESH_CONFIG = f"""
soft_delete_refresh = {REFRESH}

[[soft_delete]]
table = "public.*"
column = "deleted_at"
database = "sg_pd_*"
"""


def test_soft_delete_tables_are_re_read_periodically(
    proxy_factory: Any, sg: Any, twins: Callable[..., list[str]], tmp_path: Path
) -> None:
    """README (Soft delete): "the list of tables is re-read after table DDL that goes
    through softguard, and every minute" (the `soft_delete_refresh` setting). A table
    created directly, behind softguard's back, becomes a soft-delete table once the list
    is re-read, with no DDL through the proxy."""
    config = tmp_path / "refresh.toml"
    config.write_text(REFRESH_CONFIG)
    p = proxy_factory("--config", str(config), upstream=sg.server.superuser_dsn("postgres"))
    _proxied(p)
    (db,) = twins(1)
    with psycopg.connect(p.dsn(db), autocommit=True) as c:
        got = sg_notices(c)
        c.execute("DELETE FROM vehicle_notes WHERE id = 1")  # the tables are read now
        sg.execute(
            db,
            "CREATE TABLE memos (id int PRIMARY KEY, body text, deleted_at timestamptz)",
            "INSERT INTO memos SELECT g, 'm' || g FROM generate_series(1, 1000) g",
        )
        # Each DELETE past the interval starts a re-read in the background; a later one
        # uses it. Bounded by attempts, with headroom far beyond the interval.
        soft = False
        for i in range(1, 120):
            assert c.execute(f"DELETE FROM memos WHERE id = {i}").statusmessage == "DELETE 1"
            soft = "(soft delete: deleted_at set)" in got[-1]
            if soft:
                break
            time.sleep(REFRESH / 4)
        assert soft, got[-3:]
        # the first one used the list read before the table existed: a plain (hard) delete
        assert i >= 2
        assert got[1].startswith("softguard: DELETE FROM public.memos is reversible"), got
    with sg.connect(db) as c:
        marked = c.execute("SELECT count(*) FROM memos WHERE deleted_at IS NOT NULL").fetchone()
        assert marked == (1,)
        assert c.execute("SELECT count(*) FROM memos").fetchone() == (1000 - i + 1,)
