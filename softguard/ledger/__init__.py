"""The database side of softguard: the ledger, the quarantine, reversible DROP and undo.

Owns:
- ``migrations/`` (repository root): the SQL installed into each protected database, by
  topic in ``migrations/install/`` (undo is ``70_undo.sql``), versioned by reviewed
  upgrade scripts (docs/decisions/0010-sql-layout-and-versioning.md): schemas ``softguard``
  (ledger + functions) and ``softguard_quarantine``, the capture event triggers,
  ``softguard.drop_op`` (what the proxy CALLs instead of a DROP) and ``softguard.undo_op``.
  See docs/decisions/0005-reversible-drop.md.
- ``migrate``: installing and upgrading it (``softguard init``, and the proxy on first need).
- ``db``: softguard's own connections (one ``connect``, the same options everywhere) and
  the errors of this package (``LedgerError`` and its subclasses, carrying SQLSTATEs).
- ``operations`` (reading the ledger, undo), ``purge``, ``archive`` (what purge writes
  first), ``space`` (sizes, what is due), ``scheduler`` (purge on a schedule),
  ``soft_delete_tables`` (the catalog reader for ``[[soft_delete]]``).

What always holds:
- An operation is recorded if and only if the transaction that took the objects committed:
  the ledger row is written in the client's own transaction.
- PostgreSQL decides what a DROP removes (a probe of the statement itself, under the
  caller's privileges); softguard moves instead of dropping, and refuses with 0A000 what it
  cannot keep. Nothing is lost silently.
- DROP and its undo are catalog operations, O(1) in the size of the data.
- Undo is all or nothing, in one transaction.
"""

from softguard.ledger.db import LedgerError
from softguard.ledger.migrate import (
    MIGRATIONS_DIR,
    apply_migrations,
    ledger_version,
    pending_migrations,
)

__all__ = [
    "MIGRATIONS_DIR",
    "LedgerError",
    "apply_migrations",
    "ledger_version",
    "pending_migrations",
]
