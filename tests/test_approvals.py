"""Approval of refused statements (decision 0020), through a real proxy and server: the
refusal names an approval id, a person approves it with the CLI, the client's identical
retry runs once (reversible where its category can be), nothing else passes."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql
from support.cli import run_cli
from support.compare import run_async
from support.pg import TestServer

POLICY = """
[policy]
[[policy.rules]]
name = "agents"
application_name = "agent*"
mode = "data"
delete = "deny"
require_where = true
"""

SETUP = """
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO PUBLIC;
"""


@pytest.fixture(scope="module")
def approval_db(pg_server: TestServer) -> Iterator[tuple[str, str, str]]:
    tag = uuid.uuid4().hex[:8]
    role, other = f"sg_appr_{tag}", f"sg_appr_other_{tag}"
    db = pg_server.create_database()
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        for r in (role, other):
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(r)))
        c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_server.dsn(db, role), autocommit=True) as c:
        c.execute(SETUP.encode())
    pg_server.install_ledger(db)
    try:
        yield db, role, other
    finally:
        pg_server.drop_database(db)
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            for r_ in (role, other):
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r_)))


@pytest.fixture(scope="module")
def approval_proxy(proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = tmp_path_factory.mktemp("approvals") / "policy.toml"
    config.write_text(POLICY)
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")
    return proxy


def _agent(proxy: Any, db: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(db, role, None, application_name="agent-1"), autocommit=True)


def _refused_id(c: psycopg.Connection[Any], text: str) -> tuple[str, psycopg.Error]:
    with pytest.raises(psycopg.Error) as info:
        c.execute(text.encode())
    err = info.value
    assert err.sqlstate == "42501", err
    found = re.search(r"\(approval id ([0-9a-f]{16})\)", str(err))
    assert found, str(err)
    assert err.diag.message_hint and f"softguard approve {found[1]}" in err.diag.message_hint
    return found[1], err


def _cli(pg_server: TestServer, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    # in this process (support.cli): the commands are under test here, not their start
    return run_cli(*args, "--dsn", pg_server.superuser_dsn(db))


def _wait_pending(pg_server: TestServer, db: str, approval: str) -> None:
    """The proxy records the request without making the client wait: poll (bounded)."""
    for _ in range(100):
        r = _cli(pg_server, db, "pending", "--json")
        assert r.returncode == 0, r.stderr
        if approval in r.stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"approval {approval} never recorded")


def _state(pg_server: TestServer, db: str, approval: str) -> tuple[Any, ...] | None:
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        return c.execute(
            "SELECT state, decided_by, requests FROM softguard.approvals WHERE id = %s",
            [approval],
        ).fetchone()


def test_denied_delete_runs_once_after_approval_and_is_reversible(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    db, role, _ = approval_db
    text = "DELETE FROM items WHERE id = 1"
    with _agent(approval_proxy, db, role) as c:
        approval, err = _refused_id(c, text)
        assert "refused by policy (delete); decided by rule 'agents'" in str(err)
        _wait_pending(pg_server, db, approval)
        r = _cli(pg_server, db, "approve", approval, "--by", "alice")
        assert r.returncode == 0, r.stderr
        assert "approved by alice" in r.stdout
        cur = c.execute(text.encode())
        assert cur.statusmessage == "DELETE 1" and cur.rowcount == 1
        # Once: the same text is refused again, as a new request.
        again, _ = _refused_id(c, text)
        assert again == approval
    assert _state(pg_server, db, approval)[0] in ("used", "pending")  # type: ignore[index]
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id = 1").fetchone() == (0,)
        op = c.execute(
            "SELECT id, statement FROM softguard.operations ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert op is not None and op[1] == text
    r = _cli(pg_server, db, "undo", str(op[0]), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id = 1").fetchone() == (1,)


def test_approval_is_bound_to_text_and_role(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    db, role, other = approval_db
    text = "DELETE FROM items WHERE id = 2"
    with _agent(approval_proxy, db, role) as c:
        approval, _ = _refused_id(c, text)
    _wait_pending(pg_server, db, approval)
    assert _cli(pg_server, db, "approve", approval).returncode == 0
    with _agent(approval_proxy, db, other) as c:  # another role, the same text
        other_id, _ = _refused_id(c, text)
        assert other_id != approval
    with _agent(approval_proxy, db, role) as c:
        for variant in (text + " ", text.lower(), text + ";", "DELETE FROM items WHERE id=2"):
            variant_id, _ = _refused_id(c, variant)
            assert variant_id != approval
    assert _state(pg_server, db, approval)[0] == "approved"  # type: ignore[index]
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id = 2").fetchone() == (1,)


def test_data_mode_ddl_after_approval(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    db, role, _ = approval_db
    text = "CREATE TABLE approved_table (x int)"
    with _agent(approval_proxy, db, role) as c:
        approval, err = _refused_id(c, text)
        assert "data mode (rule 'agents')" in str(err)
        _wait_pending(pg_server, db, approval)
        assert _cli(pg_server, db, "approve", approval).returncode == 0
        cur = c.execute(text.encode())
        assert cur.statusmessage == "CREATE TABLE"
        c.execute("INSERT INTO approved_table VALUES (1)")


def test_denied_request_stays_refused(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    db, role, _ = approval_db
    text = "UPDATE items SET name = 'all'"  # require_where
    with _agent(approval_proxy, db, role) as c:
        approval, err = _refused_id(c, text)
        assert "without a WHERE clause" in str(err)
        _wait_pending(pg_server, db, approval)
        r = _cli(pg_server, db, "deny", approval, "--by", "bob")
        assert r.returncode == 0 and "denied by bob" in r.stdout
        _refused_id(c, text)
    assert _state(pg_server, db, approval)[:2] == ("denied", "bob")  # type: ignore[index]
    r = _cli(pg_server, db, "approve", "0000000000000000")
    assert r.returncode == 1 and "no approval request" in r.stderr


def test_the_gate_cannot_be_called_by_the_client(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    """The client cannot reuse an approval for another text: softguard's names are refused
    in its text, and a gate reached through dynamic SQL finds no proxy marker."""
    db, role, _ = approval_db
    text = "DELETE FROM items WHERE id = 3"
    with _agent(approval_proxy, db, role) as c:
        approval, _ = _refused_id(c, text)
        _wait_pending(pg_server, db, approval)
        assert _cli(pg_server, db, "approve", approval).returncode == 0
        with pytest.raises(psycopg.Error) as info:
            c.execute(f"SELECT softguard._approval_gate('{approval}', '0', 'x', 'y')".encode())
        assert info.value.sqlstate == "42501"
        hidden = (
            "DO $$ BEGIN EXECUTE format('SELECT %s._approval_gate(%L, %L, %L, %L)', "
            f"chr(115) || 'oftguard', '{approval}', 'XX000', 'gate refused', ''); "
            "EXECUTE 'CREATE TABLE smuggled (x int)'; END $$"
        )
        with pytest.raises(psycopg.Error) as info:
            c.execute(hidden.encode())
        assert info.value.sqlstate in ("XX000", "42501"), info.value
    assert _state(pg_server, db, approval)[0] == "approved"  # type: ignore[index]
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT to_regclass('public.smuggled')").fetchone() == (None,)


def test_asyncpg_and_parameters(
    approval_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    db, role, _ = approval_db
    text = "DELETE FROM items WHERE id = 4"

    async def attempt() -> str:
        conn = await asyncpg.connect(
            approval_proxy.dsn(db, role, None), server_settings={"application_name": "agent"}
        )
        try:
            return str(await conn.execute(text))
        except asyncpg.PostgresError as exc:
            return f"{exc.sqlstate}: {exc}"
        finally:
            await conn.close()

    first = run_async(attempt())
    found = re.search(r"approval id ([0-9a-f]{16})", first)
    assert first.startswith("42501") and found, first
    _wait_pending(pg_server, db, found[1])
    assert _cli(pg_server, db, "approve", found[1]).returncode == 0
    assert run_async(attempt()) == "DELETE 1"
    # With parameters (extended protocol) there is no approval to offer: refused plainly.
    with _agent(approval_proxy, db, role) as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("DELETE FROM items WHERE id = %s", [5])
        assert info.value.sqlstate == "42501"
        assert "approval id" not in str(info.value)
        # A text parameter with a backslash reaches the refusal too (not 22P02 at Bind).
        with pytest.raises(psycopg.Error) as info:
            c.execute("DELETE FROM items WHERE id = %s OR %s = ''", [5, "a\\b"])
        assert info.value.sqlstate == "42501", info.value


# ------------------------------------------- issue 15, done when: the agent preset end to end


@pytest.fixture(scope="module")
def preset_proxy(proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = tmp_path_factory.mktemp("preset") / "agent.toml"
    config.write_text('[policy]\npreset = "agent"\n')
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")
    return proxy


def test_agent_preset_reads_approves_undoes_and_refuses_schema_changes(
    preset_proxy: Any, approval_db: tuple[str, str, str], pg_server: TestServer
) -> None:
    """With `preset = "agent"`: reads run; `DELETE FROM items` (no WHERE) is refused with an
    approval id and a HINT; a person approves; the identical retry runs, is captured and is
    undone; `DROP TABLE items` is refused (data mode). Each refusal alone says what to do."""
    db, role, _ = approval_db
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        rows_before = c.execute("SELECT count(*) FROM items").fetchone()
    assert rows_before is not None and rows_before[0] > 0
    text = "DELETE FROM items"
    with _agent(preset_proxy, db, role) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == rows_before
        assert c.execute(
            "WITH n AS (SELECT name FROM items ORDER BY id LIMIT 2) SELECT count(*) FROM n"
        ).fetchone() == (2,)
        approval, err = _refused_id(c, text)
        assert "without a WHERE clause" in str(err), err
        assert err.diag.message_hint and "WHERE" in err.diag.message_hint
        with pytest.raises(psycopg.Error) as drop:
            c.execute(b"DROP TABLE items")
        assert drop.value.sqlstate == "42501"
        assert "data mode" in str(drop.value)
        assert drop.value.diag.message_hint and "INSERT, UPDATE, DELETE" in (
            drop.value.diag.message_hint
        )
        _wait_pending(pg_server, db, approval)
        assert _cli(pg_server, db, "approve", approval, "--by", "carol").returncode == 0
        cur = c.execute(text.encode())
        assert cur.statusmessage == f"DELETE {rows_before[0]}"
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (0,)
        op = c.execute(
            "SELECT id FROM softguard.operations WHERE statement = %s ORDER BY id DESC LIMIT 1",
            [text],
        ).fetchone()
    assert op is not None
    r = _cli(pg_server, db, "undo", str(op[0]), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == rows_before
        assert c.execute("SELECT to_regclass('public.items')").fetchone() == ("items",)
