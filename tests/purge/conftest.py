"""Fixtures for the purge tests: the ledger fixtures, reused from tests/cli/conftest.py.

tests/cli/conftest.py (which itself loads tests/ledger/conftest.py) is loaded under its own
module name, unmodified, and its fixtures are re-exported here:
- rental_template (session): the rental database with the ledger applied;
- rental_db: factory; rental_db() -> a fresh copy (CREATE DATABASE ... TEMPLATE);
- ledger: the `Ledger` helper (drop through softguard.drop_op, run statements, undo).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_PATH = Path(__file__).resolve().parents[1] / "cli" / "conftest.py"
_NAME = "_softguard_tests_cli_conftest"


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


_cli_conftest = _load()
rental_template = _cli_conftest.rental_template
rental_db = _cli_conftest.rental_db
ledger = _cli_conftest.ledger

__all__ = ["ledger", "rental_db", "rental_template"]
