"""softguard on managed PostgreSQL (issue 12 item 1, decision 0025): the role a managed
service gives its customers (NOSUPERUSER CREATEROLE CREATEDB, owner of the database and of
the application's tables, password authentication) installs softguard and runs the demo
scenario through it: DROP TABLE, DELETE, TRUNCATE, DROP COLUMN, undo of each, purge.

Two shapes of provider, emulated on the local server:
- "no event triggers" (Azure-like): the install goes without them and says so; what
  depended on them is refused (DROP, DROP COLUMN, DO blocks), never silently passed;
- "event triggers through the provider" (RDS/Supabase-like): a superuser-made helper
  (provider_helper.sql, like supautils) creates softguard's event triggers for the owner,
  and everything works as with a superuser's install.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from support.ledger_versions import install_ledger_at
from support.pg import TestServer
from support.proxy import ProxyFactory, Target, via_direct
from typer.testing import CliRunner, Result

from softguard.cli.main import app
from softguard.ledger import ledger_version
from softguard.ledger.migrate import current_version

ROLE = "sg_managed"  # pg_hba: scram-sha-256 (tests/support/pg.py)
PASSWORD = "managed-pw"
HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parents[1] / "softguard" / "demo" / "rental.sql"
HELPER = "sg_provider.create_event_trigger"

pytestmark = pytest.mark.skipif(via_direct(), reason="the scenario runs through softguard")

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


@dataclass
class Managed:
    """One database owned by the managed-like role, with the ledger installed by it."""

    server: TestServer
    db: str
    init_output: str
    proxy: Target

    @property
    def dsn(self) -> str:
        """The owner's direct DSN (what ops, undo, purge and grant use)."""
        return self.server.dsn(self.db, ROLE, PASSWORD)

    def client(self) -> psycopg.Connection[tuple[object, ...]]:
        """A client connection through softguard, as the owner, with its password."""
        return psycopg.connect(self.proxy.dsn(self.db, ROLE, PASSWORD), autocommit=True)

    def run(self, stmt: str) -> tuple[str | None, list[str]]:
        """(SQLSTATE or None, softguard notices) of one statement through softguard."""
        notices: list[str] = []
        with self.client() as c:
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            try:
                c.execute(stmt)
            except psycopg.Error as exc:
                return exc.sqlstate, notices
        return None, [n for n in notices if n.startswith("softguard: ")]

    def op(self, stmt: str) -> int:
        """Run a protected statement through softguard; the operation it recorded."""
        error, notices = self.run(stmt)
        assert error is None, (stmt, error)
        assert len(notices) == 1, (stmt, notices)
        return int(notices[0].split(" as operation ")[1].split()[0])

    def one(self, query: str) -> object:
        with psycopg.connect(self.dsn) as c:
            row = c.execute(query).fetchone()
        assert row is not None
        return row[0]

    def undo(self, op: int) -> None:
        r = cli("undo", str(op), "--yes", "--dsn", self.dsn)
        assert r.exit_code == 0, r.output

    def states(self) -> dict[int, str]:
        with psycopg.connect(self.dsn) as c:
            return {
                int(i): str(s)
                for i, s in c.execute("SELECT id, state FROM softguard.operations").fetchall()
            }


