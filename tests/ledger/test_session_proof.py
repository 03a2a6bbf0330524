"""A registration is taken for this backend's own by the proof register_session told it
(softguard.session_proof), or else by the backend's start time (decision 0024, "Since
then"): an operation records the registered address and retention only for the backend
that registered, never for another that reuses its pid."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from conftest_capture import Ledger, protected, row_ops

DELETE = "DELETE FROM customers WHERE id = (SELECT max(id) FROM customers)"
MONTH = 30 * 86400


def _stale_row(ledger: Ledger, db: str, pid: int) -> str:
    """A registration left by an ended backend whose pid `pid` now has; returns its proof."""
    with ledger.connect(db) as c:
        proof = c.execute(
            "INSERT INTO softguard.sessions (pid, backend_start, capture, retention_seconds,"
            " client_addr, proof) VALUES (%s, now() - interval '1 day', '{delete}', %s,"
            " '6.6.6.6', gen_random_uuid()) RETURNING proof::text",
            [pid, 2 * MONTH],
        ).fetchone()
    assert proof is not None
    return str(proof[0])


def _last_op(ledger: Ledger, db: str) -> dict[str, object]:
    ops = row_ops(ledger, db)
    assert ops, "nothing recorded"
    return ops[-1]


def test_registered_session_records_its_registration(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with ledger.connect(db, autocommit=True) as c:
        c.execute("SELECT softguard.register_session('delete', %s, '10.1.2.3')", [MONTH])
        told = c.execute("SELECT current_setting('softguard.session_proof')").fetchone()
        kept = c.execute(
            "SELECT proof::text FROM softguard.sessions WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert told is not None and told == kept
        c.execute(DELETE)
        # registering again keeps the proof the backend was told
        c.execute("SELECT softguard.register_session('delete', 60, '10.9.9.9')")
        assert c.execute("SELECT current_setting('softguard.session_proof')").fetchone() == told
        c.execute("RESET ALL")  # the proof is gone: the start time still tells
        c.execute(DELETE)
    ops = row_ops(ledger, db)
    assert len(ops) == 2
    for op in ops:
        assert op["client_addr"] == "10.1.2.3", op
        assert op["expires_at"] - op["created_at"] >= timedelta(seconds=MONTH), op


def test_reused_pid_is_not_taken_for_the_registration(
    ledger: Ledger, rental_db: Callable[[], str]
) -> None:
    db = rental_db()
    with protected(ledger, db) as c:
        pid = c.info.backend_pid
        proof = _stale_row(ledger, db, pid)
        c.execute(DELETE)
        op = _last_op(ledger, db)
        assert op["client_addr"] != "6.6.6.6", op
        assert op["expires_at"] - op["created_at"] < timedelta(seconds=MONTH), op
        # a proof the backend was not told does not stand for the start time either
        c.execute("SET softguard.session_proof = '00000000-0000-0000-0000-000000000000'")
        c.execute(DELETE)
        op = _last_op(ledger, db)
        assert op["client_addr"] != "6.6.6.6", op
        # only the ended session's own client could know its proof (the table is the
        # installer's): with it, the backend passes for that registration - more
        # protection, never less
        c.execute("SELECT set_config('softguard.session_proof', %s, false)", [proof])
        c.execute(DELETE)
        op = _last_op(ledger, db)
        assert op["client_addr"] == "6.6.6.6", op
