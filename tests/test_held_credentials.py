"""Credentials softguard holds (decision 0018): an agent logs in to softguard with its own
password, from softguard's users file; softguard logs in to the server with a password the
agent never sees. Real server (pg_hba demands SCRAM for the mapped role), real proxy."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from support.cli import run_cli
from support.compare import run_async
from support.faults import environment
from support.pg import ROLE_PASSWORDS, TestServer
from support.pgbouncer import PgBouncer, logs_on_failure

from softguard.auth.scram import Verifier
from softguard.auth.users import User, UsersFile

ROLE = "sg_scram"  # pg_hba: scram-sha-256 from 127.0.0.1
AGENT, AGENT_PW = "agent-7", "agent-only-secret"


@pytest.fixture(scope="module")
def held_db(pg_server: TestServer) -> Iterator[str]:
    if not pg_server.auth_roles:
        pytest.skip("needs the embedded test server (our pg_hba.conf)")
    db = pg_server.create_database()
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        c.execute(f"ALTER SCHEMA public OWNER TO {ROLE}")
        c.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
        c.execute(f"ALTER TABLE public.items OWNER TO {ROLE}")
        c.execute("INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 10) g")
    pg_server.install_ledger(db)
    try:
        yield db
    finally:
        pg_server.drop_database(db)


def _secrets(tmp: Path, *, databases: tuple[str, ...] = (), held: bool = True) -> dict[str, str]:
    users = UsersFile(tmp / "users.toml", {})
    users.put(User(AGENT, Verifier.from_password(AGENT_PW), ROLE, databases))
    users.put(User("ghost-role", Verifier.from_password("pw"), "sg_md5"))
    users.save()
    passfile = tmp / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{ROLE}:{ROLE_PASSWORDS[ROLE]}\n" if held else "")
    passfile.chmod(0o600)
    return {"SOFTGUARD_USERS_FILE": str(users.path), "SOFTGUARD_UPSTREAM_PASSFILE": str(passfile)}


@pytest.fixture(scope="module")
def held_proxy(
    held_db: str, proxy_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    with environment(**_secrets(tmp_path_factory.mktemp("held"))):
        proxy = proxy_factory(fresh=True)
    if proxy.is_direct:
        pytest.skip("about the proxy itself (SOFTGUARD_TEST_VIA=direct)")
    return proxy


def _undo(pg_server: TestServer, db: str, op: int) -> None:
    """`softguard undo` of one operation, as an operator runs it (the command in this
    process, support.cli: what it does is under test here, not its start)."""
    r = run_cli("undo", str(op), "--yes", "--dsn", pg_server.superuser_dsn(db))
    assert r.returncode == 0, r.stdout + r.stderr


def _login_error(dsn: str) -> tuple[str, str]:
    """(SQLSTATE, message) of a refused login: asyncpg reports the SQLSTATE (libpq does
    not), psycopg the text a libpq client shows."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=15).close()

    async def sqlstate() -> str:
        try:
            conn = await asyncpg.connect(dsn, timeout=15, ssl=False)
        except asyncpg.PostgresError as exc:
            return str(exc.sqlstate)
        await conn.close(timeout=10)
        return "no error"

    return run_async(sqlstate()), str(info.value)


