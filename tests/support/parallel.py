"""pytest plugin: the suite runs in parallel (pytest-xdist) unless told otherwise.

`pytest` with no `-n` runs on ``workers()`` processes: the tests mostly wait on
PostgreSQL and on the proxies they start, so more workers than cores pay (measured in
docs/testing.md). Each worker is a whole test session: its own embedded PostgreSQL
(tests/fixtures/fix_pg.py), its own proxies, and free ports of its own share
(tests/support/ports.py). `-n 0` or `-p no:xdist` runs serially; `-n N` / `-n auto`
choose another count (`auto` means ``workers()``); `--pdb` runs serially.

With SOFTGUARD_TEST_DSN (one server shared by everything) the suite runs serially: its
tests create cluster-wide objects with fixed names (roles such as `sg_ledger_nonowner`,
`softguard_keeper`, tablespaces) that two workers would fight over. Asking for workers
then is a usage error.
Registered in tests/conftest.py; see docs/testing.md.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator
from typing import Any

import pytest

# Measured on the 2-core CI machine (docs/testing.md).
WORKERS_PER_CPU = 2

# Files whose tests take minutes in all (the durations report): handed out first, so that
# no worker starts one of them while the others have finished.
LONG_FILES = (
    "tests/test_fuzz_encodings.py",
    "tests/test_fuzz.py",
    "tests/fidelity/test_catalog_consistency.py",
    "tests/test_pgbench.py",
)

# Files whose tests are handed out one by one (pytest_xdist_make_scheduler): each of their
# tests takes a minute or more; together on one worker they would end the run alone
# (test_catalog_consistency.py: 225 s in one file before its seeds were split).
SPLIT_FILES = (
    "tests/test_fuzz_encodings.py",
    "tests/test_fuzz.py",
    "tests/fidelity/test_catalog_consistency.py",
)


def workers() -> int:
    """How many workers `pytest` starts here."""
    forced = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if forced.isdigit():
        return int(forced)
    return WORKERS_PER_CPU * max(1, os.cpu_count() or 1)


def shared_server() -> bool:
    return bool(os.environ.get("SOFTGUARD_TEST_DSN"))


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(
    config: pytest.Config,
) -> Generator[None, int | pytest.ExitCode, int | pytest.ExitCode]:
    # Before xdist's own pytest_cmdline_main, which turns numprocesses into workers.
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        option = config.option
        asked = option.numprocesses
        if shared_server():
            if asked not in (None, 0):
                raise pytest.UsageError(
                    "SOFTGUARD_TEST_DSN (a shared server) runs the suite serially: the tests "
                    "create cluster-wide objects with fixed names; drop -n (docs/testing.md)"
                )
        elif asked is None and not option.usepdb and not option.collectonly:
            option.numprocesses = workers()
        if option.numprocesses and option.dist == "no":
            # Whole files per worker: a module's fixtures (its database, its arena template,
            # its proxies) are built once, not once in each worker that gets one of its tests.
            option.dist = "loadfile"
        if option.dist == "loadfile":
            # xdist would hand out the files with the most tests first; the collection order
            # (pytest_collection_modifyitems: the longest first) is the better guess.
            option.loadscopereorder = False
    return (yield)


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only in workers: a serial run keeps the collection order. Every worker sorts alike
    # (xdist requires identical collections); sorted() is stable. The long files in their
    # order, then the others, most tests first: whatever starts last must end soon.
    if hasattr(config, "workerinput"):
        count = Counter(_file(item.nodeid) for item in items)
        rank = {path: i for i, path in enumerate(LONG_FILES)}

        def order(item: pytest.Item) -> tuple[int, int, bool]:
            path = _file(item.nodeid)
            # a split file's tests are independent units: its slow ones go first
            quick = path in SPLIT_FILES and item.get_closest_marker("slow") is None
            return rank.get(path, len(rank)), -count[path], quick

        items[:] = sorted(items, key=order)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.option.dist != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        """Whole files, except SPLIT_FILES: each of their tests is a unit of its own (their
        module fixtures are then built in each worker that gets one: seconds, not minutes)."""

        def _split_scope(self, nodeid: str) -> str:
            path = _file(nodeid)
            return nodeid if path in SPLIT_FILES else path

    return Scheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return workers()
