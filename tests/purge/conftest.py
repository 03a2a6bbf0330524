"""Fixtures for the purge tests: the ledger fixtures, reused from tests/cli/conftest.py.

tests/cli/conftest.py (which itself loads tests/ledger/conftest.py) is loaded under its own
module name, unmodified, and its fixtures are re-exported here:
- rental_template (session): the rental database with the ledger applied;
- rental_db: factory; rental_db() -> a fresh copy (CREATE DATABASE ... TEMPLATE);
- ledger: the `Ledger` helper (drop through softguard.drop_op, run statements, undo).
"""

from __future__ import annotations

from pathlib import Path

from support.modules import load_module

_PATH = Path(__file__).resolve().parents[1] / "cli" / "conftest.py"
_NAME = "_softguard_tests_cli_conftest"


_cli_conftest = load_module(_NAME, _PATH)
rental_template = _cli_conftest.rental_template
rental_db = _cli_conftest.rental_db
ledger = _cli_conftest.ledger

__all__ = ["ledger", "rental_db", "rental_template"]
