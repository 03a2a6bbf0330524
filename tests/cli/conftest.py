"""Fixtures for the CLI tests: the ledger fixtures of tests/ledger, reused.

tests/ledger/conftest.py is loaded under its own module name (conftest files of
non-package directories are not importable by name; nothing in it is modified) and its
`rental_template`, `rental_db` and `ledger` fixtures are re-exported here:
- rental_template (session): the rental database with the ledger applied;
- rental_db: factory; rental_db() -> a fresh copy (CREATE DATABASE ... TEMPLATE);
- ledger: the `Ledger` helper (drop through softguard.drop_op, run statements, undo).
"""

from __future__ import annotations

from pathlib import Path

from support.modules import load_module

_PATH = Path(__file__).resolve().parents[1] / "ledger" / "conftest.py"
_NAME = "_softguard_tests_ledger_conftest"


_ledger_conftest = load_module(_NAME, _PATH)
rental_db = _ledger_conftest.rental_db
ledger = _ledger_conftest.ledger
Ledger = _ledger_conftest.Ledger


rental_template = _ledger_conftest.rental_template


__all__ = ["Ledger", "ledger", "rental_db", "rental_template"]
