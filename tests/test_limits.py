"""Blast-radius limits (decision 0021) through a real proxy and server: max_rows counts
every row a statement deletes (and updates, where captured), cascades included, whatever
text carries it; max_table_bytes refuses TRUNCATE and DROP of large tables; a refused
statement changes nothing; other sessions are unaffected; the session cannot lift its
limit."""

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
from typer.testing import CliRunner

from softguard import contract
from softguard.cli.main import app
from softguard.policy import Policy, PolicyConfig, SessionInfo

POLICY = """
[policy]
[[policy.rules]]
name = "limited agents"
application_name = "lim-*"
max_rows = 10
max_table_bytes = "64kB"
update = "protect"

[[policy.rules]]
name = "billing is off limits"
application_name = "lim-*"
tables = ["billing.*", "public.orders"]
delete = "deny"
update = "deny"
truncate = "deny"
drop = "deny"

[[policy.rules]]
name = "dropper tables"
application_name = "dropper-*"
tables = ["billing.*"]
drop = "deny"

[[policy.rules]]
application_name = "dropper-*"
drop = "allow"

[[policy.rules]]
name = "bulk"
application_name = "bulk-*"
max_rows = 1000
"""

SETUP = """
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
CREATE TABLE parents (id int PRIMARY KEY);
CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents ON DELETE CASCADE);
INSERT INTO parents VALUES (1), (2), (3);
INSERT INTO children SELECT g, CASE WHEN g <= 20 THEN 1 ELSE 2 END FROM generate_series(1, 25) g;
CREATE FUNCTION del_items(lo int, hi int) RETURNS bigint LANGUAGE sql AS
    $$ WITH d AS (DELETE FROM items WHERE id BETWEEN lo AND hi RETURNING 1)
       SELECT count(*) FROM d $$;
CREATE TABLE big (id int, pad text);
INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g;
CREATE TABLE small (id int);
INSERT INTO small VALUES (1), (2), (3);
CREATE TABLE parted (id int, pad text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (1000) TO (2000);
INSERT INTO parted SELECT g, repeat('y', 200) FROM generate_series(1, 40) g;
INSERT INTO parted SELECT g, repeat('y', 200) FROM generate_series(1001, 1040) g;
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers VALUES (1), (2);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id int PRIMARY KEY,
                               customer int REFERENCES customers ON DELETE CASCADE);
INSERT INTO billing.invoices VALUES (1, 1), (2, 2);
CREATE TABLE billing."Quoted Ledger" (id int);
INSERT INTO billing."Quoted Ledger" VALUES (1);
CREATE TABLE orders (id int);
INSERT INTO orders VALUES (1);
CREATE VIEW invoice_view AS SELECT * FROM billing.invoices;
CREATE FUNCTION del_invoices() RETURNS void LANGUAGE sql AS $$ DELETE FROM billing.invoices $$;
"""
TABLES = (
    "items",
    "parents",
    "children",
    "big",
    "small",
    "parted",
    "customers",
    "orders",
    "billing.invoices",
    'billing."Quoted Ledger"',
)
LIMIT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def lim_db(pg_server: TestServer) -> Iterator[tuple[str, str]]:
    with owned_database(pg_server, "sg_lim_", SETUP, create_schemas=True) as found:
        yield found


