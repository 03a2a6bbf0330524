"""The relay's fast path (``passes_unread``) never answers for a message that
``plan_message`` would not pass as sent: it is a shortcut, not a second policy."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from support.counting import Counter

from softguard.policy import Policy, PolicyConfig, SessionInfo
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import SAFE, FixedLedger, PlanInputs, SoftSession, passes_unread
from softguard.proxy.statements import plan_message as plan
from softguard.sql import Classifier
from softguard.wire import Framer, Message

SESSION = SessionInfo("alice", "shop", "psql", "10.0.0.7:50000")
CASES = Path(__file__).parent.parent / "sql" / "cases" / "classify.txt"
CORPUS = [
    "" if line == "<empty>" else line
    for line in CASES.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith(("#", "=> "))
] + [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
    "select * from softguard.operations",
    'select * from "SoftGuard".operations',
    'select * from U&"\\0073oftguard".operations',
    "select E'\\163oftguard'",
    "/*softguard:tag=delete*/ select 1",
    "execute p",
    "BEGIN;",
    "END;",
]


def _frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def _message(raw: bytes) -> Message:
    _, msgs, _ = Framer(want=None).feed(raw)
    return msgs[0]


def _inputs() -> PlanInputs:
    return PlanInputs(Classifier(), Policy(PolicyConfig()), FixedLedger())


@pytest.mark.parametrize("sql", CORPUS)
def test_fast_path_only_where_the_planner_passes_as_sent(sql: str) -> None:
    text = sql.encode()
    if not passes_unread(text, SoftSession()):
        return
    for raw in (_frame(b"Q", text + b"\0"), _frame(b"P", b"s\0" + text + b"\0\0\0")):
        assert plan(_inputs(), SESSION, _message(raw)) is SAFE


def test_fast_path_takes_the_hot_path_statements() -> None:
    for sql in ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", "BEGIN;", "END;"):
        assert passes_unread(sql.encode(), SoftSession())


def test_names_and_escapes_of_softguard_are_read() -> None:
    for sql in ("select * from softguard.operations", "select E'\\163oftguard'"):
        assert not passes_unread(sql.encode(), SoftSession())


def test_a_prepared_soft_delete_is_always_read() -> None:
    soft = SoftSession()
    soft.prepared.add("p")
    assert not passes_unread(b"select 1", soft)


def _ready_core() -> tuple[SessionCore, list[bytes], Counter]:
    sent: list[bytes] = []
    counter = Counter()
    core = SessionCore(
        CoreConfig(), _inputs(), counter, to_server=sent.append, to_client=lambda b: None
    )
    core.state = State.READY
    return core, sent, counter


def test_one_write_per_chunk_of_harmless_queries() -> None:
    """A chunk of several harmless messages goes on as the very object that arrived."""
    core, sent, counter = _ready_core()
    chunk = b"".join(_frame(b"Q", f"select {i}".encode() + b"\0") for i in range(5))
    core.client_data(chunk)
    assert len(sent) == 1 and sent[0] is chunk
    assert counter.safe_statements == 5 and core.pending == 5


def test_fast_path_and_planner_count_alike() -> None:
    core, sent, counter = _ready_core()
    core.client_data(_frame(b"Q", b"update t set a = 1\0") + _frame(b"Q", b"select 1\0"))
    assert counter.safe_statements == 1
    assert counter.counted == [("destructive", "allow")]
    assert core.pending == 2 and len(sent) == 1


def test_lone_is_one_whole_wanted_message_at_a_boundary() -> None:
    q = _frame(b"Q", b"select 1\0")
    framer = Framer(want=frozenset(b"QPSF"), max_want_length=64)
    assert framer.lone(q, q[0])
    assert not framer.lone(q + _frame(b"S", b""), q[0])  # two messages
    assert not framer.lone(q[:-1], q[0])  # incomplete
    assert not framer.lone(_frame(b"Q", b"x" * 80 + b"\0"), q[0])  # over the inspect limit
    assert not Framer(want=frozenset(b"S")).lone(q, q[0])  # not wanted
    framer.feed(q[:3])  # a header split across chunks: not at a boundary
    assert not framer.lone(q, q[0])


def test_a_lone_harmless_query_goes_on_as_it_came() -> None:
    core, sent, counter = _ready_core()
    for sql in (b"select 1\0", b"BEGIN;\0"):
        chunk = _frame(b"Q", sql)
        core.client_data(chunk)
        assert sent[-1] is chunk
    assert counter.safe_statements == 2 and core.pending == 2 and len(sent) == 2
    assert core._cframer.at_boundary


def test_a_lone_query_that_needs_reading_is_planned() -> None:
    core, sent, counter = _ready_core()
    chunk = _frame(b"Q", b"update t set a = 1\0")
    core.client_data(chunk)
    assert counter.counted == [("destructive", "allow")] and core.pending == 1
    assert sent == [chunk]


def test_the_fast_path_memo_answers_as_the_texts_themselves() -> None:
    """``passes_unread`` remembers its verdict by the text with digits read as 0: every
    text of the corpus, and digit variants of it (escapes spell names with digits), gets
    the answer of the uncached checks."""
    from softguard.sql.prefilter import may_be_destructive
    from softguard.sql.tamper import mentions_softguard

    variants = [*CORPUS, 'select U&"\\0073oftguard".operations', "select E'\\163oftguard'"]
    for sql in variants:
        for digits in ("0123456789", "9876543210", "1111111111"):
            text = sql.translate(str.maketrans("0123456789", digits)).encode()
            exact = not may_be_destructive(text) and not mentions_softguard(text)
            assert passes_unread(text, SoftSession()) is exact, text


def test_a_prepared_statement_chunk_goes_on_as_it_came() -> None:
    core, sent, counter = _ready_core()
    chunk = _frame(b"B", b"\0\0\0\0\0\0\0\0") + _frame(b"E", b"\0\0\0\0\0") + _frame(b"S", b"")
    core.client_data(chunk)
    assert sent == [chunk] and sent[0] is chunk and core.pending == 1
    assert counter.safe_statements == 0 and core._cframer.at_boundary


def test_an_answer_ending_in_ready_for_query_goes_on_as_it_came() -> None:
    core, _, _ = _ready_core()
    received: list[bytes] = []
    core.to_client = received.append
    core._sframer.set_want(frozenset(b"ZEN") | {ord("S")})
    core.pending = 1
    answer = _frame(b"C", b"SELECT 1\0") + _frame(b"Z", b"T")
    core.server_data(answer)
    assert received == [answer] and received[0] is answer
    assert core.pending == 0 and core.tx_status == ord("T") and core._sframer.at_boundary
    # An ErrorResponse inside is read: a FATAL one is noted.
    fatal = _frame(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0") + _frame(b"Z", b"I")
    core.server_data(fatal)
    assert received[-1] == fatal and core._server_fatal and core.tx_status == ord("I")
