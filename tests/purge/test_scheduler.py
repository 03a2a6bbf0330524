"""The purge scheduler (softguard/ledger/scheduler.py) and `softguard serve --purge-every`.

Operations are made exactly as the proxy would (CALL softguard.drop_op) in a fresh copy of
the rental database, then made due by moving their expiry into the past.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import TestServer

from softguard.config import ConfigError, load_settings
from softguard.ledger import scheduler
from softguard.ledger.scheduler import (
    PURGE_LOCK_KEY,
    PurgeScheduler,
    connectable_databases,
    connector,
    purge_database,
)

Ledger = Any  # the `ledger` fixture (tests/fixtures/fix_ledger.py)


@pytest.fixture
def db(rental_db: Callable[[], str]) -> str:
    return rental_db()


def drop(ledger: Ledger, db: str, stmt: str) -> int:
    result = ledger.drop(db, stmt)
    assert result.error is None, result
    return int(ledger.last_op(db))


def expire(ledger: Ledger, db: str, op: int) -> None:
    ledger.as_maintenance(
        db,
        "UPDATE softguard.operations SET expires_at = now() - interval '1 second' WHERE id = %s",
        [op],
    )


def state(ledger: Ledger, db: str, op: int) -> str:
    return {o["id"]: o["state"] for o in ledger.operations(db)}[op]


def test_two_schedulers_on_one_database_only_one_purges(
    ledger: Ledger, db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="softguard.purge")
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    expire(ledger, db, op)
    keep = drop(ledger, db, "DROP TABLE events")  # not due: stays
    # The first scheduler holds the lock while it purges: make it wait, inside its pass,
    # until the second one has tried.
    inside, release = threading.Event(), threading.Event()
    real_run_purge = scheduler.run_purge

    def slow_run_purge(*args: Any, **kw: Any) -> Any:
        inside.set()
        assert release.wait(30)
        return real_run_purge(*args, **kw)

    monkeypatch.setattr(scheduler, "run_purge", slow_run_purge)
    connect = connector(ledger.dsn(db))
    first = PurgeScheduler(connect, 3600, threading.Event(), databases=[db])
    second = PurgeScheduler(connect, 3600, threading.Event(), databases=[db])
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(first=first.run_once()))
    thread.start()
    try:
        assert inside.wait(30)
        results["second"] = second.run_once()
    finally:
        release.set()
        thread.join(60)
    assert not thread.is_alive()

    (skipped,) = results["second"]
    assert skipped.status == "locked" and skipped.summary is None
    assert f"database {db}: purge skipped: another softguard process is purging it" in caplog.text
    (done,) = results["first"]
    assert done.status == "done" and done.summary is not None
    assert done.summary.purged == [op] and not done.summary.skipped
    assert f"database {db}: operation {op}" in caplog.text  # one line per purged operation
    assert state(ledger, db, op) == "purged"
    assert state(ledger, db, keep) == "active"
    # the lock was released: a later pass runs (and finds nothing due)
    (again,) = second.run_once()
    assert again.status == "done" and again.summary is not None and again.summary.outcomes == []


def test_lock_held_elsewhere_skips_the_database(ledger: Ledger, db: str) -> None:
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    expire(ledger, db, op)
    with ledger.connect(db) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [PURGE_LOCK_KEY])
        with connector(ledger.dsn(db))(db) as conn:
            assert purge_database(conn, db).status == "locked"
    assert state(ledger, db, op) == "active"


def test_scheduler_purges_an_expired_operation_within_a_bounded_wait(
    ledger: Ledger, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="softguard.purge")
    op = drop(ledger, db, "DROP TABLE reservations CASCADE")
    keep = drop(ledger, db, "DROP TABLE billing.refunds")
    stop = threading.Event()
    sched = PurgeScheduler(connector(ledger.dsn(db)), 0.2, stop, databases=[db])
    thread = sched.start()
    try:
        time.sleep(0.5)  # a few passes with nothing due
        assert state(ledger, db, op) == "active"
        expire(ledger, db, op)
        deadline = time.monotonic() + 60  # passes every 0.2 s: generous headroom
        while state(ledger, db, op) != "purged":
            assert time.monotonic() < deadline, "not purged within 60 s"
            time.sleep(0.1)
    finally:
        # the stop event wakes the loop: it ends without waiting out a pass interval
        sched.close(timeout=60)
    assert not thread.is_alive()
    assert state(ledger, db, keep) == "active"
    assert f"database {db}: operation {op}" in caplog.text


def test_cap_warns_and_evicts_nothing(
    ledger: Ledger, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="softguard.purge")
    op = drop(ledger, db, "DROP TABLE reservations CASCADE")
    with connector(ledger.dsn(db))(db) as conn:
        done = purge_database(conn, db, max_quarantine_bytes=1)
    assert done.status == "done" and done.total_bytes is not None and done.total_bytes > 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "WARNING: the quarantine of database" in warnings[0].getMessage()
    assert "max_quarantine_bytes 1" in warnings[0].getMessage()
    assert state(ledger, db, op) == "active"


def test_errors_are_logged_and_other_databases_still_purged(
    ledger: Ledger, db: str, pg_server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="softguard.purge")
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    expire(ledger, db, op)
    with pg_server.scratch_database() as bare:  # no ledger there
        sched = PurgeScheduler(
            connector(ledger.dsn(db)),
            3600,
            threading.Event(),
            databases=["sg_no_such_database", bare, db],
        )
        passes = sched.run_once()
        assert [p.status for p in passes] == ["error", "no-ledger", "done"]
        with connector(ledger.dsn(db))("postgres") as conn:
            assert bare in connectable_databases(conn)
    assert "database sg_no_such_database: purge failed" in caplog.text
    assert state(ledger, db, op) == "purged"


def test_settings() -> None:
    s = load_settings(purge_every="1h30m", purge_dsn="postgresql://u@h/x")
    assert s.purge_every == 5400 and s.purge_dsn == "postgresql://u@h/x"
    assert load_settings().purge_every is None  # off by default
    assert load_settings().max_quarantine_bytes is None
    assert load_settings(purge_every="90").purge_every == 90


@pytest.mark.parametrize("bad", ["soon", "0s", "-1h"])
def test_settings_refuse_bad_durations(bad: str) -> None:
    with pytest.raises(ConfigError, match="purge_every"):
        load_settings(purge_every=bad)


def test_settings_refuse_a_bad_purge_dsn() -> None:
    with pytest.raises(ConfigError, match="purge_dsn"):
        load_settings(purge_dsn="not a dsn")


def test_serve_purge_every(
    proxy_factory: Any, ledger: Ledger, db: str, pg_server: TestServer, tmp_path: Path
) -> None:
    """`softguard serve --purge-every 1s` purges what expires, in the background."""
    op = drop(ledger, db, "DROP TABLE billing.refunds")
    config = tmp_path / "softguard.toml"
    config.write_text(f'purge_databases = ["{db}"]\n')
    proxy = proxy_factory(
        "--config",
        str(config),
        "--purge-every",
        "1s",
        "--purge-dsn",
        ledger.dsn(db),
        fresh=True,
    )
    if proxy.is_direct:
        pytest.skip("needs the proxy")
    try:
        expire(ledger, db, op)
        deadline = time.monotonic() + 30
        while state(ledger, db, op) != "purged":
            assert time.monotonic() < deadline, proxy.tail()
            time.sleep(0.2)
        # through the proxy, the database works as before
        with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        proxy.stop()
    log = proxy.tail(200)
    assert "purge scheduled every 1s" in log
    assert f"database {db}: operation {op}" in log
