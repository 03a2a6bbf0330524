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
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.counting import Counter

from softguard.policy import Policy, PolicyConfig
from softguard.proxy import hotpath
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import FixedLedger, PlanInputs
from softguard.sql import Classifier
from softguard.sql.cache import SAFE_EMPTY
from softguard.wire import Message
from softguard.wire.results import ResultFilter

pytestmark = pytest.mark.skipif(
    not hotpath.COMPILED, reason="softguard.proxy._hotpath is not built (no C compiler?)"
)


def _frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def _query(sql: str) -> bytes:
    return _frame(b"Q", sql.encode() + b"\0")


_BIND_EXECUTE_SYNC = (
    _frame(b"B", b"\0s1\0\0\0\0\0\0\0") + _frame(b"E", b"\0\0\0\0\0") + _frame(b"S", b"")
)
_CLIENT_CHUNKS = [
    _query("SELECT abalance FROM pgbench_accounts WHERE aid = 42;"),
    _query("SELECT abalance FROM pgbench_accounts WHERE aid = 97;"),
    _query("BEGIN;"),
    _query("END;"),
    _query("select 1"),
    _query("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3;"),
    _query("delete from t where id = 1"),
    _query("select * from softguard.operations"),
    _query("select E'\\163oftguard'"),
    _query("select '" + "x" * 600 + "'"),  # beyond the memo: decided by the Python path
    _query("select 1") + _query("select 2"),  # two messages
    _frame(b"Q", b"select 1\0select 2\0"),  # a NUL inside the text
    _frame(b"Q", b"select 1"),  # no NUL at all
    _query("select 1")[:-3],  # incomplete
    _BIND_EXECUTE_SYNC,
    _frame(b"S", b""),
    _frame(b"P", b"\0select 1\0\0\0") + _BIND_EXECUTE_SYNC,  # a Parse inside: read
    _frame(b"P", b"\0delete from t\0\0\0") + _BIND_EXECUTE_SYNC,
    _BIND_EXECUTE_SYNC[:7],  # split Bind
    _BIND_EXECUTE_SYNC[7:],
    _frame(b"B", b"\0s1\0\0\0\0\0\0\0") + b"S\0\0\0\x05x",  # a Sync with a wrong length
    _frame(b"H", b""),
    b"Q\0\0\0\x02xx",  # a length under 4
    b"Q\x7f\xff\xff\xff" + b"x" * 10,  # a length beyond every limit
]
_SERVER_CHUNKS = [
    _frame(b"C", b"SELECT 1\0") + _frame(b"Z", b"I"),
    _frame(b"T", b"\0\0")
    + _frame(b"D", b"\0\x01\0\0\0\x011")
    + _frame(b"C", b"SELECT 1\0")
    + _frame(b"Z", b"T"),
    _frame(b"Z", b"E"),
    _frame(b"E", b"SERROR\0VERROR\0C42P01\0Mnope\0\0") + _frame(b"Z", b"E"),
    _frame(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0") + _frame(b"Z", b"I"),
    _frame(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0") + _frame(b"Z", b"I"),
    _frame(b"S", b"client_encoding\0LATIN1\0") + _frame(b"Z", b"I"),
    _frame(b"C", b"SELECT 1\0") + _frame(b"Z", b"I")[:3],  # split ReadyForQuery
    _frame(b"Z", b"I")[3:],
    _frame(b"C", b"SELECT 1\0"),
    _frame(b"C", b"SELECT 1\0") + b"Z\0\0\0\x06II",  # a ReadyForQuery with a wrong length
    b"C\0\0\0\x02" + _frame(b"Z", b"I"),  # a length under 4 before it
]


_DOLLAR_TAG = re.compile(rb"\$sg[0-9a-f]+\$")


class _Twin:
    """A READY core and what it sent, driven either way."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        self.sent: list[tuple[str, bytes]] = []
        self.counter = Counter()
        inputs = PlanInputs(Classifier(), Policy(PolicyConfig()), FixedLedger())
        self.core = SessionCore(
            CoreConfig(),
            inputs,
            self.counter,
            to_server=lambda b: self.sent.append(("server", b)),
            to_client=lambda b: self.sent.append(("client", b)),
        )
        self.core.state = State.READY
        self.core._sframer.set_want(frozenset(b"ZEN") | {ord("S")})
        self.taken = 0

    def event(self, side: str, data: bytes) -> None:
        core = self.core
        if side == "client":
            if self.compiled and hotpath.client_chunk(core, data):
                self.taken += 1
                return
            core.client_data(data)
        else:
            if self.compiled and hotpath.server_chunk(core, data):
                self.taken += 1
                return
            core.server_data(data)

    def snapshot(self) -> dict[str, Any]:
        core = self.core

        def framer(f: Any) -> tuple[Any, ...]:
            return (f._skip, f._head, None if f._acc is None else bytes(f._acc), f._acc_total)

        return {
            # Refusals quote with random dollar tags: read alike.
            "sent": [(side, _DOLLAR_TAG.sub(b"$sg$", b)) for side, b in self.sent],
            "state": core.state,
            "pending": core.pending,
            "tx_status": core.tx_status,
            "client_bytes": core._client_bytes,
            "safe": self.counter.safe_statements,
            "counted": list(self.counter.counted),
            "controls": [repr(c) for c in core.controls],
            "cframer": framer(core._cframer),
            "sframer": framer(core._sframer),
            "server_fatal": core._server_fatal,
            "encoding": core.client_encoding,
            "held_out": core._held_out,
            "answers_plain": core._answers_plain,
            "stall_armed": core._stall_armed,
            "mode": (core._mode_generation, core._mode_is_full),
        }


def _tweak(name: str) -> Callable[[SessionCore], None]:
    """Core states under which the Python fast path steps aside (or stops doing so)."""

    def apply(core: SessionCore) -> None:
        if name == "filter":
            core._filter = ResultFilter()
            core._answers_plain = False
        elif name == "unfilter":
            core._filter = None
            core._answers_plain = True
        elif name == "known":
            core._known = (Message(ord("Q"), b"x\0", 0, 7), SAFE_EMPTY)
        elif name == "unknown":
            core._known = None
        elif name == "prepared":
            core._soft.prepared.add("p")
        elif name == "unprepared":
            core._soft.prepared.clear()
        elif name == "read-only":
            core.inputs.policy.config = PolicyConfig(mode="read-only")
        elif name == "full":
            core.inputs.policy.config = PolicyConfig()
        elif name == "timings":
            core._timings = [[1, 0.0]]
        elif name == "protected":
            core._protected.append(("delete", "delete from t"))
        elif name == "read-only-lost":
            core._read_only_lost = True
        elif name == "shutdown":
            core._closing_for_shutdown = True
        elif name == "calm":
            core._timings = None
            core._protected.clear()
            core._read_only_lost = False
            core._closing_for_shutdown = False

    return apply


_TWEAKS = [
    "filter", "unfilter", "known", "unknown", "prepared", "unprepared", "read-only", "full",
    "timings", "protected", "read-only-lost", "shutdown", "calm",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_compiled_and_python_fast_paths_agree(seed: int) -> None:
    rng = random.Random(seed)
    python, compiled = _Twin(compiled=False), _Twin(compiled=True)
    for step in range(60):  # bounded
        roll = rng.random()
        if roll < 0.1:
            tweak = _tweak(rng.choice(_TWEAKS))
            tweak(python.core)
            tweak(compiled.core)
            continue
        side = "client" if roll < 0.55 else "server"
        data = rng.choice(_CLIENT_CHUNKS if side == "client" else _SERVER_CHUNKS)
        python.event(side, data)
        compiled.event(side, data)
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
        python, compiled = _Twin(compiled=False), _Twin(compiled=True)
        chunk = _query(sql.translate(fold))
        for _ in range(2):
            python.event("client", chunk)
            compiled.event("client", chunk)
            python.event("server", _SERVER_CHUNKS[0])
            compiled.event("server", _SERVER_CHUNKS[0])
            assert compiled.snapshot() == python.snapshot(), sql
        taken += compiled.taken
    assert taken > len(_TEXTS)  # harmless ones were taken, answers too


def test_the_corpus_reaches_the_compiled_paths() -> None:
    """The agreement above is not vacuous: the compiled paths take these chunks."""
    twin = _Twin(compiled=True)
    for data in (_CLIENT_CHUNKS[0], _CLIENT_CHUNKS[1], _BIND_EXECUTE_SYNC):
        twin.event("client", data)
    for data in (_SERVER_CHUNKS[0], _SERVER_CHUNKS[1], _SERVER_CHUNKS[2]):
        twin.event("server", data)
    assert twin.taken == 6
    assert [side for side, _ in twin.sent] == ["server"] * 3 + ["client"] * 3
    assert all(b is d for (_, b), d in zip(twin.sent, [_CLIENT_CHUNKS[0]], strict=False))
    assert twin.core.pending == 0 and twin.counter.safe_statements == 2


@pytest.mark.parametrize(
    "tweak", ["filter", "known", "prepared", "read-only", "timings", "protected", "shutdown"]
)
def test_the_compiled_paths_step_aside(tweak: str) -> None:
    """Under each state the Python fast path does not take, neither does the compiled one
    (and it changes nothing when it declines)."""
    twin = _Twin(compiled=True)
    _tweak(tweak)(twin.core)
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
    twin = _Twin(compiled=True)
    assert not hotpath.client_chunk(twin.core, bytearray(_CLIENT_CHUNKS[0]))  # type: ignore[arg-type]
    relay = hotpath.relay(twin.core, lambda b: None, lambda: None, server=False)
    with pytest.raises(TypeError):
        relay()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        relay(b"", b"")  # type: ignore[call-arg]


def test_relay_runs_controls_and_hands_over_the_rest() -> None:
    twin = _Twin(compiled=True)
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
