"""A ``StatementCounter`` for cores driven without a proxy process (tests/proxy)."""

from __future__ import annotations

from softguard.speedups import CounterBase


class Counter(CounterBase):
    """Counts what a ``SessionCore`` reports: SAFE statements, and each planned one. On
    ``CounterBase``, as ``Metrics`` is: the compiled fast path counts into its field."""

    def __init__(self) -> None:
        self.safe_statements = 0
        self.filtered_statements = 0
        self.filters_released = 0
        self.counted: list[tuple[str, str]] = []

    def count_statement(self, classification: str, action: str) -> None:
        self.counted.append((classification, action))
