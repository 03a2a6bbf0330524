"""The capture budget (issue 11 item 7; decision 0014), through the proxy.

A database whose budget is 64 kB (written by `softguard init --config`, kept by a proxy
serving the same configuration): a TRUNCATE, DELETE or UPDATE whose capture would pass it
is refused with 54000 through psycopg and asyncpg, and changes nothing (table as before,
no operation, no captured row); under it the statement is captured and undone exactly.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql
from support.pg import TestServer, build_dsn
from support.proxy import REPO_ROOT, ProxyFactory, Target

BUDGET = 64 * 1024
CONFIG = 'max_capture_bytes = "64kB"\n\n[policy]\nupdate = "protect"\n'

DATA = """
CREATE TABLE small (id int PRIMARY KEY, note text NOT NULL);
INSERT INTO small SELECT g, 'small ' || g FROM generate_series(1, 20) g;
CREATE TABLE large (id int PRIMARY KEY, payload text NOT NULL);
INSERT INTO large SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 3000) g;
CREATE TABLE kids (id int PRIMARY KEY, large_id int REFERENCES large ON DELETE CASCADE,
                   payload text NOT NULL);
INSERT INTO kids SELECT g, g, repeat('k', 100) FROM generate_series(1, 3000) g;
"""

# name -> (statement, over the budget?)
CASES: dict[str, tuple[str, bool]] = {
    "truncate_over": ("TRUNCATE large CASCADE", True),
    "truncate_list_over": ("TRUNCATE kids, small", True),
    "delete_over": ("DELETE FROM large WHERE id > 10", True),
    "delete_cascade_over": ("DELETE FROM large WHERE id <= 400", True),
    "update_over": ("UPDATE large SET payload = 'x' WHERE id > 10", True),
    "truncate_under": ("TRUNCATE small", False),
    "delete_under": ("DELETE FROM large WHERE id <= 10", False),
    "update_under": ("UPDATE large SET payload = 'changed' WHERE id <= 10", False),
}
DRIVERS = ["psycopg", "asyncpg"]


@dataclass
class BudgetDb:
    server: TestServer
    proxy: Target
    db: str
    owner: str

    def super_dsn(self) -> str:
        return self.server.superuser_dsn(self.db)

    def direct(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.super_dsn(), autocommit=True) as c:
            cur = c.execute(query.encode())
            return cur.fetchall() if cur.description else []

    def state(self) -> dict[str, Any]:
        """The data and the ledger, as plain values."""
        out: dict[str, Any] = {}
        for t in ("small", "large", "kids"):
            out[t] = self.direct(
                f"SELECT md5(coalesce(string_agg(to_jsonb(t)::text, ',' ORDER BY id), ''))"
                f" FROM {t} t"
            )[0][0]
        out["ops"] = self.direct("SELECT coalesce(max(id), 0) FROM softguard.operations")[0][0]
        out["captured"] = self.direct("SELECT count(*) FROM softguard.captured_rows")[0][0]
        return out


def _init(dsn: str, config: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "softguard", "init", "--config", str(config), "--dsn", dsn],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def budget_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("budget") / "budget.toml"
    config.write_text(CONFIG)
    return config


@pytest.fixture
def budget_db(
    pg_server: TestServer, proxy_factory: ProxyFactory, budget_config: Path
) -> Iterator[BudgetDb]:
    config = budget_config
    proxy = proxy_factory("--config", str(config))
    if proxy.is_direct:
        pytest.skip("the budget is kept by softguard's proxy")
    db = pg_server.create_database()
    owner = "budget_" + db[-8:]
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
    with psycopg.connect(
        build_dsn(pg_server.host, pg_server.port, db, owner, None), autocommit=True
    ) as c:
        c.execute(DATA.encode())
    _init(pg_server.superuser_dsn(db), config)
    try:
        yield BudgetDb(pg_server, proxy, db, owner)
    finally:
        pg_server.drop_database(db)
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))


def _run(b: BudgetDb, driver: str, stmt: str) -> tuple[str | None, str, list[str]]:
    """(SQLSTATE or None, message, notices) of one statement through the proxy."""
    dsn = b.proxy.dsn(b.db, b.owner, None)
    if driver == "psycopg":
        notices: list[str] = []
        with psycopg.connect(dsn, autocommit=True) as c:
            c.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            try:
                c.execute(stmt.encode())
            except psycopg.Error as e:
                return e.sqlstate, str(e.diag.message_primary), notices
        return None, "", notices

    async def go() -> tuple[str | None, str, list[str]]:
        seen: list[str] = []
        conn = await asyncpg.connect(dsn)
        conn.add_log_listener(lambda _c, m: seen.append(str(m.message)))
        try:
            await conn.execute(stmt)
        except asyncpg.PostgresError as e:
            return e.sqlstate, str(e.message), seen
        finally:
            await conn.close()
        return None, "", seen

    return asyncio.run(asyncio.wait_for(go(), 60))


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_capture_budget(budget_db: BudgetDb, name: str, driver: str) -> None:
    stmt, over = CASES[name]
    assert budget_db.direct("SELECT max_capture_bytes FROM softguard.settings") == [(BUDGET,)]
    before = budget_db.state()
    code, message, notices = _run(budget_db, driver, stmt)
    after = budget_db.state()
    if over:
        assert code == "54000", (code, message)
        assert "capture budget of 64 kB (max_capture_bytes)" in message, message
        assert after == before, "a refused statement changed something"
        return
    assert code is None, (code, message)
    assert any("is reversible as operation" in n for n in notices), notices
    assert after["ops"] == before["ops"] + 1
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "softguard",
            "undo",
            str(after["ops"]),
            "--yes",
            "--dsn",
            budget_db.super_dsn(),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    restored = budget_db.state()
    assert {k: restored[k] for k in ("small", "large", "kids")} == {
        k: before[k] for k in ("small", "large", "kids")
    }


def test_truncate_refusal_names_size_budget_and_table(budget_db: BudgetDb) -> None:
    with psycopg.connect(budget_db.proxy.dsn(budget_db.db, budget_db.owner, None)) as c:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as err:
            c.execute("TRUNCATE large CASCADE")
    diag = err.value.diag
    assert diag.message_primary is not None and "public.large" in diag.message_primary
    assert "public.kids" in diag.message_primary
    assert "would keep about" in diag.message_primary
    assert diag.message_hint is not None and "max_capture_bytes" in diag.message_hint


def test_session_may_lower_its_budget(budget_db: BudgetDb) -> None:
    """Lower only (the proxy refuses softguard.* settings from clients; a direct session
    that captures may set it)."""
    before = budget_db.state()
    with psycopg.connect(budget_db.super_dsn(), autocommit=True) as c:
        c.execute("SET softguard.capture = 'delete'")
        c.execute("SET softguard.max_capture_bytes = 100")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as err:
            c.execute("DELETE FROM large WHERE id <= 10")
        assert "softguard.max_capture_bytes" in str(err.value.diag.message_primary)
        c.execute("SET softguard.max_capture_bytes = 1000000000000")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute("DELETE FROM large")  # no higher than softguard.settings says
    assert budget_db.state() == before


def test_init_keeps_the_budget_equal_to_the_config(budget_db: BudgetDb, tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("max_capture_bytes = 1048576\nmin_free_disk_percent = 5\n")
    _init(budget_db.super_dsn(), config)
    row = budget_db.direct(
        "SELECT max_capture_bytes, min_free_disk_percent, disk_total_bytes IS NOT NULL"
        " FROM softguard.settings"
    )
    # the test server runs on this host: its disk is measured
    assert row == [(1048576, 5.0, True)]
