"""Issue 10 item 8 (threat model G12): a real PgBouncer between softguard and PostgreSQL.

softguard -> PgBouncer -> PostgreSQL, PgBouncer started by `support.pgbouncer` with
`ignore_startup_parameters` naming softguard's settings: they never reach the server, so
protection rests on the session's registration alone (decision 0012).

Session mode (supported): DELETE, DROP, TRUNCATE and the capture-off attacks hold; a server
connection PgBouncer hands from one client to the next keeps every registration it got
(registrations only add), so a client whose policy allows DELETE, put on a connection a
protected client used, is captured too: over-protected, never under-protected.

Transaction mode, declared (`upstream_pooler = "transaction"`, decision 0026): the client's
next transaction may run on any backend, so softguard registers the login role, and every
session of it is protected on every backend: a DELETE on a backend that never saw a
registration is captured and undone, and the capture-off attacks hold. Declared "session"
for a transaction-mode pooler (an operator's wrong claim), the registration names one
backend and a DELETE on another is not captured: the test asserts that documented cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from attacker import Arena, Template, chr_built, template_fixture
from support.pg import build_dsn
from support.pgbouncer import IGNORED_STARTUP_PARAMETERS, PgBouncer, logs_on_failure
from support.proxy import ProxyFactory, Target, via_direct

arena_template = template_fixture()

CAPTURE_OFF = f"SELECT set_config({chr_built('softguard.capture')}, 'off', false)"
POOL_WAIT_STEPS = 200  # x 0.05 s: PgBouncer resets a released server connection quickly

# softguard refuses sessions through an undeclared pooler (it sees the server report
# another client port); these tests declare PgBouncer in session mode.
POOLER = ("--upstream-pooler", "session")
TX_POOLER = ("--upstream-pooler", "transaction")


def _bouncer(
    template: Template, pool_mode: str, config: pytest.Config, **kwargs: Any
) -> Iterator[PgBouncer]:
    if via_direct():
        pytest.skip("about softguard behind PgBouncer (SOFTGUARD_TEST_VIA=direct)")
    users = [template.owner, template.other]
    bouncer = PgBouncer(template.server, users, pool_mode=pool_mode, **kwargs)
    try:
        bouncer.start()
        with logs_on_failure(config, bouncer):
            yield bouncer
    finally:
        bouncer.cleanup()


@pytest.fixture(scope="module")
def bouncer(arena_template: Template, pytestconfig: pytest.Config) -> Iterator[PgBouncer]:
    yield from _bouncer(arena_template, "session", pytestconfig)


@pytest.fixture(scope="module")
def tx_bouncer(arena_template: Template, pytestconfig: pytest.Config) -> Iterator[PgBouncer]:
    yield from _bouncer(arena_template, "transaction", pytestconfig)


@pytest.fixture(scope="module")
def strict_bouncer(arena_template: Template, pytestconfig: pytest.Config) -> Iterator[PgBouncer]:
    """Session mode, but `options` not in ignore_startup_parameters."""
    ignored = [p for p in IGNORED_STARTUP_PARAMETERS if p != "options"]
    yield from _bouncer(arena_template, "session", pytestconfig, ignored=ignored)


@pytest.fixture
def arena(
    arena_template: Template, proxy_factory: ProxyFactory, bouncer: PgBouncer
) -> Iterator[Arena]:
    yield from arena_template.clone(proxy_factory(*POOLER, upstream=bouncer.upstream))


@pytest.fixture
def allow_proxy(proxy_factory: ProxyFactory, bouncer: PgBouncer, tmp_path: Path) -> Target:
    """A second softguard sharing the PgBouncer, whose policy lets DELETE through."""
    config = tmp_path / "allow.toml"
    config.write_text('[policy]\ndelete = "allow"\n')
    return proxy_factory("--config", str(config), *POOLER, upstream=bouncer.upstream, fresh=True)


@pytest.fixture
def tx_arena(
    arena_template: Template, proxy_factory: ProxyFactory, tx_bouncer: PgBouncer
) -> Iterator[Arena]:
    yield from arena_template.clone(proxy_factory(*TX_POOLER, upstream=tx_bouncer.upstream))


@pytest.fixture
def tx_misdeclared_arena(
    arena_template: Template, proxy_factory: ProxyFactory, tx_bouncer: PgBouncer
) -> Iterator[Arena]:
    # Declared "session" although it is not: what an operator's wrong claim costs.
    yield from arena_template.clone(proxy_factory(*POOLER, upstream=tx_bouncer.upstream))


def _pid(c: psycopg.Connection[Any]) -> int:
    row = c.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _registered(arena: Arena, pid: int) -> list[str]:
    rows = arena.direct("SELECT capture FROM softguard.sessions WHERE pid = %s", [pid])
    return list(rows[0][0]) if rows else []


def _wait_released(bouncer: PgBouncer, db: str) -> None:
    """Until PgBouncer has reset and parked every server connection of `db` (a client
    that just left may still hold one while DISCARD ALL runs)."""
    busy: list[dict[str, object]] = []
    for _ in range(POOL_WAIT_STEPS):
        busy = [s for s in bouncer.admin("SHOW SERVERS") if s["database"] == db]
        busy = [s for s in busy if s["state"] not in ("idle", "used")]  # parked
        if not busy:
            return
        time.sleep(0.05)
    raise AssertionError(f"PgBouncer still holds server connections of {db}: {busy}")


def _fresh_pool(bouncer: PgBouncer, db: str) -> None:
    """Close every server connection of `db`: the next client gets a new backend."""
    bouncer.admin(f"KILL {db}")
    bouncer.admin(f"RESUME {db}")


# -- the pooler really drops softguard's settings ------------------------------------------


def test_settings_do_not_reach_the_server(arena: Arena) -> None:
    """Precondition of every other test here: what protects is the registration alone."""
    with arena.connect() as c:
        setting = c.execute(
            f"SELECT current_setting({chr_built('softguard.capture')}, true)"
        ).fetchone()
        pid = _pid(c)
    assert setting in ((None,), ("",)), setting
    assert "delete" in _registered(arena, pid)


# -- session mode: what must hold ------------------------------------------------------------


@pytest.mark.parametrize("stmt", ["DELETE FROM parent WHERE id = 1", "DELETE FROM big"])
def test_delete_is_captured_and_undone_exactly(arena: Arena, stmt: str) -> None:
    out, ops = arena.attempt([stmt])
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops


@pytest.mark.parametrize("stmt", ["DROP TABLE big", "DROP TABLE parent CASCADE", "TRUNCATE big"])
def test_drop_and_truncate_are_reversible(arena: Arena, stmt: str) -> None:
    out, ops = arena.attempt([stmt])
    assert out.error is None, out.describe()
    assert ops, "nothing recorded"


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([CAPTURE_OFF, "DELETE FROM parent WHERE id = 2"], id="chr_built_name"),
        pytest.param(
            [
                lambda c: c.execute("SELECT set_config(%s, '', false)", ["softguard.capture"]),
                "DELETE FROM big WHERE id < 10",
            ],
            id="bound_parameter",
        ),
        pytest.param(
            ["DISCARD ALL", CAPTURE_OFF, "DELETE FROM child WHERE id = 3"], id="discard_all"
        ),
    ],
)
def test_capture_cannot_be_switched_off(arena: Arena, steps: list[Any]) -> None:
    out, ops = arena.attempt(steps)
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops


def test_ledger_check_passes_pgbouncer_without_ignoring_options(
    arena_template: Template, proxy_factory: ProxyFactory, strict_bouncer: PgBouncer
) -> None:
    """softguard's own ledger connection sets lock_timeout after connecting, not through
    the startup `options` PgBouncer refuses unless told to ignore it: behind a PgBouncer
    that does not ignore `options`, protected statements are still made reversible."""
    proxy = proxy_factory(*POOLER, upstream=strict_bouncer.upstream)
    for arena in arena_template.clone(proxy):
        for stmt in ("DELETE FROM parent WHERE id = 1", "DROP TABLE big"):
            out, ops = arena.attempt([stmt])
            assert out.error is None and len(ops) == 1, out.describe()


# -- session mode: one server connection, two clients, two policies -------------------------


def _handover(arena: Arena, first: Target, second: Target, bouncer: PgBouncer) -> int:
    """A client of `first` leaves; a client of `second` gets its server connection.
    Returns that backend's pid."""
    arena_first = replace(arena, proxy=first)
    with arena_first.connect() as c:  # warm up: each softguard checks the ledger once
        _pid(c)
    with replace(arena, proxy=second).connect() as c:
        _pid(c)
    _wait_released(bouncer, arena.db)
    _fresh_pool(bouncer, arena.db)
    with arena_first.connect() as c:
        pid = _pid(c)
    _wait_released(bouncer, arena.db)
    return pid