@pytest.fixture(scope="module")
def managed_role(pg_server: TestServer) -> str:
    with psycopg.connect(pg_server.superuser_dsn(), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone() is None:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        c.execute(
            sql.SQL("ALTER ROLE {} NOSUPERUSER CREATEROLE CREATEDB LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)
            )
        )
    return ROLE


@pytest.fixture(scope="module")
def managed_proxy(pg_server: TestServer, proxy_factory: ProxyFactory, managed_role: str) -> Target:
    # softguard's own connections authenticate as the owner with the secret it holds
    upstream = f"postgresql://{ROLE}:{PASSWORD}@{pg_server.host}:{pg_server.port}"
    return proxy_factory(upstream=upstream)


def _database(server: TestServer, helper: bool) -> str:
    db = "sg_t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.superuser_dsn(), autocommit=True) as c:
        c.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(ROLE))
        )
    if helper:  # the provider's part, done by its superuser
        with psycopg.connect(server.superuser_dsn(db), autocommit=True) as c:
            c.execute((HERE / "provider_helper.sql").read_text())
            c.execute(
                sql.SQL("GRANT USAGE ON SCHEMA sg_provider TO {}").format(sql.Identifier(ROLE))
            )
            c.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {}(text, text) TO {}").format(
                    sql.SQL(HELPER), sql.Identifier(ROLE)
                )
            )
    subprocess.run(
        [
            str(server.bin("psql")),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(FIXTURE),
            "-d",
            server.dsn(db, ROLE, PASSWORD),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return db


def _managed(server: TestServer, proxy: Target, helper: bool) -> Iterator[Managed]:
    db = _database(server, helper)
    try:
        args = ["init", "--dsn", server.dsn(db, ROLE, PASSWORD)]
        if helper:
            args += ["--event-trigger-helper", HELPER]
        r = cli(*args)
        assert r.exit_code == 0, r.output
        yield Managed(server, db, r.output, proxy)
    finally:
        server.drop_database(db)


@pytest.fixture(scope="module")
def without_event_triggers(pg_server: TestServer, managed_proxy: Target) -> Iterator[Managed]:
    yield from _managed(pg_server, managed_proxy, helper=False)


@pytest.fixture(scope="module")
def with_helper(pg_server: TestServer, managed_proxy: Target) -> Iterator[Managed]:
    yield from _managed(pg_server, managed_proxy, helper=True)


def test_the_role_is_managed_like(pg_server: TestServer, without_event_triggers: Managed) -> None:
    m = without_event_triggers
    assert m.one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    assert (
        m.one("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        == ROLE
    )
    assert (
        m.one("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'reservations'::regclass")
        == ROLE
    )
    if pg_server.auth_roles:  # our hba: the password is checked
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(pg_server.dsn(m.db, ROLE, "wrong")).close()


def test_init_says_what_is_not_protected(without_event_triggers: Managed) -> None:
    out = without_event_triggers.init_output
    assert "applied softguard--" in out
    assert "NOT protected  DROP TABLE" in out
    assert "NOT protected  tables created later" in out
    assert "NOT protected  backstop for DROP inside DO blocks" in out
    assert "protected      DELETE, TRUNCATE, UPDATE on existing tables" in out
    assert without_event_triggers.one("SELECT event_triggers FROM softguard.settings") is False
    assert (
        without_event_triggers.one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'softguard%'"
        )
        == 0
    )


def test_delete_truncate_undo_purge_without_event_triggers(
    without_event_triggers: Managed,
) -> None:
    m = without_event_triggers
    before = m.one("SELECT count(*) FROM reservations")
    refunds = m.one("SELECT count(*) FROM billing.refunds")
    delete = m.op("DELETE FROM reservations WHERE id % 3 = 0")
    truncate = m.op("TRUNCATE billing.refunds")
    assert m.one("SELECT count(*) FROM billing.refunds") == 0
    # undo without session_replication_role: the tables' user triggers are disabled instead
    m.undo(truncate)
    m.undo(delete)
    assert m.one("SELECT count(*) FROM reservations") == before
    assert m.one("SELECT count(*) FROM billing.refunds") == refunds
    assert (
        m.one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'reservations'::regclass"
            " AND NOT tgisinternal AND tgenabled = 'D'"
        )
        == 0
    )
    again = m.op("DELETE FROM events WHERE id < 50")
    r = cli("purge", "--older-than", "0s", "--yes", "--dsn", m.dsn)
    assert r.exit_code == 0, r.output
    assert m.states()[again] == "purged"
    assert "softguard serve" not in r.output  # no hint to run something else


def test_what_needs_event_triggers_is_refused(without_event_triggers: Managed) -> None:
    m = without_event_triggers
    for stmt in ("DROP TABLE events", "ALTER TABLE customers DROP COLUMN email"):
        error, _ = m.run(stmt)
        assert error == "55000", stmt
    assert m.one("SELECT to_regclass('events') IS NOT NULL") is True
    # a DO block could DROP with nothing to catch it: refused for a protected session
    error, _ = m.run("DO $$BEGIN DROP TABLE events; END$$")
    assert error == "55000"
    assert m.one("SELECT to_regclass('events') IS NOT NULL") is True
    # softguard's serve said so at its first check of the database
    assert "NOT protected: DROP TABLE" in m.proxy.tail(400)


def test_tables_created_later_get_capture_triggers(without_event_triggers: Managed) -> None:
    m = without_event_triggers
    error, _ = m.run("CREATE TABLE made_later (id int PRIMARY KEY, v text)")
    assert error is None
    error, _ = m.run("INSERT INTO made_later SELECT g, 'x' || g FROM generate_series(1, 5) g")
    assert error is None
    op = m.op("DELETE FROM made_later WHERE id > 2")
    m.undo(op)
    assert m.one("SELECT count(*) FROM made_later") == 5


def test_the_demo_scenario_with_the_providers_event_triggers(with_helper: Managed) -> None:
    m = with_helper
    # everything but replica mode (undo disables the tables' user triggers instead)
    assert "NOT protected  DROP" not in m.init_output
    assert m.one("SELECT event_triggers FROM softguard.settings") is True
    events = m.one("SELECT count(*) FROM events")
    reservations = m.one("SELECT count(*) FROM reservations")
    emails = m.one("SELECT count(email) FROM customers")
    refunds = m.one("SELECT count(*) FROM billing.refunds")
    ops = [
        m.op("DROP TABLE events"),
        m.op("DELETE FROM reservations WHERE id % 2 = 0"),
        m.op("TRUNCATE billing.refunds"),
        m.op("ALTER TABLE customers DROP COLUMN email"),
    ]
    assert m.one("SELECT to_regclass('events')") is None
    for op in reversed(ops):
        m.undo(op)
    assert m.one("SELECT count(*) FROM events") == events
    assert m.one("SELECT count(*) FROM reservations") == reservations
    assert m.one("SELECT count(email) FROM customers") == emails
    assert m.one("SELECT count(*) FROM billing.refunds") == refunds
    gone = m.op("DROP TABLE events")
    r = cli("purge", "--older-than", "0s", "--yes", "--dsn", m.dsn)
    assert r.exit_code == 0, r.output
    assert m.states()[gone] == "purged"
    # a DO block is caught by the database's backstop, as with a superuser's install
    assert m.run("CREATE TABLE dropped_in_do (id int)") == (None, [])
    error, notices = m.run("DO $$BEGIN DROP TABLE dropped_in_do; END$$")
    assert error is not None or len(notices) == 1, (error, notices)
    if error is None:  # kept: it comes back
        m.undo(int(notices[0].split(" as operation ")[1].split()[0]))
    assert m.one("SELECT to_regclass('dropped_in_do') IS NOT NULL") is True


def test_the_owner_grants_an_operator_undo(with_helper: Managed) -> None:
    m = with_helper
    operator = "sg_op_" + uuid.uuid4().hex[:8]
    with psycopg.connect(m.dsn, autocommit=True) as c:  # CREATEROLE: the owner makes it
        c.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(operator), sql.Literal("op-pw")
            )
        )
    try:
        r = cli("grant", operator, "--ops", "--undo", "--purge", "--dsn", m.dsn)
        assert r.exit_code == 0, r.output
        op = m.op("DELETE FROM reservations WHERE id < 10")
        mine = m.server.dsn(m.db, operator, "op-pw")
        r = cli("undo", str(op), "--yes", "--dsn", mine)
        assert r.exit_code == 0, r.output
        assert m.states()[op] == "undone"
    finally:
        with psycopg.connect(m.server.superuser_dsn(m.db), autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(operator)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(operator)))


