"""Run a Python program under cProfile, writing a snapshot of the stats on each SIGUSR1
(``OUT.0``, ``OUT.1``, ...): what ``serve_cpu.py --profile`` reads.

    python bench/_profiled.py OUT -m softguard serve ...
    python bench/_profiled.py OUT bench/_python_relay.py PORT UPSTREAM
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    out = sys.argv[1]
    rest = sys.argv[2:]
    profiler = cProfile.Profile()
    taken = 0

    def snapshot(_signum: int, _frame: FrameType | None) -> None:
        nonlocal taken
        profiler.create_stats()  # also stops the profiler: started again below
        profiler.dump_stats(f"{out}.{taken}")
        taken += 1
        profiler.enable()

    signal.signal(signal.SIGUSR1, snapshot)
    profiler.enable()
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