def test_agent_logs_in_with_its_own_password_and_its_delete_is_undone(
    held_proxy: Any, held_db: str, pg_server: TestServer
) -> None:
    dsn = held_proxy.dsn(held_db, AGENT, AGENT_PW)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=15) as c:
        assert c.execute("SELECT current_user").fetchone() == (ROLE,)
        c.execute("DELETE FROM items WHERE id <= 3")
    with psycopg.connect(pg_server.superuser_dsn(held_db), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (7,)
        row = c.execute("SELECT max(id) FROM softguard.operations").fetchone()
    assert row is not None and row[0] is not None
    _undo(pg_server, held_db, int(row[0]))
    with psycopg.connect(pg_server.superuser_dsn(held_db)) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (10,)


def test_the_agents_password_does_not_open_the_server(
    held_db: str, pg_server: TestServer, held_proxy: Any
) -> None:
    # Neither as the role nor under the agent's name: the server never heard of it.
    assert _login_error(pg_server.dsn(held_db, ROLE, AGENT_PW))[0] == "28P01"
    assert _login_error(pg_server.dsn(held_db, AGENT, AGENT_PW))[0] in ("28P01", "28000")


@pytest.mark.parametrize(
    ("user", "password"),
    [(AGENT, "wrong"), ("nobody", AGENT_PW), (ROLE, ROLE_PASSWORDS[ROLE])],
    ids=["wrong-password", "unknown-user", "database-role-and-its-password"],
)
def test_failed_logins_look_alike(
    held_proxy: Any, held_db: str, user: str, password: str
) -> None:
    sqlstate, text = _login_error(held_proxy.dsn(held_db, user, password))
    assert sqlstate == "28P01"
    assert f'password authentication failed for user "{user}"' in text
    assert held_proxy.alive


def test_asyncpg_logs_in(held_proxy: Any, held_db: str) -> None:
    async def who() -> Any:
        conn = await asyncpg.connect(held_proxy.dsn(held_db, AGENT, AGENT_PW), timeout=15)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close(timeout=10)

    assert run_async(who()) == ROLE


def test_database_outside_the_users_list_is_refused(
    held_db: str, proxy_factory: Any, tmp_path: Path
) -> None:
    with environment(**_secrets(tmp_path, databases=("postgres",))):
        proxy = proxy_factory(fresh=True)
    try:
        assert _login_error(proxy.dsn(held_db, AGENT, AGENT_PW))[0] == "28P01"
        with psycopg.connect(proxy.dsn("postgres", AGENT, AGENT_PW), connect_timeout=15) as c:
            assert c.execute("SELECT current_database()").fetchone() == ("postgres",)
        assert "not in the user's databases" in proxy.tail(200)
    finally:
        proxy.stop()


def test_no_held_password_is_a_clear_refusal(
    held_db: str, proxy_factory: Any, tmp_path: Path
) -> None:
    with environment(**_secrets(tmp_path, held=False)):
        proxy = proxy_factory(fresh=True)
    try:
        sqlstate, text = _login_error(proxy.dsn(held_db, AGENT, AGENT_PW))
        assert sqlstate == "28000"
        assert f'softguard holds no password for role "{ROLE}"' in text
        # The mapped role has no held password either (sg_md5 is not in the passfile).
        assert _login_error(proxy.dsn(held_db, "ghost-role", "pw"))[0] == "28000"
    finally:
        proxy.stop()


def test_channel_bound_login_over_tls_to_softguard(
    held_db: str, pg_server: TestServer, proxy_factory: Any, tmp_path: Path
) -> None:
    """softguard ends the SCRAM exchange, so it can bind it to its own certificate:
    channel_binding=require works, which it cannot when authentication is relayed."""
    tls = pg_server.tls
    if tls is None:
        pytest.skip("PostgreSQL binaries built without OpenSSL")
    with environment(**_secrets(tmp_path)):
        proxy = proxy_factory(
            "--tls-cert", str(tls.proxy_cert), "--tls-key", str(tls.proxy_key), fresh=True
        )
    try:
        dsn = proxy.dsn(
            held_db,
            AGENT,
            AGENT_PW,
            sslmode="verify-full",
            sslrootcert=str(tls.ca_file),
            channel_binding="require",
        )
        with psycopg.connect(dsn, connect_timeout=15) as c:
            assert c.pgconn.ssl_in_use
            assert c.execute("SELECT current_user").fetchone() == (ROLE,)
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))

        async def who() -> Any:
            conn = await asyncpg.connect(
                proxy.dsn(held_db, AGENT, AGENT_PW), ssl=ctx, timeout=15
            )
            try:
                return await conn.fetchval("SELECT current_user")
            finally:
                await conn.close(timeout=10)

        assert run_async(who()) == ROLE
    finally:
        proxy.stop()


def test_agent_over_tls_through_pgbouncer_in_transaction_mode(
    held_db: str, pg_server: TestServer, proxy_factory: Any, tmp_path: Path,
    pytestconfig: pytest.Config,
) -> None:  # fmt: skip
    """Issue 12's deployment end to end: an agent known only to softguard's users file
    logs in over TLS with channel-bound SCRAM; softguard logs in with its held password to
    a PgBouncer in transaction mode (SCRAM too), which logs in to the server; the agent's
    DELETE is captured whatever backend its transaction gets, and undone."""
    tls = pg_server.tls
    if tls is None:
        pytest.skip("PostgreSQL binaries built without OpenSSL")
    bouncer = PgBouncer(
        pg_server,
        [ROLE],
        pool_mode="transaction",
        auth_type="scram-sha-256",
        passwords={ROLE: ROLE_PASSWORDS[ROLE]},
    )
    try:
        bouncer.start()
        with logs_on_failure(pytestconfig, bouncer), environment(**_secrets(tmp_path)):
            proxy = proxy_factory(
                "--tls-cert", str(tls.proxy_cert), "--tls-key", str(tls.proxy_key),
                "--require-tls", "--upstream-pooler", "transaction",
                upstream=bouncer.upstream, fresh=True,
            )  # fmt: skip
            try:
                tls_params = {"sslmode": "verify-full", "sslrootcert": str(tls.ca_file)}
                dsn = proxy.dsn(held_db, AGENT, AGENT_PW, channel_binding="require", **tls_params)
                # a second agent session in a transaction holds a backend, so the first one's
                # transactions do not all run on the backend that registered it
                with (
                    psycopg.connect(dsn, connect_timeout=15) as holder,
                    psycopg.connect(dsn, autocommit=True, connect_timeout=15) as c,
                ):
                    assert c.pgconn.ssl_in_use
                    holder.execute("SELECT 1")
                    c.execute("DELETE FROM items WHERE id IN (4, 5)")
                    holder.rollback()
                plain = proxy.dsn(held_db, AGENT, AGENT_PW, sslmode="disable")
                assert "TLS" in _login_error(plain)[1]
            finally:
                proxy.stop()
    finally:
        bouncer.cleanup()
    with psycopg.connect(pg_server.superuser_dsn(held_db), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id IN (4, 5)").fetchone() == (0,)
        row = c.execute(
            "SELECT max(id) FROM softguard.operations WHERE kind = 'DELETE'"
            " AND statement LIKE '%%id IN (4, 5)%%'"
        ).fetchone()
        roles = c.execute("SELECT role FROM softguard.pooled_roles").fetchall()
    assert row is not None and row[0] is not None, "the DELETE was not captured"
    assert roles == [(ROLE,)], roles
    _undo(pg_server, held_db, int(row[0]))
    with psycopg.connect(pg_server.superuser_dsn(held_db)) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id IN (4, 5)").fetchone() == (2,)
