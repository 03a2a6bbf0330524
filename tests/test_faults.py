"""Faults (DESIGN.md §5): stalls, dead or dying upstreams, too many clients, shutdown,
a killed proxy, and memory that stays bounded under backpressure in both directions.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support.faults import (
    SSL_REQUEST,
    RawConn,
    bind,
    environment,
    execute,
    expect_fatal,
    msg,
    parse,
    query,
    raw_header,
    raw_session,
    rss_kb,
    startup_packet,
    wait_for,
    within,
)
from support.pg import TestServer
from support.proxy import via_direct

pytestmark = pytest.mark.skipif(via_direct(), reason="faults of softguard itself")

RSS_CEILING_KB = 150 * 1024
STALL_TIMEOUT = 1  # client_stall_timeout of stall_proxy (seconds)
STARTUP_TIMEOUT = 2  # its startup_timeout


def _user(pg_server: TestServer) -> str:
    if pg_server.superuser_password is not None:
        pytest.skip("raw-socket sessions need trust authentication for the superuser")
    return pg_server.superuser


def assert_still_serving(target: Any, dbname: str) -> None:
    assert target.alive, f"proxy died:\n{target.tail()}"
    with psycopg.connect(target.dsn(dbname), connect_timeout=10) as c:
        assert c.execute("select 1").fetchone() == (1,)


@contextlib.contextmanager
def fresh_proxy(factory: Any, *args: str, upstream: str | None = None, **env: str) -> Iterator[Any]:
    """A proxy of its own (never shared), started with SOFTGUARD_* ``env``; stopped after.
    Plain on the loopback hop unless told otherwise, as beside its server: then both of a
    ready session's connections relay on links (decision 0040), whose flow control and
    failures these tests are about as much as the transports'."""
    if upstream is None:
        upstream = factory.server.upstream_dsn(sslmode="disable")
    with environment(**env):
        p = factory(*args, upstream=upstream, fresh=True)
    try:
        yield p
    finally:
        p.stop()


# ---------------------------------------------------------------------- stalls


@pytest.fixture(scope="module")
def stall_proxy(proxy_factory: Any) -> Iterator[Any]:
    with fresh_proxy(
        proxy_factory,
        SOFTGUARD_CLIENT_STALL_TIMEOUT=str(STALL_TIMEOUT),
        SOFTGUARD_STARTUP_TIMEOUT=str(STARTUP_TIMEOUT),
    ) as p:
        yield p


STALL_CASES = {
    # half a Query: header says 200 bytes, 20 arrive
    "half-query": raw_header(b"Q", 200) + b"select 1 /* ....... ",
    # half of a message the proxy does not read (Bind streams through)
    "half-bind": raw_header(b"B", 5000) + b"\0\0" + b"x" * 100,
    # three bytes of a header
    "half-header": b"Q\0\0",
    # a complete Query, then half of the next
    "query-then-half": query("select 1") + raw_header(b"Q", 50) + b"sel",
}


