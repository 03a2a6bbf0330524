"""The relay's commonest chunks through the compiled fast path, where there is one.

``softguard._hotpath`` (C, decision 0034; loaded by ``softguard.speedups``) does exactly
what the fast paths at the top of ``SessionCore.client_data`` / ``server_data`` do, for
the chunks they take, and hands every other chunk to the protocol's Python
``data_received`` untouched. Without it (no C compiler at install, or
``SOFTGUARD_PURE_PYTHON=1``) ``relay`` returns that Python ``data_received`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from softguard.proxy.core import SessionCore, State
from softguard.proxy.statements import UNREAD_MEMO_BYTES, harmless_shape
from softguard.speedups import compiled

if compiled is not None:
    compiled.configure(State.READY, harmless_shape, UNREAD_MEMO_BYTES)

COMPILED = compiled is not None
"""Whether the compiled fast path is in use (``softguard serve`` logs it at startup)."""


def relay(
    core: SessionCore, slow: Callable[[bytes], None], run: Callable[[], None], *, server: bool
) -> Callable[[bytes], None]:
    """A protocol's ``data_received``: the compiled fast path with ``slow`` (the protocol's
    Python ``data_received``) for what it does not take, or ``slow`` itself. ``run``
    executes the core's controls after a chunk the fast path took."""
    if compiled is None:
        return slow
    relay_fn: Callable[[bytes], None] = compiled.Relay(core, slow, run, server)
    return relay_fn


def client_chunk(core: SessionCore, data: bytes) -> bool:
    """The compiled client fast path alone (tests): True when it took ``data``."""
    assert compiled is not None
    taken: Any = compiled.client_chunk(core, data)
    return bool(taken)


def server_chunk(core: SessionCore, data: bytes) -> bool:
    """The compiled server fast path alone (tests): True when it took ``data``."""
    assert compiled is not None
    taken: Any = compiled.server_chunk(core, data)
    return bool(taken)
