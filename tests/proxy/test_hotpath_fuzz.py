"""The compiled fast path (``softguard._hotpath``, decision 0034) under attack.

test_hotpath.py holds the compiled path to the Python one over seeded, hand-picked
chunks. Here the inputs are generated (hypothesis: a grammar of protocol messages, split
and merged at random, texts from the classifier's and the attacks' corpora mutated in
their digits, case, comments and escapes, plus plain random bytes up to 70,000), the
core's fields are set to odd but type-valid values or deleted, and the callbacks the C
code makes (sinks, ``__bool__``, ``__eq__``, ``harmless_shape``) collect garbage, raise,
re-enter or drop the last reference to what is being read. Two things must hold each
time: the same outcome (bytes, state, exception type) as the Python core alone, and no
crash. ``tests/tools/asan_hotpath.sh`` runs this module against a build of the C file with
AddressSanitizer and UBSan, which is what turns a read of freed memory into a failure.
"""

from __future__ import annotations

import gc
import os
import re
import struct
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hotpath_twins import MODES, Twin, apply_state

from softguard.proxy import hotpath
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import UNREAD_MEMO_BYTES, harmless_shape
from softguard.wire.messages import message

pytestmark = pytest.mark.skipif(
    not hotpath.COMPILED, reason="softguard._hotpath is not built (no C compiler?)"
)

_compiled: Any = hotpath.compiled
# Examples per generated test: modest by default (the whole module runs in ~10 s); a long
# run (with tests/tools/asan_hotpath.sh, say) sets SOFTGUARD_FUZZ_EXAMPLES=5000.
_EXAMPLES = int(os.environ.get("SOFTGUARD_FUZZ_EXAMPLES", "120"))


def _query(text: bytes) -> bytes:
    return message(b"Q", text + b"\0")


_BES = message(b"B", b"\0s1\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b"")
_ANSWER = message(b"C", b"SELECT 1\0") + message(b"Z", b"I")
_HARMLESS = _query(b"select abalance from pgbench_accounts where aid = 17")


def _twins(config: CoreConfig | None = None) -> list[Twin]:
    return [Twin(mode, config) for mode in MODES]


def _same(twins: list[Twin], side: str, data: bytes, why: object = "") -> None:
    outcomes = [t.event(side, data) for t in twins]
    assert outcomes[1:] == outcomes[:1] * 2, (why, side, data[:80], outcomes)
    first = twins[0].snapshot()
    for twin in twins[1:]:
        assert twin.snapshot() == first, (why, twin.mode, side, data[:80])
    for twin in twins:  # compared: long sessions stay linear
        twin.sinks.sent.clear()


def _both(twins: list[Twin], change: Callable[[SessionCore], None]) -> None:
    for twin in twins:
        change(twin.core)


# ---------------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    "where, name",
    [
        ("cframer", "_head"),
        ("sframer", "_head"),
        ("core", "inputs"),
        ("core", "counter"),
        ("core", "controls"),
        ("core", "_soft"),
        ("core", "to_server"),
        ("core", "to_client"),
    ],
)
def test_an_unset_field_fails_as_the_python_path_does(where: str, name: str) -> None:
    """A field deleted from the C base reads as NULL. The compiled path used to return
    "error" without setting one for some of them (a SystemError out of the relay); it
    must step aside, or raise what the Python path raises, after the same changes."""
    twins = _twins()
    for twin in twins:
        target = {"core": twin.core, "cframer": twin.core._cframer}.get(where)
        delattr(target if target is not None else twin.core._sframer, name)
    for side, data in [("client", _HARMLESS), ("client", _BES), ("server", _ANSWER)]:
        _same(twins, side, data, name)


@pytest.mark.parametrize("name", ["pending", "_client_bytes", "safe_statements"])
def test_counters_at_their_limit_overflow_as_in_python(name: str) -> None:
    """A C counter at PY_SSIZE_T_MAX: ``+= 1`` in C was signed overflow (undefined; in
    practice pending turned negative and the next ReadyForQuery was not owed). The Python
    path raises OverflowError at the assignment; the compiled one must do the same."""
    twins = _twins()
    for twin in twins:
        owner = twin.counter if name == "safe_statements" else twin.core
        setattr(owner, name, sys.maxsize)
    _same(twins, "client", _HARMLESS, name)
    _same(twins, "client", _BES, name)
    assert twins[1].core.pending >= 0 and twins[2].core.pending >= 0


