"""A database owned by a fresh login role, with the ledger installed, and a proxy running a
policy: what the tests of modes and limits run against."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.pg import TestServer


@contextmanager
def owned_database(
    pg_server: TestServer, prefix: str, setup: str, *, create_schemas: bool = False
) -> Iterator[tuple[str, str]]:
    """(database, role): *setup* run as the role, which owns schema public (and may create
    schemas with *create_schemas*); both dropped at the end."""
    role = prefix + uuid.uuid4().hex[:8]
    db = pg_server.create_database()
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        if create_schemas:
            c.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(db), sql.Identifier(role)
                )
            )
    with psycopg.connect(pg_server.dsn(db, role), autocommit=True) as c:
        c.execute(setup.encode())
    pg_server.install_ledger(db)
    try:
        yield db, role
    finally:
        pg_server.drop_database(db)
        with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def policy_proxy(
    proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory, name: str, policy: str
) -> Any:
    """A fresh proxy running *policy* (TOML); skips under SOFTGUARD_TEST_VIA=direct."""
    config = tmp_path_factory.mktemp(name) / "policy.toml"
    config.write_text(policy)
    proxy = proxy_factory("--config", str(config), fresh=True)
    if proxy.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")
    return proxy


def connect_app(proxy: Any, db_role: tuple[str, str], app: str) -> psycopg.Connection[Any]:
    """An autocommit session of the role through *proxy*, with application_name *app*."""
    db, role = db_role
    return psycopg.connect(
        proxy.dsn(db, role, None, application_name=app), autocommit=True, connect_timeout=15
    )
