"""psycopg 3 through the proxy sees exactly what it sees directly (DESIGN.md §1).

Each test runs the same client code on a direct connection and on a proxied one and
compares rows, command tags, column descriptions, errors (SQLSTATE, message, position),
notices and transaction status.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor
from support.compare import capture, compare, error_info

Conn = psycopg.Connection[Any]


def results(cur: psycopg.Cursor[Any]) -> list[Any]:
    """Every result set of the cursor: tag, column names/types, rows."""
    out = []
    while True:
        desc = [(d.name, d.type_code) for d in cur.description] if cur.description else None
        rows = cur.fetchall() if cur.description else None
        out.append((cur.statusmessage, cur.rowcount, desc, rows))
        if not cur.nextset():
            return out


@pytest.fixture(scope="module", autouse=True)
def schema(pg_server: Any, dbname: str) -> None:
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as c:
        c.execute(
            """
            CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                                tags text[], data jsonb, created timestamptz DEFAULT '2020-01-01');
            INSERT INTO items (id, name, price, tags, data)
              SELECT g, 'item ' || g, g * 1.5, ARRAY['t' || g, 'x'], jsonb_build_object('g', g)
              FROM generate_series(1, 50) g;
            CREATE TABLE sink (id int, body text, b bytea);
            """
        )


# ------------------------------------------------------------------ protocols


def test_simple_protocol_multi_statement(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with ClientCursor(c) as cur:
            cur.execute(
                "SELECT 1 AS a; SELECT name, price FROM items WHERE id < %s; "
                "SELECT 'x'::text WHERE false",
                [4],
            )
            return results(cur)

    out = compare(*dsns, fn)
    assert out.error is None and len(out.value) == 3


def test_simple_protocol_prepare_false(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        cur = c.execute("SELECT id, name, tags, data FROM items ORDER BY id LIMIT 5", prepare=False)
        return results(cur)

    compare(*dsns, fn)


def test_command_tags(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        tags = []
        for q in [
            "CREATE TEMP TABLE tt (a int)",
            "INSERT INTO tt SELECT generate_series(1, 7)",
            "UPDATE tt SET a = a + 1 WHERE a > 3",
            "DELETE FROM tt WHERE a > 6",
            "SELECT * FROM tt",
            "SELECT * FROM tt FOR UPDATE",
            "MERGE INTO tt USING (SELECT 1 AS a) s ON tt.a = s.a WHEN MATCHED THEN DELETE",
            "CREATE INDEX ON tt (a)",
            "ANALYZE tt",
            "SAVEPOINT s1",
            "RELEASE s1",
            "DROP TABLE tt",
            "SET search_path = public",
            "SHOW search_path",
        ]:
            cur = c.execute(q)
            tags.append((cur.statusmessage, cur.rowcount))
        return tags

    compare(*dsns, fn)


def test_extended_with_params(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        out = []
        cur = c.execute(
            "SELECT %s::int + %s, %s::text, %s::numeric, %s::int[]", [1, 2, "héllo", "3.14", [1, 2]]
        )
        out.append(results(cur))
        cur = c.execute("SELECT name FROM items WHERE id = ANY(%s) ORDER BY id", [[3, 1, 2]])
        out.append(results(cur))
        cur = c.execute("INSERT INTO sink VALUES (%s, %s, %s)", [1, None, b"\x00\xff"])
        out.append((cur.statusmessage, cur.rowcount))
        c.rollback()
        return out

    compare(*dsns, fn)


def test_server_side_prepared(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        out = []
        for i in range(1, 5):
            cur = c.execute(
                "SELECT id, name FROM items WHERE id <= %s ORDER BY id", [i], prepare=True
            )
            out.append(results(cur))
        c.prepare_threshold = 0
        for i in range(3):
            out.append(c.execute("SELECT %s::int * 2", [i]).fetchone())
        prepared = c.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql"
        ).fetchone()
        out.append(prepared is not None and prepared[0] >= 2)
        return out

    compare(*dsns, fn)


def test_binary_results_and_params(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with c.cursor(binary=True) as cur:
            cur.execute(
                "SELECT id, name, price, tags, data, %b::bytea, %b::int8, '2024-01-02 03:04:05+00'"
                "::timestamptz FROM items WHERE id < 4 ORDER BY id",
                [b"\x01\x02", 2**40],
            )
            return results(cur)

    out = compare(*dsns, fn)
    assert len(out.value[0][3]) == 3


def test_pipeline_with_failure_in_the_middle(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        out: list[Any] = []
        c.autocommit = True
        # The server sends the error at once: were it back before the last execute(),
        # psycopg would raise there (a race under load). A lock held until every statement
        # is sent makes the INSERT, and so the error, wait for that.
        with psycopg.connect(c.info.dsn) as holder:
            holder.execute("LOCK TABLE sink IN SHARE MODE")
            try:
                with c.pipeline() as p:
                    try:
                        cur1 = c.execute("SELECT 1")
                        cur2 = c.execute("INSERT INTO sink (id) VALUES (100)")
                        cur3 = c.execute("SELECT 1 / %s", [0])
                        cur4 = c.execute("SELECT 4")
                    finally:
                        holder.commit()
                    p.sync()
            except psycopg.Error as e:
                out.append(("error", error_info(e)))
        for cur in (cur1, cur2):
            out.append((cur.statusmessage, cur.fetchall() if cur.description else None))
        for cur in (cur3, cur4):
            try:
                out.append(cur.fetchall())
            except psycopg.Error as e:
                out.append(("fetch error", type(e).__name__))
        # A second pipeline on the same connection works after the failed one.
        with c.pipeline():
            a = c.execute("SELECT 'a'")
            b = c.execute("SELECT count(*) FROM sink WHERE id = 100")
            out.append((a.fetchall(), b.fetchall()))
        c.execute("DELETE FROM sink WHERE id = 100")
        return out

    out = compare(*dsns, fn)
    assert out.value[0][0] == "error" and out.value[0][1].sqlstate == "22012"


def test_pipeline_many_statements(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with c.pipeline():
            curs = [c.execute("SELECT %s::int, repeat('x', %s)", [i, i * 100]) for i in range(50)]
        return [cur.fetchone() for cur in curs]

    compare(*dsns, fn)


def test_executemany(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO sink (id, body) VALUES (%s, %s)",
                [(i, f"r{i}") for i in range(200, 230)],
            )
            n = cur.rowcount
            cur.executemany("SELECT %s::int", [(1,), (2,)], returning=True)
            rows = results(cur)
        c.rollback()
        return n, rows

    compare(*dsns, fn)


# ------------------------------------------------------------------ COPY


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_to_stdout(dsns: tuple[str, str], binary: bool) -> None:
    fmt = " (FORMAT binary)" if binary else ""

    def fn(c: Conn) -> Any:
        with c.cursor() as cur:
            chunks = []
            with cur.copy(
                f"COPY (SELECT id, name, tags, data FROM items ORDER BY id) TO STDOUT{fmt}"
            ) as copy:
                for data in copy:
                    chunks.append(bytes(data))
            return b"".join(chunks), cur.statusmessage, cur.rowcount

    out = compare(*dsns, fn)
    assert out.value[2] == 50


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_from_stdin(dsns: tuple[str, str], binary: bool) -> None:
    fmt = " (FORMAT binary)" if binary else ""

    def fn(c: Conn) -> Any:
        with c.cursor() as cur:
            with cur.copy(f"COPY sink (id, body, b) FROM STDIN{fmt}") as copy:
                if binary:
                    copy.set_types(["int4", "text", "bytea"])
                for i in range(1000):
                    copy.write_row((i, f"row {i}\twith tab", bytes([i % 256])))
            tag = cur.statusmessage
            rows = cur.execute(
                "SELECT count(*), sum(id), string_agg(md5(body || b::text), '' ORDER BY id) "
                "FROM sink WHERE id < 1000"
            ).fetchone()
        c.rollback()
        return tag, rows

    out = compare(*dsns, fn)
    assert out.value[0] == "COPY 1000"


def test_copy_from_stdin_bad_data(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with c.cursor() as cur, cur.copy("COPY sink (id, body) FROM STDIN") as copy:
            copy.write(b"1\tok\nnot-an-int\tbad\n")

    out = compare(*dsns, fn)
    assert out.error is not None and out.error.sqlstate == "22P02"
    assert out.transaction_status == "INERROR"


# ------------------------------------------------------------------ cursors


def test_named_server_side_cursor(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        out = []
        with c.cursor(name="sg_cur", scrollable=True) as cur:
            cur.itersize = 7
            cur.execute("SELECT id, name FROM items WHERE id > %s ORDER BY id", [10])
            out.append(cur.fetchmany(5))
            cur.scroll(10)
            out.append(cur.fetchone())
            cur.scroll(0, mode="absolute")
            out.append(cur.fetchone())
            out.append(len(list(cur)))
        with c.cursor(name="sg_hold", withhold=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 20) g")
            c.commit()
            out.append(cur.fetchall())
        return out

    compare(*dsns, fn)


# ------------------------------------------------------------------ errors, notices


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM nosuch",
        "SELEC 1",
        "SELECT 1 +",
        "SELECT nosuchcol FROM items",
        "SELECT 1 / 0",
        "INSERT INTO items (id, name) VALUES (1, 'dup')",
        "INSERT INTO items (id) VALUES (999)",
        "SELECT 'abc'::int",
        "SELECT repeat('x', 10) FROM items WHERE id = 'x'",
    ],
)
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "prepared"])
def test_errors(dsns: tuple[str, str], query: str, prepare: bool) -> None:
    def fn(c: Conn) -> Any:
        return c.execute(query, prepare=prepare).fetchall()

    out = compare(*dsns, fn)
    assert out.error is not None
    assert out.transaction_status == "INERROR"


def test_error_position_is_kept(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        c.execute("SELECT 1, 2, nosuch_column FROM items")

    out = compare(*dsns, fn)
    assert out.error is not None
    assert (out.error.sqlstate, out.error.position) == ("42703", "14")


def test_error_in_multi_statement_simple_query(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        with ClientCursor(c) as cur:
            cur.execute("SELECT 1; SELECT * FROM nosuch; SELECT 3")
            return results(cur)

    out = compare(*dsns, fn, autocommit=True)
    assert out.error is not None and out.error.sqlstate == "42P01"


def test_multi_statement_rejected_in_extended(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        c.execute("SELECT %s; SELECT 2", [1])

    out = compare(*dsns, fn)
    assert out.error is not None and out.error.sqlstate == "42601"


def test_notices(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        c.execute(
            """DO $$ BEGIN
                 RAISE NOTICE 'hello %', 42;
                 RAISE WARNING 'careful' USING HINT = 'a hint';
                 RAISE INFO 'info line';
               END $$"""
        )
        c.execute("DROP TABLE IF EXISTS no_such_table_here")
        c.execute("SET client_min_messages = debug1")
        c.execute("DO $$ BEGIN RAISE DEBUG 'dbg'; END $$")
        c.execute("RESET client_min_messages")
        return None

    out = compare(*dsns, fn, autocommit=True)
    assert len(out.notices) >= 4
    assert out.notices[0] == ("NOTICE", "00000", "hello 42")


def test_parameter_status(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        before = c.info.parameter_status("application_name")
        c.execute("SET application_name = 'sg-test-app'")
        c.execute("SET TimeZone = 'Europe/Paris'")
        c.execute("SET DateStyle = 'German'")
        return (
            before,
            c.info.parameter_status("application_name"),
            c.info.parameter_status("TimeZone"),
            c.info.parameter_status("DateStyle"),
            c.info.parameter_status("server_encoding"),
            c.info.parameter_status("client_encoding"),
            c.info.parameter_status("integer_datetimes"),
            c.info.parameter_status("standard_conforming_strings"),
            c.info.server_version,
            c.execute("SELECT now()::date = current_date").fetchone(),
        )

    out = compare(*dsns, fn, autocommit=True)
    assert out.value[1:4] == ("sg-test-app", "Europe/Paris", "German, DMY")


def test_startup_options_are_relayed(proxy: Any, pg_server: Any, dbname: str) -> None:
    params = {"application_name": "sg-startup", "options": "-c search_path=pg_catalog,public"}
    direct_dsn = pg_server.dsn(dbname, **params)
    proxy_dsn = proxy.dsn(dbname, **params)

    def fn(c: Conn) -> Any:
        return (
            c.execute("SHOW search_path").fetchone(),
            c.execute(
                "SELECT current_setting('application_name'), current_database(), current_user"
            ).fetchone(),
            c.info.parameter_status("application_name"),
        )

    out = compare(direct_dsn, proxy_dsn, fn)
    assert out.value[1] == ("sg-startup", dbname, pg_server.superuser)


def test_transaction_status_after_error(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        states = [c.info.transaction_status.name]
        c.execute("SELECT 1")
        states.append(c.info.transaction_status.name)
        try:
            c.execute("SELECT * FROM nosuch")
        except psycopg.Error as e:
            states.append(e.diag.sqlstate)
        states.append(c.info.transaction_status.name)
        try:
            c.execute("SELECT 1")
        except psycopg.Error as e:
            states.append(e.diag.sqlstate)
        c.rollback()
        states.append(c.info.transaction_status.name)
        c.autocommit = True
        with ClientCursor(c) as cur:
            try:
                cur.execute("BEGIN; SELECT 1/0")
            except psycopg.Error as e:
                states.append(e.diag.sqlstate)
        states.append(c.info.transaction_status.name)
        return states

    out = compare(*dsns, fn)
    assert out.value == ["IDLE", "INTRANS", "42P01", "INERROR", "25P02", "IDLE", "22012", "INERROR"]


def test_savepoints(dsns: tuple[str, str]) -> None:
    def fn(c: Conn) -> Any:
        out = []
        c.execute("INSERT INTO sink (id) VALUES (500)")
        with c.transaction():
            c.execute("INSERT INTO sink (id) VALUES (501)")
        try:
            with c.transaction():
                c.execute("INSERT INTO sink (id) VALUES (502)")
                c.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            out.append("caught")
        out.append(c.info.transaction_status.name)
        out.append(c.execute("SELECT id FROM sink WHERE id >= 500 ORDER BY id").fetchall())
        c.rollback()
        return out

    out = compare(*dsns, fn)
    assert out.value[2] == [(500,), (501,)]


# ------------------------------------------------------------------ async features


def test_listen_notify_between_two_proxied_connections(proxy: Any, dbname: str) -> None:
    dsn = proxy.dsn(dbname)
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as sender,
    ):
        listener.execute("LISTEN sg_chan")
        sender.execute("NOTIFY sg_chan, 'one'")
        sender.execute("SELECT pg_notify('sg_chan', 'two')")
        with sender.transaction():
            sender.execute("NOTIFY sg_chan, 'in-tx'")
        got = []
        for n in listener.notifies(timeout=10, stop_after=3):
            got.append((n.channel, n.payload, n.pid))
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()
        assert sender_pid is not None
        assert [(c, p) for c, p, _ in got] == [
            ("sg_chan", "one"),
            ("sg_chan", "two"),
            ("sg_chan", "in-tx"),
        ]
        # The pid in a NotificationResponse is the sender's backend pid.
        assert {pid for _, _, pid in got} == {sender_pid[0]}


@pytest.mark.parametrize("method", ["cancel_safe", "cancel"])
def test_cancel(proxy: Any, dbname: str, method: str) -> None:
    with psycopg.connect(proxy.dsn(dbname)) as c:
        c.execute("SELECT 1")
        timer = threading.Timer(0.5, getattr(c, method))
        timer.start()
        try:
            # the event: only a cancel that reached the backend ends the sleep with 57014
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                c.execute("SELECT pg_sleep(300)")
        finally:
            timer.cancel()
            timer.join()
        assert info.value.diag.sqlstate == "57014"
        c.rollback()
        # The connection is still usable, and a cancel does not hit the next query.
        assert c.execute("SELECT 42").fetchone() == (42,)


def test_cancel_reaches_the_right_backend(proxy: Any, dbname: str) -> None:
    dsn = proxy.dsn(dbname)
    with psycopg.connect(dsn) as victim, psycopg.connect(dsn) as bystander:
        results_: dict[str, Any] = {}

        def bystander_sleep() -> None:
            try:
                results_["row"] = bystander.execute("SELECT pg_sleep(1.5), 'done'").fetchone()
            except psycopg.Error as e:  # pragma: no cover - reported below
                results_["error"] = e.diag.sqlstate

        t = threading.Thread(target=bystander_sleep)
        t.start()
        timer = threading.Timer(0.3, victim.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                victim.execute("SELECT pg_sleep(10)")
        finally:
            timer.join()
            t.join(timeout=20)
        assert results_ == {"row": ("", "done")}


def test_capture_helper_reports_transaction_status(conn: Conn) -> None:
    out = capture(conn, lambda c: c.execute("SELECT 1").fetchone())
    assert out.value == (1,) and out.transaction_status == "INTRANS"