@pytest.mark.parametrize("first", ["protected", "allow"])
def test_reused_server_connection_captures_delete(
    arena: Arena, allow_proxy: Target, bouncer: PgBouncer, first: str
) -> None:
    """Registrations only add. A `delete = "allow"` client on the backend a protected
    client left is captured (fails safe: over-protected); a protected client on the
    backend an allow client left adds DELETE to its registration."""
    proxies = {"protected": arena.proxy, "allow": allow_proxy}
    second = "allow" if first == "protected" else "protected"
    pid = _handover(arena, proxies[first], proxies[second], bouncer)
    assert ("delete" in _registered(arena, pid)) == (first == "protected")
    client = replace(arena, proxy=proxies[second])
    before, last = client.snapshot(), client.last_op()
    out = client.attack([_pid, "DELETE FROM parent WHERE id = 1"])
    assert out.error is None, out.describe()
    assert out.results[0] == pid, "PgBouncer did not hand over the server connection"
    assert "delete" in _registered(arena, pid)
    ops = client.verdict(before, last, out)
    assert [o["kind"] for o in ops] == ["DELETE"], ops


def test_reused_server_connection_keeps_alter_reversible(arena: Arena, bouncer: PgBouncer) -> None:
    """The session key (decision 0028) is handed out once per backend: a client of the
    backend another client of the same softguard left still has its DROP COLUMN and type
    change made reversible (softguard remembers the backend's key), undone exactly."""
    pid = _handover(arena, arena.proxy, arena.proxy, bouncer)
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [_pid, "ALTER TABLE big ALTER COLUMN id TYPE bigint", "ALTER TABLE big DROP COLUMN payload"]
    )
    assert out.error is None, out.describe()
    assert out.results[0] == pid, "PgBouncer did not hand over the server connection"
    ops = arena.verdict(before, last, out)
    assert [o["kind"] for o in ops] == ["ALTER TABLE", "ALTER TABLE"], ops


