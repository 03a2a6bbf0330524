"""The suite's root: puts tests/ on sys.path and registers the fixture plugins.

Fixtures live in tests/fixtures/fix_*.py (one topic each, documented at the top of each
module) and are available to every test; helpers shared by several directories live in
tests/support/. See docs/testing.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Plain `assert`s in shared helpers report their operands like those in test modules.
pytest.register_assert_rewrite("support")

pytest_plugins = [
    "fixtures.fix_pg",
    "fixtures.fix_proxy",
    "fixtures.fix_ledger",
    "fixtures.fix_twins",
    "fixtures.fix_softdelete",
    "support.ci_skips",
    "support.parallel",
]
