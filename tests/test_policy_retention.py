"""Retention per rule: `retention_days` in [policy] and in [[policy.rules]].

Unit tests of Policy.retention_seconds(session), and end to end: a proxy whose rule gives
one role 1 day; that role's DROP (and DELETE) through the proxy expire in a day (NOTICE and
ledger), another role's in the default 7 days.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError
from support.pg import TestServer

from softguard.config import ConfigError, load_settings
from softguard.ledger import apply_migrations
from softguard.policy import Policy, PolicyConfig, Rule, SessionInfo

DAY = 86400


def session(user: str = "app", database: str = "shop", app: str = "") -> SessionInfo:
    return SessionInfo(user, database, app, "127.0.0.1:5000")


# -- unit ------------------------------------------------------------------------------


def test_default_is_seven_days() -> None:
    assert Policy().retention_seconds(session()) == 7 * DAY
    assert Policy(PolicyConfig(retention_days=2.5)).retention_seconds(session()) == int(2.5 * DAY)


def test_first_matching_rule_that_sets_it_wins() -> None:
    policy = Policy(
        PolicyConfig(
            retention_days=7,
            rules=[
                Rule(role="agent_*", drop="deny"),  # matches, sets no retention: skipped
                Rule(role="agent_*", application_name="cursor*", retention_days=0.5),
                Rule(role="agent_*", retention_days=1),
                Rule(database="archive", retention_days=30),
                Rule(role="*", retention_days=3),
            ],
        )
    )
    assert policy.retention_seconds(session("agent_x", app="cursor-1")) == DAY // 2
    assert policy.retention_seconds(session("agent_x", app="other")) == DAY
    assert policy.retention_seconds(session("agent_x", database="archive")) == DAY
    assert policy.retention_seconds(session("app", database="archive")) == 30 * DAY
    assert policy.retention_seconds(session("app")) == 3 * DAY


def test_rules_without_retention_keep_the_default() -> None:
    policy = Policy(PolicyConfig(retention_days=10, rules=[Rule(role="x", delete="deny")]))
    assert policy.retention_seconds(session("x")) == 10 * DAY
    assert Rule().retention_days is None


@pytest.mark.parametrize("bad", [0, -1, 1e9])
def test_retention_must_be_positive_and_fit_the_ledger(bad: float) -> None:
    with pytest.raises(ValidationError, match="retention_days"):
        Rule(retention_days=bad)
    with pytest.raises(ValidationError, match="retention_days"):
        PolicyConfig(retention_days=bad)


def test_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "softguard.toml"
    config.write_text(
        '[policy]\nretention_days = 14\n\n[[policy.rules]]\nrole = "agent_*"\nretention_days = 1\n'
    )
    policy = Policy(load_settings(config).policy)
    assert policy.retention_seconds(session("agent_7")) == DAY
    assert policy.retention_seconds(session("app")) == 14 * DAY
    config.write_text('[[policy.rules]]\nrole = "a"\nretention_days = 0\n')
    with pytest.raises(ConfigError, match="retention_days"):
        load_settings(config)


# -- end to end ------------------------------------------------------------------------

SHORT, LONG = "sg_ret_agent", "sg_ret_human"
RULES = f"""
[[policy.rules]]
role = "{SHORT}"
retention_days = 1
"""
NOTICE = re.compile(r"is reversible as operation (\d+) until (\d{4}-\d{2}-\d{2})")


@pytest.fixture
def retention_setup(pg_server: TestServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        for role in (SHORT, LONG):
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with pg_server.scratch_database() as db:
        with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
            apply_migrations(c)
            for role in (SHORT, LONG):
                for table in (f"{role}_dropped", f"{role}_deleted"):
                    t = sql.Identifier(table)
                    c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(t))
                    c.execute(sql.SQL("INSERT INTO {} VALUES (1), (2)").format(t))
                    c.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(t, sql.Identifier(role)))
        config = tmp_path / "softguard.toml"
        config.write_text(RULES)
        yield db, config
    # the database (with what the roles own in it) is gone: the roles can go
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        for role in (SHORT, LONG):
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _through_proxy(proxy: Any, db: str, role: str) -> list[tuple[int, date]]:
    """DROP one table, DELETE from another, as `role`: (operation, NOTICE date) each."""
    notices: list[str] = []
    with psycopg.connect(proxy.dsn(db, user=role), autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute(f"DROP TABLE {role}_dropped".encode())
        c.execute(f"DELETE FROM {role}_deleted WHERE id = 1".encode())
    found = [NOTICE.search(n) for n in notices]
    return [(int(m.group(1)), date.fromisoformat(m.group(2))) for m in found if m]


def test_rule_retention_through_the_proxy(
    proxy_factory: Any, pg_server: TestServer, retention_setup: tuple[str, Path]
) -> None:
    db, config = retention_setup
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("needs the proxy")
    try:
        short_ops = _through_proxy(proxy, db, SHORT)
        long_ops = _through_proxy(proxy, db, LONG)
    finally:
        proxy.stop()
    assert len(short_ops) == 2 and len(long_ops) == 2, (short_ops, long_ops)
    with psycopg.connect(pg_server.superuser_dsn(db)) as c:
        rows = c.execute(
            "SELECT id, kind, db_role, expires_at - created_at, expires_at,"
            " (expires_at AT TIME ZONE current_setting('TimeZone'))::date"
            " FROM softguard.operations ORDER BY id"
        ).fetchall()
    ledger = {r[0]: r for r in rows}
    assert [(r[1], r[2]) for r in rows] == [
        ("DROP TABLE", SHORT),
        ("DELETE", SHORT),
        ("DROP TABLE", LONG),
        ("DELETE", LONG),
    ]
    now = datetime.now().astimezone()
    for ops, days in ((short_ops, 1), (long_ops, 7)):
        for op, notice_date in ops:
            _, _, _, window, expires_at, expires_date = ledger[op]
            assert window == timedelta(days=days), (op, window)
            assert abs(expires_at - (now + timedelta(days=days))) < timedelta(minutes=5)
            assert notice_date == expires_date  # the NOTICE names the ledger's expiry date
