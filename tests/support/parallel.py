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
from collections.abc import Generator

import pytest

# Measured on the 2-core CI machine (docs/testing.md).
WORKERS_PER_CPU = 2

# Files whose tests take minutes in all (the durations report): handed out first, so that
# no worker starts one of them while the others have finished.
LONG_FILES = ("tests/test_fuzz_encodings.py", "tests/test_fuzz.py", "tests/test_pgbench.py")


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
    return (yield)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only in workers: a serial run keeps the collection order. Every worker sorts alike
    # (xdist requires identical collections); sorted() is stable.
    if hasattr(config, "workerinput"):
        items[:] = sorted(items, key=lambda item: item.nodeid.split("::")[0] not in LONG_FILES)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return workers()
