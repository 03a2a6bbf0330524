"""Shared fixtures: a real PostgreSQL, the softguard proxy as a subprocess, connections.

Environment:
- SOFTGUARD_TEST_DSN: use this server (superuser DSN) instead of an embedded one.
- SOFTGUARD_TEST_VIA=direct: `proxy` fixtures point straight at PostgreSQL (to check the
  tests themselves while the proxy is not ready).

Fixtures:
- pg_server (session): support.pg.TestServer
- proxy_factory (session): factory(*extra_args, upstream=None, fresh=False) -> Proxy
- proxy (session): the default proxy (`--upstream postgresql://127.0.0.1:PGPORT`)
- dbname (module): a fresh database `sg_t_<hex>`, dropped after the module
- dsns (function): (direct DSN, proxied DSN) for `dbname`
- conn / direct_conn (function): psycopg connections to `dbname`, through proxy / direct
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.pg import TestServer, short_tempdir, start_test_server
from support.proxy import ProxyFactory, Target


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    workdir = short_tempdir("sg-test-")
    server = start_test_server(workdir)
    try:
        yield server
    finally:
        if server.embedded is not None:
            server.embedded.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy_factory(pg_server: TestServer) -> Iterator[ProxyFactory]:
    log_dir = short_tempdir("sg-proxy-logs-")
    factory = ProxyFactory(pg_server, log_dir)
    try:
        yield factory
    finally:
        factory.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory) -> Target:
    return proxy_factory()


@pytest.fixture(scope="module")
def dbname(pg_server: TestServer) -> Iterator[str]:
    with pg_server.scratch_database() as name:
        yield name


@pytest.fixture
def dsns(pg_server: TestServer, proxy: Target, dbname: str) -> tuple[str, str]:
    """(direct DSN, proxied DSN) for the module's database, as the superuser."""
    return pg_server.dsn(dbname), proxy.dsn(dbname)


@pytest.fixture
def conn(proxy: Target, dbname: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(proxy.dsn(dbname)) as c:
        yield c


@pytest.fixture
def direct_conn(pg_server: TestServer, dbname: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_server.dsn(dbname)) as c:
        yield c


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        factory = funcargs.get("proxy_factory")
        proxies = list(factory.instances) if isinstance(factory, ProxyFactory) else []
        single = funcargs.get("proxy")
        if single is not None and single not in proxies:
            proxies.append(single)
        for p in proxies:
            if getattr(p, "proc", None) is not None:
                state = "running" if p.alive else f"exited {p.proc.returncode}"
                report.sections.append(
                    (f"softguard proxy {p.host}:{p.port} ({state}) log tail", p.tail())
                )
    return report
