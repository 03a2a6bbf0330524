"""Fixtures for the CLI tests: the ledger fixtures of tests/ledger, reused.

tests/ledger/conftest.py is loaded under its own module name (conftest files of
non-package directories are not importable by name; nothing in it is modified) and its
`rental_template`, `rental_db` and `ledger` fixtures are re-exported here:
- rental_template (session): the rental database with the ledger applied;
- rental_db: factory; rental_db() -> a fresh copy (CREATE DATABASE ... TEMPLATE);
- ledger: the `Ledger` helper (drop through softguard.drop_op, run statements, undo).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_PATH = Path(__file__).resolve().parents[1] / "ledger" / "conftest.py"
_NAME = "_softguard_tests_ledger_conftest"


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


_ledger_conftest = _load()
rental_db = _ledger_conftest.rental_db
ledger = _ledger_conftest.ledger
Ledger = _ledger_conftest.Ledger


rental_template = _ledger_conftest.rental_template


__all__ = ["Ledger", "ledger", "rental_db", "rental_template"]
