"""Concurrency and crashes around reversible DROP (DESIGN.md §4-§5).

- Two clients dropping and re-creating the same table name through softguard: every DROP
  that returned success has its operation, every created table is either live (the last
  one) or in quarantine exactly once, and only errors PostgreSQL itself gives occur.
- SIGKILL of the proxy inside an uncommitted `BEGIN; DROP …`: the server rolls back.
- SIGKILL right after a committed DROP: the operation is there and undo restores it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

ITERATIONS = 20
# What PostgreSQL itself answers when two sessions race on one table name: the table
# exists / does not exist (any more), the catalog's unique index caught a concurrent
# CREATE (or the other's row type became visible first: 42710 type "hot" already
# exists), the column (of the other client's table) does not exist.
RACE_ERRORS = {"42P07", "42P01", "23505", "42710", "42703"}


def _client(dsn: str, who: str, barrier: threading.Barrier, log: list[Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        barrier.wait(timeout=30)
        for i in range(ITERATIONS):
            marker = f"m_{who}_{i}"
            for kind, stmt in (
                ("create", f"CREATE TABLE hot ({marker} int, filler text DEFAULT 'x')"),
                ("insert", f"INSERT INTO hot ({marker}) VALUES ({i})"),
                ("drop", "DROP TABLE hot"),
            ):
                try:
                    cur = c.execute(stmt.encode())
                    log.append((who, i, kind, marker, "ok", cur.statusmessage))
                except psycopg.Error as e:
                    log.append((who, i, kind, marker, e.diag.sqlstate, e.diag.message_primary))


def test_concurrent_drop_and_recreate(proxy: Any, sg: Any, twins: Any) -> None:
    (db,) = twins(1)
    # the ledger is installed by the first protected DROP: make that happen before the race
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute(b"DROP TABLE IF EXISTS hot")
    assert sg.has_ledger(db)

    log: list[Any] = []
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_client, args=(proxy.dsn(db), who, barrier, log))
        for who in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "clients did not finish"
    assert len(log) == 2 * ITERATIONS * 3

    unexpected = [e for e in log if e[4] != "ok" and e[4] not in RACE_ERRORS]
    assert not unexpected, unexpected
    assert all(e[5] == "DROP TABLE" for e in log if e[2] == "drop" and e[4] == "ok")
    created = [e[3] for e in log if e[2] == "create" and e[4] == "ok"]
    drops_ok = [e for e in log if e[2] == "drop" and e[4] == "ok"]
    assert created and drops_ok, log  # the race must have exercised both

    ops = [o for o in sg.operations(db) if o["kind"] == "DROP TABLE"]
    assert all(o["state"] == "active" and o["statement"] == "DROP TABLE hot" for o in ops)
    # every successful DROP has exactly one operation (no more, no less)
    assert len(ops) == len(drops_ok), (len(ops), len(drops_ok))

    # each operation took its own table: PostgreSQL lets only one of two racing DROPs of
    # one table succeed (the other gets 42P01), so no table may be claimed twice
    tables = {}
    for o in ops:
        mine = [x for x in o["objects"] if x["type"] == "table" and x["original"]]
        assert len(mine) == 1, o["objects"]
        tables[o["id"]] = mine[0]
    by_oid: dict[str, list[int]] = {}
    for op_id, t in tables.items():
        by_oid.setdefault(t["objid"], []).append(op_id)
    claimed_twice = {
        oid: [(i, tables[i]["quarantined_as"]) for i in ids]
        for oid, ids in by_oid.items()
        if len(ids) > 1
    }
    assert not claimed_twice, (
        "concurrent DROP TABLE hot: two DROPs both returned success and both operations "
        f"claim the same table (oid: [(operation, quarantined_as)]): {claimed_twice}"
    )

    # every created table is accounted for exactly once: in quarantine (one per operation)
    # or live under the name hot
    with sg.connect(db) as c:
        quarantined = []
        for op_id, t in tables.items():
            where = c.execute("SELECT to_regclass(%s)", [t["quarantined_as"]]).fetchone()[0]
            assert where is not None, (
                f"operation {op_id}: recorded quarantine table {t['quarantined_as']} is missing"
            )
            cols = c.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attname LIKE 'm\\_%%'",
                [t["quarantined_as"]],
            ).fetchall()
            assert len(cols) == 1, cols
            quarantined.append(cols[0][0])
        live = c.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('public.hot')"
            " AND attname LIKE 'm\\_%%'"
        ).fetchall()
        live_markers = [r[0] for r in live]
        assert len(live_markers) <= 1
        assert sorted(quarantined + live_markers) == sorted(created), (
            quarantined,
            live_markers,
            created,
        )
        # a row inserted into a table before its DROP is still in it, in quarantine
        inserted = {e[3] for e in log if e[2] == "insert" and e[4] == "ok"}
        for (op_id, t), marker in zip(tables.items(), quarantined, strict=True):
            n = c.execute(f"SELECT count(*) FROM {t['quarantined_as']}").fetchone()
            assert n == ((1,) if marker in inserted else (0,)), (op_id, marker, n)
    # and the name is free for a new table, through softguard
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute(b"DROP TABLE IF EXISTS hot")
        c.execute(b"CREATE TABLE hot (id int)")


def _wait_backend_gone(sg: Any, db: str, pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with sg.connect(db) as c:
        while time.monotonic() < deadline:
            if not c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                return
            time.sleep(0.05)
    pytest.fail(f"backend {pid} still alive {timeout}s after the proxy was killed")


def _big_state(sg: Any, db: str) -> Any:
    with sg.connect(db) as c:
        return (
            c.execute(
                "SELECT count(*), md5(string_agg(payload, ',' ORDER BY id)) FROM big"
            ).fetchone(),
            c.execute("SELECT n FROM big_summary").fetchone(),
            c.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'big_refs'::regclass"
                " AND contype = 'f'"
            ).fetchall(),
        )


def test_sigkill_inside_uncommitted_drop(proxy_factory: Any, sg: Any, twins: Any) -> None:
    (db,) = twins(1)
    before = sg.snapshot(db)
    doomed = proxy_factory(fresh=True)
    c = psycopg.connect(doomed.dsn(db), autocommit=True)
    try:
        pid = c.execute(b"SELECT pg_backend_pid()").fetchone()[0]
        c.execute(b"BEGIN")
        cur = c.execute(b"DROP TABLE big CASCADE")
        assert cur.statusmessage == "DROP TABLE"
        assert c.info.transaction_status.name == "INTRANS"
        doomed.kill()
        with pytest.raises(psycopg.OperationalError):
            c.execute(b"COMMIT")
    finally:
        c.close()
    _wait_backend_gone(sg, db, pid)
    assert sg.operations(db) == [], "an operation of a transaction that never committed"
    assert _big_state(sg, db)[0][0] == 3000
    assert sg.snapshot(db) == before


def test_sigkill_right_after_committed_drop(proxy_factory: Any, sg: Any, twins: Any) -> None:
    (db,) = twins(1)
    before = sg.snapshot(db)
    doomed = proxy_factory(fresh=True)
    c = psycopg.connect(doomed.dsn(db), autocommit=True)
    try:
        pid = c.execute(b"SELECT pg_backend_pid()").fetchone()[0]
        cur = c.execute(b"DROP TABLE big CASCADE")
        assert cur.statusmessage == "DROP TABLE"
        doomed.kill()
    finally:
        c.close()
    _wait_backend_gone(sg, db, pid)
    ops = sg.active_ops(db)
    assert len(ops) == 1, sg.operations(db)
    with sg.connect(db) as c2:
        assert c2.execute("SELECT to_regclass('public.big')").fetchone() == (None,)
    sg.undo(db, ops[0])
    assert sg.snapshot(db) == before


def test_ledger_install_blocked_by_locks_is_refused_not_hung(
    proxy: Any, sg: Any, twins: Any
) -> None:
    """The first session of a database waits for softguard to install the ledger, which
    puts triggers on every table. If another transaction holds a lock on a table, the
    install cannot finish: softguard gives up after its lock timeout, the session goes on
    unregistered and its protected statements are refused (55000, saying why) instead of
    waiting forever; each migration is all or nothing, and a later session completes the
    install."""
    (db,) = twins(1)
    assert not sg.has_ledger(db)
    with sg.connect(db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
            c.execute("SET statement_timeout = '60s'")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
                c.execute("DROP TABLE vehicles CASCADE")
        message = err.value.diag.message_primary or ""
        assert "could not install it" in message and "lock timeout" in message, message
        holder.execute("ROLLBACK")
    assert sg.data(db)["public.vehicles"]  # still there
    # after the check's short back-off, the ledger installs and the DROP is protected
    for _ in range(60):  # bounded: the refusal is remembered for 10 s
        with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
            try:
                c.execute("DROP TABLE vehicles CASCADE")
                break
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.5)
    assert sg.has_ledger(db)
    assert [o["kind"] for o in sg.operations(db)] == ["DROP TABLE"]