# The first ledger version a managed owner could install (decision 0025).
FIRST_MANAGED_VERSION = 6

# Hand everything in softguard's schemas to the owner role, as if it had installed them:
# what an owner's install owns (schemas, tables, sequences, views, functions, types), and
# its membership in softguard_keeper. The event triggers stay the superuser's, as the
# provider's helper made them.
_TO_OWNER = """
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT evtname FROM pg_event_trigger WHERE evtname ~ '^softguard_' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', o.evtname);
    END LOOP;
    FOR o IN SELECT n.nspname FROM pg_namespace n WHERE n.nspname ~ '^softguard' LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', o.nspname, {role});
    END LOOP;
    FOR o IN SELECT c.oid::regclass AS r, c.relkind FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname ~ '^softguard' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
                       CASE o.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                      WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                       o.r, {role});
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS f, p.prokind FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname ~ '^softguard'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.f,
                       {role});
    END LOOP;
    FOR o IN SELECT t.oid::regtype AS t FROM pg_type t
               JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname ~ '^softguard' AND t.typtype IN ('c', 'd', 'e', 'r')
                AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c
                                         WHERE c.oid = t.typrelid) = 'c')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', o.t, {role});
    END LOOP;
    FOR o IN SELECT evtname FROM pg_event_trigger WHERE evtname ~ '^softguard_' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', o.evtname);
    END LOOP;
    -- what a non-superuser's install does to give kept objects to softguard_keeper
    EXECUTE format('GRANT softguard_keeper TO %I', {role});
END $$
"""