class _Raising:
    """A field value whose truth cannot be told."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth here")

    def __len__(self) -> int:
        raise RuntimeError("no length here")


@pytest.mark.parametrize(
    "name, value",
    [
        ("_cframer", None),
        ("_sframer", 3),
        ("state", "READY"),
        ("_known", 0),
        ("_filter", 0),
        ("_soft", object()),
        ("inputs", object()),
        ("counter", object()),
        ("_timings", _Raising()),
        ("_protected", _Raising()),
        ("controls", _Raising()),
        ("to_server", None),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_field_of_the_wrong_type_fails_as_the_python_path_does(name: str, value: Any) -> None:
    """The C members typed "object" take any value: each is either not the C path's
    (it steps aside) or fails with the Python path's exception after the same changes."""
    twins = _twins()
    for twin in twins:
        setattr(twin.core, name, value)
    for side, data in [("client", _HARMLESS), ("server", _ANSWER), ("client", _BES)]:
        _same(twins, side, data, name)


class _Nosy:
    """A set member that looks like a message type to a hash lookup and runs code when
    compared: what a frozenset of foreign objects in a framer's tables can do."""

    calls = 0

    def __init__(self, value: int, action: Callable[[], None]) -> None:
        self.value = value
        self.action = action

    def __hash__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        type(self).calls += 1
        self.action()
        return other == self.value


def test_a_framer_table_with_foreign_members_is_not_read_by_c() -> None:
    """The compiled path caches a framer's frozenset as a 256-entry table, asking the set
    about each byte. A member that runs code when compared could free the framer being
    read (here it replaces the core's framer): the C path must leave such sets to the
    Python code (AddressSanitizer saw the freed framer and set read on main)."""
    twin = Twin("chunk")
    core = twin.core

    def swap() -> None:
        core._cframer = core._client_framer()
        gc.collect()

    core._cframer._readable = frozenset({ord("S"), _Nosy(ord("Q"), swap)})
    _Nosy.calls = 0
    assert not hotpath.client_chunk(core, _HARMLESS)
    assert _Nosy.calls == 0, "the compiled path compared a foreign set member"
    assert twin.sinks.sent == []


