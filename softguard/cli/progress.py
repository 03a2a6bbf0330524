"""Progress bars for long CLI commands (``softguard purge``, ``softguard undo``).

Only on a terminal and never with ``--json``: callers decide (``enabled``), and when it is
False every method does nothing, so the command's output is exactly what it is without
bars. Lines a command prints while a bar is shown go through ``line`` so they appear above
the bar instead of breaking it.
"""

from __future__ import annotations

import sys
from typing import Any

import typer


class Bars:
    """A rich ``Progress`` when enabled; a no-op otherwise."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def has(self, name: str) -> bool:
        return name in self._tasks

    def add(self, name: str, description: str, total: int | None) -> None:
        if self._progress is not None:
            self._tasks[name] = self._progress.add_task(description, total=total)

    def advance(self, name: str, step: int = 1) -> None:
        if self._progress is not None and name in self._tasks:
            self._progress.advance(self._tasks[name], step)

    def update(self, name: str, completed: int) -> None:
        if self._progress is not None and name in self._tasks:
            self._progress.update(self._tasks[name], completed=completed)

    def line(self, text: str) -> None:
        """Print a line of the command's output (above the bars when they are shown)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(text)


def bars(enabled: bool, *, transient: bool = False) -> Bars:
    """Bars on stdout while the ``with`` block runs (``transient``: erased at the end).

    A plain context manager class, not @contextmanager: exceptions passing through (some are
    frozen dataclasses) must not be touched."""
    if not enabled:
        return Bars(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Bars(
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stdout),
            transient=transient,
        )
    )
