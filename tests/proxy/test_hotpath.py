"""The compiled fast path (``softguard.proxy._hotpath``, decision 0034) does what the core's
Python does, or nothing at all.

Two cores see the same events: one only through ``SessionCore.client_data`` /
``server_data``, the other through the compiled fast path first and the Python core for
what it declines. After every event both must have sent the same bytes and hold the same
state. The events mix the chunks the fast path exists for with every near miss (split,
merged, mis-sized, wanted messages inside, texts that need reading) and with the core
states under which the Python fast path steps aside (a result filter, a held
classification, a prepared soft delete, read-only mode, a policy reload, pending
timings, a read-only session ending, shutdown).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support.hotpath_twins import Twin, apply_state

from softguard.policy import Policy, PolicyConfig
from softguard.proxy import hotpath
from softguard.proxy.core import State
from softguard.proxy.metrics import Metrics
from softguard.proxy.statements import SoftSession
from softguard.wire.messages import message

pytestmark = pytest.mark.skipif(
    not hotpath.COMPILED, reason="softguard.proxy._hotpath is not built (no C compiler?)"
)


def _query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


_BIND_EXECUTE_SYNC = (
    message(b"B", b"\0s1\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b"")
)
_CLIENT_CHUNKS = [
    _query("SELECT abalance FROM pgbench_accounts WHERE aid = 42;"),
    _query("SELECT abalance FROM pgbench_accounts WHERE aid = 97;"),
    _query("BEGIN;"),
    _query("END;"),
    _query("select 1"),
    _query("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3;"),
    # Shapes the session memo lets pass once planned (statements.remember_allowed), and
    # near misses: a 10-digit number and a name's digits are not folded, a decimal is.
    _query("UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 98765;"),
    _query("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1234567890;"),
    _query("UPDATE pgbench_tellers SET tbalance = tbalance + 2.5 WHERE tid = 7;"),
    _query("UPDATE pgbench_tellers SET tbalance = tbalance + 31.25 WHERE tid = 8;"),
    _query("update t1 set x = 1"),
    _query("update t2 set x = 1"),
    _query("update t set x = '1'"),
    _query("delete from t where id = 1"),
    _query("select * from softguard.operations"),
    _query("select E'\\163oftguard'"),
    _query("select '" + "x" * 600 + "'"),  # beyond the memo: decided by the Python path
    _query("select 1") + _query("select 2"),  # two messages
    message(b"Q", b"select 1\0select 2\0"),  # a NUL inside the text
    message(b"Q", b"select 1"),  # no NUL at all
    _query("select 1")[:-3],  # incomplete
    _BIND_EXECUTE_SYNC,
    message(b"S", b""),
    message(b"P", b"\0select 1\0\0\0") + _BIND_EXECUTE_SYNC,  # a Parse inside: read
    message(b"P", b"\0delete from t\0\0\0") + _BIND_EXECUTE_SYNC,
    # A driver's Parse/Bind/Describe/Execute/Sync, and near misses of that shape.
    message(b"P", b"s2\0select 2\0\0\0") + message(b"D", b"Ss2\0") + _BIND_EXECUTE_SYNC,
    message(b"P", b"\0select 3\0\0\0") + message(b"S", b""),
    message(b"P", b"\0select 4\0\0\0") + _query("select 5") + message(b"S", b""),
    message(b"P", b"\0select 6\0\0\0") + message(b"P", b"\0select 7\0\0\0") + _BIND_EXECUTE_SYNC,
    message(b"P", b"\0select 8") + _BIND_EXECUTE_SYNC,  # the text's NUL missing
    message(b"P", b"select 9") + _BIND_EXECUTE_SYNC,  # the name's too
    message(b"P", b"\0select '" + b"y" * 600 + b"'\0\0\0") + _BIND_EXECUTE_SYNC,
    message(b"P", b"\0update t set x = 1\0\0\0") + _BIND_EXECUTE_SYNC,
    message(b"P", b"\0select 1\0\0\0") + _BIND_EXECUTE_SYNC[:-2],  # the Sync cut short
    b"P\0\0\0\x03" + _BIND_EXECUTE_SYNC,  # a Parse length under 4
    b"P\0\0\x10\x00\0select 1\0\0\0" + _BIND_EXECUTE_SYNC,  # one past the chunk
    _BIND_EXECUTE_SYNC[:7],  # split Bind
    _BIND_EXECUTE_SYNC[7:],
    message(b"B", b"\0s1\0\0\0\0\0\0\0") + b"S\0\0\0\x05x",  # a Sync with a wrong length
    message(b"H", b""),
    b"Q\0\0\0\x02xx",  # a length under 4
    b"Q\x7f\xff\xff\xff" + b"x" * 10,  # a length beyond every limit
]
_SERVER_CHUNKS = [
    message(b"C", b"SELECT 1\0") + message(b"Z", b"I"),
    message(b"T", b"\0\0")
    + message(b"D", b"\0\x01\0\0\0\x011")
    + message(b"C", b"SELECT 1\0")
    + message(b"Z", b"T"),
    message(b"Z", b"E"),
    message(b"E", b"SERROR\0VERROR\0C42P01\0Mnope\0\0") + message(b"Z", b"E"),
    message(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0") + message(b"Z", b"I"),
    message(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0") + message(b"Z", b"I"),
    message(b"S", b"client_encoding\0LATIN1\0") + message(b"Z", b"I"),
    message(b"C", b"SELECT 1\0") + message(b"Z", b"I")[:3],  # split ReadyForQuery
    message(b"Z", b"I")[3:],
    message(b"C", b"SELECT 1\0"),
    message(b"C", b"SELECT 1\0") + b"Z\0\0\0\x06II",  # a ReadyForQuery with a wrong length
    b"C\0\0\0\x02" + message(b"Z", b"I"),  # a length under 4 before it
]


_TWEAKS = [
    "filter", "unfilter", "known", "unknown", "prepared", "unprepared", "read-only", "full",
    "timings", "protected", "read-only-lost", "shutdown", "calm", "update-denied",
]  # fmt: skip


def _fed(twin: Twin, side: str, data: bytes) -> None:
    """One chunk into ``twin``; none of these chunks raises, either way."""
    assert twin.event(side, data) is None, (twin.mode, side, data)


@pytest.mark.parametrize("seed", range(40))
def test_compiled_and_python_fast_paths_agree(seed: int) -> None:
    rng = random.Random(seed)
    python, compiled = Twin("python"), Twin("chunk")
    for step in range(60):  # bounded
        roll = rng.random()
        if roll < 0.1:
            name = rng.choice(_TWEAKS)
            apply_state(python.core, name)
            apply_state(compiled.core, name)
            continue
        side = "client" if roll < 0.55 else "server"
        data = rng.choice(_CLIENT_CHUNKS if side == "client" else _SERVER_CHUNKS)
        _fed(python, side, data)
        _fed(compiled, side, data)
        assert compiled.snapshot() == python.snapshot(), (seed, step, side, data)
        if python.core.state is State.CLOSED:
            break


_CASES = Path(__file__).parent.parent / "sql" / "cases" / "classify.txt"
_TEXTS = [
    line
    for line in _CASES.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith(("#", "=> "))
]


@pytest.mark.parametrize("digits", ["0123456789", "9876543210"])
def test_every_classifier_case_alike(digits: str) -> None:
    """Each text of the classifier's corpus (and a digit variant of it: the memo folds
    digits), sent alone and then again (a memo hit), is relayed alike. A fresh session
    each: after a rewrite, a session's answers are filtered and both fast paths step
    aside for good."""
    fold = str.maketrans("0123456789", digits)
    taken = 0
    for sql in _TEXTS:
        python, compiled = Twin("python"), Twin("chunk")
        chunk = _query(sql.translate(fold))
        for _ in range(2):
            for twin in (python, compiled):
                _fed(twin, "client", chunk)
                _fed(twin, "server", _SERVER_CHUNKS[0])
            assert compiled.snapshot() == python.snapshot(), sql
        taken += compiled.taken
    assert taken > len(_TEXTS)  # harmless ones were taken, answers too


def test_the_corpus_reaches_the_compiled_paths() -> None:
    """The agreement above is not vacuous: the compiled paths take these chunks."""
    twin = Twin("chunk")
    for data in (_CLIENT_CHUNKS[0], _CLIENT_CHUNKS[1], _BIND_EXECUTE_SYNC):
        _fed(twin, "client", data)
    for data in (_SERVER_CHUNKS[0], _SERVER_CHUNKS[1], _SERVER_CHUNKS[2]):
        _fed(twin, "server", data)
    assert twin.taken == 6
    assert [side for side, _ in twin.sinks.sent] == ["server"] * 3 + ["client"] * 3
    assert all(b is d for (_, b), d in zip(twin.sinks.sent, [_CLIENT_CHUNKS[0]], strict=False))
    assert twin.core.pending == 0 and twin.counter.safe_statements == 2


@pytest.mark.parametrize(
    "tweak", ["filter", "known", "prepared", "read-only", "timings", "protected", "shutdown"]
)
def test_the_compiled_paths_step_aside(tweak: str) -> None:
    """Under each state the Python fast path does not take, neither does the compiled one
    (and it changes nothing when it declines)."""
    twin = Twin("chunk")
    apply_state(twin.core, tweak)
    before = twin.snapshot()
    client = hotpath.client_chunk(twin.core, _CLIENT_CHUNKS[0])
    server = hotpath.server_chunk(twin.core, _SERVER_CHUNKS[0])
    after = twin.snapshot()
    if tweak in ("timings", "protected", "shutdown"):
        # Only the server path steps aside for these (the client path ignores them,
        # as the Python one does).
        assert client and not server
    elif tweak == "filter":
        assert not client and not server
    else:
        assert not client and server
    if not client and not server:
        # The mode cache may be filled on the way (``_full_mode``), as the Python path does.
        before.pop("mode")
        after.pop("mode")
        assert after == before


def test_not_bytes_and_wrong_calls() -> None:
    twin = Twin("chunk")
    assert not hotpath.client_chunk(twin.core, bytearray(_CLIENT_CHUNKS[0]))  # type: ignore[arg-type]
    relay = hotpath.relay(twin.core, lambda b: None, lambda: None, server=False)
    with pytest.raises(TypeError):
        relay()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        relay(b"", b"")  # type: ignore[call-arg]


def test_relay_runs_controls_and_hands_over_the_rest() -> None:
    twin = Twin("chunk")
    slow: list[bytes] = []
    runs: list[int] = []
    relay = hotpath.relay(twin.core, slow.append, lambda: runs.append(1), server=False)
    relay(_CLIENT_CHUNKS[0])  # taken: nothing handed over, no controls to run
    relay(_CLIENT_CHUNKS[6])  # a DELETE: handed to the Python data_received as it came
    assert slow == [_CLIENT_CHUNKS[6]] and runs == []
    twin.core.controls.append(object())  # type: ignore[arg-type]
    relay(_CLIENT_CHUNKS[0])
    assert runs == [1]


def test_pure_python_when_asked() -> None:
    """SOFTGUARD_PURE_PYTHON=1: no compiled module, plain base classes, ``relay`` hands back
    the Python data_received itself, and a core relays as before."""
    code = (
        "from softguard import speedups\n"
        "from softguard.proxy import hotpath\n"
        "from softguard.proxy.core import SessionCore\n"
        "assert speedups.compiled is None and not hotpath.COMPILED\n"
        "assert SessionCore.__mro__[1].__module__ == 'softguard.speedups'\n"
        "slow = print\n"
        "assert hotpath.relay(None, slow, print, server=True) is slow\n"
    )
    env = {**os.environ, "SOFTGUARD_PURE_PYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


_UPDATES = [
    _query(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};")
    for delta, aid in ((-17, 5), (-4711, 98765), (-3, 1))
]


@pytest.mark.parametrize("mode", ["python", "chunk"])
def test_an_allowed_shape_passes_unplanned_until_the_policy_changes(mode: str) -> None:
    """The session memo (statements.remember_allowed): the first UPDATE of a shape is
    planned, the next ones with other numbers pass as sent (the compiled path takes
    them), counted as planning counts them; a policy reload empties the memo, and the
    same shape is then decided anew (here: refused)."""
    twin = Twin(mode)
    for i, chunk in enumerate(_UPDATES):
        _fed(twin, "client", chunk)
        _fed(twin, "server", _SERVER_CHUNKS[0])
        assert twin.sinks.sent[-2] == ("server", chunk)
        assert twin.taken == (2 * i + 1 if mode == "chunk" else 0)  # with the answers
    assert twin.counter.counted == [("destructive", "allow")] * 3
    assert list(twin.core._allowed) == [
        b"UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;"
    ]
    apply_state(twin.core, "update-denied")
    _fed(twin, "client", _UPDATES[1])
    assert twin.taken == (5 if mode == "chunk" else 0)
    assert twin.sinks.sent[-1][0] == "server" and twin.sinks.sent[-1][1] != _UPDATES[1]
    assert b"42501" in twin.sinks.sent[-1][1]  # the refusal went in its place
    assert twin.counter.counted[-1] == ("destructive", "deny")
    assert twin.core._allowed == {}


@pytest.mark.parametrize("mode", ["python", "chunk"])
def test_an_allowed_shape_is_counted_in_the_metrics(mode: str) -> None:
    """With the process's own ``Metrics`` (its ``count_statement`` is CounterBase's, which
    the compiled path runs without a call), every allowed UPDATE is counted once, planned
    or remembered; the twin tests' ``Counter`` overrides the method and is called."""
    twin = Twin(mode)
    metrics = Metrics()
    twin.core.counter = metrics
    for chunk in _UPDATES:
        _fed(twin, "client", chunk)
        _fed(twin, "server", _SERVER_CHUNKS[0])
    assert twin.taken == (5 if mode == "chunk" else 0)
    counts = metrics.statement_counts()
    assert counts["destructive", "allow"] == 3
    assert sum(counts.values()) == 3