def test_allow_client_on_a_new_connection_is_not_captured(
    arena: Arena, allow_proxy: Target, bouncer: PgBouncer
) -> None:
    """Control: on a backend no protected client used, the allow policy is followed."""
    allowed = replace(arena, proxy=allow_proxy)
    with allowed.connect() as c:
        _pid(c)
    _wait_released(bouncer, arena.db)
    _fresh_pool(bouncer, arena.db)
    last = arena.last_op()
    out = allowed.attack(["DELETE FROM parent WHERE id = 1"])
    assert out.error is None, out.describe()
    assert arena.ops_since(last) == []
    assert arena.direct("SELECT count(*) FROM parent WHERE id = 1") == [(0,)]


# -- transaction mode, declared: protection per login role ------------------------------------


def _on_a_new_backend(
    arena: Arena, bouncer: PgBouncer, steps: list[str]
) -> tuple[int, set[int], set[int]]:
    """Connect through softguard (which registers), then hold every server connection
    PgBouncer has open for the owner, each in a transaction of its own, so that the client's
    next transaction runs on a backend opened after the registration; run `steps` there in
    one transaction. Returns that backend's pid, the pids that existed before, and the pids
    registered in softguard.sessions."""
    direct_to_pgbouncer = build_dsn(bouncer.host, bouncer.port, arena.db, arena.owner, None)
    holders: list[psycopg.Connection[Any]] = []
    try:
        with arena.connect() as client:
            _pid(client)
            before = {
                int(r[0])
                for r in arena.direct(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND usename = %s",
                    [arena.owner],
                )
            }
            held: set[int] = set()
            for _ in range(10):  # PgBouncer opened at most a few server connections so far
                if before <= held:
                    break
                h = psycopg.connect(direct_to_pgbouncer)  # a transaction keeps its backend
                holders.append(h)
                held.add(_pid(h))
            assert before <= held, (before, held)
            registered = {int(r[0]) for r in arena.direct("SELECT pid FROM softguard.sessions")}
            with client.transaction():
                pid = _pid(client)
                for step in steps:
                    client.execute(step.encode())
    finally:
        for h in holders:
            h.close()
    return pid, before, registered


