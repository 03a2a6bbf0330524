"""Issue 13/16: a session that once had a statement rewritten returns to the fast paths.

The proxy filters a session's answers while a rewritten statement (a DROP made a call, a
soft DELETE made an UPDATE) is in flight or prepared, then drops the filter. Each client
here (psycopg simple, extended, prepared, pipelined, in a transaction; asyncpg with and
without its statement cache) does a DROP and a soft delete, then many ordinary
statements, through a real `softguard serve` and directly on a twin database: the same
answers throughout, and `softguard_filtered_statements_total` (messages relayed while
filtered, the fast paths stepping aside) stops growing once nothing rewritten is left.
The counter, not time: `softguard_result_filters_released_total` says the filter went.

Also issue 16: `PREPARE d AS DELETE ...` run through a protocol Bind of `d` answers
`DELETE n`, as directly.
"""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.pg import TestServer
from support.proxy import free_port
from support.softdelete_harness import MAIN_CONFIG

Step = tuple[str, tuple[Any, ...] | None]
Answer = tuple[str | None, list[tuple[Any, ...]]]

# A DROP (a ledger call) and a soft delete (an UPDATE), between ordinary statements.
REWRITTEN: list[Step] = [
    ("CREATE TABLE scratch_rt (x int)", None),
    ("INSERT INTO scratch_rt VALUES (1), (2)", None),
    ("DROP TABLE scratch_rt", None),
    ("DELETE FROM customers WHERE id = %s", (7,)),
    ("DELETE FROM customers WHERE id IN (8, 9)", None),
]
ORDINARY: list[Step] = [
    step
    for i in range(1, 31)
    for step in (
        ("SELECT id, email FROM customers WHERE deleted_at IS NULL AND id = %s", (i,)),
        ("SELECT count(*) FROM customers WHERE deleted_at IS NULL AND id < %s", (i * 10,)),
    )
]
PLAIN_AFTER = len(ORDINARY)


@pytest.fixture(scope="module")
def metered(
    proxy_factory: Any, pg_server: TestServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, int]]:
    config: Path = tmp_path_factory.mktemp("retag") / "main.toml"
    config.write_text(MAIN_CONFIG)
    mport = free_port()
    proxy = proxy_factory(
        "--config",
        str(config),
        "--metrics",
        f"127.0.0.1:{mport}",
        upstream=pg_server.superuser_dsn("postgres"),
        fresh=True,
    )
    if proxy.is_direct:
        pytest.skip("the result filter is the proxy's")
    yield proxy, mport


def counters(port: int) -> tuple[float, float]:
    """(filtered statements, filters released) as the proxy's metrics say now."""
    last: Exception | None = None
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            break
        except urllib.error.URLError as exc:  # the endpoint may start after the port
            last = exc
            asyncio.run(asyncio.sleep(0.1))
    else:
        raise AssertionError(f"no metrics: {last}")
    found = {"softguard_filtered_statements_total": 0.0}
    found["softguard_result_filters_released_total"] = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] = sample.value
    return (
        found["softguard_filtered_statements_total"],
        found["softguard_result_filters_released_total"],
    )


def _answer(cur: psycopg.Cursor[Any]) -> Answer:
    rows = cur.fetchall() if cur.description is not None else []
    return cur.statusmessage, rows


def psycopg_run(dsn: str, mode: str, blocks: Sequence[Sequence[Step]]) -> list[list[Answer]]:
    """Each block's answers; between blocks nothing is in flight."""
    out: list[list[Answer]] = []
    autocommit = mode != "transaction"
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        conn.prepare_threshold = 0 if mode == "prepared" else None
        for block in blocks:
            got: list[Answer] = []
            if mode == "pipeline":
                with conn.pipeline():
                    curs = []
                    for sql, params in block:
                        cur = conn.cursor()
                        cur.execute(sql, params)
                        curs.append(cur)
                got = [_answer(c) for c in curs]
            else:
                for sql, params in block:
                    cur = conn.cursor()
                    if mode == "simple" and params is not None:
                        sql = sql % tuple(repr(p) for p in params)
                        params = None
                    cur.execute(sql, params)
                    got.append(_answer(cur))
            if mode == "transaction":
                conn.commit()
            if mode == "prepared":
                conn.execute("DEALLOCATE ALL")  # psycopg forgets its prepared ones too
            out.append(got)
    return out


