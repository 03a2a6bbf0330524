"""Every kind of object PostgreSQL's grammar can drop is classified on purpose (issue 11
item 3): pglast's ObjectType is walked member by member, each must be in
softguard.sql.drop_kinds, its sample statement must classify as that table says, the policy
must treat it as that table says, and docs/drop-kinds.md must show that very table.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pglast.enums.parsenodes import ObjectType
from pglast.parser import parse_sql_json

from softguard.policy import (
    DANGEROUS_ACTIONS,
    PROTECTABLE_DROPS,
    REWRITABLE_ALTERS,
    PolicyConfig,
    category_of,
)
from softguard.sql import Kind, classify
from softguard.sql.drop_kinds import DROP_KINDS, markdown_table

REPO = Path(__file__).resolve().parents[2]

# One statement per kind, as the grammar spells its removal.
SAMPLES = {
    "OBJECT_ACCESS_METHOD": "DROP ACCESS METHOD myam CASCADE",
    "OBJECT_AGGREGATE": "DROP AGGREGATE myagg(int)",
    "OBJECT_AMOP": "ALTER OPERATOR FAMILY f USING btree DROP OPERATOR 1 (int, int)",
    "OBJECT_AMPROC": "ALTER OPERATOR FAMILY f USING btree DROP FUNCTION 1 (int, int)",
    "OBJECT_ATTRIBUTE": "ALTER TYPE addr DROP ATTRIBUTE zip CASCADE",
    "OBJECT_CAST": "DROP CAST (text AS mytype) CASCADE",
    "OBJECT_COLUMN": "ALTER TABLE t DROP COLUMN c",
    "OBJECT_COLLATION": "DROP COLLATION mycoll CASCADE",
    "OBJECT_CONVERSION": "DROP CONVERSION myconv",
    "OBJECT_DATABASE": "DROP DATABASE shop",
    "OBJECT_DEFAULT": "ALTER TABLE t ALTER COLUMN c DROP DEFAULT",
    "OBJECT_DEFACL": "ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM PUBLIC",
    "OBJECT_DOMAIN": "DROP DOMAIN posint CASCADE",
    "OBJECT_DOMCONSTRAINT": "ALTER DOMAIN posint DROP CONSTRAINT positive",
    "OBJECT_EVENT_TRIGGER": "DROP EVENT TRIGGER myevt",
    "OBJECT_EXTENSION": "DROP EXTENSION citext CASCADE",
    "OBJECT_FDW": "DROP FOREIGN DATA WRAPPER myfdw CASCADE",
    "OBJECT_FOREIGN_SERVER": "DROP SERVER remote CASCADE",
    "OBJECT_FOREIGN_TABLE": "DROP FOREIGN TABLE ft",
    "OBJECT_FUNCTION": "DROP FUNCTION f(int)",
    "OBJECT_INDEX": "DROP INDEX i",
    "OBJECT_LANGUAGE": "DROP LANGUAGE plperl CASCADE",
    "OBJECT_LARGEOBJECT": "SELECT lo_unlink(4242)",
    "OBJECT_MATVIEW": "DROP MATERIALIZED VIEW mv",
    "OBJECT_OPCLASS": "DROP OPERATOR CLASS myops USING btree CASCADE",
    "OBJECT_OPERATOR": "DROP OPERATOR === (int, int) CASCADE",
    "OBJECT_OPFAMILY": "DROP OPERATOR FAMILY myops USING btree CASCADE",
    "OBJECT_PARAMETER_ACL": "REVOKE SET ON PARAMETER work_mem FROM PUBLIC",
    "OBJECT_POLICY": "DROP POLICY p ON t",
    "OBJECT_PROCEDURE": "DROP PROCEDURE p(int)",
    "OBJECT_PUBLICATION": "DROP PUBLICATION pub",
    "OBJECT_PUBLICATION_NAMESPACE": "ALTER PUBLICATION pub DROP TABLES IN SCHEMA s",
    "OBJECT_PUBLICATION_REL": "ALTER PUBLICATION pub DROP TABLE t",
    "OBJECT_ROLE": "DROP ROLE bob",
    "OBJECT_ROUTINE": "DROP ROUTINE f(int) CASCADE",
    "OBJECT_RULE": "DROP RULE r ON t",
    "OBJECT_SCHEMA": "DROP SCHEMA s CASCADE",
    "OBJECT_SEQUENCE": "DROP SEQUENCE seq",
    "OBJECT_SUBSCRIPTION": "DROP SUBSCRIPTION sub",
    "OBJECT_STATISTIC_EXT": "DROP STATISTICS st",
    "OBJECT_TABCONSTRAINT": "ALTER TABLE t DROP CONSTRAINT t_pkey CASCADE",
    "OBJECT_TABLE": "DROP TABLE t",
    "OBJECT_TABLESPACE": "DROP TABLESPACE ts",
    "OBJECT_TRANSFORM": "DROP TRANSFORM FOR hstore LANGUAGE plperl CASCADE",
    "OBJECT_TRIGGER": "DROP TRIGGER tr ON t",
    "OBJECT_TSCONFIGURATION": "DROP TEXT SEARCH CONFIGURATION cfg CASCADE",
    "OBJECT_TSDICTIONARY": "DROP TEXT SEARCH DICTIONARY dict CASCADE",
    "OBJECT_TSPARSER": "DROP TEXT SEARCH PARSER prs CASCADE",
    "OBJECT_TSTEMPLATE": "DROP TEXT SEARCH TEMPLATE tmpl CASCADE",
    "OBJECT_TYPE": "DROP TYPE mood CASCADE",
    "OBJECT_USER_MAPPING": "DROP USER MAPPING FOR bob SERVER remote",
    "OBJECT_VIEW": "DROP VIEW v",
    "DropOwnedStmt": "DROP OWNED BY bob",
}


# Removals the grammar spells without DropStmt (their own node, or an ALTER / REVOKE).
OWN_NODES = {
    "DropdbStmt",
    "DropRoleStmt",
    "DropOwnedStmt",
    "DropSubscriptionStmt",
    "DropTableSpaceStmt",
    "DropUserMappingStmt",
    "AlterTableStmt",
    "AlterDomainStmt",
    "AlterOpFamilyStmt",
    "AlterDefaultPrivilegesStmt",
    "AlterPublicationStmt",
    "GrantStmt",
    "SelectStmt",
}


def test_every_object_type_is_classified() -> None:
    members = {m.name for m in ObjectType}
    assert members - set(DROP_KINDS) == set(), "ObjectType members softguard does not classify"
    extra = set(DROP_KINDS) - members
    assert extra == {"DropOwnedStmt"}, extra
    assert set(SAMPLES) == set(DROP_KINDS)


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_sample_is_the_kind(key: str) -> None:
    """A DROP sample really drops that ObjectType, by the grammar."""
    (raw,) = orjson.loads(parse_sql_json(SAMPLES[key]))["stmts"]
    node = raw["stmt"]
    if "DropStmt" in node:
        assert node["DropStmt"]["removeType"] == key
    else:
        assert next(iter(node)) in OWN_NODES, f"{key} is removed by {next(iter(node))}"


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_kind_is_handled_as_the_table_says(key: str) -> None:
    kind = DROP_KINDS[key]
    result = classify(SAMPLES[key])
    defaults = PolicyConfig()
    if result.kind is Kind.SAFE:
        assert kind.handling == "allowed", f"{key}: SAFE but the table says {kind.handling}"
        return
    stmt = result.statements[0]
    assert stmt.action == kind.statement, (key, stmt.action)
    category = category_of(stmt)
    if kind.handling == "reversible":
        assert category in ("drop", "alter"), (key, category)
        assert stmt.action in PROTECTABLE_DROPS | REWRITABLE_ALTERS, key
        assert getattr(defaults, category) == "protect", key
    elif kind.handling == "kept":
        assert category == "large_object", (key, category)
        assert defaults.large_object == "protect"
    elif kind.handling == "refused":
        assert category == "dangerous", (key, category)
        assert stmt.action in DANGEROUS_ACTIONS or stmt.action.startswith("CALL FUNCTION")
        assert defaults.dangerous == "deny"
    else:
        assert category in ("drop_other", "alter"), (key, category)
        assert stmt.action not in PROTECTABLE_DROPS | REWRITABLE_ALTERS, key
        assert getattr(defaults, category) in ("allow", "protect"), key


def test_docs_table_is_the_mapping() -> None:
    docs = (REPO / "docs" / "drop-kinds.md").read_text()
    assert markdown_table() in docs, "docs/drop-kinds.md is out of date: paste markdown_table()"
    assert "docs/drop-kinds.md" in (REPO / "README.md").read_text()