@pytest.mark.parametrize("parse", [False, True])
def test_a_shape_is_never_taken_from_another_text_of_its_fold(parse: bool) -> None:
    """The compiled path keeps an allowed shape with the digit-folded text it came from
    (one per fold), except where the shape keeps a digit of the text: `t1` and `t2` fold
    alike but are other tables. Remembered for t1, an UPDATE of t2 is still planned (and
    remembered under its own shape), by the compiled path as by Python's. The memo is the
    process's: names no other test sends, so that no earlier test filled this fold."""
    one, two = ("fold81", "fold82") if parse else ("fold71", "fold72")

    def chunk(sql: str) -> bytes:
        if parse:
            return message(b"P", b"\0" + sql.encode() + b"\0\0\0") + _BIND_EXECUTE_SYNC
        return _query(sql)

    def key(sql: str) -> bytes:
        return b"\0" + sql.encode() if parse else sql.encode()

    for mode in ("python", "chunk"):
        twin = Twin(mode)
        for n in (1, 2, 3):
            _fed(twin, "client", chunk(f"update {one} set x = {n}"))
            _fed(twin, "server", _SERVER_CHUNKS[0])
        assert list(twin.core._allowed) == [key(f"update {one} set x = 0")]
        taken = twin.taken
        _fed(twin, "client", chunk(f"update {two} set x = 5"))
        assert twin.taken == taken, mode  # planned, not passed as t1's shape
        assert sorted(twin.core._allowed) == [
            key(f"update {one} set x = 0"),
            key(f"update {two} set x = 0"),
        ]
        assert twin.counter.counted == [("destructive", "allow")] * 4


