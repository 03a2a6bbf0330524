"""Protocol fuzzing (DESIGN.md §5): random and mutated byte streams, bounded in number,
size and time, sent to a proxy whose timeouts are short (startup 2 s, stall 1 s).

Every connection must end, within CASE_TIMEOUT, in one of: EOF (usually after an
ErrorResponse), a ReadyForQuery (the stream happened to be a valid request), or a
FATAL ErrorResponse. A connection that neither answers nor closes is a hang: softguard
holds it open with nothing to wait for. Throughout the batch a bystander client keeps
running queries through the same proxy; after it the proxy is alive and serves.

Post-startup streams are followed by a Sync (a message-aligned stream then always gets a
ReadyForQuery; a stream cut mid-message is ended by the stall timeout) or, for every
other case, by a half-close of the socket (softguard must tear the session down on EOF).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from support.faults import (
    FLUSH,
    GSSENC_REQUEST,
    SSL_REQUEST,
    SYNC,
    TERMINATE,
    Closed,
    RawConn,
    bind,
    describe,
    environment,
    execute,
    msg,
    parse,
    query,
    raw_session,
    startup_packet,
)
from support.pg import TestServer
from support.proxy import via_direct

pytestmark = pytest.mark.skipif(via_direct(), reason="fuzzes softguard itself")

CASE_TIMEOUT = 8.0  # > startup timeout (2 s) and stall timeout (1 s), with slack
INTERESTING_INT32 = (
    0,
    1,
    3,
    4,
    5,
    7,
    8,
    9,
    10000,
    10001,
    0x3FFFFFFF,
    0x40000000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    65536,
    65537,
    80877102,
    80877103,
    80877104,
    196608,
    196610,
)


# ---------------------------------------------------------------------- mutation


def mutate(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    buf = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:  # flip one bit
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # replace a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:  # delete a range
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4 and buf:  # duplicate a range
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[end:end] = buf[pos:end]
        elif op == 5:  # truncate
            del buf[pos:]
        elif op == 6 and len(buf) >= 4:  # an interesting int32 (length fields)
            i = rng.randrange(len(buf) - 3)
            buf[i : i + 4] = struct.pack("!I", rng.choice(INTERESTING_INT32))
        elif op == 7 and len(buf) >= 5:  # nudge an int32 up or down a little
            i = rng.randrange(len(buf) - 3)
            (v,) = struct.unpack_from("!I", buf, i)
            struct.pack_into("!I", buf, i, (v + rng.randint(-8, 8)) & 0xFFFFFFFF)
        elif op == 8:  # a random frontend type byte somewhere
            buf[pos:pos] = bytes((rng.choice(b"QPBEDCHSXFdcfpZT\x00\x01\xff"),))
    return bytes(buf[:200_000])


def pre_startup_seeds(user: str, dbname: str) -> list[bytes]:
    good = startup_packet(user, dbname, application_name="fuzz")
    return [
        good,
        startup_packet(user, dbname, version=(3 << 16) | 2),
        SSL_REQUEST,
        GSSENC_REQUEST,
        GSSENC_REQUEST + good,
        SSL_REQUEST + good,
        struct.pack("!IIII", 16, 80877102, 12345, 67890),
        good + query("select 1"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes.fromhex("16030100a5010000a10303") + b"\0" * 32,
        b"",
    ]


def post_startup_seeds() -> list[bytes]:
    return [
        query("select 1"),
        query("select 1; select 'two', 2"),
        query(""),
        query("begin; select 1; commit"),
        query("select 1/0"),
        parse("select $1::int + 1", param_types=(23,))
        + bind(params=(b"41",))
        + describe()
        + execute()
        + SYNC,
        parse("select 1", name="s1")
        + describe(b"S", "s1")
        + SYNC
        + bind(stmt="s1")
        + execute()
        + SYNC,
        parse("select $1::text", name="")
        + bind(params=(None,))
        + execute(max_rows=1)
        + FLUSH
        + SYNC,
        query("select 1") + query("select 2") + SYNC,
        msg(b"d", b"stray copy data") + msg(b"c") + SYNC,
        msg(b"F", struct.pack("!IHHIHH", 1598, 0, 1, 0, 0, 0)) + SYNC,  # FunctionCall
        msg(b"C", b"S\0") + SYNC,
        query("select 1") + TERMINATE,
    ]


# ---------------------------------------------------------------------- one case


@dataclass
class Case:
    index: int
    phase: str  # "pre" or "post"
    data: bytes
    half_close: bool
    pieces: int  # send in this many writes


@dataclass
class Outcome:
    case: Case
    result: str  # eof | ready | fatal | hang | bad-reply | setup-failed
    detail: str = ""


def _classify_pre(data: bytes) -> str:
    """A pre-startup transcript that stayed open: acceptable only if it holds a
    ReadyForQuery (the stream was a valid startup) or a FATAL error."""
    pos = 0
    while (
        pos < len(data)
        and data[pos : pos + 1] in (b"N", b"S")
        and (pos + 1 == len(data) or data[pos + 1 : pos + 2] in (b"N", b"S", b"E", b"R", b""))
    ):
        pos += 1  # one-byte answers to SSLRequest / GSSENCRequest
    found = "hang"
    while pos + 5 <= len(data):
        mtype = data[pos : pos + 1]
        (length,) = struct.unpack_from("!I", data, pos + 1)
        if length < 4:
            return "bad-reply"
        if mtype == b"Z":
            return "ready"
        if mtype == b"E" and b"SFATAL\0" in data[pos : pos + 1 + length]:
            found = "fatal"
        pos += 1 + length
    return found


def _send(conn: RawConn, case: Case, rng: random.Random) -> None:
    data = case.data
    if case.pieces <= 1 or len(data) < 2:
        conn.send_tolerant(data)
        return
    cuts = sorted(rng.sample(range(1, len(data)), min(case.pieces - 1, len(data) - 1)))
    prev = 0
    for cut in [*cuts, len(data)]:
        if not conn.send_tolerant(data[prev:cut]):
            return
        prev = cut
        time.sleep(0.002)


def run_case(host: str, port: int, user: str, dbname: str, case: Case) -> Outcome:
    rng = random.Random(case.index)
    try:
        if case.phase == "pre":
            conn = RawConn.connect(host, port, timeout=CASE_TIMEOUT)
        else:
            try:
                conn = raw_session(host, port, user, dbname, timeout=CASE_TIMEOUT)
            except (AssertionError, OSError, Closed, TimeoutError) as exc:
                return Outcome(case, "setup-failed", repr(exc))
    except OSError as exc:
        return Outcome(case, "setup-failed", repr(exc))
    with conn:
        _send(conn, case, rng)
        if case.half_close:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        elif case.phase == "post":
            conn.send_tolerant(SYNC)
        deadline = time.monotonic() + CASE_TIMEOUT
        if case.phase == "pre":
            # Raw bytes (the answers to SSLRequest/GSSENCRequest are single bytes).
            try:
                while len(conn.buf) < 1 << 20:
                    conn._fill(deadline)
                return Outcome(case, "bad-reply", "more than 1 MiB in answer to startup")
            except Closed:
                return Outcome(case, "eof", bytes(conn.buf[:200]).hex())
            except TimeoutError:
                got = bytes(conn.buf)
                return Outcome(case, _classify_pre(got), got[:200].hex())
        # post-startup: read messages until ReadyForQuery, a FATAL error, or EOF. When
        # nothing comes for a while, the Sync we appended may have been swallowed as the
        # body of a (now complete) mutated message, and the server waits for a Sync after
        # an error: send another, a few times (more than a stall timeout apart, so a
        # message softguard still holds incomplete is not kept alive by them).
        seen: list[bytes] = []
        resyncs = 0
        quiet = 2.5
        while True:
            poll = min(quiet, deadline - time.monotonic())
            if poll <= 0:
                return Outcome(case, "hang", repr(seen[-20:]))
            try:
                m = conn.read_message(timeout=poll)
            except Closed:
                return Outcome(case, "eof", repr(seen[-20:]))
            except TimeoutError:
                if case.half_close or resyncs >= 3:
                    if time.monotonic() >= deadline:
                        return Outcome(case, "hang", repr(seen[-20:]))
                    continue
                resyncs += 1
                deadline = max(deadline, time.monotonic() + quiet + 0.5)
                conn.send_tolerant(SYNC)
                continue
            except AssertionError as exc:  # the proxy sent an impossible frame
                return Outcome(case, "bad-reply", str(exc))
            seen.append(m.type)
            if m.type == b"Z":
                return Outcome(case, "ready", repr(seen[-20:]))
            if m.type == b"E" and m.fields.get("S") == "FATAL":
                try:
                    conn.wait_eof(timeout=CASE_TIMEOUT)
                except TimeoutError:
                    return Outcome(case, "hang", f"open after FATAL {m.fields}")
                except AssertionError as exc:
                    return Outcome(case, "bad-reply", str(exc))
                return Outcome(case, "fatal", m.fields.get("C", ""))


# ---------------------------------------------------------------------- the batch


def make_cases(seed: int, n_pre: int, n_post: int, user: str, dbname: str) -> list[Case]:
    rng = random.Random(seed)
    pre, post = pre_startup_seeds(user, dbname), post_startup_seeds()
    cases: list[Case] = []
    for i in range(n_pre):
        kind = rng.random()
        if kind < 0.15:
            data = rng.randbytes(rng.randint(1, 64))
        elif kind < 0.25:
            data = struct.pack("!I", rng.choice(INTERESTING_INT32)) + rng.randbytes(
                rng.randint(0, 32)
            )
        else:
            data = mutate(rng, rng.choice(pre))
        cases.append(
            Case(len(cases), "pre", data, half_close=i % 2 == 1, pieces=rng.choice((1, 1, 2, 5)))
        )
    for i in range(n_post):
        kind = rng.random()
        if kind < 0.1:
            data = rng.randbytes(rng.randint(1, 64))
        elif kind < 0.2:
            a, b = rng.choice(post), rng.choice(post)
            data = mutate(rng, a[: rng.randrange(len(a) + 1)] + b)
        else:
            data = mutate(rng, rng.choice(post))
        cases.append(
            Case(len(cases), "post", data, half_close=i % 2 == 1, pieces=rng.choice((1, 1, 2, 7)))
        )
    return cases


class Bystander:
    """A client running `select n` through the proxy all along; counts failures."""

    def __init__(self, target: Any, dbname: str) -> None:
        self.target = target
        self.dbname = dbname
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.target.dsn(self.dbname), autocommit=True) as c:
                n = 0
                while not self._stop.wait(0.05):
                    n += 1
                    if c.execute("select %s::int", [n]).fetchone() != (n,):
                        self.failures.append(f"wrong answer at {n}")
                    self.ok += 1
        except Exception as exc:
            self.failures.append(repr(exc))

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_batch(
    target: Any, user: str, dbname: str, cases: list[Case], workers: int
) -> dict[str, int]:
    run: Callable[[Case], Outcome] = lambda case: run_case(  # noqa: E731
        target.host, target.port, user, dbname, case
    )
    with Bystander(target, dbname) as bystander, ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(run, cases))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    bad = [o for o in outcomes if o.result in ("hang", "bad-reply", "setup-failed")]
    report = "\n".join(
        f"case {o.case.index} ({o.case.phase}, half_close={o.case.half_close}, "
        f"pieces={o.case.pieces}): {o.result} {o.detail[:300]}\n    sent {o.case.data[:120]!r}"
        for o in bad[:10]
    )
    assert not bad, f"{len(bad)} of {len(cases)} cases went wrong ({counts}):\n{report}"
    assert target.alive, f"proxy died during fuzzing:\n{target.tail()}"
    assert not bystander.failures, f"the bystander client failed: {bystander.failures}"
    assert bystander.ok > 0
    with psycopg.connect(target.dsn(dbname), connect_timeout=10) as c:
        assert c.execute("select 1").fetchone() == (1,)
    return counts


@pytest.fixture(scope="module")
def fuzz_proxy(proxy_factory: Any) -> Iterator[Any]:
    with environment(
        SOFTGUARD_STARTUP_TIMEOUT="2",
        SOFTGUARD_CLIENT_STALL_TIMEOUT="1",
        SOFTGUARD_MAX_INSPECT_BYTES="65536",
    ):
        p = proxy_factory(fresh=True)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def fuzz_user(pg_server: TestServer) -> str:
    if pg_server.superuser_password is not None:
        pytest.skip("raw-socket sessions need trust authentication for the superuser")
    return pg_server.superuser


def test_mutate_is_deterministic() -> None:
    seeds = post_startup_seeds()
    a = [mutate(random.Random(7), s) for s in seeds]
    b = [mutate(random.Random(7), s) for s in seeds]
    assert a == b


def test_fuzz_fast(fuzz_proxy: Any, fuzz_user: str, dbname: str) -> None:
    cases = make_cases(seed=20240601, n_pre=300, n_post=300, user=fuzz_user, dbname=dbname)
    counts = run_batch(fuzz_proxy, fuzz_user, dbname, cases, workers=24)
    # The corpus must exercise every ending, or it tests less than it claims. A valid
    # stream ends in ReadyForQuery, or, on a loaded machine where its authentication
    # outlasts the 2 s startup timeout, in that timeout's FATAL: both are right answers.
    assert counts.get("eof", 0) > 50, counts
    assert counts.get("ready", 0) + counts.get("fatal", 0) > 20, counts


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_slow(seed: int, fuzz_proxy: Any, fuzz_user: str, dbname: str) -> None:
    cases = make_cases(seed=seed, n_pre=600, n_post=600, user=fuzz_user, dbname=dbname)
    for case in cases:
        if case.index % 3 == 0:  # heavier mutation on a third of them
            case.data = mutate(random.Random(case.index * 31 + seed), case.data, rounds=8)
    run_batch(fuzz_proxy, fuzz_user, dbname, cases, workers=40)