def test_transaction_pooling_registers_the_login_role(tx_arena: Arena) -> None:
    with tx_arena.connect() as c:
        _pid(c)
    rows = tx_arena.direct("SELECT role, capture FROM softguard.pooled_roles")
    assert rows == [(tx_arena.owner, ["alter", "delete", "drop", "truncate"])], rows
    assert tx_arena.direct("SELECT count(*) FROM softguard.sessions") == [(0,)]


def test_transaction_pooling_captures_on_any_backend(
    tx_arena: Arena, tx_bouncer: PgBouncer
) -> None:
    """The DELETE's transaction runs on a backend opened after the registration (so no
    registration ran on it): captured, and undone exactly."""
    arena = tx_arena
    before, last = arena.snapshot(), arena.last_op()
    pid, before_pids, _ = _on_a_new_backend(arena, tx_bouncer, ["DELETE FROM parent WHERE id = 1"])
    assert pid not in before_pids
    ops = arena.ops_since(last)
    assert [o["kind"] for o in ops] == ["DELETE"], ops
    assert arena.direct("SELECT count(*) FROM parent WHERE id = 1") == [(0,)]
    arena.direct("SELECT softguard.undo_op(%s)", [ops[0]["id"]])
    assert arena.snapshot() == before


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([CAPTURE_OFF, "DELETE FROM parent WHERE id = 2"], id="chr_built_name"),
        pytest.param(["DISCARD ALL", "DELETE FROM child WHERE id = 3"], id="discard_all"),
        pytest.param(
            ["DO $$ BEGIN EXECUTE 'DELETE FROM big WHERE id < 10'; END $$"], id="do_block"
        ),
        pytest.param(["DELETE FROM parent WHERE id = 1", "DROP TABLE big"], id="pipeline_drop"),
        pytest.param(["TRUNCATE big"], id="truncate"),
    ],
)
def test_transaction_pooling_keeps_protection(tx_arena: Arena, steps: list[Any]) -> None:
    out, ops = tx_arena.attempt(steps)
    assert out.error is None, out.describe()
    assert ops, "nothing recorded"


def test_transaction_pooling_backstop_refuses_a_hidden_drop(tx_arena: Arena) -> None:
    """The registration arms the backstop for the role: a DROP inside a DO block, which
    softguard cannot read, is refused by the database on whatever backend runs it."""
    out, ops = tx_arena.attempt(["DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'big'; END $$"])
    assert out.error is not None and out.error.sqlstate == "0A000", out.describe()
    assert ops == []


def test_transaction_pooling_protects_the_role_everywhere(tx_arena: Arena) -> None:
    """The cost of registering a role (decision 0026): the role's direct sessions are
    protected too (over-protected, never under-protected)."""
    with tx_arena.connect() as c:
        _pid(c)
    out, ops = tx_arena.attempt(["DELETE FROM parent WHERE id = 1"], via="direct")
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE"], ops


