"""Classify large texts in a worker process, so one client's huge statement cannot stall
the event loop every other client shares, nor grow the proxy's memory with its parse tree.

pglast holds the GIL while it parses, so a thread would not help: `OffLoopClassifier`
sends texts over `threshold` bytes to a process pool (spawned, one task per worker
process so the memory a big tree took goes back to the system), each worker limited to
`memory_limit` bytes of address space. A text the worker cannot finish (out of memory,
killed) is UNPARSEABLE and not ``inert``: the policy's ``unparseable`` verdict (deny by
default) applies. The API is concurrent.futures, not asyncio: the proxy wraps the future
with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from softguard.sql.classify import Classification, Kind
from softguard.sql.prefilter import may_be_destructive
from softguard.sql.reading import classify_wire

__all__ = ["OffLoopClassifier"]


class OffLoopClassifier:
    """A process pool for `classify_wire` of large texts. Thread-safe; create one per
    proxy process and `close()` it on shutdown."""

    def __init__(
        self,
        threshold: int = 256 * 1024,
        workers: int = 1,
        memory_limit: int = 4 << 30,
        max_statements: int = 10_000,
    ) -> None:
        """Texts longer than *threshold* bytes go to one of *workers* processes, each
        limited to *memory_limit* bytes of address space (RLIMIT_AS). A text of more than
        *max_statements* statements is answered "not inspected" instead: its result
        alone would take the proxy hundreds of MB and seconds of the loop to unpickle."""
        if threshold < 0 or workers < 1 or memory_limit <= 0:
            raise ValueError("threshold >= 0, workers >= 1 and memory_limit > 0 required")
        self.threshold = threshold
        self._workers = workers
        self._memory_limit = memory_limit
        self._max_statements = max_statements
        self._pool: ProcessPoolExecutor | None = None

    def wants(self, data: bytes) -> bool:
        """Should *data* be classified off the loop? Only when it is large and the bytes
        prefilter cannot clear it (cleared text costs one regex scan; keep it inline)."""
        return len(data) > self.threshold and may_be_destructive(data)

    def submit(self, data: bytes, client_encoding: str = "UTF8") -> Future[Classification]:
        """`classify_wire(data, client_encoding)` in a worker. The future always ends
        with a result, never an exception."""
        outer: Future[Classification] = Future()
        try:
            inner = self._executor().submit(
                _classify_in_worker, data, client_encoding, self._max_statements
            )
        except (BrokenProcessPool, RuntimeError) as exc:
            self._pool = None
            outer.set_result(_not_inspected(exc))
            return outer

        def finish(done: Future[Classification]) -> None:
            try:
                outer.set_result(done.result())
            except BaseException as exc:
                if isinstance(exc, BrokenProcessPool):
                    self._pool = None
                outer.set_result(_not_inspected(exc))

        inner.add_done_callback(finish)
        return outer

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_memory,
                initargs=(self._memory_limit,),
                max_tasks_per_child=1,
            )
        return self._pool


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _classify_in_worker(data: bytes, client_encoding: str, max_statements: int) -> Classification:
    result = classify_wire(data, client_encoding)[0]
    if len(result.statements) > max_statements:
        return _not_inspected(f"{len(result.statements)} statements, more than {max_statements}")
    return result


def _not_inspected(why: BaseException | str) -> Classification:
    what = why if isinstance(why, str) else repr(why)
    return Classification(
        Kind.UNPARSEABLE,
        (),
        error=f"softguard could not inspect the statement: too large to classify ({what})",
    )
