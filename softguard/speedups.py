"""softguard's one compiled module, when the install built it (decision 0034).

``softguard._hotpath`` (C) gives the base classes whose fields the relay's compiled fast
path reads (``FramerBase`` for ``wire.framing.Framer``, ``CoreBase`` for
``proxy.core.SessionCore``, ``CounterBase`` for ``proxy.metrics.Metrics``) and that fast
path itself (``proxy/hotpath.py``). Where it
was not built (no C compiler), or with ``SOFTGUARD_PURE_PYTHON=1`` in the environment,
the base classes below stand in and the Python fast paths run alone: the same behaviour,
more CPU per statement.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING


def _load() -> ModuleType | None:
    if os.environ.get("SOFTGUARD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from softguard import _hotpath  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _hotpath
    return module


compiled = _load()

if TYPE_CHECKING or compiled is None:

    class FramerBase:
        """The fields of ``Framer`` the compiled fast path reads (here: plain slots)."""

        __slots__ = (
            "_acc",
            "_head",
            "_lone_limit",
            "_max_length",
            "_max_want",
            "_readable",
            "_skip",
            "_stop",
        )

    class CoreBase:
        """The fields of ``SessionCore`` the compiled fast path reads (here: ordinary
        attributes)."""

    class CounterBase:
        """``Metrics``'s statement counts, which the compiled fast path writes (here:
        ordinary attributes): ``safe_statements`` and ``_statements``, with the method
        that writes the latter (the compiled module defines the same in C)."""

        safe_statements: int
        _statements: dict[tuple[str, str], int]

        def count_statement(self, classification: str, action: str) -> None:
            key = (classification, action)
            self._statements[key] = self._statements.get(key, 0) + 1

else:
    FramerBase = compiled.FramerBase
    CoreBase = compiled.CoreBase
    CounterBase = compiled.CounterBase