def test_registering_a_role_only_adds(tx_arena: Arena) -> None:
    """Any role may call register_role (like register_session): for its own login role,
    and only to add; it cannot lower what softguard registered."""
    with tx_arena.connect() as c:
        _pid(c)
    with tx_arena.connect(via="direct") as c:
        c.autocommit = True
        c.execute("SELECT softguard.register_role('off', 0, NULL, '', NULL, '', '[]')")
        for attempt in (
            "DELETE FROM softguard.pooled_roles",
            "UPDATE softguard.pooled_roles SET capture = '{}'",
            "TRUNCATE softguard.pooled_roles",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(attempt.encode())
    rows = tx_arena.direct("SELECT capture, retention_seconds > 0 FROM softguard.pooled_roles")
    assert rows == [(["alter", "delete", "drop", "truncate"], True)], rows


def test_transaction_pooling_enforces_the_roles_limits(
    arena_template: Template, proxy_factory: ProxyFactory, tx_bouncer: PgBouncer, tmp_path: Path
) -> None:
    """Row limits travel with the role's registration: a DELETE over the limit, inside a
    DO block the proxy cannot count, is refused by the database on any backend."""
    config = tmp_path / "limits.toml"
    config.write_text("[policy]\nmax_rows = 3\n")
    proxy = proxy_factory("--config", str(config), *TX_POOLER, upstream=tx_bouncer.upstream)
    for arena in arena_template.clone(proxy):
        out, ops = arena.attempt(["DO $$ BEGIN EXECUTE 'DELETE FROM big WHERE id <= 5'; END $$"])
        assert out.error is not None and out.error.sqlstate == "54000", out.describe()
        assert ops == []
        rows = arena.direct("SELECT max_rows FROM softguard.pooled_roles")
        assert rows == [(3,)], rows


# -- transaction mode declared as session: what a wrong claim costs ---------------------------


def test_misdeclared_transaction_pooling_loses_the_registration(
    tx_misdeclared_arena: Arena, tx_bouncer: PgBouncer
) -> None:
    """The registration ran on one backend; the DELETE's transaction runs on another,
    unregistered one and is not captured (docs/runbook.md: declare such a pooler as
    "transaction")."""
    arena = tx_misdeclared_arena
    last = arena.last_op()
    pid, _, registered = _on_a_new_backend(arena, tx_bouncer, ["DELETE FROM parent WHERE id = 1"])
    assert registered, "the session was not registered"
    assert pid not in registered
    assert arena.ops_since(last) == [], "captured after all: update the docs and this test"
    assert arena.direct("SELECT count(*) FROM parent WHERE id = 1") == [(0,)]


def test_transaction_pooling_drop_is_still_reversible(tx_misdeclared_arena: Arena) -> None:
    """DROP does not depend on the registration: softguard rewrites it."""
    out, ops = tx_misdeclared_arena.attempt(["DROP TABLE big"])
    assert out.error is None, out.describe()
    assert ops, "nothing recorded"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_undeclared_pooler_is_refused_clearly(
    arena_template: Template,
    proxy_factory: ProxyFactory,
    bouncer: PgBouncer,
    tx_bouncer: PgBouncer,
    mode: str,
) -> None:
    """Without upstream_pooler = "session", a session whose server sees another client
    port than softguard's is refused before the client can send anything: transaction
    pooling would silently lose protection, and softguard cannot tell the modes apart."""
    upstream = (bouncer if mode == "session" else tx_bouncer).upstream
    proxy = proxy_factory(upstream=upstream, fresh=True)
    try:
        for arena in arena_template.clone(proxy):
            with pytest.raises(psycopg.OperationalError) as info:
                arena.connect().close()
            text = str(info.value)
            assert "a pooler or proxy sits between them" in text, text
            assert 'upstream_pooler = "session"' in text, text
            assert 'upstream_pooler = "transaction"' in text, text
    finally:
        proxy.stop()
