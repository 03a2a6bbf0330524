"""softguard's own schemas cannot be reached through the proxy; dangerous statements are
refused by default; per-role policy rules from a config file (DESIGN.md §3-§4).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from softguard.ledger import apply_migrations

TAMPER = [
    "select * from softguard.operations",
    "drop schema softguard cascade",
    "alter table softguard.operations add column note text",
    "alter table softguard.operations disable trigger all",
    "grant select on softguard.operations to public",
    "set search_path = softguard_quarantine",
    "select 'softguard_quarantine.x'::regclass",
    "create table softguard_quarantine.t ()",
    "select * from softguard_q1_billing.payments",
    "drop schema softguard_q1_billing cascade",
    'SELECT * FROM "softguard".OPERATIONS',
    "SELECT * FROM SoftGuard . operations",
    "update softguard.operations set state = 'purged'",
    "delete from softguard.operations",
    "truncate softguard.operations",
    "select softguard.undo_op(1)",
]


def _refused(e: psycopg.Error) -> None:
    assert e.diag.sqlstate == "42501", (e.diag.sqlstate, e.diag.message_primary)
    assert "softguard" in (e.diag.message_primary or ""), e.diag.message_primary
    # no trace of the PL/pgSQL that raised it
    assert e.diag.context is None and e.diag.internal_query is None, e.diag.context


@pytest.fixture
def quarantined_db(proxy: Any, sg: Any, twins: Any) -> str:
    """A copy in which operation 1 has moved schema billing to softguard_q1_billing."""
    (db,) = twins(1)
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute(b"DROP SCHEMA billing CASCADE")
    with sg.connect(db) as c:
        assert c.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'softguard_q1_billing'"
        ).fetchone()
    return db


def _ledger_state(sg: Any, db: str) -> Any:
    """What tampering would change: ledger rows and columns, grants, quarantine contents."""
    with sg.connect(db) as c:
        if c.execute("SELECT to_regclass('softguard.operations') IS NULL").fetchone()[0]:
            return "ledger table softguard.operations is gone"
        if c.execute("SELECT to_regclass('softguard_q1_billing.payments') IS NULL").fetchone()[0]:
            return "quarantined table softguard_q1_billing.payments is gone"
        return (
            c.execute("SELECT id, state, kind FROM softguard.operations ORDER BY id").fetchall(),
            c.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'softguard.operations'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ).fetchall(),
            c.execute(
                "SELECT relacl::text FROM pg_class WHERE oid = 'softguard.operations'::regclass"
            ).fetchone(),
            c.execute(
                "SELECT count(*) FROM pg_class"
                " WHERE relnamespace = 'softguard_quarantine'::regnamespace"
            ).fetchone(),
            c.execute("SELECT count(*) FROM softguard_q1_billing.payments").fetchone(),
        )


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_softguard_schemas_unreachable(proxy: Any, sg: Any, quarantined_db: str, mode: str) -> None:
    db = quarantined_db
    before = _ledger_state(sg, db)
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        for stmt in TAMPER:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                c.execute(stmt.encode(), prepare=(mode == "prepared"))
            _refused(info.value)
            assert c.info.transaction_status.name == "IDLE", stmt
            # the connection stays usable
            assert c.execute(b"SELECT 1").fetchone() == (1,), stmt
        assert c.execute(b"SHOW search_path").fetchone() == ('"$user", public',)
    assert _ledger_state(sg, db) == before, "a refused statement changed something"


def test_tamper_in_transaction_block_fails_the_transaction(proxy: Any, quarantined_db: str) -> None:
    with psycopg.connect(proxy.dsn(quarantined_db)) as c:  # psycopg opens a transaction
        c.execute(b"SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            c.execute(b"select * from softguard.operations")
        _refused(info.value)
        assert c.info.transaction_status.name == "INERROR"
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute(b"SELECT 1")
        c.rollback()
        assert c.execute(b"SELECT 2").fetchone() == (2,)
        c.commit()


def test_tamper_inside_multi_statement_string(proxy: Any, sg: Any, quarantined_db: str) -> None:
    """The refusal is one statement of the string: nothing of the string is kept."""
    with psycopg.connect(proxy.dsn(quarantined_db), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            c.execute(b"create table kept_or_not (id int); select * from softguard.operations")
        _refused(info.value)
        assert c.execute(b"SELECT to_regclass('kept_or_not')").fetchone() == (None,)


def test_dynamic_sql_cannot_destroy_quarantine_or_ledger(
    proxy: Any, sg: Any, quarantined_db: str
) -> None:
    """DESIGN.md §4: quarantine and ledger cannot be read, changed or dropped through the
    proxy by any SQL -- also not by SQL assembled at run time, which the proxy cannot see
    (§3: opaque statements are allowed or refused by policy, but never a silent loss)."""
    db = quarantined_db
    before = _ledger_state(sg, db)
    attacks = [
        b"DO $$BEGIN EXECUTE 'DROP SCHEMA soft' || 'guard_q1_billing CASCADE'; END$$",
        b"DO $$BEGIN EXECUTE 'DELETE FROM soft' || 'guard.operations'; END$$",
    ]
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        for stmt in attacks:
            try:
                c.execute(stmt)
            except psycopg.Error:
                pass  # refused: fine
    assert _ledger_state(sg, db) == before, (
        "dynamic SQL through softguard destroyed quarantine/ledger"
    )


# --------------------------------------------------------------------- dangerous by default

VICTIM_ROLE = "sg_pd_victim_role"
# per process: several test sessions may run on one machine at once
PROGRAM_MARK = Path(tempfile.gettempdir()) / f"sg_pd_copy_program_ran_{os.getpid()}"


@pytest.fixture
def victims(pg_server: Any, twins: Any) -> Any:
    target, victim_db = twins(2)
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [VICTIM_ROLE]).fetchone():
            c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(VICTIM_ROLE)))
    PROGRAM_MARK.unlink(missing_ok=True)
    yield target, victim_db
    PROGRAM_MARK.unlink(missing_ok=True)
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        c.execute("ALTER SYSTEM RESET log_min_duration_statement")
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(VICTIM_ROLE)))


def test_dangerous_statements_refused_by_default(proxy: Any, pg_server: Any, victims: Any) -> None:
    target, victim_db = victims
    statements = [
        f'DROP DATABASE "{victim_db}"',
        f"DROP DATABASE IF EXISTS {victim_db} WITH (FORCE)",
        f"DROP ROLE {VICTIM_ROLE}",
        f"DROP OWNED BY {VICTIM_ROLE}",
        "ALTER SYSTEM SET log_min_duration_statement = 12345",
        f"COPY (SELECT 1) TO PROGRAM 'touch {PROGRAM_MARK}'",
    ]
    with psycopg.connect(proxy.dsn(target), autocommit=True) as c:
        for stmt in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                c.execute(stmt.encode())
            assert info.value.diag.sqlstate == "42501"
            assert "softguard" in (info.value.diag.message_primary or ""), stmt
            assert c.execute(b"SELECT 1").fetchone() == (1,)
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [victim_db]).fetchone()
        assert c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [VICTIM_ROLE]).fetchone()
        assert not c.execute(
            "SELECT 1 FROM pg_file_settings WHERE name = 'log_min_duration_statement'"
            " AND setting = '12345'"
        ).fetchone()
    assert not PROGRAM_MARK.exists()


# --------------------------------------------------------------------- per-role rules

AGENT, HUMAN = "agent_sgpd", "human_sgpd"
RULES = """
[policy]
[[policy.rules]]
role = "agent*"
drop = "deny"
opaque = "deny"
"""


@pytest.fixture
def rule_setup(pg_server: Any, twins: Any, tmp_path: Path) -> Any:
    (db,) = twins(1)
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        for role in (AGENT, HUMAN):
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        apply_migrations(c)  # installing the ledger needs a superuser
        for role in (AGENT, HUMAN):
            t = sql.Identifier(f"{role}_table")
            c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(t))
            c.execute(sql.SQL("INSERT INTO {} VALUES (1), (2)").format(t))
            c.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(t, sql.Identifier(role)))
    config = tmp_path / "softguard.toml"
    config.write_text(RULES)
    yield db, config
    # the database (and what the roles own in it) goes first: twins' teardown runs later,
    # so drop it here
    pg_server.drop_database(db)
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        for role in (AGENT, HUMAN):
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_role_rule_from_config_file(
    proxy_factory: Any, pg_server: Any, sg: Any, rule_setup: Any
) -> None:
    db, config = rule_setup
    ruled = proxy_factory("--config", str(config), fresh=True)
    do_block = b"DO $$BEGIN PERFORM 1; END$$"
    try:
        with psycopg.connect(ruled.dsn(db, user=AGENT), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                c.execute(f"DROP TABLE {AGENT}_table".encode())
            assert "softguard" in (info.value.diag.message_primary or "")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                c.execute(do_block)
            assert "softguard" in (info.value.diag.message_primary or "")
            # still usable, and not refused for what the rule does not cover
            assert c.execute(f"SELECT count(*) FROM {AGENT}_table".encode()).fetchone() == (2,)
        with psycopg.connect(ruled.dsn(db, user=HUMAN), autocommit=True) as c:
            notices: list[str] = []
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            assert c.execute(f"DROP TABLE {HUMAN}_table".encode()).statusmessage == "DROP TABLE"
            assert c.execute(do_block).statusmessage == "DO"
            assert [n for n in notices if n.startswith("softguard:")], notices
    finally:
        ruled.stop()
    ops = sg.operations(db)
    assert [(o["kind"], o["db_role"]) for o in ops] == [("DROP TABLE", HUMAN)]
    with sg.connect(db) as c:
        assert c.execute(f"SELECT count(*) FROM {AGENT}_table").fetchone() == (2,)


def test_default_policy_lets_agent_role_drop_reversibly(
    proxy: Any, sg: Any, rule_setup: Any
) -> None:
    """Without the rule (the shared default proxy), the same role's DROP is protected."""
    db, _ = rule_setup
    with psycopg.connect(proxy.dsn(db, user=AGENT), autocommit=True) as c:
        c.execute(f"DROP TABLE {AGENT}_table".encode())
        c.execute(b"DO $$BEGIN PERFORM 1; END$$")
    ops = sg.operations(db)
    assert [(o["kind"], o["db_role"]) for o in ops] == [("DROP TABLE", AGENT)]