class _Treacherous:
    """A framer's ``_head``: empty, and while asked about it, the core's framer is
    replaced and the old one collected."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    def __bool__(self) -> bool:
        core = self.core
        if core is not None:
            self.core = None  # once
            core._sframer = type(core._sframer)(want=frozenset(b"ZENS"))
            gc.collect()
        return False


def test_a_framer_freed_while_being_read_is_not_read_again() -> None:
    """``lone_last`` asks ``bool(_head)`` and then reads the framer's stop table: a framer
    freed in between was read after being freed (AddressSanitizer: heap-use-after-free).
    The compiled path holds the framer while it reads it."""
    for _ in range(5):
        twins = _twins()
        for twin in twins:
            core = twin.core
            framer = core._sframer
            framer._head = _Treacherous(core)
            del framer, core
        _same(twins, "server", _ANSWER)


def test_a_reentrant_harmless_shape_leaks_no_memo_entry() -> None:
    """The memo's free slot was found before asking ``harmless_shape`` and written after:
    a call that re-entered the fast path (or another thread while it held no GIL) filled
    that slot meanwhile, and the outer write dropped that entry's reference on the floor
    (a leak) or broke the probe chain. The slot is found again after the call."""
    seen: list[bytes] = []
    depth = [0]

    def shape(folded: bytes) -> bool | None:
        if not folded.startswith(b"select 'reentrant"):
            return harmless_shape(folded)
        seen.append(folded)
        if depth[0] == 0:
            depth[0] += 1
            try:
                hotpath.client_chunk(twin.core, chunk)  # the same text: the same slot
            finally:
                depth[0] -= 1
        return harmless_shape(folded)

    twin = Twin("chunk")
    text = b"select 'reentrant memo probe' from t where a = 9 -- %d" % id(seen)
    chunk = _query(text)
    _compiled.configure(State.READY, shape, UNREAD_MEMO_BYTES)
    try:
        assert hotpath.client_chunk(twin.core, chunk)
        _fill_memo(twin.core)  # the memo empties: every entry it held is released
    finally:
        _compiled.configure(State.READY, harmless_shape, UNREAD_MEMO_BYTES)
    assert len(seen) == 2
    # Held by: our list, the name `f`, getrefcount's argument; nothing else.
    extra = [sys.getrefcount(f) - 3 for f in seen]
    assert extra == [0, 0], f"memo references left behind: {extra}"


def _fill_memo(core: SessionCore, count: int = 4200) -> None:
    """More distinct harmless texts than the memo holds (4,096): it empties once."""
    for i in range(count):
        assert hotpath.client_chunk(core, _query(b"select " + _letters(i)))


def _letters(i: int) -> bytes:
    """A name per number without digits (the memo reads digits as 0), none a keyword."""
    out = b"x"
    while True:
        out += bytes((ord("a") + i % 26,))
        i //= 26
        if not i:
            return out


# ---------------------------------------------------------------------------- generated

_ROOT = Path(__file__).resolve().parent.parent
_SQLISH = re.compile(r"^\s*(select|insert|update|delete|drop|truncate|alter|create|do|with|"
                     r"call|copy|merge|prepare|execute|begin|set|grant|lock|vacuum|explain)\b",
                     re.IGNORECASE)  # fmt: skip


def _corpus() -> list[bytes]:
    """The classifier's cases and the SQL-looking string constants of the attack modules,
    plus texts aimed at the fast path's own reading (softguard's names spelled with
    escapes, a NUL, bytes that are not UTF-8, sizes around the memo's limit)."""
    import ast

    texts = [
        line
        for line in (_ROOT / "sql" / "cases" / "classify.txt").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "=> "))
    ]
    for module in sorted((_ROOT / "attacks").glob("test_attack_*.py")):
        for node in ast.walk(ast.parse(module.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _SQLISH.match(node.value) and len(node.value) < 4000:
                    texts.append(node.value)
    out = [t.encode() for t in dict.fromkeys(texts)]
    out += [
        b"select * from softguard.operations",
        b'select * from "softguard".operations',
        b'select * from U&"\\0073oftguard".operations',
        b"select E'\\163oftguard'",
        b"select 'soft'\n'guard'",
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        b"select 1 /* drop */",
        b"select \xff\xfe from t",
        b"select $a1$ x $a2$ y $a1$; drop table t; select $a3$ z $a2$ w $a3$",
        b"select '" + b"x" * (UNREAD_MEMO_BYTES - 10) + b"'",
        b"select '" + b"x" * (UNREAD_MEMO_BYTES - 9) + b"'",
        b"select '" + b"x" * (UNREAD_MEMO_BYTES - 8) + b"'",
    ]
    return out


_TEXTS = _corpus()


@st.composite
def _texts(draw: st.DrawFn) -> bytes:
    """A corpus text, mutated the ways the memo's folding and the prefilter read."""
    text = bytearray(draw(st.sampled_from(_TEXTS)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["digits", "case", "comment", "escape", "bytes", "pad"]))
        at = draw(st.integers(0, len(text)))
        if how == "digits":
            digit = draw(st.sampled_from(b"0123456789"))
            text = bytearray(re.sub(rb"[0-9]", bytes((digit,)), bytes(text)))
        elif how == "case":
            text = bytearray(bytes(text).swapcase())
        elif how == "comment":
            text[at:at] = draw(st.sampled_from([b"/* drop */", b"--x\n", b" ", b"\n"]))
        elif how == "escape":
            text[at:at] = draw(st.sampled_from([b'U&"\\0073"', b"E'\\163'", b"u&", b"$1"]))
        elif how == "bytes":
            text[at:at] = draw(st.sampled_from([b"\xff", b"\x80\x80", b"\0", b"\xc3\xa9"]))
        else:  # sizes around the memo's limit
            target = UNREAD_MEMO_BYTES + draw(st.integers(-2, 2))
            text += b" " * max(0, target - len(text))
    return bytes(text)


def _client_messages() -> st.SearchStrategy[bytes]:
    text = _texts()
    return st.one_of(
        text.map(_query),
        text.map(_query),
        text.map(lambda t: message(b"P", b"\0" + t + b"\0\0\0")),
        st.just(_BES),
        st.just(message(b"S", b"")),
        st.just(message(b"H", b"")),
        st.just(message(b"D", b"S\0")),
        st.just(message(b"C", b"Ss1\0")),
        st.just(message(b"d", b"copy data")),
        st.just(message(b"F", struct.pack("!IhhhIh", 764, 1, 0, 1, 0, 0))),
        st.tuples(st.integers(0, 255), st.binary(max_size=20)).map(
            lambda tb: message(bytes((tb[0],)), tb[1])
        ),
    )


def _server_messages() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(b"IETX").map(lambda s: message(b"Z", bytes((s,)))),
        st.just(message(b"C", b"SELECT 1\0")),
        st.just(message(b"T", b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0")),
        st.just(message(b"D", b"\0\x01\0\0\0\x011")),
        st.just(message(b"E", b"SERROR\0VERROR\0C42P01\0Mnope\0\0")),
        st.just(message(b"E", b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0")),
        st.just(message(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mhi\0\0")),
        st.just(message(b"S", b"client_encoding\0LATIN1\0")),
        st.just(message(b"S", b"default_transaction_read_only\0off\0")),
        st.sampled_from(b"123nstKA").map(lambda t: message(bytes((t,)), b"")),
        st.tuples(st.integers(0, 255), st.binary(max_size=12)).map(
            lambda tb: message(bytes((tb[0],)), tb[1])
        ),
    )


@st.composite
def _chunks(draw: st.DrawFn, messages: st.SearchStrategy[bytes]) -> list[bytes]:
    """Whole messages glued together, then maybe a length field bent, then cut at random
    points (a chunk boundary anywhere, as TCP may cut)."""
    stream = bytearray(b"".join(draw(st.lists(messages, min_size=1, max_size=4))))
    if draw(st.integers(0, 5)) == 0 and len(stream) >= 5:
        at = draw(st.integers(1, len(stream) - 4))
        bent = draw(st.sampled_from([-1, 1, 0x7FFFFFFF, -0x80000000, 0xFFFFFFFF - 3]))
        (old,) = struct.unpack_from("!I", stream, at)
        struct.pack_into("!I", stream, at, (old + bent) & 0xFFFFFFFF)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    out, start = [], 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            out.append(bytes(stream[start:cut]))
            start = cut
    return out


_TWEAKS = [
    "filter", "prepared", "unprepared", "read-only", "full", "timings", "protected",
    "read-only-lost", "shutdown", "calm", "pending-negative", "tx-odd", "tight-limits",
    "zero-limits", "mutable-sets", "no-head", "generation-jump",
]  # fmt: skip

# The fast paths' own shapes (a lone message; whole messages ending in ReadyForQuery or
# Sync) are rare among random cuts: they get their own share of the events.
_lone = _client_messages().map(lambda m: [m])
_synced = st.lists(_client_messages(), max_size=3).map(lambda ms: [b"".join(ms) + _BES])
_answer = st.lists(_server_messages(), max_size=3).map(
    lambda ms: [b"".join(ms) + message(b"Z", b"I")]
)
_events = st.lists(
    st.one_of(
        st.tuples(st.just("client"), _lone),
        st.tuples(st.just("client"), _synced),
        st.tuples(st.just("client"), _chunks(_client_messages())),
        st.tuples(st.just("server"), _answer),
        st.tuples(st.just("server"), _chunks(_server_messages())),
        st.tuples(st.just("tweak"), st.sampled_from(_TWEAKS)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    events=_events,
    start=st.lists(st.sampled_from(_TWEAKS), max_size=3, unique=True),
    small=st.booleans(),
)
def test_generated_sessions_agree(
    events: list[tuple[str, Any]], start: list[str], small: bool
) -> None:
    """Three cores (Python only, compiled chunk functions first, compiled Relay), the same
    generated events, from a generated state: after each, the same bytes, state and
    exception."""
    twins = _twins(CoreConfig(max_inspect_bytes=600) if small else None)
    for tweak in start:
        _both(twins, lambda core, w=tweak: apply_state(core, w))
    for i, (kind, what) in enumerate(events):
        if kind == "tweak":
            _both(twins, lambda core, w=what: apply_state(core, w))
            continue
        for chunk in what:
            _same(twins, kind, chunk, i)
        if twins[0].core.state is State.CLOSED:
            return


@st.composite
def _raw(draw: st.DrawFn) -> bytes:
    """Bytes of any length to 70,000: a type, a length field near or past every limit
    (or the true one), and a body of NULs, 0xFF or text; sometimes ending in a
    ReadyForQuery or a Sync so that the walk of ``lone_last`` runs."""
    size = draw(st.sampled_from([0, 1, 4, 5, 6, 7, 600, 601, 65535, 65536, 69999, 70000]))
    size = max(0, size + draw(st.integers(-2, 2)))
    filler = draw(st.sampled_from([b"\0", b"\xff", b"x", b"Q\0\0\0\x05", b"\x7f\xff"]))
    body = (filler * (size // len(filler) + 1))[:size]
    kind = draw(st.sampled_from(b"QSZBPEDCd\0\xff"))
    length = draw(st.sampled_from([size + 4, size + 3, size + 5, 0, 3, 4, 0x7FFFFFFF, 0xFFFFFFFF]))
    head = bytes((kind,)) + struct.pack("!I", length & 0xFFFFFFFF)
    tail = draw(st.sampled_from([b"", message(b"Z", b"I"), message(b"S", b""), b"Z\0\0\0\x05"]))
    return (head + body + tail)[: draw(st.integers(0, 70_100))]


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_raw(), side=st.sampled_from(["client", "server"]), small=st.booleans())
def test_raw_bytes_agree(data: bytes, side: str, small: bool) -> None:
    """Any bytes, one chunk after a harmless exchange: the same outcome, no crash."""
    twins = _twins(CoreConfig(max_inspect_bytes=600) if small else None)
    _same(twins, "client", _HARMLESS)
    _same(twins, side, data)
    _same(twins, "server", _ANSWER)


# ---------------------------------------------------------------------------- the memo


def _fnv_slot(folded: bytes) -> int:
    """The C memo's home slot for a folded text (FNV-1a, 8,192 slots)."""
    h = 0xCBF29CE484222325
    for byte in folded:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 8191


def _same_slot_texts(count: int) -> Iterator[bytes]:
    """Distinct texts that start their probe at the same slot: a harmless one, then
    destructive and softguard-naming ones, which must not be found at it."""
    home = _fnv_slot(b"select 'a'")
    yield b"select 'a'"
    stems = [b"delete from t where b = '", b"select * from softguard.ops where c = '"]
    i = 0
    while count:
        for stem in stems:
            text = stem + _letters(i) + b"'"
            if _fnv_slot(text) == home:
                yield text
                count -= 1
        i += 1


def test_memo_probe_chains_are_exact() -> None:
    """Texts colliding on the memo's home slot (a probe chain of harmless, destructive
    and softguard-naming texts): each decided as the Python path decides it."""
    texts = list(_same_slot_texts(6))
    twins = _twins()
    for text in texts + texts[::-1] + texts:
        _same(twins, "client", _query(text), text)
        _same(twins, "server", _ANSWER)


def test_the_memo_filling_and_emptying_mid_session_changes_nothing() -> None:
    """Thousands of distinct harmless texts (the memo fills and empties twice) interleaved
    with destructive and softguard-naming ones of the same digit-folded shape."""
    twins = _twins()
    for i in range(9000):
        name = _letters(i)
        _same(twins, "client", _query(b"select " + name + b" from t where id = %d" % i), i)
        _same(twins, "server", _ANSWER)
        if i % 997 == 0:
            for bad in (b"delete from " + name, b"select * from softguard." + name):
                _same(twins, "client", _query(bad), bad)
                _same(twins, "server", _ANSWER)
    assert twins[1].counter.safe_statements > 8000  # the compiled path was in play


# ---------------------------------------------------------------------------- callbacks


def _session(twins: list[Twin], rounds: int = 3) -> None:
    """A session's worth of the fast paths' chunks and their near misses."""
    chunks = [
        ("client", _HARMLESS),
        ("server", _ANSWER),
        ("client", _BES),
        ("server", message(b"2", b"") + message(b"C", b"SELECT 1\0") + message(b"Z", b"T")),
        ("client", _query(b"delete from t where id = 1")),
        ("server", message(b"C", b"DELETE 1\0") + message(b"Z", b"I")),
        ("client", _query(b"select 1") + _query(b"select 2")),
        ("server", _ANSWER + _ANSWER),
    ]
    for i in range(rounds):
        for side, data in chunks:
            _same(twins, side, data, i)


def test_a_sink_that_collects_garbage() -> None:
    twins = _twins()
    for twin in twins:
        twin.sinks.hook = lambda side, data: gc.collect()
    _session(twins, rounds=1)


def test_a_sink_that_raises() -> None:
    """The write fails (a closed transport, say): the same exception, after the same
    changes to the core, whichever path took the chunk."""
    for fail_at in range(1, 12):
        twins = _twins()
        for twin in twins:
            count = [0]

            def hook(
                side: str, data: bytes, count: list[int] = count, fail_at: int = fail_at
            ) -> None:
                count[0] += 1
                if count[0] == fail_at:
                    raise ConnectionResetError("peer gone")

            twin.sinks.hook = hook
        _session(twins, rounds=1)


def test_a_sink_that_reenters_the_relay() -> None:
    """Writing the client's chunk to the server delivers the server's answer at once
    (inside the write, as a synchronous transport could): the answer is relayed inside
    the Query's relay, alike on every path."""
    twins = _twins()
    for twin in twins:
        twin.sinks.hook = _answering(twin)
    _session(twins)


def _answering(twin: Twin) -> Callable[[str, bytes], None]:
    """A sink hook: each write to the server brings the server's answer at once."""

    def hook(side: str, data: bytes) -> None:
        if side == "server" and twin.sinks.hook is hook:
            twin.sinks.hook = None  # once per chunk: no endless ping-pong
            try:
                twin.event("server", _ANSWER)
            finally:
                twin.sinks.hook = hook

    return hook


def test_a_sink_that_drops_the_last_references() -> None:
    """The sink deletes the only references the application kept to the relay, the core
    and its framers while the relay runs (and collects): nothing read afterwards may be
    freed memory (AddressSanitizer run), and it all goes once the call returns."""
    for data in (_HARMLESS, _BES):
        twin: Twin | None = Twin("relay")
        assert twin is not None
        holder = {"relay": twin.relays[0], "twin": twin}

        def hook(side: str, sent: bytes, holder: dict[str, Any] = holder) -> None:
            holder.clear()
            gc.collect()

        twin.sinks.hook = hook
        core = twin.core
        twin = None
        relay = holder["relay"]
        del core
        relay(data)  # the caller's own reference is the last one
        del relay
        assert holder == {}
        gc.collect()


def test_the_relay_keeps_no_references() -> None:
    """Every object a Relay call touches (the chunk, the core, the sinks, the relay
    itself) has the same reference count after thousands of calls taking either path,
    raising or not: no reference leaks."""
    twin = Twin("relay")
    client, server = twin.relays
    fail = [False]

    def hook(side: str, data: bytes) -> None:
        if fail[0]:
            raise ConnectionResetError("peer gone")

    twin.sinks.hook = hook
    chunks = [
        (client, _HARMLESS),
        (server, _ANSWER),
        (client, _BES),
        (server, _ANSWER),
        (client, _query(b"select 1") + _query(b"select 2")),
        (server, _ANSWER + _ANSWER),
    ]
    core = twin.core
    watched = [c for _, c in chunks] + [client, server, core, core.to_server, core.to_client]

    def run(times: int) -> None:
        for i in range(times):
            fail[0] = i % 7 == 0
            for relay, data in chunks:
                try:
                    relay(data)
                except ConnectionResetError:
                    pass
            twin.sinks.sent.clear()

    run(50)  # caches warm
    before = [sys.getrefcount(o) for o in watched]
    run(3000)
    assert [sys.getrefcount(o) for o in watched] == before


def test_the_fast_paths_hold_no_memory() -> None:
    """Traced memory after 30,000 fast chunks (memo hits and misses: the memo fills and
    empties) is what it was after the first thousands, within the memo's own size."""
    twin = Twin("relay")
    client, server = twin.relays

    def run(start: int, count: int) -> None:
        for i in range(start, start + count):
            # 3,000 shapes: mostly memo hits, and misses while it refills after emptying
            client(_query(b"select " + _letters(i % 3000) + b" where a = %d" % i))
            server(_ANSWER)
            client(_BES)
            server(_ANSWER)
            twin.sinks.sent.clear()

    run(0, 12_000)  # the memo has filled (with other tests' texts) and emptied
    gc.collect()
    tracemalloc.start()
    try:
        run(12_000, 2_000)
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        run(14_000, 30_000)
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The memo holds at most 4,096 texts of ~40 bytes (~300 KiB with bytes headers);
    # anything per chunk would be 30,000 x (at least 32 bytes) = ~1 MiB beyond that.
    assert second - first < 400_000, (first, second)