def test_slot_reads_follow_the_type() -> None:
    """The compiled path reads ``soft.prepared``, ``inputs.policy`` and
    ``policy.generation`` at their slots. Where the attribute is something else on that
    object's type (a subclass's property), or the class changed since the last read, it
    reads the generic way: a harmless Query is then declined as the Python path declines
    it (a prepared soft delete in play; a policy whose mode is read-only)."""
    harmless = _query("select 1")
    twin = Twin("chunk")
    _fed(twin, "client", harmless)
    assert twin.taken == 1  # read at the slots: taken

    class Prepared(SoftSession):
        __slots__ = ()

        def __init__(self) -> None:
            self.call_key = None

        @property
        def prepared(self) -> set[str]:  # type: ignore[override]
            return {"p"}

    soft = Prepared()
    SoftSession.prepared.__set__(soft, set())  # type: ignore[attr-defined]  # the slot: empty
    twin.core._soft = soft
    _fed(twin, "client", harmless)
    assert twin.taken == 1  # declined: a prepared soft delete is in play

    twin = Twin("chunk")
    _fed(twin, "client", harmless)
    assert twin.taken == 1
    policy = twin.core.inputs.policy
    original = Policy.generation
    try:
        # The class patched after the first read: generation now says "changed" for
        # good, the mode is decided again (read-only: the Query is planned, not taken).
        policy._config = PolicyConfig(mode="read-only")  # the slot's generation unchanged
        Policy.generation = property(lambda self: 10**6)  # type: ignore[assignment, misc]
        _fed(twin, "client", harmless)
        assert twin.taken == 1
    finally:
        Policy.generation = original  # type: ignore[misc]