def test_an_install_the_providers_helper_made_upgrades(
    pg_server: TestServer, managed_proxy: Target
) -> None:
    """An install whose event triggers the provider's helper made (so they belong to the
    helper's owner, not to the owner role) upgrades to the current version with `softguard
    init --event-trigger-helper`, and protects as a fresh one does: the upgrade scripts
    switch off only the event triggers the installer may alter, and create the new ones
    through the helper."""
    db = _database(pg_server, helper=True)
    try:
        with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
            install_ledger_at(c, FIRST_MANAGED_VERSION)
            assert ledger_version(c) == FIRST_MANAGED_VERSION
            c.execute(sql.SQL(_TO_OWNER).format(role=sql.Literal(ROLE)))
            helper_made = c.execute(
                "SELECT count(*) FROM pg_event_trigger WHERE evtname ~ '^softguard_'"
                " AND NOT pg_has_role(%s, evtowner, 'USAGE')",
                [ROLE],
            ).fetchone()
            assert helper_made is not None and helper_made[0] > 0
        r = cli(
            "init", "--dsn", pg_server.dsn(db, ROLE, PASSWORD), "--event-trigger-helper", HELPER
        )
        assert r.exit_code == 0, r.output
        m = Managed(pg_server, db, r.output, managed_proxy)
        assert m.one("SELECT max(version) FROM softguard.migrations") == current_version()
        with psycopg.connect(pg_server.superuser_dsn(db)) as c:
            missing = c.execute(
                "SELECT array_agg(n) FROM unnest(softguard._event_trigger_names()) n"
                " WHERE NOT EXISTS (SELECT FROM pg_event_trigger e"
                "                    WHERE e.evtname = n AND e.evtenabled = 'A')"
            ).fetchone()
        assert missing == (None,), missing
        rows = m.one("SELECT count(*) FROM reservations")
        op = m.op("DROP TABLE reservations CASCADE")
        m.undo(op)
        assert m.one("SELECT count(*) FROM reservations") == rows
        assert m.run("CREATE TABLE dropped_in_do (id int)") == (None, [])
        error, notices = m.run("DO $$BEGIN DROP TABLE dropped_in_do; END$$")
        assert error is not None or len(notices) == 1, (error, notices)
    finally:
        pg_server.drop_database(db)


# A table of the application's role whose row-level security policy calls the role's own
# function, which records who runs it (decision 0006 "Since then", _foreign_code).
_RLS_PLANT = """
CREATE TABLE guarded (id int PRIMARY KEY, v text);
INSERT INTO guarded SELECT g, 'row ' || g FROM generate_series(1, 5) g;
CREATE TABLE spy_log (who name, su boolean);
GRANT INSERT ON spy_log TO PUBLIC;
CREATE FUNCTION spy(i int) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN
    INSERT INTO public.spy_log SELECT current_user, rolsuper FROM pg_roles
     WHERE rolname = current_user;
    RETURN true;
END $f$;
ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
-- forced: the policy applies to the owner and its members too (the ledger's owner is one)
ALTER TABLE guarded FORCE ROW LEVEL SECURITY;
CREATE POLICY see_all ON guarded USING (public.spy(id));
"""


