"""When the session core drops its result filter (issue 13), and when it must not.

A session whose statement was rewritten has its answers filtered (softguard.wire.results);
the filter goes once nothing rewritten is in flight and no prepared statement made from a
rewrite can be run again, so the fast paths take the session back. The attacks: a client
that tries to make the filter go too early, so that a rewritten statement's raw answer
(softguard's private notices, the CALL or UPDATE tag) reaches it, or a retag is lost:
Close of a name never prepared, a Parse reusing a rewritten name, DISCARD / DEALLOCATE in
a failed transaction, Close pipelined behind an error, DEALLOCATE ALL pipelined before a
new rewritten Parse, an unnamed statement run again by a Bind alone.
"""

from __future__ import annotations

import struct

import pytest
from test_core import (
    READY_IDLE,
    READY_TX,
    Core,
    FixedLedger,
    complete,
    drain,
    msg,
    notice,
    query,
    ready_core,
)

from softguard.sql.soft_delete import TAG_MARKER, SoftDeleteTables, SoftTarget

SYNC = msg(b"S")
PARSE_DONE, BIND_DONE, CLOSE_DONE = msg(b"1"), msg(b"2"), msg(b"3")


def parse(text: str, name: str = "") -> bytes:
    return msg(b"P", name.encode() + b"\0" + text.encode() + b"\0\0\0")


def bind(stmt: str = "", portal: str = "") -> bytes:
    return msg(b"B", portal.encode() + b"\0" + stmt.encode() + b"\0\0\0\0\0\0\0")


def close(name: str, kind: bytes = b"S") -> bytes:
    return msg(b"C", kind + name.encode() + b"\0")


EXECUTE = msg(b"E", b"\0\0\0\0\0")


