"""Fixtures for the end-to-end soft-delete tests (issue 6) through the proxy.

- sd_template (session): softguard/demo/rental.sql plus customers.deleted_at timestamptz,
  customers.deleted_by text and billing.refunds.is_deleted boolean; NO softguard ledger
  (the proxy installs it on the first protected statement; direct twins never have it).
- sd_pool (session) / twins: twins(n=2) -> n fresh copies (the DatabasePool of
  tests/proxy_drop, reused), dropped after the test.
- sg: a DropKit of tests/proxy_drop (superuser helpers: operations, data checksums, undo).
- pristine_data (session): data checksums of an untouched copy.
- sd_proxy / pattern_proxy (session): softguard serve --config with MAIN_CONFIG /
  PATTERN_CONFIG (softdelete_harness.py), upstream the server's postgres database.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from softdelete_harness import (
    MAIN_CONFIG,
    PATTERN_CONFIG,
    TEMPLATE_EXTRAS,
    proxy_drop_conftest,
)
from support.pg import TestServer, short_tempdir

_pd = proxy_drop_conftest()
DropKit = _pd.DropKit
FIXTURE: Path = _pd.FIXTURE


@pytest.fixture(scope="session")
def sd_template(pg_server: TestServer) -> Iterator[str]:
    name = pg_server.create_database()
    try:
        pg_server.run_sql_file(name, FIXTURE)
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            c.execute(TEMPLATE_EXTRAS.encode())
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def sd_pool(pg_server: TestServer, sd_template: str) -> Iterator[Any]:
    # WAL_LOG: this module takes three copies per test, while proxied twins dirty buffers
    pool = _pd.DatabasePool(pg_server, sd_template, ahead=4, strategy="WAL_LOG")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def twins(sd_pool: Any) -> Iterator[Callable[..., list[str]]]:
    yield from _pd.make_twins(sd_pool)


@pytest.fixture
def sg(pg_server: TestServer) -> Any:
    return DropKit(pg_server)


@pytest.fixture(scope="session")
def pristine_data(sd_pool: Any, pg_server: TestServer) -> dict[str, Any]:
    name = sd_pool.take()
    try:
        data: dict[str, Any] = DropKit(pg_server).data(name)
        return data
    finally:
        sd_pool.drop([name])


@pytest.fixture(scope="session")
def sd_config_dir() -> Iterator[Path]:
    path = short_tempdir("sg-sd-config-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _proxy(factory: Any, server: TestServer, directory: Path, name: str, text: str) -> Any:
    config = directory / name
    config.write_text(text)
    proxy = factory("--config", str(config), upstream=server.superuser_dsn("postgres"))
    if proxy.is_direct:
        pytest.skip("soft delete is the proxy's rewrite: nothing to test directly")
    return proxy


@pytest.fixture(scope="session")
def sd_proxy(proxy_factory: Any, pg_server: TestServer, sd_config_dir: Path) -> Any:
    return _proxy(proxy_factory, pg_server, sd_config_dir, "main.toml", MAIN_CONFIG)


@pytest.fixture(scope="session")
def pattern_proxy(proxy_factory: Any, pg_server: TestServer, sd_config_dir: Path) -> Any:
    return _proxy(proxy_factory, pg_server, sd_config_dir, "pattern.toml", PATTERN_CONFIG)