def test_undo_by_a_non_superuser_owner_refuses_an_rls_policy_of_the_app_role(
    with_helper: Managed,
) -> None:
    """The ledger's owner here is neither superuser nor BYPASSRLS, so row-level security
    applies to undo's writes (undo runs as that owner, SECURITY DEFINER, whoever the
    operator is): a policy calling a function of the application's role would run it with
    the owner's rights. Undo refuses (42501) naming the function and changes nothing; once
    the policy is gone it puts the rows back."""
    m = with_helper
    suffix = uuid.uuid4().hex[:8]
    app_role, operator = f"sg_app_{suffix}", f"sg_op_{suffix}"
    with psycopg.connect(m.dsn, autocommit=True) as c:  # CREATEROLE: the owner makes both
        for role, pw in ((app_role, "app-pw"), (operator, "op-pw")):
            c.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(pw)
                )
            )
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app_role)))
        # as a managed install needs, to act on the role's tables (decision 0025)
        c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(app_role), sql.Identifier(ROLE)))
    app_dsn = m.server.dsn(m.db, app_role, "app-pw")
    try:
        with psycopg.connect(app_dsn, autocommit=True) as c:
            c.execute(_RLS_PLANT)
        owner_bypasses = "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = user"
        assert m.one(owner_bypasses) is False
        r = cli("grant", operator, "--ops", "--undo", "--dsn", m.dsn)
        assert r.exit_code == 0, r.output
        # the application's own DELETE through softguard (the owner bypasses its policy)
        with psycopg.connect(m.proxy.dsn(m.db, app_role, "app-pw"), autocommit=True) as c:
            notices: list[str] = []
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            c.execute("DELETE FROM guarded WHERE id <= 3")
        op = int(notices[-1].split(" as operation ")[1].split()[0])
        with psycopg.connect(app_dsn, autocommit=True) as c:
            c.execute("DELETE FROM spy_log")
        # What undo's writes would do without the check: the policy runs the application's
        # function as the ledger's owner (the row is the test's own, removed after).
        with psycopg.connect(m.dsn, autocommit=True) as c:
            c.execute("INSERT INTO guarded VALUES (100, 'probe')")
            seen = c.execute("SELECT who, su FROM spy_log").fetchall()
            assert seen and set(seen) == {(ROLE, False)}, seen
        # read and cleaned as the superuser, whom no policy applies to
        superuser = m.server.superuser_dsn(m.db)
        with psycopg.connect(superuser, autocommit=True) as c:
            c.execute("DELETE FROM guarded WHERE id = 100")
            c.execute("DELETE FROM spy_log")
            before = c.execute("SELECT id, v FROM guarded ORDER BY id").fetchall()
        assert [i for i, _ in before] == [4, 5]
        r = cli("undo", str(op), "--yes", "--dsn", m.server.dsn(m.db, operator, "op-pw"))
        assert r.exit_code != 0, r.output
        assert "would run public.spy(integer)" in r.output, r.output
        with psycopg.connect(superuser, autocommit=True) as c:
            assert c.execute("SELECT id, v FROM guarded ORDER BY id").fetchall() == before
            assert c.execute("SELECT count(*) FROM spy_log").fetchone() == (0,)
        assert m.states()[op] == "active"
        # The application's role cannot make it pass: its policy applies to every role, and
        # narrowing it to itself changes nothing for the check (it lists every policy).
        with psycopg.connect(app_dsn, autocommit=True) as c:
            c.execute(sql.SQL("ALTER POLICY see_all ON guarded TO {}").format(
                sql.Identifier(app_role)))  # fmt: skip
        r = cli("undo", str(op), "--yes", "--dsn", m.server.dsn(m.db, operator, "op-pw"))
        assert r.exit_code != 0 and "would run public.spy(integer)" in r.output, r.output
        # reviewed and replaced by a policy that calls no one's function: undo puts the
        # rows back (RLS stays forced: without any policy it would refuse every row)
        with psycopg.connect(app_dsn, autocommit=True) as c:
            c.execute("DROP POLICY see_all ON guarded")
            c.execute("CREATE POLICY plain ON guarded USING (true)")
        r = cli("undo", str(op), "--yes", "--dsn", m.server.dsn(m.db, operator, "op-pw"))
        assert r.exit_code == 0, r.output
        with psycopg.connect(superuser, autocommit=True) as c:
            back = c.execute("SELECT id FROM guarded ORDER BY id").fetchall()
            assert [i for (i,) in back] == [1, 2, 3, 4, 5]
            assert c.execute("SELECT count(*) FROM spy_log").fetchone() == (0,)
    finally:
        with psycopg.connect(m.server.superuser_dsn(m.db), autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS guarded, spy_log")
            c.execute("DROP FUNCTION IF EXISTS spy(int)")
            for role in (app_role, operator):
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_kept_servers_mappings_with_a_non_superuser_ledger_owner(with_helper: Managed) -> None:
    """The ledger's owner here is no superuser: pg_user_mappings shows it the options of
    its own mapping and PUBLIC's (it owns the server), not another role's (decision
    0043). DROP SERVER ... CASCADE through softguard drops and records the two it can
    make again; the other role's stays on the kept server, options intact, its role tied
    to it until undo or purge (README limit). Undo gives back all three as they were."""
    m = with_helper
    suffix = uuid.uuid4().hex[:8]
    srv, other = f"msrv_{suffix}", f"sg_mother_{suffix}"
    shape = (
        "SELECT s.srvname::text, s.srvowner::regrole::text, coalesce(u.umuser::regrole::text,"
        " 'public'), u.umoptions::text FROM pg_foreign_server s JOIN pg_user_mapping u"
        " ON u.umserver = s.oid WHERE s.oid = %s ORDER BY 3"
    )
    superuser = m.server.superuser_dsn(m.db)
    with psycopg.connect(superuser, autocommit=True) as c:
        c.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE"
            " fdwname = 'sg_w') THEN CREATE FOREIGN DATA WRAPPER sg_w; END IF; END $$"
        )
        # a non-superuser gives a server only to a role that may use its wrapper
        # (_disown gives the kept server to softguard_keeper)
        c.execute("GRANT USAGE ON FOREIGN DATA WRAPPER sg_w TO softguard_keeper")
        c.execute(f"CREATE ROLE {other}")
        c.execute(f"CREATE SERVER {srv} FOREIGN DATA WRAPPER sg_w")
        c.execute(f"ALTER SERVER {srv} OWNER TO {ROLE}")
        c.execute(f"GRANT USAGE ON FOREIGN SERVER {srv} TO {other}")
        for who, opts in (
            (ROLE, "user 'me', password 'mine'"),
            ("PUBLIC", "user 'anyone'"),
            (other, "user 'them', password 'theirs'"),
        ):
            c.execute(f"CREATE USER MAPPING FOR {who} SERVER {srv} OPTIONS ({opts})")
        oid = c.execute("SELECT oid FROM pg_foreign_server WHERE srvname = %s", [srv]).fetchone()
        assert oid is not None
        before = c.execute(shape, oid).fetchall()
    try:
        op = m.op(f"DROP SERVER {srv} CASCADE")
        with psycopg.connect(superuser, autocommit=True) as c:
            kept = c.execute(shape, oid).fetchall()
            assert kept == [(f"softguard_q{op}_{srv}", "softguard_keeper", other,
                             "{user=them,password=theirs}")]  # fmt: skip
            assert c.execute("SELECT count(*) FROM softguard.kept_mappings").fetchone() == (2,)
        m.undo(op)
        with psycopg.connect(superuser, autocommit=True) as c:
            assert c.execute(shape, oid).fetchall() == before
            assert c.execute("SELECT count(*) FROM softguard.kept_mappings").fetchone() == (0,)
    finally:
        with psycopg.connect(superuser, autocommit=True) as c:
            c.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
            c.execute(f"DROP ROLE IF EXISTS {other}")