def _dollar(sql: str) -> str:
    n = 0

    def nxt(_: Any) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return re.sub("%s", nxt, sql)


async def _asyncpg_run(
    dsn: str, cache: bool, blocks: Sequence[Sequence[Step]]
) -> list[list[Answer]]:
    conn = await asyncpg.connect(dsn, statement_cache_size=100 if cache else 0)
    out: list[list[Answer]] = []
    try:
        for b, block in enumerate(blocks):
            got: list[Answer] = []
            for sql, params in block:
                if params is None:
                    status = await conn.execute(sql)
                    got.append((status, []))
                else:
                    # a fresh text per block: a statement the cache holds is never reused
                    # after the DEALLOCATE ALL below
                    text = f"{_dollar(sql)} /* {b} */"
                    rows = await conn.fetch(text, *params)
                    got.append((None, [tuple(r) for r in rows]))
            if cache:
                await conn.execute("DEALLOCATE ALL")
            out.append(got)
    finally:
        await conn.close()
    return out


def asyncpg_run(dsn: str, cache: bool, blocks: Sequence[Sequence[Step]]) -> list[list[Answer]]:
    return asyncio.run(_asyncpg_run(dsn, cache, blocks))


Runner = Callable[[str, Sequence[Sequence[Step]]], list[list[Answer]]]
RUNNERS: dict[str, Runner] = {
    **{
        mode: (lambda m: lambda dsn, blocks: psycopg_run(dsn, m, blocks))(mode)
        for mode in ("simple", "extended", "prepared", "pipeline", "transaction")
    },
    "asyncpg": lambda dsn, blocks: asyncpg_run(dsn, False, blocks),
    "asyncpg_cached": lambda dsn, blocks: asyncpg_run(dsn, True, blocks),
}


@pytest.mark.parametrize("client", sorted(RUNNERS))
def test_session_returns_to_the_fast_path_after_a_rewrite(
    metered: tuple[Any, int], twins: Callable[..., list[str]], client: str
) -> None:
    proxy, mport = metered
    soft_db, plain_db = twins(2)
    runner = RUNNERS[client]
    direct = runner(proxy.server.superuser_dsn(plain_db), [REWRITTEN, ORDINARY, ORDINARY])
    before = counters(mport)
    proxied = runner(proxy.dsn(soft_db), [REWRITTEN, ORDINARY, ORDINARY])
    after = counters(mport)
    assert proxied == direct
    # Back on the fast paths: at most the messages of the rewritten block and the few
    # after it (until the answers came back) were filtered, never the 60 ordinary ones
    # of the last block; the filter was released at least once.
    filtered = after[0] - before[0]
    assert after[1] - before[1] >= 1, after
    assert filtered < len(REWRITTEN) * 3 + PLAIN_AFTER, filtered


def test_filter_stays_while_a_rewritten_statement_is_prepared(
    metered: tuple[Any, int], twins: Callable[..., list[str]]
) -> None:
    """A soft delete prepared by name (psycopg, prepare=True) is kept by the filter: its
    next Execute still answers DELETE n, after many ordinary statements."""
    proxy, _ = metered
    (soft_db, plain_db) = twins(2)
    delete = "DELETE FROM customers WHERE id = %s"

    def session(dsn: str) -> list[str | None]:
        tags: list[str | None] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in (11, 12):
                tags.append(conn.execute(delete, (i,), prepare=True).statusmessage)
            for sql, params in ORDINARY:
                conn.execute(sql, params).fetchall()
            tags.append(conn.execute(delete, (13,), prepare=True).statusmessage)
            tags.append(conn.execute(delete, (13,), prepare=True).statusmessage)
        return tags

    assert session(proxy.dsn(soft_db)) == session(proxy.server.superuser_dsn(plain_db))
    assert session(proxy.dsn(soft_db)) == ["DELETE 0"] * 4  # marked already: nothing left


