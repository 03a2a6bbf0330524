"""Modes for agents (decision 0019) through a real proxy and server: read-only refuses
every write and every way to switch read-only off; data refuses schema changes, also
from a function or a DO block (the database's guard); full is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from support.compare import run_async
from support.pg import TestServer
from support.policy_db import connect_app, owned_database, policy_proxy

from softguard.policy import PolicyConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

POLICY = """
[policy]
[[policy.rules]]
name = "reporting agents"
application_name = "ro-*"
mode = "read-only"

[[policy.rules]]
application_name = "data-*"
mode = "data"

[[policy.rules]]
application_name = "data-*"
opaque = "allow"
"""

SETUP = """
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g;
CREATE FUNCTION add_item(i int) RETURNS void LANGUAGE sql AS
    $$ INSERT INTO items VALUES (i, 'added') $$;
CREATE FUNCTION make_table() RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN EXECUTE 'CREATE TABLE made_by_function (x int)'; END $$;
CREATE FUNCTION read_only_off() RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END $$;
CREATE FUNCTION count_items() RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT count(*) FROM items $$;
"""


@pytest.fixture(scope="module")
def mode_db(pg_server: TestServer) -> Iterator[tuple[str, str]]:
    with owned_database(pg_server, "sg_mode_", SETUP) as found:
        yield found


@pytest.fixture(scope="module")
def mode_proxy(proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return policy_proxy(proxy_factory, tmp_path_factory, "modes", POLICY)


def _count(pg_server: TestServer, db: str) -> int:
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        row = c.execute("SELECT count(*) FROM items").fetchone()
    assert row is not None
    return int(row[0])


def _refused(c: psycopg.Connection[Any], text: str, sqlstate: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        c.execute(text.encode())
    assert info.value.sqlstate == sqlstate, (text, info.value)
    return info.value


def test_read_only_reads(mode_proxy: Any, mode_db: tuple[str, str]) -> None:
    with connect_app(mode_proxy, mode_db, "ro-report") as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (5,)
        assert c.execute("SELECT count_items()").fetchone() == (5,)
        c.execute("EXPLAIN DELETE FROM items")
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        c.execute("SET search_path = public")
        with c.transaction():
            assert c.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("item 1",)


@pytest.mark.parametrize(
    "text",
    [
        "INSERT INTO items VALUES (100, 'x')",
        "UPDATE items SET name = 'x'",
        "DELETE FROM items",
        "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
        "SELECT * FROM items FOR UPDATE",
        "CREATE TABLE t2 (x int)",
        "TRUNCATE items",
        "COPY items FROM STDIN",
        "EXPLAIN ANALYZE DELETE FROM items",
        "DO $$ BEGIN INSERT INTO items VALUES (101, 'x'); END $$",
        "SELECT 1; INSERT INTO items VALUES (102, 'x')",
    ],
)
def test_read_only_refuses_writes(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer, text: str
) -> None:
    with connect_app(mode_proxy, mode_db, "ro-report") as c:
        err = _refused(c, text, "25006")
        assert "read-only mode (rule 'reporting agents')" in str(err)
        assert err.diag.message_hint and "SELECT" in err.diag.message_hint
    assert _count(pg_server, mode_db[0]) == 5


ESCAPES = [
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO DEFAULT",
    'SET "default_transaction_read_only" = false',
    "SET SESSION default_transaction_read_only = 0",
    "RESET default_transaction_read_only",
    "RESET ALL",
    "DISCARD ALL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config(chr(100) || 'efault_transaction_read_only', 'off', false)",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name LIKE 'default_tr%only'",
    "SELECT count(*) FROM items WHERE set_config('transaction_read_only', 'off', true) = 'off'",
    "SELECT read_only_off()",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_read_only_cannot_be_switched_off(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer, text: str
) -> None:
    """Every spelling is refused by the proxy, except read_only_off(): a function already
    in the database, whose set_config the proxy cannot see. The server reports the change
    (ParameterStatus) and softguard closes the session. Either way no write follows."""
    with connect_app(mode_proxy, mode_db, "ro-agent") as c:
        try:
            c.execute(text.encode())
        except psycopg.Error as exc:
            assert exc.sqlstate == "25006", exc
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT add_item(200)")
        if text == "SELECT read_only_off()":
            # softguard's FATAL (25006), or the closed connection, whichever psycopg reads
            # first; either way the session is gone and the INSERT never ran.
            assert info.value.sqlstate == "25006" or isinstance(
                info.value, psycopg.OperationalError
            ), info.value
            assert "closed" in str(info.value), info.value
            assert c.closed or c.broken
        else:
            assert info.value.sqlstate == "25006"
    assert _count(pg_server, mode_db[0]) == 5


def test_read_only_through_prepared_statements_and_asyncpg(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, role = mode_db
    with connect_app(mode_proxy, mode_db, "ro-agent") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("INSERT INTO items VALUES (%s, %s)", [300, "x"], prepare=True)
        assert info.value.sqlstate == "25006"

    async def attempt() -> str:
        conn = await asyncpg.connect(
            mode_proxy.dsn(db, role, None), server_settings={"application_name": "ro-a"}
        )
        try:
            assert await conn.fetchval("SELECT count(*) FROM items") == 5
            try:
                await conn.execute("INSERT INTO items VALUES (301, 'x')")
            except asyncpg.PostgresError as exc:
                return str(exc.sqlstate)
            return "no error"
        finally:
            await conn.close()

    assert run_async(attempt()) == "25006"

    async def with_parameters() -> None:
        # asyncpg declares no parameter types and asks the server for them: the refusal
        # has none, so asyncpg itself refuses to send the arguments. Not run either way.
        conn = await asyncpg.connect(
            mode_proxy.dsn(db, role, None), server_settings={"application_name": "ro-a"}
        )
        try:
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
                await conn.execute("INSERT INTO items VALUES ($1, 'x')", 302)
        finally:
            await conn.close()

    run_async(with_parameters())
    assert _count(pg_server, db) == 5


def test_data_mode_changes_data_reversibly(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, _ = mode_db
    with connect_app(mode_proxy, mode_db, "data-agent") as c:
        c.execute("INSERT INTO items VALUES (400, 'new')")
        c.execute("UPDATE items SET name = 'renamed' WHERE id = 400")
        c.execute("DELETE FROM items WHERE id = 400")
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        row = c.execute(
            "SELECT count(*) FROM softguard.operations WHERE statement LIKE 'DELETE FROM items%'"
        ).fetchone()
    assert row is not None and row[0] >= 1


@pytest.mark.parametrize(
    ("text", "by"),
    [
        ("CREATE TABLE t3 (x int)", "proxy"),
        ("ALTER TABLE items ADD COLUMN extra int", "proxy"),
        ("CREATE INDEX ON items (name)", "proxy"),
        ("GRANT SELECT ON items TO PUBLIC", "proxy"),
        ("SELECT make_table()", "database"),
        ("DO $$ BEGIN EXECUTE 'CREATE TABLE t4 (x int)'; END $$", "database"),
        ("DO $$ BEGIN EXECUTE 'ALTER TABLE items ADD COLUMN y int'; END $$", "database"),
    ],
)
def test_data_mode_refuses_schema_changes(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer, text: str, by: str
) -> None:
    db, _ = mode_db
    with connect_app(mode_proxy, mode_db, "data-agent") as c:
        err = _refused(c, text, "42501")
    assert "may change data, not the schema" in str(err)
    assert err.diag.message_hint and "INSERT" in err.diag.message_hint
    if by == "proxy":
        assert "data mode (rule 2 (application_name=data-*))" in str(err)
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        tables = c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        columns = c.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items'"
        ).fetchone()
    assert tables == (1,) and columns == (2,)


def test_full_mode_is_unchanged(
    mode_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer
) -> None:
    with connect_app(mode_proxy, mode_db, "migrations") as c:
        c.execute("CREATE TABLE full_mode_table (x int)")
        c.execute("DROP TABLE full_mode_table")  # reversible, as ever


def test_agent_preset() -> None:
    config = PolicyConfig.model_validate({"preset": "agent"})
    assert config.mode == "data"
    assert (config.update, config.opaque, config.unparseable) == ("protect", "deny", "deny")
    overridden = PolicyConfig.model_validate({"preset": "agent", "mode": "read-only"})
    assert overridden.mode == "read-only" and overridden.delete == "protect"
    with pytest.raises(ValueError):
        PolicyConfig.model_validate({"preset": "robot"})
    with pytest.raises(ValueError):
        PolicyConfig.model_validate({"mode": "sandbox"})


@pytest.fixture(scope="module")
def agent_proxy(proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = tmp_path_factory.mktemp("agent") / "agent.toml"
    config.write_text('[policy]\npreset = "agent"\n')
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")
    return proxy


def test_agent_preset_through_the_proxy(
    agent_proxy: Any, mode_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, role = mode_db
    with psycopg.connect(agent_proxy.dsn(db, role, None), autocommit=True) as c:
        for text in ("DELETE FROM items", "UPDATE items SET name = 'x'"):
            err = _refused(c, text, "42501")
            assert "without a WHERE clause is refused (require_where" in str(err)
            assert err.diag.message_hint and "WHERE clause" in err.diag.message_hint
        err = _refused(c, "DO $$ BEGIN DELETE FROM items; END $$", "42501")
        assert err.diag.message_hint and "instead of a DO block" in err.diag.message_hint
        _refused(c, "CREATE TABLE t5 (x int)", "42501")
        c.execute("UPDATE items SET name = 'changed' WHERE id = 2")  # protected: captured
        c.execute("DELETE FROM items WHERE id = 2")
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        kinds = [
            r[0]
            for r in c.execute(
                "SELECT statement FROM softguard.operations ORDER BY id DESC LIMIT 2"
            ).fetchall()
        ]
    assert kinds == [
        "DELETE FROM items WHERE id = 2",
        "UPDATE items SET name = 'changed' WHERE id = 2",
    ]