@pytest.mark.parametrize(
    "sql",
    [
        "update t set x = '1'",  # a digit in a string: its shape is not kept
        "update t set x = 1 -- 1",  # nor in a comment
        "update softguard_x set x = 1",  # spells softguard's name
        "alter table t add column c int",  # table DDL: SAFE, never remembered anyway
        "delete from t where id = 1",  # protected: planned every time
        "update t set x = 1; select 2",  # two statements: remembered as one text
    ],
)
def test_what_the_session_memo_keeps_out(sql: str) -> None:
    twin = Twin("chunk")
    for _ in range(2):
        _fed(twin, "client", _query(sql))
        _fed(twin, "server", _SERVER_CHUNKS[0])
    kept = list(twin.core._allowed)
    if sql.endswith("select 2"):
        assert kept == [b"update t set x = 0; select 0"] and twin.taken == 3, twin.taken
    elif sql.startswith("delete"):
        assert kept == [] and twin.taken == 0  # its answers are paired with its capture
    else:
        assert kept == [] and twin.taken == 2, (kept, twin.taken)  # only the answers


def test_the_session_memo_is_not_filled_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG every allowed statement gets its log line: nothing is remembered."""
    twin = Twin("chunk")
    with caplog.at_level("DEBUG", logger="softguard.policy"):
        for chunk in _UPDATES:
            _fed(twin, "client", chunk)
            _fed(twin, "server", _SERVER_CHUNKS[0])
    assert twin.core._allowed == {} and twin.taken == 3  # the answers
    assert sum("allow" in r.getMessage() for r in caplog.records) == 3


def test_a_drivers_harmless_parse_chunk_is_taken() -> None:
    """Parse/Describe/Bind/Execute/Sync of a harmless text (psycopg with parameters,
    pgbench -M extended): sent as it came and counted SAFE, by the compiled path; one of
    a DELETE is left to the Python path, which plans it."""
    harmless = (
        message(b"P", b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\x01\0\0\0\x17")
        + message(b"D", b"P\0")
        + _BIND_EXECUTE_SYNC
    )
    for mode in ("python", "chunk"):
        twin = Twin(mode)
        for _ in range(3):
            _fed(twin, "client", harmless)
        assert twin.sinks.sent == [("server", harmless)] * 3
        assert all(b is harmless for _, b in twin.sinks.sent)
        assert twin.counter.safe_statements == 3 and twin.core.pending == 3
        assert twin.taken == (3 if mode == "chunk" else 0)
    twin = Twin("chunk")
    _fed(twin, "client", message(b"P", b"\0DELETE FROM t WHERE id = $1\0\0\0") + _BIND_EXECUTE_SYNC)
    assert twin.taken == 0 and twin.counter.counted == [("destructive", "protect")]


@pytest.mark.parametrize("mode", ["python", "chunk"])
def test_an_allowed_parse_shape_passes_unplanned(mode: str) -> None:
    """A driver's UPDATE with parameters (Parse ... Sync): planned once, then passed as
    sent by the session memo, under a key of its own (a Query of the same text is
    planned once too); a policy reload empties the memo."""
    text = b"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
    chunk = message(b"P", b"\0" + text + b"\0\0\0") + message(b"D", b"P\0") + _BIND_EXECUTE_SYNC
    twin = Twin(mode)
    for _ in range(3):
        _fed(twin, "client", chunk)
    assert twin.sinks.sent == [("server", chunk)] * 3
    assert twin.taken == (2 if mode == "chunk" else 0)
    assert twin.counter.counted == [("destructive", "allow")] * 3
    assert list(twin.core._allowed) == [b"\0" + text]
    _fed(twin, "client", _query(text.decode()))  # a Query of it: not the Parse's key
    assert twin.taken == (2 if mode == "chunk" else 0)
    assert sorted(twin.core._allowed) == [b"\0" + text, text]
    apply_state(twin.core, "update-denied")
    _fed(twin, "client", chunk)
    assert twin.taken == (2 if mode == "chunk" else 0)
    assert twin.counter.counted[-1] == ("destructive", "deny")
    assert twin.core._allowed == {}