def error(code: str, text: str = "failed") -> bytes:
    return msg(b"E", b"SERROR\0VERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


# What the server answers for a DROP sent as softguard's CALL: the private notices that
# the filter removes, and the CALL tag it turns back into DROP TABLE.
DROPPED = notice("SGBEG", "0") + notice("SGEND", "DROP TABLE") + complete("CALL")


def answered(core: Core, data: bytes) -> bytes:
    core.server_data(data)
    return drain(core).to_client


def dropped_once(core: Core) -> None:
    """A DROP in a Query, answered: the filter has nothing left."""
    core.client_data(query("drop table t"))
    drain(core)
    assert answered(core, DROPPED + READY_IDLE) == complete("DROP TABLE") + READY_IDLE


def test_filter_goes_after_a_rewritten_query_and_the_fast_path_takes_over() -> None:
    core, counter = ready_core()
    dropped_once(core)
    assert core._filter is None and counter.filters_released == 1
    assert core._answers_plain
    filtered = counter.filtered_statements
    for _ in range(20):
        core.client_data(query("select 1"))
        core.client_data(parse("select 1") + bind() + EXECUTE + SYNC)
        answered(core, complete("SELECT 1") + READY_IDLE)
        answered(core, PARSE_DONE + BIND_DONE + complete("SELECT 1") + READY_IDLE)
    assert counter.filtered_statements == filtered and core.pending == 0
    # A new rewrite filters again, from the first answer on.
    dropped_once(core)
    assert counter.filters_released == 2


def test_filter_stays_until_the_transaction_ends() -> None:
    """A transaction may hold a portal of a rewritten statement."""
    core, counter = ready_core()
    core.client_data(query("begin"))
    answered(core, complete("BEGIN") + READY_TX)
    core.client_data(query("drop table t"))
    drain(core)
    assert answered(core, DROPPED + READY_TX) == complete("DROP TABLE") + READY_TX
    assert core._filter is not None
    core.client_data(query("commit"))
    answered(core, complete("COMMIT") + READY_IDLE)
    assert core._filter is None and counter.filters_released == 1


def test_filter_stays_while_answers_are_owed() -> None:
    core, _ = ready_core()
    core.client_data(query("drop table t") + query("select 1"))
    drain(core)
    assert answered(core, DROPPED + READY_IDLE) == complete("DROP TABLE") + READY_IDLE
    assert core._filter is not None  # the second Query's answer is still to come
    answered(core, complete("SELECT 1") + READY_IDLE)
    assert core._filter is None


def _named_drop(core: Core, name: str = "s1") -> None:
    core.client_data(parse("drop table t", name) + SYNC)
    drain(core)
    answered(core, PARSE_DONE + READY_IDLE)


def _run_named(core: Core, name: str = "s1") -> bytes:
    core.client_data(bind(name) + EXECUTE + SYNC)
    drain(core)
    return answered(core, BIND_DONE + DROPPED + READY_IDLE)


def test_named_rewritten_statement_keeps_the_filter_until_closed() -> None:
    core, counter = ready_core()
    _named_drop(core)
    assert core._filter is not None
    for _ in range(3):
        assert _run_named(core) == BIND_DONE + complete("DROP TABLE") + READY_IDLE
    # A Close of a name never prepared, of a portal, of another statement: kept.
    core.client_data(close("zz") + close("s1", b"P") + close("S1") + SYNC)
    answered(core, CLOSE_DONE * 3 + READY_IDLE)
    assert core._filter is not None
    assert _run_named(core) == BIND_DONE + complete("DROP TABLE") + READY_IDLE
    core.client_data(close("s1") + SYNC)
    answered(core, CLOSE_DONE + READY_IDLE)
    assert core._filter is None and counter.filters_released == 1


def test_parse_reusing_a_rewritten_name_does_not_release_it() -> None:
    """The server refuses the second Parse (42P05): the rewritten statement stays."""
    core, _ = ready_core()
    _named_drop(core)
    core.client_data(parse("select 1", "s1") + SYNC)
    answered(core, error("42P05", 'prepared statement "s1" already exists') + READY_IDLE)
    assert core._filter is not None
    assert _run_named(core) == BIND_DONE + complete("DROP TABLE") + READY_IDLE


def test_close_skipped_after_an_error_does_not_release() -> None:
    """Behind an error the server skips to the Sync: the Close never ran."""
    core, _ = ready_core()
    _named_drop(core)
    core.client_data(parse("selec 1") + close("s1") + SYNC)
    answered(core, error("42601", "syntax error") + READY_IDLE)
    assert core._filter is not None
    assert _run_named(core) == BIND_DONE + complete("DROP TABLE") + READY_IDLE
    # Sent without waiting: Parse, Close, Sync, and the Bind of the name after them.
    core.client_data(close("s1") + SYNC + bind("s1") + EXECUTE + SYNC)
    answered(core, CLOSE_DONE + READY_IDLE)
    assert core._filter is not None  # the Bind's answer is owed
    answered(core, error("26000", 'prepared statement "s1" does not exist') + READY_IDLE)
    assert core._filter is None


def test_discard_or_deallocate_in_a_failed_transaction_does_not_release() -> None:
    core, _ = ready_core()
    _named_drop(core)
    core.client_data(query("begin"))
    answered(core, complete("BEGIN") + READY_TX)
    core.client_data(query("selec 1"))
    answered(core, error("42601") + msg(b"Z", b"E"))
    for text in ("discard all", "deallocate all", "deallocate s1"):
        core.client_data(query(text))
        answered(core, error("25P02", "current transaction is aborted") + msg(b"Z", b"E"))
    core.client_data(query("rollback"))
    answered(core, complete("ROLLBACK") + READY_IDLE)
    assert core._filter is not None
    assert _run_named(core) == BIND_DONE + complete("DROP TABLE") + READY_IDLE
    core.client_data(query("deallocate s1"))
    answered(core, complete("DEALLOCATE") + READY_IDLE)
    assert core._filter is None


def test_deallocate_all_sent_before_a_new_rewritten_parse_keeps_that_one() -> None:
    core, _ = ready_core()
    _named_drop(core, "s1")
    core.client_data(query("deallocate all") + parse("drop table t", "s2") + SYNC)
    drain(core)
    answered(core, complete("DEALLOCATE ALL") + READY_IDLE + PARSE_DONE + READY_IDLE)
    assert core._filter is not None
    assert _run_named(core, "s2") == BIND_DONE + complete("DROP TABLE") + READY_IDLE
    core.client_data(query("discard all"))
    answered(core, complete("DISCARD ALL") + READY_IDLE)
    assert core._filter is None


def test_unnamed_rewritten_statement_run_again_by_a_bind_alone() -> None:
    """The unnamed statement outlives its Sync: a later Bind/Execute/Sync of it (the
    compiled path's shape) still gets its answers filtered, until a Parse or a Query
    replaces it."""
    core, counter = ready_core()
    core.client_data(parse("drop table t") + bind() + EXECUTE + SYNC)
    drain(core)
    expected = PARSE_DONE + BIND_DONE + complete("DROP TABLE") + READY_IDLE
    assert answered(core, PARSE_DONE + BIND_DONE + DROPPED + READY_IDLE) == expected
    for _ in range(2):
        assert core._filter is not None
        core.client_data(bind() + EXECUTE + SYNC)
        assert answered(core, BIND_DONE + DROPPED + READY_IDLE) == expected[len(PARSE_DONE) :]
    core.client_data(parse("select 1") + bind() + EXECUTE + SYNC)
    answered(core, PARSE_DONE + BIND_DONE + complete("SELECT 1") + READY_IDLE)
    assert core._filter is None and counter.filters_released == 1


CUSTOMERS = SoftTarget(
    "public", "customers", "deleted_at", "timestamp with time zone", "timestamp", "now()", ("id",)
)


def _soft_core() -> Core:
    tables = SoftDeleteTables({("public", "customers"): CUSTOMERS})
    ledger = FixedLedger(tables=tables, soft_delete_rules=("customers",))
    core, _ = ready_core(ledger)
    return core


def test_sql_prepared_soft_delete_is_marked_and_keeps_the_filter() -> None:
    """``PREPARE d AS DELETE`` goes with TAG_MARKER first: the capture trigger then raises
    SGTAG when a protocol Bind of ``d`` runs it, and the filter turns its UPDATE n into
    DELETE n (issue 16)."""
    core = _soft_core()
    core.client_data(query("PREPARE d AS DELETE FROM customers WHERE id = 1"))
    sent = drain(core).to_server
    assert sent[5:].startswith(TAG_MARKER.encode() + b"PREPARE d AS UPDATE customers SET")
    answered(core, complete("PREPARE") + READY_IDLE)
    assert core._filter is not None
    core.client_data(bind("d") + EXECUTE + SYNC)
    got = answered(core, BIND_DONE + notice("SGTAG", "DELETE") + complete("UPDATE 1") + READY_IDLE)
    assert got == BIND_DONE + complete("DELETE 1") + READY_IDLE
    core.client_data(query("begin"))
    answered(core, complete("BEGIN") + READY_TX)
    core.client_data(query("selec"))
    answered(core, error("42601") + msg(b"Z", b"E"))
    core.client_data(query("deallocate d"))
    answered(core, error("25P02") + msg(b"Z", b"E"))
    core.client_data(query("rollback"))
    answered(core, complete("ROLLBACK") + READY_IDLE)
    assert core._filter is not None  # d is still there
    core.client_data(bind("d") + EXECUTE + SYNC)
    got = answered(core, BIND_DONE + notice("SGTAG", "DELETE") + complete("UPDATE 0") + READY_IDLE)
    assert got == BIND_DONE + complete("DELETE 0") + READY_IDLE
    core.client_data(query("deallocate d"))
    answered(core, complete("DEALLOCATE") + READY_IDLE)
    assert core._filter is None


@pytest.mark.parametrize(
    "other",
    [
        "SELECT 1",
        "UPDATE customers SET email = 'x'",
        "PREPARE s AS SELECT 1",
        "EXECUTE s",
        "DELETE FROM customers WHERE id = 2",
        "COMMIT",
    ],
)
def test_prepare_beside_what_may_update_is_not_marked(other: str) -> None:
    """The marker would tag an UPDATE the text's other statements may run (now, or bound
    later: a PREPARE's source text is the whole Query's): not marked."""
    core = _soft_core()
    core.client_data(query(f"PREPARE d AS DELETE FROM customers; {other}"))
    assert TAG_MARKER.encode() not in drain(core).to_server


@pytest.mark.parametrize(
    "text",
    [
        "SET search_path = public; PREPARE d AS DELETE FROM customers WHERE id = 1",
        "BEGIN; PREPARE d AS DELETE FROM customers WHERE id = 1; SHOW work_mem",
        "PREPARE d AS DELETE FROM customers WHERE id = 1; RESET work_mem;"
        " PREPARE e AS DELETE FROM customers WHERE id = 2",
    ],
)
def test_prepare_beside_statements_that_never_update_is_marked(text: str) -> None:
    """Decision 0043: with only SET / RESET / SHOW / BEGIN and other soft-delete PREPAREs
    beside it, nothing but the marking UPDATEs can run under the text: marked, and a Bind
    of ``d`` answers DELETE n (it failed on main: the text went unmarked, UPDATE n)."""
    core = _soft_core()
    core.client_data(query(text))
    sent = drain(core).to_server
    assert sent[5:].startswith(TAG_MARKER.encode())
    assert b"/*softguard:text=" not in sent  # the capture reads its marker first only


def test_close_split_across_chunks_is_still_read() -> None:
    core, _ = ready_core()
    _named_drop(core)
    data = close("s1") + SYNC
    for i in range(len(data)):
        core.client_data(data[i : i + 1])
    answered(core, CLOSE_DONE + READY_IDLE)
    assert core._filter is None


def test_function_call_refusal_then_release() -> None:
    """A refused FunctionCall starts the filter too; it goes once answered."""
    core, _ = ready_core()
    lo_unlink = msg(b"F", struct.pack("!IHHIi", 964, 0, 1, 4, 4) + b"\0\0\0\1" + b"\0\0")
    core.client_data(lo_unlink)
    drain(core)
    answered(core, error("42501", "refused") + READY_IDLE)
    assert core._filter is None
