"""Every kind of object PostgreSQL's grammar can drop, and what softguard does with it.

The one source: `softguard.policy` takes the reversible DROP statements from here,
docs/drop-kinds.md is this table rendered (`markdown_table`, checked by
tests/proxy_drop/test_drop_kinds.py), and that test fails when pglast's `ObjectType` has a
member this table does not classify.

Handling:
- ``reversible``: rewritten by the proxy (drop_op moves into quarantine, alter_op keeps the
  column); `softguard undo` puts it back.
- ``kept``: a large object's lo_unlink goes through softguard's wrapper, which keeps the
  object first (policy category ``large_object``, decision 0016).
- ``refused``: policy category ``dangerous`` (deny by default): cluster-wide, or nothing
  softguard could keep.
- ``allowed``: passes as sent, the object itself holds no data. What its CASCADE (or, for an
  ALTER, its effect) may take with it is the backstop's (85_backstop.sql): in a protected
  session a table, column, materialized view, sequence, view, routine or type that would go
  with it is refused with 0A000 and a HINT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Handling = Literal["reversible", "kept", "refused", "allowed"]


@dataclass(frozen=True, slots=True)
class DropKind:
    statement: str  # the classified action (Statement.action), close to the command tag
    handling: Handling
    cascade: str  # what a CASCADE (or the statement's own effect) can take beyond the object


_NOTHING = "nothing that holds data"
_COLUMNS = "columns of its type (refused by the backstop)"

# Keyed by pglast's ObjectType member name; the few drop statements with a node of their
# own and no ObjectType are keyed by that node.
DROP_KINDS: dict[str, DropKind] = {
    "OBJECT_ACCESS_METHOD": DropKind(
        "DROP ACCESS METHOD", "allowed", "tables and indexes using it (tables refused)"
    ),
    "OBJECT_AGGREGATE": DropKind("DROP AGGREGATE", "reversible", "views using it"),
    "OBJECT_AMOP": DropKind("ALTER OPERATOR FAMILY DROP OPERATOR", "allowed", "indexes"),
    "OBJECT_AMPROC": DropKind("ALTER OPERATOR FAMILY DROP FUNCTION", "allowed", "indexes"),
    "OBJECT_ATTRIBUTE": DropKind(
        "ALTER TYPE DROP ATTRIBUTE",
        "allowed",
        "the attribute's values in typed tables and in columns of the type (refused)",
    ),
    "OBJECT_CAST": DropKind(
        "DROP CAST", "allowed", "nothing: expressions depend on its function, not on it"
    ),
    "OBJECT_COLUMN": DropKind(
        "ALTER TABLE DROP COLUMN", "reversible", "views, indexes, constraints using it"
    ),
    "OBJECT_COLLATION": DropKind("DROP COLLATION", "reversible", _COLUMNS),
    "OBJECT_CONVERSION": DropKind("DROP CONVERSION", "allowed", _NOTHING),
    "OBJECT_DATABASE": DropKind("DROP DATABASE", "refused", "everything in it"),
    "OBJECT_DEFAULT": DropKind("ALTER TABLE ALTER COLUMN DROP DEFAULT", "allowed", _NOTHING),
    "OBJECT_DEFACL": DropKind("ALTER DEFAULT PRIVILEGES REVOKE", "allowed", _NOTHING),
    "OBJECT_DOMAIN": DropKind("DROP DOMAIN", "reversible", _COLUMNS),
    "OBJECT_DOMCONSTRAINT": DropKind("ALTER DOMAIN DROP CONSTRAINT", "allowed", _NOTHING),
    "OBJECT_EVENT_TRIGGER": DropKind("DROP EVENT TRIGGER", "allowed", _NOTHING),
    "OBJECT_EXTENSION": DropKind(
        "DROP EXTENSION", "allowed", "its members; columns and tables of its types (refused)"
    ),
    "OBJECT_FDW": DropKind(
        "DROP FOREIGN DATA WRAPPER", "allowed", "servers, foreign tables (rows stay remote)"
    ),
    "OBJECT_FOREIGN_SERVER": DropKind(
        "DROP SERVER",
        "reversible",
        "user mappings (recorded, made again by undo; decision 0043), foreign tables (kept)",
    ),
    "OBJECT_FOREIGN_TABLE": DropKind("DROP FOREIGN TABLE", "allowed", "views using it"),
    "OBJECT_FUNCTION": DropKind(
        "DROP FUNCTION", "reversible", "triggers, defaults, views; range types using it"
    ),
    "OBJECT_INDEX": DropKind("DROP INDEX", "reversible", "constraints using it"),
    "OBJECT_LANGUAGE": DropKind("DROP LANGUAGE", "reversible", "routines in it (kept)"),
    "OBJECT_LARGEOBJECT": DropKind("CALL FUNCTION lo_unlink", "kept", "the large object's data"),
    "OBJECT_MATVIEW": DropKind("DROP MATERIALIZED VIEW", "reversible", "views using it"),
    "OBJECT_OPCLASS": DropKind("DROP OPERATOR CLASS", "allowed", "indexes using it"),
    "OBJECT_OPERATOR": DropKind("DROP OPERATOR", "reversible", "views, indexes, constraints"),
    "OBJECT_OPFAMILY": DropKind(
        "DROP OPERATOR FAMILY", "reversible", "its operator classes; indexes using them"
    ),
    "OBJECT_PARAMETER_ACL": DropKind("REVOKE ON PARAMETER", "allowed", _NOTHING),
    "OBJECT_POLICY": DropKind("DROP POLICY", "allowed", _NOTHING),
    "OBJECT_PROCEDURE": DropKind("DROP PROCEDURE", "reversible", _NOTHING),
    "OBJECT_PUBLICATION": DropKind("DROP PUBLICATION", "allowed", _NOTHING),
    "OBJECT_PUBLICATION_NAMESPACE": DropKind(
        "ALTER PUBLICATION DROP TABLES IN SCHEMA", "allowed", _NOTHING
    ),
    "OBJECT_PUBLICATION_REL": DropKind("ALTER PUBLICATION DROP TABLE", "allowed", _NOTHING),
    "OBJECT_ROLE": DropKind("DROP ROLE", "refused", "cluster-wide"),
    "OBJECT_ROUTINE": DropKind("DROP ROUTINE", "reversible", "as DROP FUNCTION / DROP PROCEDURE"),
    "OBJECT_RULE": DropKind("DROP RULE", "allowed", _NOTHING),
    "OBJECT_SCHEMA": DropKind("DROP SCHEMA", "reversible", "everything in it"),
    "OBJECT_SEQUENCE": DropKind("DROP SEQUENCE", "reversible", "defaults using it"),
    "OBJECT_SUBSCRIPTION": DropKind("DROP SUBSCRIPTION", "refused", "its replication slot"),
    "OBJECT_STATISTIC_EXT": DropKind("DROP STATISTICS", "allowed", _NOTHING),
    "OBJECT_TABCONSTRAINT": DropKind(
        "ALTER TABLE DROP CONSTRAINT", "allowed", "foreign keys using its index"
    ),
    "OBJECT_TABLE": DropKind("DROP TABLE", "reversible", "views, foreign keys"),
    "OBJECT_TABLESPACE": DropKind("DROP TABLESPACE", "refused", "cluster-wide"),
    "OBJECT_TRANSFORM": DropKind("DROP TRANSFORM", "allowed", "routines using it (refused)"),
    "OBJECT_TRIGGER": DropKind("DROP TRIGGER", "allowed", _NOTHING),
    "OBJECT_TSCONFIGURATION": DropKind(
        "DROP TEXT SEARCH CONFIGURATION", "reversible", "indexes, views, defaults using it"
    ),
    "OBJECT_TSDICTIONARY": DropKind(
        "DROP TEXT SEARCH DICTIONARY", "reversible", "configurations using it"
    ),
    "OBJECT_TSPARSER": DropKind("DROP TEXT SEARCH PARSER", "allowed", "configurations"),
    "OBJECT_TSTEMPLATE": DropKind("DROP TEXT SEARCH TEMPLATE", "allowed", "dictionaries"),
    "OBJECT_TYPE": DropKind("DROP TYPE", "reversible", _COLUMNS),
    "OBJECT_USER_MAPPING": DropKind("DROP USER MAPPING", "allowed", _NOTHING),
    "OBJECT_VIEW": DropKind("DROP VIEW", "reversible", "views using it"),
    "DropOwnedStmt": DropKind("DROP OWNED", "refused", "everything the role owns"),
}

REVERSIBLE_DROPS = frozenset(
    k.statement
    for k in DROP_KINDS.values()
    if k.handling == "reversible" and k.statement.startswith("DROP ")
)

_HANDLING_TEXT = {
    "reversible": "reversible (quarantine; `softguard undo`)",
    "refused": "refused (policy `dangerous`)",
    "kept": "kept (policy `large_object`: softguard's wrapper keeps the object; decision 0016)",
    "allowed": "allowed: holds no data",
}


def markdown_table() -> str:
    """The table docs/drop-kinds.md shows, one row per kind, in key order."""
    lines = [
        "| kind | statement | softguard | its CASCADE can take |",
        "|---|---|---|---|",
    ]
    for key in sorted(DROP_KINDS):
        k = DROP_KINDS[key]
        lines.append(f"| `{key}` | `{k.statement}` | {_HANDLING_TEXT[k.handling]} | {k.cascade} |")
    return "\n".join(lines) + "\n"
