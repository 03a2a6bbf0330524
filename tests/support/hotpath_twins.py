"""Cores driven by the Python fast path and by the compiled one, side by side
(tests/proxy/test_hotpath.py, tests/proxy/test_hotpath_fuzz.py; decision 0034).

A ``Twin`` is a READY ``SessionCore`` and what it did, driven through the Python core only
(mode "python"), the compiled chunk functions first ("chunk"), or a compiled ``Relay`` as
uvloop calls it ("relay"). ``apply_state`` puts a core in one of the states under which a
fast path steps aside (or takes odd values), the same way for every twin.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from softguard.policy import Policy, PolicyConfig
from softguard.proxy import hotpath
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import FixedLedger, PlanInputs
from softguard.sql import Classifier
from softguard.sql.cache import SAFE_EMPTY
from softguard.wire import Message
from softguard.wire.results import ResultFilter
from support.counting import Counter

# Refusals quote with random dollar tags: snapshots read them alike.
DOLLAR_TAG = re.compile(rb"\$sg[0-9a-f]+\$")
UNSET = "<unset>"
MODES = ("python", "chunk", "relay")


class Sinks:
    """Where a core's bytes go; a hook may run inside the write (GC, raising, re-entry)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.hook: Callable[[str, bytes], None] | None = None

    def sink(self, side: str) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            self.sent.append((side, bytes(data)))  # the very object, when it is bytes
            hook = self.hook
            if hook is not None:
                hook(side, data)

        return write


def _listed(controls: Any) -> Any:
    return [repr(c) for c in controls] if isinstance(controls, list) else type(controls)


class Twin:
    """A READY core and what it did, driven as its ``mode`` says; ``taken`` counts the
    chunks the compiled chunk functions took."""

    def __init__(self, mode: str, config: CoreConfig | None = None) -> None:
        assert mode in MODES
        self.mode = mode
        self.sinks = Sinks()
        self.counter = Counter()
        self.runs = 0
        self.taken = 0
        inputs = PlanInputs(Classifier(), Policy(PolicyConfig()), FixedLedger())
        self.core = SessionCore(
            config or CoreConfig(),
            inputs,
            self.counter,
            to_server=self.sinks.sink("server"),
            to_client=self.sinks.sink("client"),
        )
        self.core.state = State.READY
        self.core._sframer.set_want(frozenset(b"ZENS"))
        self.relays = (
            (
                hotpath.relay(self.core, self._slow_client, self._run, server=False),
                hotpath.relay(self.core, self._slow_server, self._run, server=True),
            )
            if mode == "relay"
            else ()
        )

    # What ClientSession / UpstreamProtocol do around the core.
    def _run(self) -> None:
        self.runs += 1
        self.core.controls.clear()

    def _slow_client(self, data: bytes) -> None:
        self.core.client_data(data)
        if self.core.controls:
            self._run()

    def _slow_server(self, data: bytes) -> None:
        self.core.server_data(data)
        if self.core.controls:
            self._run()

    def event(self, side: str, data: bytes) -> str | None:
        """Feed one chunk; the name of the exception it raised, if any."""
        try:
            self._event(side, data)
        except Exception as exc:  # the outcome compared, whatever it is
            return type(exc).__name__
        return None

    def _event(self, side: str, data: bytes) -> None:
        core, client = self.core, side == "client"
        if self.mode == "relay":
            self.relays[0 if client else 1](data)
            return
        if self.mode == "chunk":
            if (hotpath.client_chunk if client else hotpath.server_chunk)(core, data):
                self.taken += 1
                if core.controls:
                    self._run()
                return
        (self._slow_client if client else self._slow_server)(data)

    def snapshot(self) -> dict[str, Any]:
        core = self.core

        def field(obj: Any, name: str) -> Any:
            value = getattr(obj, name, UNSET)
            return bytes(value) if isinstance(value, bytearray) else value

        def framer(f: Any) -> tuple[Any, ...]:
            return tuple(field(f, n) for n in ("_skip", "_head", "_acc", "_acc_total"))

        return {
            "sent": [(side, DOLLAR_TAG.sub(b"$sg$", b)) for side, b in self.sinks.sent],
            "state": field(core, "state"),
            "pending": field(core, "pending"),
            "tx_status": field(core, "tx_status"),
            "client_bytes": field(core, "_client_bytes"),
            "safe": self.counter.safe_statements,
            "counted": list(self.counter.counted),
            "controls": _listed(getattr(core, "controls", UNSET)),
            "runs": self.runs,
            "cframer": framer(getattr(core, "_cframer", None)),
            "sframer": framer(getattr(core, "_sframer", None)),
            "server_fatal": field(core, "_server_fatal"),
            "encoding": field(core, "client_encoding"),
            "held_out": field(core, "_held_out"),
            "answers_plain": field(core, "_answers_plain"),
            "stall_armed": field(core, "_stall_armed"),
            "mode": (field(core, "_mode_generation"), field(core, "_mode_is_full")),
            "allowed": dict(field(core, "_allowed")),
        }


def apply_state(core: SessionCore, name: str) -> None:
    """Put ``core`` in the state ``name``: one under which a fast path steps aside (or
    stops doing so), or an odd but type-valid value of a field it reads."""
    if name == "filter":
        core._filter, core._answers_plain = ResultFilter(), False
    elif name == "unfilter":
        core._filter, core._answers_plain = None, True
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
    elif name == "update-denied":
        core.inputs.policy.config = PolicyConfig(update="deny")
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
        core._read_only_lost = core._closing_for_shutdown = False
    elif name == "pending-negative":
        core.pending = -3
    elif name == "tx-odd":
        core.tx_status = -1
    elif name == "tight-limits":
        for framer in (core._cframer, core._sframer):
            framer._lone_limit, framer._max_length, framer._max_want = 40, 60, 30
    elif name == "zero-limits":
        for framer in (core._cframer, core._sframer):
            framer._lone_limit, framer._max_length, framer._max_want = 0, 0, 0
    elif name == "mutable-sets":
        core._cframer._readable = set(core._cframer._readable)
    elif name == "no-head" and hasattr(core._cframer, "_head"):
        del core._cframer._head
    elif name == "generation-jump":
        core._mode_generation = -(2**62)
    else:
        assert name == "no-head", name