@pytest.mark.parametrize("name", list(STALL_CASES))
def test_client_stalling_mid_message(
    name: str, stall_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    user = _user(pg_server)
    with raw_session(stall_proxy.host, stall_proxy.port, user, dbname) as c:
        started = time.monotonic()
        c.send(STALL_CASES[name])
        if name == "query-then-half":
            c.read_until_ready()
        fields = expect_fatal(c, "08P01", timeout=within(STALL_TIMEOUT))
        elapsed = time.monotonic() - started
    assert "stall" in fields["M"], fields
    # not before the timeout (the clock started before the bytes were sent)
    assert elapsed >= 0.9 * STALL_TIMEOUT, f"stall reported after {elapsed:.1f}s"
    assert_still_serving(stall_proxy, dbname)


def test_idle_client_at_message_boundary_is_not_disconnected(
    stall_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    user = _user(pg_server)
    with raw_session(stall_proxy.host, stall_proxy.port, user, dbname) as c:
        c.send(query("select 1"))
        c.read_until_ready()
        time.sleep(3)  # three stall timeouts, between messages
        c.send(query("select 2"))
        messages = c.read_until_ready()
        assert not [m.fields for m in messages if m.type == b"E"], messages
        assert [m for m in messages if m.type == b"D"]


def test_slow_but_progressing_client_is_not_disconnected(
    stall_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """A message dribbled over 4 s, a byte every 0.25 s: slow, but never stalled 1 s."""
    user = _user(pg_server)
    data = query("select 'dribbled'")
    with raw_session(stall_proxy.host, stall_proxy.port, user, dbname) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
            time.sleep(4 / len(data))
        messages = c.read_until_ready()
        assert not [m.fields for m in messages if m.type == b"E"], messages
        assert any(m.type == b"D" and m.body.endswith(b"dribbled") for m in messages)


def test_client_stalling_during_startup(stall_proxy: Any, dbname: str) -> None:
    """Half a startup packet, then silence: startup_timeout (2 s) ends it with 08P01."""
    with RawConn.connect(stall_proxy.host, stall_proxy.port) as c:
        started = time.monotonic()
        c.send(struct.pack("!I", 80) + b"\0\3\0\0user\0")
        expect_fatal(c, "08P01", timeout=within(STARTUP_TIMEOUT))
        assert time.monotonic() - started >= 0.9 * STARTUP_TIMEOUT
    with RawConn.connect(stall_proxy.host, stall_proxy.port) as c:
        # Nothing at all: a TCP connection that never says a word.
        expect_fatal(c, "08P01", timeout=within(STARTUP_TIMEOUT))
    assert_still_serving(stall_proxy, dbname)


# ---------------------------------------------------------------------- upstream down


@contextlib.contextmanager
def _dead_port() -> Iterator[int]:
    """A port that refuses connections for the whole test: bound, never listening, so no
    other process (a proxy or server another test starts) can take it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def test_upstream_down(proxy_factory: Any, pg_server: TestServer) -> None:
    with (
        _dead_port() as port,
        fresh_proxy(proxy_factory, upstream=f"postgresql://127.0.0.1:{port}") as p,
    ):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(p.dsn("postgres"), connect_timeout=10)
        err = info.value
        assert "softguard" in str(err), str(err)
        assert err.sqlstate in (None, "08006"), err.sqlstate
        # The exact SQLSTATE, raw.
        with RawConn.connect(p.host, p.port) as c:
            c.send(startup_packet("postgres", "postgres"))
            fields = expect_fatal(c, "08006")
        assert str(port) in fields["M"], fields
        time.sleep(0.2)
        assert p.alive, p.tail()
        # ... and it keeps answering, the same way.
        with pytest.raises(psycopg.OperationalError, match="softguard"):
            psycopg.connect(p.dsn("postgres"), connect_timeout=10)
        assert p.alive


# ---------------------------------------------------------------------- upstream dies


def test_backend_terminated_mid_query(proxy: Any, pg_server: TestServer, dbname: str) -> None:
    """pg_terminate_backend: the server's own FATAL 57P01 reaches the client, alone."""
    user = _user(pg_server)
    with raw_session(proxy.host, proxy.port, user, dbname) as c:
        c.send(query("select pg_backend_pid()"))
        rows = [m for m in c.read_until_ready() if m.type == b"D"]
        (size,) = struct.unpack_from("!i", rows[0].body, 2)
        pid = int(rows[0].body[6 : 6 + size])
        c.send(query("select pg_sleep(30)"))
        with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
            assert wait_for(
                lambda: (
                    d.execute(
                        "select wait_event from pg_stat_activity where pid = %s", [pid]
                    ).fetchone()
                    == ("PgSleep",)
                ),
                10,
            ), "the proxied backend never started sleeping"
            assert d.execute("select pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        # relayed as the server sends it: the event is the error itself
        fields = expect_fatal(c, "57P01", timeout=within(1))
    assert "softguard" not in fields["M"], f"expected the server's own error: {fields}"
    assert fields.get("R"), f"expected server-side fields (routine): {fields}"
    assert_still_serving(proxy, dbname)


def test_backend_terminated_psycopg(proxy: Any, pg_server: TestServer, dbname: str) -> None:
    with psycopg.connect(proxy.dsn(dbname), autocommit=True) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        other = psycopg.connect(proxy.dsn(dbname), autocommit=True)
        try:

            def kill_soon() -> None:
                with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
                    wait_for(
                        lambda: (
                            d.execute(
                                "select wait_event from pg_stat_activity where pid = %s", [pid]
                            ).fetchone()
                            == ("PgSleep",)
                        ),
                        10,
                    )
                    d.execute("select pg_terminate_backend(%s)", [pid])

            t = threading.Thread(target=kill_soon)
            t.start()
            with pytest.raises(psycopg.OperationalError) as info:
                c.execute("select pg_sleep(30)")
            t.join(15)
            assert info.value.sqlstate == "57P01", (info.value.sqlstate, str(info.value))
            assert other.execute("select 2").fetchone() == (2,)
        finally:
            other.close()
    assert_still_serving(proxy, dbname)


class FakeUpstream:
    """A tiny fake PostgreSQL on 127.0.0.1: trust auth, then misbehaves on the first
    message after startup according to ``mode``:

    - close:    close the socket, nothing sent
    - reset:    close with SO_LINGER 0 (an RST)
    - partial:  send half a RowDescription, then close
    - garbage:  send a message with an impossible length (2), then wait
    - silent:   never answer anything, not even the SSLRequest (see ``closed``)
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        self.peer_closed = threading.Event()  # silent mode: the proxy hung up on us
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = conn.recv(n - len(out))
            if not chunk:
                raise ConnectionError("peer closed")
            out += chunk
        return out

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            if self.mode == "silent":
                # Wait for the proxy to give up and close (bounded by the timeout).
                try:
                    while conn.recv(4096):
                        pass
                    self.peer_closed.set()
                except TimeoutError:
                    pass
                return
            (length,) = struct.unpack("!I", self._recv_exact(conn, 4))
            rest = self._recv_exact(conn, length - 4)
            if length == 8 and rest == SSL_REQUEST[4:]:
                conn.sendall(b"N")
                (length,) = struct.unpack("!I", self._recv_exact(conn, 4))
                rest = self._recv_exact(conn, length - 4)
            conn.sendall(
                msg(b"R", struct.pack("!I", 0))
                + msg(b"S", b"server_version\x0015.0\0")
                + msg(b"K", struct.pack("!II", 4242, 1))
                + msg(b"Z", b"I")
            )
            self._recv_exact(conn, 5)  # the first message's header
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.mode == "partial":
                conn.sendall(raw_header(b"T", 100) + b"\0\1abc")
            elif self.mode == "garbage":
                conn.sendall(raw_header(b"T", 2) + b"\0" * 16)
                time.sleep(10)
        except (OSError, ConnectionError, struct.error) as exc:
            self.errors.append(repr(exc))
        finally:
            conn.close()


@pytest.fixture
def fake_upstream(request: pytest.FixtureRequest) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(request.param)
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.parametrize("fake_upstream", ["close", "reset"], indirect=True)
def test_upstream_drops_connection_mid_query(
    fake_upstream: FakeUpstream, proxy_factory: Any, proxy: Any, dbname: str
) -> None:
    """The upstream vanishes without a word: FATAL 08006 from softguard, then EOF."""
    with fresh_proxy(proxy_factory, upstream=fake_upstream.dsn) as p:
        for _ in range(3):  # and again: the proxy is unharmed
            with raw_session(p.host, p.port, "postgres", "postgres") as c:
                c.send(query("select 1"))
                fields = expect_fatal(c, "08006", timeout=5)
            assert "lost connection" in fields["M"] and "softguard" in fields["M"], fields
        assert p.alive, p.tail()
    assert_still_serving(proxy, dbname)


@pytest.mark.parametrize("fake_upstream", ["partial", "garbage"], indirect=True)
def test_upstream_dies_mid_message_or_sends_garbage(
    fake_upstream: FakeUpstream, proxy_factory: Any
) -> None:
    """Half a server message then EOF, or an impossible length: the client connection
    ends promptly (an ErrorResponse can only be added at a message boundary, so EOF
    without one is acceptable here) and the proxy lives on."""
    with fresh_proxy(proxy_factory, upstream=fake_upstream.dsn) as p:
        for _ in range(2):
            with raw_session(p.host, p.port, "postgres", "postgres") as c:
                c.send(query("select 1"))
                c.wait_eof(timeout=within(1))  # nothing else would close it
        assert p.alive, p.tail()


@pytest.mark.parametrize("fake_upstream", ["silent"], indirect=True)
def test_upstream_accepts_but_never_answers(
    fake_upstream: FakeUpstream, proxy_factory: Any
) -> None:
    """connect_timeout (1 s) ends the attempt with 08006, and the half-open upstream
    socket is closed, not leaked until the server itself gives up."""
    with fresh_proxy(proxy_factory, upstream=fake_upstream.dsn, SOFTGUARD_CONNECT_TIMEOUT="1") as p:
        with RawConn.connect(p.host, p.port) as c:
            started = time.monotonic()
            c.send(startup_packet("postgres", "postgres"))
            fields = expect_fatal(c, "08006", timeout=within(1))
            assert time.monotonic() - started >= 0.9
        assert "timed out" in fields["M"], fields
        assert p.alive, p.tail()
        assert fake_upstream.peer_closed.wait(within(1)), (
            "softguard gave up on the upstream but left its socket open"
        )


# ---------------------------------------------------------------------- max_client_conn


def test_max_client_conn(proxy_factory: Any, dbname: str) -> None:
    with fresh_proxy(proxy_factory, "--max-client-conn", "2") as p:
        first = psycopg.connect(p.dsn(dbname), autocommit=True)
        second = psycopg.connect(p.dsn(dbname), autocommit=True)
        try:
            with pytest.raises(psycopg.OperationalError, match="max_client_conn") as info:
                psycopg.connect(p.dsn(dbname), connect_timeout=10)
            assert info.value.sqlstate in (None, "53300")
            with RawConn.connect(p.host, p.port) as c:
                c.send(startup_packet("postgres", dbname))
                fields = expect_fatal(c, "53300")
            assert "max_client_conn" in fields["M"]
            # The two admitted clients are untouched.
            assert first.execute("select 1").fetchone() == (1,)
            assert second.execute("select 2").fetchone() == (2,)
            first.close()

            def third_works() -> bool:
                try:
                    with psycopg.connect(p.dsn(dbname), connect_timeout=5) as c3:
                        return c3.execute("select 3").fetchone() == (3,)
                except psycopg.OperationalError:
                    return False

            assert wait_for(third_works, 5, interval=0.2), "a freed slot was not reused"
        finally:
            first.close()
            second.close()
        assert p.alive


# ---------------------------------------------------------------------- shutdown / kill


@pytest.fixture
def table(pg_server: TestServer, dbname: str) -> Iterator[str]:
    name = f"faults_{int(time.monotonic() * 1000) % 10**9}"
    with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
        d.execute(f"create table {name} (id int primary key)")
    yield name
    with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
        d.execute(f"drop table if exists {name}")


def _ids(pg_server: TestServer, dbname: str, table: str) -> list[int]:
    with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
        return [r[0] for r in d.execute(f"select id from {table} order by id")]


def _refused(p: Any) -> bool:
    try:
        with socket.create_connection((p.host, p.port), timeout=2) as s:
            s.settimeout(2)
            # Accepted by a lingering backlog? Then it must be closed without service.
            s.sendall(startup_packet("postgres", "postgres"))
            data = s.recv(1)
            return data in (b"", b"E")
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def test_graceful_shutdown(
    proxy_factory: Any, pg_server: TestServer, dbname: str, table: str
) -> None:
    user = _user(pg_server)
    # Far longer than the test waits: an exit seen means the transaction's end caused it.
    with environment(SOFTGUARD_SHUTDOWN_TIMEOUT="600"):
        p = proxy_factory(fresh=True)
    try:
        idle = raw_session(p.host, p.port, user, dbname)
        busy = psycopg.connect(p.dsn(dbname))
        busy.execute(f"insert into {table} values (1)")  # psycopg opened a transaction
        assert busy.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)

        # The idle client is closed at once, with 57P01.
        with idle:
            expect_fatal(idle, "57P01", timeout=within(1))
        # New clients are turned away.
        assert wait_for(lambda: _refused(p), within(1)), "new connections accepted after SIGTERM"
        # The transaction in progress may finish ...
        busy.execute(f"insert into {table} values (2)")
        busy.commit()
        assert _ids(pg_server, dbname, table) == [1, 2]
        # ... and then the session is closed.
        with pytest.raises(psycopg.OperationalError):
            for _ in range(50):
                busy.execute("select 1")
                time.sleep(0.1)
        busy.close()
        code = p.proc.wait(timeout=within(1))  # not the 600 s shutdown_timeout
        assert code == 0, p.tail()
    finally:
        p.kill()


def test_shutdown_timeout_closes_open_transactions(
    proxy_factory: Any, pg_server: TestServer, dbname: str, table: str
) -> None:
    """A transaction that does not finish within shutdown_timeout (1 s) is cut with
    57P01; the server rolls it back."""
    user = _user(pg_server)
    with environment(SOFTGUARD_SHUTDOWN_TIMEOUT="1"):
        p = proxy_factory(fresh=True)
    try:
        with raw_session(p.host, p.port, user, dbname) as c:
            c.send(query(f"begin; insert into {table} values (7)"))
            c.read_until_ready()
            assert p.proc is not None
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            expect_fatal(c, "57P01", timeout=within(1))
            assert time.monotonic() - started >= 0.9  # shutdown_timeout 1 s, then cut
        assert p.proc.wait(timeout=10) == 0, p.tail()
        assert wait_for(lambda: _ids(pg_server, dbname, table) == [], 5)
    finally:
        p.kill()


def test_killed_proxy_rolls_back_open_transaction(
    proxy_factory: Any, pg_server: TestServer, dbname: str, table: str
) -> None:
    p = proxy_factory(fresh=True)
    try:
        c = psycopg.connect(p.dsn(dbname))
        try:
            c.execute(f"insert into {table} values (1)")
            pid = c.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            p.kill()  # SIGKILL
            with pytest.raises(psycopg.OperationalError):
                c.execute(f"insert into {table} values (2)")
                c.commit()
        finally:
            c.close()
        with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
            assert wait_for(
                lambda: (
                    d.execute(
                        "select count(*) from pg_stat_activity where pid = %s", [pid]
                    ).fetchone()
                    == (0,)
                ),
                10,
            ), "the backend of a killed proxy's session is still there"
        assert _ids(pg_server, dbname, table) == []
    finally:
        p.kill()


# ---------------------------------------------------------------------- bounded memory


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def memory_proxy(proxy_factory: Any) -> Iterator[Any]:
    with fresh_proxy(proxy_factory) as p:
        yield p


def test_big_copy_in_with_slow_server_keeps_memory_bounded(
    memory_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """200 MB of COPY data, while the server stops reading for 3 s (a trigger sleeps on
    the first row): the proxy must stop reading the client, not buffer the stream."""
    name = f"copy_in_{int(time.monotonic() * 1000) % 10**9}"
    with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
        d.execute(f"create unlogged table {name} (id int, v text)")
        d.execute(
            f"""create function {name}_slow() returns trigger language plpgsql as $$
            begin if new.id = 1 then perform pg_sleep(3); end if; return new; end $$"""
        )
        d.execute(
            f"create trigger slow before insert on {name} "
            f"for each row execute function {name}_slow()"
        )
    line_payload = "x" * 1000
    rows_per_chunk = 1000
    chunks = 200  # 200 000 rows x ~1 KB = ~200 MB
    try:
        with (
            RssSampler(memory_proxy.proc.pid) as rss,
            psycopg.connect(memory_proxy.dsn(dbname), autocommit=True) as c,
        ):
            base = rss.peak
            with c.cursor() as cur:
                with cur.copy(f"copy {name} (id, v) from stdin") as cp:
                    n = 0
                    for _ in range(chunks):
                        block = "".join(
                            f"{n + i + 1}\t{line_payload}\n" for i in range(rows_per_chunk)
                        )
                        n += rows_per_chunk
                        cp.write(block)
                assert cur.rowcount == chunks * rows_per_chunk
        assert rss.peak < RSS_CEILING_KB, (
            f"proxy RSS peaked at {rss.peak // 1024} MB (started at {base // 1024} MB)"
        )
        with psycopg.connect(pg_server.superuser_dsn(dbname)) as d:
            assert d.execute(f"select count(*) from {name}").fetchone() == (
                chunks * rows_per_chunk,
            )
    finally:
        with psycopg.connect(pg_server.superuser_dsn(dbname), autocommit=True) as d:
            d.execute(f"drop table if exists {name}")
            d.execute(f"drop function if exists {name}_slow()")


def test_big_result_to_a_client_that_does_not_read(
    memory_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """300 MB of result rows while the client does not read for 3 s: the proxy must stop
    reading the server, not buffer the result. Then everything arrives intact."""
    user = _user(pg_server)
    count, width = 300, 1_000_000
    sock = socket.create_connection((memory_proxy.host, memory_proxy.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c = RawConn(sock)
    with c, RssSampler(memory_proxy.proc.pid) as rss:
        c.send(startup_packet(user, dbname))
        c.read_until_ready()
        base = rss_kb(memory_proxy.proc.pid)
        c.send(query(f"select repeat('x', {width}) from generate_series(1, {count})"))
        time.sleep(3)
        stalled_peak = rss.peak
        assert stalled_peak < RSS_CEILING_KB, (
            f"proxy RSS reached {stalled_peak // 1024} MB (from {base // 1024} MB) while "
            "the client was not reading"
        )
        rows = 0
        deadline = time.monotonic() + 60
        while True:
            m = c.read_message(timeout=max(0.1, deadline - time.monotonic()))
            if m.type == b"D":
                (size,) = struct.unpack_from("!i", m.body, 2)
                assert size == width and m.body[6:] == b"x" * width
                rows += 1
            elif m.type == b"C":
                assert m.body == f"SELECT {count}\0".encode()
            elif m.type == b"Z":
                break
            else:
                assert m.type == b"T", m
        assert rows == count
        assert rss.peak < RSS_CEILING_KB, f"proxy RSS peaked at {rss.peak // 1024} MB"
        # The session is still good.
        c.send(query("select 1"))
        assert [m for m in c.read_until_ready() if m.type == b"D"]


def test_client_writing_while_server_blocked_keeps_memory_bounded(
    memory_proxy: Any, pg_server: TestServer, dbname: str
) -> None:
    """Both directions at once. The client asks for a 300 MB result, does not read it, and
    keeps writing: 200 MB of pipelined Bind/Execute requests. The server is blocked
    writing the result and reads nothing, so the proxy must pause reading the client (not
    buffer the 200 MB) as well as pause reading the server (not buffer the 300 MB)."""
    user = _user(pg_server)
    sock = socket.create_connection((memory_proxy.host, memory_proxy.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    c = RawConn(sock)
    big, width = 300, 1_000_000
    request = bind(stmt="len", params=(b"z" * 100_000,)) + execute()
    total_requests = 2000  # ~200 MB
    with c, RssSampler(memory_proxy.proc.pid) as rss:
        c.send(startup_packet(user, dbname))
        c.read_until_ready()
        c.send(parse("select length($1::text)", name="len") + msg(b"S"))
        c.read_until_ready()
        c.send(query(f"select repeat('x', {width}) from generate_series(1, {big})"))
        sock.setblocking(False)
        sent = 0
        pending = b""
        end = time.monotonic() + 3
        while time.monotonic() < end and sent < total_requests:
            if not pending:
                pending = request
            try:
                n = sock.send(pending)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            pending = pending[n:]
            if not pending:
                sent += 1
        sock.setblocking(True)
        sock.settimeout(10)
        assert rss.peak < RSS_CEILING_KB, (
            f"proxy RSS reached {rss.peak // 1024} MB with a client writing but not "
            f"reading ({sent} requests of 100 kB written)"
        )
        assert sent < total_requests, "the client could write 200 MB: nothing pushed back"

        # Drain in a thread while the rest is written: the big result, then one row and
        # one ReadyForQuery for all the requests (a single Sync at the end).
        outcome: list[Any] = []

        def drain() -> None:
            rows = values = 0
            deadline = time.monotonic() + 120
            try:
                while True:
                    m = c.read_message(timeout=max(0.1, deadline - time.monotonic()))
                    if m.type == b"E":
                        outcome.append(m.fields)
                        return
                    if m.type == b"D":
                        if len(m.body) > 1000:
                            rows += 1
                        else:
                            assert m.body.endswith(b"100000"), m
                            values += 1
                    if m.type == b"Z" and values == total_requests:
                        outcome.append((rows, values))
                        return
            except Exception as exc:
                outcome.append(exc)

        reader = threading.Thread(target=drain)
        reader.start()
        c.send(pending)
        for _ in range(total_requests - sent - (1 if pending else 0)):
            c.send(request)
        c.send(msg(b"S"))
        reader.join(150)
        assert not reader.is_alive(), "draining the results did not finish"
        assert outcome == [(big, total_requests)], outcome
        assert rss.peak < RSS_CEILING_KB, f"proxy RSS peaked at {rss.peak // 1024} MB"
        c.send(query("select 1"))
        assert [m for m in c.read_until_ready() if m.type == b"D"]
