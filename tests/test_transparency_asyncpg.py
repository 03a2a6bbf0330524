"""asyncpg through the proxy sees exactly what it sees directly (DESIGN.md §1).

asyncpg speaks only the extended protocol, in binary, with named prepared statements and
a statement cache: a good test of Parse/Bind/Describe/Execute/Sync relaying.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from support.compare import run_async

AsyncFn = Callable[[asyncpg.Connection], Awaitable[Any]]


def err(e: asyncpg.PostgresError) -> tuple[Any, ...]:
    return (
        type(e).__name__,
        e.sqlstate,
        getattr(e, "message", None),
        getattr(e, "detail", None),
        getattr(e, "hint", None),
        getattr(e, "position", None),
    )


async def _run(dsn: str, fn: AsyncFn) -> Any:
    conn = await asyncpg.connect(dsn, timeout=15)
    try:
        try:
            return ("ok", await fn(conn))
        except asyncpg.PostgresError as e:
            return ("error", err(e))
    finally:
        await conn.close(timeout=10)


def compare(dsns: tuple[str, str], fn: AsyncFn) -> Any:
    direct_dsn, proxy_dsn = dsns
    direct = run_async(_run(direct_dsn, fn))
    proxied = run_async(_run(proxy_dsn, fn))
    assert proxied == direct, f"through proxy:\n{proxied}\ndirect:\n{direct}"
    return direct


class _Rollback(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _catch_rollback(fn: AsyncFn) -> AsyncFn:
    async def wrapper(c: asyncpg.Connection) -> Any:
        try:
            return await fn(c)
        except _Rollback as r:
            return r.value

    return wrapper


@pytest.fixture(scope="module", autouse=True)
def schema(pg_server: Any, dbname: str) -> None:
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as c:
        c.execute(
            """
            CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(12,3));
            INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 100) g;
            CREATE TABLE target (id int, name text, price numeric(12,3));
            CREATE TABLE kinds (j jsonb, a int[], t text[], n numeric, ts timestamptz,
                                b bytea, u uuid, d date, iv interval, f float8);
            """
        )


def test_prepared_statements(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        stmt = await c.prepare("SELECT id, name, price FROM items WHERE id <= $1 ORDER BY id")
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        params = [t.name for t in stmt.get_parameters()]
        first = [tuple(r) for r in await stmt.fetch(3)]
        again = [tuple(r) for r in await stmt.fetch(5)]
        val = await stmt.fetchval(1)
        row = await stmt.fetchrow(2)
        return attrs, params, first, again, val, tuple(row) if row else None

    out = compare(dsns, fn)
    assert out[0] == "ok" and len(out[1][3]) == 5


def test_statement_cache_reuse(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        out = []
        for i in range(20):
            out.append(await c.fetchval("SELECT $1::int * 3", i))
        out.append(await c.fetchval("SELECT count(*) FROM items WHERE id > $1", 10))
        return out

    compare(dsns, fn)


def test_execute_simple_protocol_script(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        tags = [await c.execute("CREATE TEMP TABLE tt (a int); INSERT INTO tt VALUES (1), (2)")]
        tags.append(await c.execute("UPDATE tt SET a = a + 1"))
        tags.append(await c.execute("DELETE FROM tt WHERE a = $1", 2))
        return tags

    out = compare(dsns, fn)
    assert out[1] == ["INSERT 0 2", "UPDATE 2", "DELETE 1"]


def test_cursor_in_transaction(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        out = []
        async with c.transaction():
            out.append(
                [
                    tuple(r)
                    async for r in c.cursor(
                        "SELECT id, name FROM items WHERE id > $1 ORDER BY id", 90, prefetch=3
                    )
                ]
            )
            cur = await c.cursor("SELECT id FROM items ORDER BY id")
            out.append([tuple(r) for r in await cur.fetch(4)])
            await cur.forward(10)
            out.append(tuple(await cur.fetchrow() or ()))
        return out

    out = compare(dsns, fn)
    assert out[1][2] == (15,)


def test_executemany(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        async with c.transaction():
            await c.executemany(
                "INSERT INTO target (id, name, price) VALUES ($1, $2, $3)",
                [(i, f"n{i}", decimal.Decimal(i) / 8) for i in range(300)],
            )
            res: list[Any] = [
                tuple(r) for r in await c.fetch("SELECT count(*), sum(price) FROM target")
            ]
            # executemany with a failing row fails as a whole
            try:
                async with c.transaction():
                    await c.executemany(
                        "INSERT INTO items (id, name) VALUES ($1, $2)", [(1000, "ok"), (1, "dup")]
                    )
            except asyncpg.UniqueViolationError as e:
                res.append(err(e))
            res.append(await c.fetchval("SELECT count(*) FROM items WHERE id = 1000"))
            raise _Rollback(res)  # leave nothing behind

    out = compare(dsns, _catch_rollback(fn))
    assert out[1][0] == (300, decimal.Decimal("5606.250"))
    assert out[1][1][1] == "23505" and out[1][2] == 0


def test_copy_records_to_table(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        async with c.transaction():
            tag = await c.copy_records_to_table(
                "target", records=[(i, f"c{i}", decimal.Decimal("1.5") * i) for i in range(2000)]
            )
            rows = await c.fetchrow(
                "SELECT count(*), sum(id), md5(string_agg(name || price::text, ',' ORDER BY id))"
                " FROM target"
            )
            raise _Rollback((tag, tuple(rows) if rows else None))

    out = compare(dsns, _catch_rollback(fn))
    assert out[1][0] == "COPY 2000"


def test_copy_from_query_and_table(dsns: tuple[str, str], tmp_path: Any) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        chunks: list[bytes] = []

        async def sink(data: bytes) -> None:
            chunks.append(bytes(data))

        tag1 = await c.copy_from_query(
            "SELECT id, name FROM items WHERE id < $1 ORDER BY id", 30, output=sink, format="csv"
        )
        tag2 = await c.copy_from_table("items", output=sink, columns=["id", "price"])
        return tag1, tag2, b"".join(chunks)

    out = compare(dsns, fn)
    assert out[1][0] == "COPY 29" and out[1][1] == "COPY 100"


def test_copy_to_table_from_source(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        data = b"".join(f"{i}\tsrc{i}\t{i}.5\n".encode() for i in range(500))

        async def source() -> Any:
            for off in range(0, len(data), 1000):
                yield data[off : off + 1000]

        async with c.transaction():
            tag = await c.copy_to_table("target", source=source())
            count = await c.fetchval("SELECT count(*) FROM target WHERE name LIKE 'src%'")
            raise _Rollback((tag, count))

    out = compare(dsns, _catch_rollback(fn))
    assert out[1] == ("COPY 500", 500)


def test_listen_notify(proxy: Any, dbname: str) -> None:
    async def main() -> list[tuple[str, str]]:
        listener = await asyncpg.connect(proxy.dsn(dbname), timeout=15)
        sender = await asyncpg.connect(proxy.dsn(dbname), timeout=15)
        got: list[tuple[str, str]] = []
        done = asyncio.Event()

        def on_notify(_c: Any, _pid: int, channel: str, payload: str) -> None:
            got.append((channel, payload))
            if len(got) == 3:
                done.set()

        try:
            await listener.add_listener("sg_async", on_notify)
            await sender.execute("NOTIFY sg_async, 'a'")
            await sender.execute("SELECT pg_notify('sg_async', $1)", "b")
            async with sender.transaction():
                await sender.execute("NOTIFY sg_async, 'c'")
            await asyncio.wait_for(done.wait(), 10)
            await listener.remove_listener("sg_async", on_notify)
        finally:
            await listener.close(timeout=10)
            await sender.close(timeout=10)
        return got

    assert run_async(main()) == [("sg_async", "a"), ("sg_async", "b"), ("sg_async", "c")]


def test_type_round_trips(dsns: tuple[str, str]) -> None:
    values = (
        {"a": [1, 2, {"b": None}], "s": "é"},
        [1, 2, 3, None],
        ["x", "y,z", 'q"uote', None],
        decimal.Decimal("12345678901234567890.123456789"),
        dt.datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=dt.UTC),
        bytes(range(256)),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        dt.date(1999, 12, 31),
        dt.timedelta(days=3, seconds=7, microseconds=5),
        float("inf"),
    )

    async def fn(c: asyncpg.Connection) -> Any:
        await c.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        async with c.transaction():
            await c.execute(
                "INSERT INTO kinds VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", *values
            )
            row = await c.fetchrow("SELECT * FROM kinds")
            nan = await c.fetchval("SELECT 'NaN'::numeric")
            neg = await c.fetchval("SELECT $1::numeric", decimal.Decimal("-0.000001"))
            raise _Rollback((tuple(row) if row else None, str(nan), neg))

    out = compare(dsns, _catch_rollback(fn))
    assert out[1][0] == values


def test_errors(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        out = []
        for q, args in [
            ("SELECT * FROM nosuch", ()),
            ("SELECT $1::int", ("x",)),
            ("SELECT 1 / $1", (0,)),
            ("SELECT nosuch FROM items", ()),
            ("INSERT INTO items (id, name) VALUES ($1, $2)", (1, "dup")),
            ("SELEC 1", ()),
        ]:
            try:
                await c.fetch(q, *args)
                out.append("no error")
            except (asyncpg.PostgresError, asyncpg.DataError) as e:
                out.append(err(e) if isinstance(e, asyncpg.PostgresError) else repr(e))
        out.append(await c.fetchval("SELECT 'still usable'"))
        return out

    out = compare(dsns, fn)
    assert out[1][-1] == "still usable"
    assert [e[1] for e in out[1][:-1] if isinstance(e, tuple)] == [
        "42P01",
        "22000",
        "22012",
        "42703",
        "23505",
        "42601",
    ]


def test_transaction_error_and_rollback(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        out = []
        tr = c.transaction()
        await tr.start()
        try:
            await c.execute("SELECT 1/0")
        except asyncpg.DivisionByZeroError as e:
            out.append(err(e))
        out.append(c.is_in_transaction())
        try:
            await c.fetchval("SELECT 1")
        except asyncpg.InFailedSQLTransactionError as e:
            out.append(err(e))
        await tr.rollback()
        out.append(c.is_in_transaction())
        out.append(await c.fetchval("SELECT 2"))
        return out

    out = compare(dsns, fn)
    assert out[1][1] is True and out[1][-2:] == [False, 2]


def test_notices_and_server_settings(dsns: tuple[str, str]) -> None:
    async def fn(c: asyncpg.Connection) -> Any:
        msgs: list[tuple[Any, ...]] = []
        c.add_log_listener(lambda _c, m: msgs.append((type(m).__name__, m.sqlstate, m.message)))
        await c.execute("DO $$ BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w1'; END $$")
        await c.execute("SET application_name = 'sg-asyncpg'")
        await asyncio.sleep(0)
        return msgs, c.get_settings().application_name, c.get_server_version()[:2]

    out = compare(dsns, fn)
    assert out[1][1] == "sg-asyncpg"
    assert [m[2] for m in out[1][0]] == ["n1", "w1"]


def test_cancel_via_timeout(proxy: Any, dbname: str) -> None:
    async def main() -> Any:
        c = await asyncpg.connect(proxy.dsn(dbname), timeout=15)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await c.fetchval("SELECT pg_sleep(600)", timeout=0.5)
            # asyncpg sends a CancelRequest on timeout; the connection must be usable after.
            # Only a cancel that reached the backend frees it before the sleep ends.
            return await c.fetchval("SELECT 7")
        finally:
            await c.close(timeout=10)

    assert run_async(main(), timeout=120) == 7
