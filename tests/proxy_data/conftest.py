"""Fixtures for the end-to-end reversible data-change tests (DELETE, MERGE, TRUNCATE,
ALTER TABLE ... DROP COLUMN, opt-in UPDATE) through the proxy.

The twins of tests/proxy_drop are reused: tests/proxy_drop/conftest.py is loaded under its
own module name (conftest files of non-package directories are not importable by name;
nothing in it is modified) and its fixtures are re-exported here:
- drop_template (session): rental.sql plus a few extra objects, NO softguard ledger (the
  proxy installs it on the first protected statement; the direct twin never has it);
- db_pool (session) / twins: twins(n=2) -> n fresh copies, dropped after the test;
- sg: a `DropKit` (superuser helpers: operations, data checksums, undo, schema dump);
- pristine (session): schema dump, data checksums, extras of an untouched copy.

Helpers shared by the test modules live in data_harness.py (same directory).
"""

from __future__ import annotations

from data_harness import proxy_drop_conftest

_pd = proxy_drop_conftest()
drop_template = _pd.drop_template
db_pool = _pd.db_pool
twins = _pd.twins
sg = _pd.sg
pristine = _pd.pristine

__all__ = ["db_pool", "drop_template", "pristine", "sg", "twins"]