@pytest.fixture(scope="module")
def lim_proxy(proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return policy_proxy(proxy_factory, tmp_path_factory, "limits", POLICY)


def _state(pg_server: TestServer, db: str) -> dict[str, int]:
    """Row counts of every test table and of the ledger's operations."""
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        counts = {}
        for t in (*TABLES, "softguard.operations"):
            row = c.execute(f"SELECT count(*) FROM {t}").fetchone()
            assert row is not None
            counts[t] = int(row[0])
    return counts


def _refused(c: psycopg.Connection[Any], text: str, limit: str = "max_rows") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        c.execute(text.encode())
    assert info.value.sqlstate == "54000", (text, info.value)
    assert f"refused by policy ({limit})" in str(info.value), info.value
    assert "decided by rule 'limited agents'" in str(info.value), info.value
    assert info.value.diag.message_hint, info.value
    return info.value


def test_under_and_at_the_limit_pass_over_it_is_refused(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        with c.transaction(force_rollback=True):
            c.execute("DELETE FROM items WHERE id <= 9")
        with c.transaction(force_rollback=True):
            cur = c.execute("DELETE FROM items WHERE id <= 10")  # at the limit
            assert cur.rowcount == 10
        err = _refused(c, "DELETE FROM items WHERE id <= 11")
        assert "11 rows" in str(err) and "limit of 10 rows" in str(err)
        assert err.diag.message_hint and "at most 10 rows" in err.diag.message_hint
        # UPDATE is captured for this rule: counted too
        _refused(c, "UPDATE items SET name = 'x' WHERE id <= 11")
        with c.transaction(force_rollback=True):
            c.execute("UPDATE items SET name = 'x' WHERE id <= 10")
    assert _state(pg_server, lim_db[0]) == before


def test_cascades_are_counted(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        err = _refused(c, "DELETE FROM parents WHERE id = 1")  # 1 parent + 20 children
        assert "21 rows" in str(err)
        with c.transaction(force_rollback=True):
            c.execute("DELETE FROM parents WHERE id = 2")  # 1 + 5
    assert _state(pg_server, lim_db[0]) == before


DODGES = [
    "WITH d AS (DELETE FROM items WHERE id <= 20 RETURNING *) SELECT count(*) FROM d",
    "SELECT del_items(1, 20)",
    "DO $$ BEGIN DELETE FROM items WHERE id <= 20; END $$",
    # batches inside one client statement are one statement
    "DO $$ BEGIN FOR i IN 0..3 LOOP DELETE FROM items WHERE id BETWEEN i * 5 + 1 AND i * 5 + 5;"
    " END LOOP; END $$",
    "SELECT 1; DELETE FROM items WHERE id <= 20; SELECT 2",
    # the statements of one multi-statement string are counted together
    "DELETE FROM items WHERE id <= 6; DELETE FROM items WHERE id BETWEEN 7 AND 12",
    "BEGIN; DELETE FROM items WHERE id <= 20; COMMIT",
]


@pytest.mark.parametrize("text", DODGES)
def test_no_text_dodges_the_row_limit(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer, text: str
) -> None:
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        _refused(c, text)
    assert _state(pg_server, lim_db[0]) == before


def test_prepared_and_pipelined_statements_are_limited(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, role = lim_db
    before = _state(pg_server, db)
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("DELETE FROM items WHERE id <= %s", [20], prepare=True)
        assert info.value.sqlstate == "54000"
        with pytest.raises(psycopg.Error) as info:
            with c.pipeline():
                c.execute("SELECT 1")
                c.execute("DELETE FROM items WHERE id <= %s", [20])
        assert info.value.sqlstate == "54000"

    async def attempt() -> list[str]:
        conn = await asyncpg.connect(
            lim_proxy.dsn(db, role, None), server_settings={"application_name": "lim-a"}
        )
        seen = []
        try:
            for query, args in (
                ("DELETE FROM items WHERE id <= $1", (20,)),
                ("SELECT del_items($1, $2)", (1, 20)),
                ("TRUNCATE big", ()),
            ):
                try:
                    await conn.execute(query, *args)
                    seen.append("no error")
                except asyncpg.PostgresError as exc:
                    seen.append(str(exc.sqlstate))
            stmt = await conn.prepare("DELETE FROM items WHERE id <= $1")
            try:
                await stmt.fetch(30)
                seen.append("no error")
            except asyncpg.PostgresError as exc:
                seen.append(str(exc.sqlstate))
        finally:
            await conn.close()
        return seen

    assert run_async(attempt()) == ["54000"] * 4
    assert _state(pg_server, db) == before


def test_other_sessions_are_unaffected(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, role = lim_db
    before = _state(pg_server, db)
    for dsn in (
        lim_proxy.dsn(db, role, None, application_name="bulk-job"),  # another rule
        lim_proxy.dsn(db, role, None, application_name="other"),  # no limit at all
        pg_server.dsn(db, role),  # direct: not registered
    ):
        with psycopg.connect(dsn, autocommit=True) as c:
            with c.transaction(force_rollback=True):
                assert c.execute("DELETE FROM items WHERE id <= 20").rowcount == 20
                c.execute("DELETE FROM parents WHERE id = 1")
            with c.transaction(force_rollback=True):
                c.execute("TRUNCATE big")
    assert _state(pg_server, db) == before


def test_truncate_and_drop_of_large_tables_are_refused(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    db = lim_db[0]
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        sizes = dict(
            c.execute(  # type: ignore[arg-type]
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                " WHERE relname IN ('big', 'small', 'parted_1', 'parted_2')"
            ).fetchall()
        )
    assert sizes["big"] > LIMIT_BYTES and sizes["small"] < LIMIT_BYTES
    # each partition fits, the partitioned table does not
    assert max(sizes["parted_1"], sizes["parted_2"]) < LIMIT_BYTES
    assert sizes["parted_1"] + sizes["parted_2"] > LIMIT_BYTES
    before = _state(pg_server, db)
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        err = _refused(c, "TRUNCATE big", "max_table_bytes")
        assert "TRUNCATE public.big" in str(err) and "over the limit of 64 kB" in str(err)
        _refused(c, "TRUNCATE parted", "max_table_bytes")
        _refused(c, "DROP TABLE big", "max_table_bytes")
        _refused(c, "DROP TABLE parted", "max_table_bytes")
        _refused(c, "DROP TABLE small, big", "max_table_bytes")
        _refused(c, "DO $$ BEGIN TRUNCATE big; END $$", "max_table_bytes")
        with c.transaction(force_rollback=True):
            c.execute("TRUNCATE small")
            c.execute("TRUNCATE parted_1")
        with c.transaction(force_rollback=True):
            c.execute("DROP TABLE small")
    assert _state(pg_server, db) == before


def test_the_limited_session_cannot_lift_its_limit(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    db, role = lim_db
    before = _state(pg_server, db)
    lift = [
        "SET softguard.capture = ''",
        "SELECT set_config('softguard.limit_rows', '', false)",
        "SET softguard.max_rows = '100000'",
        "RESET ALL",
        # the database's own functions, named so no text check sees them: a bigger limit,
        # no limit, a second registration
        "DO $$ BEGIN EXECUTE 'SELECT soft' || 'guard.register_limits(100000, ''me'', NULL,"
        " NULL, NULL)'; END $$",
        "DO $$ BEGIN EXECUTE 'SELECT soft' || 'guard.register_limits(NULL, NULL, NULL, NULL,"
        " ''[]'')'; END $$",
        "DO $$ BEGIN EXECUTE 'SELECT soft' || 'guard.register_session(''delete'', 1, '''')';"
        " END $$",
    ]
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        for text in lift:
            try:
                c.execute(text.encode())
            except psycopg.Error:
                pass  # refused is fine too: what matters is the limit after it
            _refused(c, "DELETE FROM items WHERE id <= 11")
            _refused(c, "TRUNCATE big", "max_table_bytes")
            with pytest.raises(psycopg.Error) as denied:
                c.execute("DELETE FROM billing.invoices WHERE id = 1")
            assert denied.value.sqlstate == "42501"
        # a smaller limit is taken: registration only adds protection
        c.execute(
            b"DO $$ BEGIN EXECUTE 'SELECT soft' || 'guard.register_limits(5, ''tighter'', NULL,"
            b" NULL, NULL)'; END $$"
        )
        with pytest.raises(psycopg.Error) as info:
            c.execute("DELETE FROM items WHERE id <= 6")
        assert info.value.sqlstate == "54000" and "decided by tighter" in str(info.value)
    # a session that is not registered cannot register limits (nothing to add them to)
    with psycopg.connect(pg_server.dsn(db, role), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT softguard.register_limits(1, 'x', NULL, NULL, NULL)")
        # refused by a cast to a domain: the registration is SQL, which has no RAISE
        assert info.value.sqlstate == "23514"
        assert "this_session_is_not_registered" in str(info.value)
    assert _state(pg_server, db) == before


def test_limits_resolve_per_rule_and_reach_the_registration() -> None:
    policy = Policy(PolicyConfig.model_validate({"preset": "agent"}))
    session = SessionInfo("agent", "shop", "", "127.0.0.1:1")
    limits = policy.limits(session)
    assert (limits.max_rows, limits.max_table_bytes) == (1000, None)
    assert limits.max_rows_by == "the default policy, preset agent"
    config = PolicyConfig.model_validate(
        {
            "max_table_bytes": "1GB",
            "rules": [{"name": "etl", "role": "etl", "max_rows": 50000, "max_table_bytes": 4096}],
        }
    )
    policy = Policy(config)
    assert policy.limits(session).max_table_bytes == 1 << 30
    etl = policy.limits(SessionInfo("etl", "shop", "", "127.0.0.1:1"))
    assert (etl.max_rows, etl.max_rows_by, etl.max_table_bytes) == (50000, "rule 'etl'", 4096)
    assert not Policy(PolicyConfig()).limits(session)
    with pytest.raises(ValueError):
        PolicyConfig.model_validate({"max_rows": -1})
    query = contract.register_session_query(
        "delete", 60, "127.0.0.1", (5, "rule 'a'", None, "", "[]")
    )
    assert b"softguard.register_limits(5::bigint, " in query and b"'" + b"rule" not in query


def test_explain_shows_the_limits(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(POLICY)
    args = ["explain", "DELETE FROM t WHERE id > 1", "--config", str(cfg)]
    out = CliRunner().invoke(app, [*args, "--application-name", "lim-x"]).output
    assert "limits: max_rows 10 (rule 'limited agents'); max_table_bytes 65536" in out
    out = CliRunner().invoke(app, args).output
    assert "limits: max_rows none; max_table_bytes none" in out


TABLE_REFUSALS = [
    ("DELETE FROM billing.invoices WHERE id = 1", "DELETE billing.invoices"),
    ("SET search_path = billing, public; DELETE FROM invoices WHERE id = 1", "DELETE"),
    ("DELETE FROM invoice_view WHERE id = 1", "DELETE billing.invoices"),
    ('DELETE FROM billing."Quoted Ledger"', 'DELETE billing."Quoted Ledger"'),
    ("UPDATE billing.invoices SET customer = 2", "UPDATE billing.invoices"),
    ("SELECT del_invoices()", "DELETE billing.invoices"),
    ("DO $$ BEGIN DELETE FROM billing.invoices; END $$", "DELETE billing.invoices"),
    ("DELETE FROM customers WHERE id = 1", "DELETE billing.invoices"),  # the FK cascade
    ("DELETE FROM orders", "DELETE public.orders"),
    ("TRUNCATE billing.invoices", "TRUNCATE billing.invoices"),
    ("TRUNCATE customers CASCADE", "TRUNCATE billing.invoices"),
    ("DROP TABLE billing.invoices CASCADE", "DROP billing.invoices"),
    ('DROP TABLE billing."Quoted Ledger"', 'DROP billing."Quoted Ledger"'),
    ("DROP TABLE orders", "DROP public.orders"),
    ("DROP SCHEMA billing CASCADE", "DROP billing."),
    ("DO $$ BEGIN DROP TABLE billing.invoices CASCADE; END $$", "DROP billing.invoices"),
]


@pytest.mark.parametrize(("text", "names"), TABLE_REFUSALS)
def test_tables_as_policy_targets(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer, text: str, names: str
) -> None:
    """A rule with `tables` denies its categories on the resolved tables, however the
    statement reaches them."""
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute(text.encode())
        err = info.value
        assert err.sqlstate == "42501", (text, err)
        assert names in str(err) and "decided by rule 'billing is off limits'" in str(err), err
        assert err.diag.message_hint and "ask an operator" in err.diag.message_hint
    assert _state(pg_server, lim_db[0]) == before


def test_tables_rules_leave_other_tables_and_sessions_alone(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        assert c.execute("SELECT count(*) FROM billing.invoices").fetchone() == (2,)
        with c.transaction(force_rollback=True):
            c.execute("INSERT INTO billing.invoices VALUES (3, 1)")
            c.execute("DELETE FROM items WHERE id = 1")
            c.execute("TRUNCATE small")
    with connect_app(lim_proxy, lim_db, "other") as c:
        with c.transaction(force_rollback=True):
            c.execute("DELETE FROM billing.invoices")
            c.execute("TRUNCATE orders")
    assert _state(pg_server, lim_db[0]) == before
    out = (
        CliRunner()
        .invoke(
            app, ["explain", "SELECT 1", "--config", "/dev/null", "--application-name", "lim-x"]
        )
        .output
    )
    assert "limits:" in out


def test_a_table_rule_holds_where_drop_is_allowed(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    """drop = "allow" sends the DROP as it is: the sql_drop backstop still refuses it for a
    table a rule names."""
    before = _state(pg_server, lim_db[0])
    with connect_app(lim_proxy, lim_db, "dropper-1") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute('DROP TABLE billing."Quoted Ledger"')
        assert info.value.sqlstate == "42501"
        assert "decided by rule 'dropper tables'" in str(info.value)
        with c.transaction(force_rollback=True):
            c.execute("DROP TABLE small")
    assert _state(pg_server, lim_db[0]) == before


def test_registration_loads_no_plpgsql(
    lim_proxy: Any, lim_db: tuple[str, str], pg_server: TestServer
) -> None:
    """The registration of a session with limits, denied tables and UPDATE protection is
    LANGUAGE sql (decision 0033): once UPDATE capture is on, such a session that has run
    nothing of its own shows what a direct one shows in SHOW ALL, with no plpgsql.*
    settings (loading plpgsql defines them)."""
    db, role = lim_db
    with connect_app(lim_proxy, lim_db, "lim-agent"):
        pass  # the first registration with UPDATE protection may switch capture on
    with connect_app(lim_proxy, lim_db, "lim-agent") as c:
        proxied = c.execute("SHOW ALL").fetchall()
        loaded = c.execute("SELECT count(*) FROM pg_settings WHERE name LIKE 'plpgsql.%'")
        assert loaded.fetchone() == (0,)
        # and it is registered as the policy says: limited, UPDATEs captured
        _refused(c, "DELETE FROM items WHERE id <= 11")
    dsn = pg_server.dsn(db, role)
    with psycopg.connect(dsn, autocommit=True, application_name="lim-agent") as c:
        direct = c.execute("SHOW ALL").fetchall()
    assert proxied == direct