def test_a_kept_server_whose_wrapper_the_keeper_may_not_use(with_helper: Managed) -> None:
    """A non-superuser ledger owner may give a foreign server only to a role that may use
    its wrapper. Where softguard_keeper may not (nobody granted it), DROP SERVER ...
    CASCADE through softguard succeeds as directly (it failed with 42501: permission denied
    for foreign-data wrapper): the server is kept under its quarantine name with its owner,
    and undo gives it back as it was."""
    m = with_helper
    suffix = uuid.uuid4().hex[:8]
    fdw, srv = f"sg_w_{suffix}", f"msrv_{suffix}"
    shape = (
        "SELECT s.srvname::text, s.srvowner::regrole::text, s.srvacl::text"
        " FROM pg_foreign_server s WHERE s.oid = %s"
    )
    superuser = m.server.superuser_dsn(m.db)
    with psycopg.connect(superuser, autocommit=True) as c:
        c.execute(f"CREATE FOREIGN DATA WRAPPER {fdw}")
        c.execute(f"GRANT USAGE ON FOREIGN DATA WRAPPER {fdw} TO {ROLE}")
        c.execute(f"CREATE SERVER {srv} FOREIGN DATA WRAPPER {fdw}")
        c.execute(f"ALTER SERVER {srv} OWNER TO {ROLE}")
        row = c.execute("SELECT oid FROM pg_foreign_server WHERE srvname = %s", [srv]).fetchone()
        assert row is not None
        before = c.execute(shape, row).fetchall()
        assert not c.execute(
            "SELECT has_foreign_data_wrapper_privilege('softguard_keeper', %s, 'USAGE')", [fdw]
        ).fetchone()[0]  # type: ignore[index]
    try:
        op = m.op(f"DROP SERVER {srv} CASCADE")
        with psycopg.connect(superuser, autocommit=True) as c:
            assert c.execute(shape, row).fetchall() == [(f"softguard_q{op}_{srv}", ROLE, None)]
        m.undo(op)
        with psycopg.connect(superuser, autocommit=True) as c:
            assert c.execute(shape, row).fetchall() == before
    finally:
        with psycopg.connect(superuser, autocommit=True) as c:
            c.execute(f"DROP FOREIGN DATA WRAPPER IF EXISTS {fdw} CASCADE")  # and its server