def _bind_prepared(dsn: str) -> list[bytes | None]:
    """``PREPARE d AS DELETE`` by a Query, then run through protocol Binds of ``d``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg = conn.pgconn
        got: list[bytes | None] = []
        res = pg.exec_(b"PREPARE d(int) AS DELETE FROM customers WHERE id = $1")
        got.append(res.command_status)
        for i in (21, 22, 21):
            res = pg.exec_prepared(b"d", [str(i).encode()])
            got.append(res.command_status)
        res = pg.exec_(b"PREPARE e AS DELETE FROM customers WHERE id BETWEEN 30 AND 34")
        got.append(res.command_status)
        got.append(pg.exec_prepared(b"e", []).command_status)
        got.append(pg.exec_(b"EXECUTE d(23)").command_status)
        got.append(pg.exec_(b"DEALLOCATE d").command_status)
        for _ in range(5):
            got.append(pg.exec_(b"SELECT 1").command_status)
        got.append(pg.exec_prepared(b"e", []).command_status)
        return got


def test_sql_prepared_soft_delete_through_a_protocol_bind_answers_delete(
    metered: tuple[Any, int], twins: Callable[..., list[str]]
) -> None:
    proxy, _ = metered
    soft_db, plain_db = twins(2)
    proxied = _bind_prepared(proxy.dsn(soft_db))
    direct = _bind_prepared(proxy.server.superuser_dsn(plain_db))
    assert proxied == direct
    assert proxied[1:4] == [b"DELETE 1", b"DELETE 1", b"DELETE 0"]


def _bind_prepared_in_longer_texts(dsn: str) -> list[bytes | None]:
    """``PREPARE d AS DELETE`` sent with other statements in one Query, then run through
    protocol Binds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg = conn.pgconn
        got: list[bytes | None] = []
        res = pg.exec_(
            b"SET search_path = public; PREPARE d(int) AS DELETE FROM customers WHERE id = $1"
        )
        got.append(res.command_status)
        for i in (41, 42, 41):
            got.append(pg.exec_prepared(b"d", [str(i).encode()]).command_status)
        res = pg.exec_(
            b"BEGIN; PREPARE e AS DELETE FROM customers WHERE id BETWEEN 50 AND 53; SHOW"
            b" work_mem; PREPARE f(int) AS DELETE FROM customers WHERE id = $1"
        )
        got.append(res.command_status)
        got.append(pg.exec_prepared(b"e", []).command_status)
        got.append(pg.exec_prepared(b"f", [b"60"]).command_status)
        got.append(pg.exec_(b"COMMIT").command_status)
        got.append(pg.exec_prepared(b"f", [b"61"]).command_status)
        return got


def test_sql_prepared_soft_delete_in_a_longer_text_through_a_bind_answers_delete(
    metered: tuple[Any, int], twins: Callable[..., list[str]]
) -> None:
    """Decision 0043: a PREPARE of a soft delete beside SET / RESET / SHOW / BEGIN and other
    such PREPAREs in one Query answers DELETE n through a protocol Bind, as directly (on
    main: UPDATE n, the README limit). Beside anything else it still answers UPDATE n."""
    proxy, _ = metered
    soft_db, plain_db = twins(2)
    proxied = _bind_prepared_in_longer_texts(proxy.dsn(soft_db))
    direct = _bind_prepared_in_longer_texts(proxy.server.superuser_dsn(plain_db))
    assert proxied == direct
    assert proxied[1:4] == [b"DELETE 1", b"DELETE 1", b"DELETE 0"]
    assert proxied[5:7] == [b"DELETE 4", b"DELETE 1"]
