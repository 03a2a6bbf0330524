"""Naming helpers over libpg_query's JSON tree: targets, type names, statement verbs.

Names arrive already normalised by the parser (unquoted folded to lower case, quoted kept,
truncated to 63 bytes); these helpers only assemble them into `Target`s and display text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from softguard.sql.model import Target, quote_ident

Node = dict[str, Any]

# -- targets ----------------------------------------------------------------------------------

_OBJTYPE_NAMES = {
    "MATVIEW": "materialized view",
    "FDW": "foreign data wrapper",
    "FOREIGN_SERVER": "server",
    "STATISTIC_EXT": "statistics",
    "OPCLASS": "operator class",
    "OPFAMILY": "operator family",
    "TSCONFIGURATION": "text search configuration",
    "TSDICTIONARY": "text search dictionary",
    "TSPARSER": "text search parser",
    "TSTEMPLATE": "text search template",
    "TABCONSTRAINT": "constraint",
    "LARGEOBJECT": "large object",
}
_PG_TYPES = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "bool": "boolean",
    "bpchar": "character",
    "varchar": "character varying",
    "varbit": "bit varying",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
    "timetz": "time with time zone",
}
_ROLESPEC = {
    "ROLESPEC_CURRENT_USER": "CURRENT_USER",
    "ROLESPEC_SESSION_USER": "SESSION_USER",
    "ROLESPEC_CURRENT_ROLE": "CURRENT_ROLE",
    "ROLESPEC_PUBLIC": "PUBLIC",
}


def objtype_name(value: str) -> str:
    key = value.removeprefix("OBJECT_")
    return _OBJTYPE_NAMES.get(key, key.lower().replace("_", " "))


def strings(items: Iterable[Node]) -> list[str]:
    return [str(i["String"]["sval"]) for i in items if "String" in i]


def split(names: list[str]) -> tuple[str | None, str]:
    """[catalog.][schema.]name -> (schema, name)."""
    return (names[-2] if len(names) >= 2 else None), names[-1]


def rangevar(rv: Node, objtype: str = "table") -> Target:
    return Target(objtype, rv.get("schemaname"), str(rv["relname"]))


def role(spec: Node) -> Target:
    spec = spec.get("RoleSpec", spec)
    name = spec.get("rolename") or _ROLESPEC.get(spec.get("roletype", ""), "?")
    return Target("role", None, str(name))


def type_text(type_name: Node) -> str:
    """Render a TypeName as SQL ("integer[]", "s.mytype", "character varying")."""
    tn = type_name.get("TypeName", type_name)
    if not tn:
        return "NONE"  # the missing side of a prefix operator
    names = strings(tn.get("names", ()))
    if len(names) == 2 and names[0] == "pg_catalog":
        text = _PG_TYPES.get(names[1], names[1])
    else:
        text = ".".join(quote_ident(n) for n in names)
    if tn.get("pct_type"):
        text += "%TYPE"
    text += "[]" * len(tn.get("arrayBounds", ()))
    return ("SETOF " + text) if tn.get("setof") else text


def function_args(params: Iterable[Node], *, keep_out: bool) -> str:
    skip = {"FUNC_PARAM_TABLE"} if keep_out else {"FUNC_PARAM_OUT", "FUNC_PARAM_TABLE"}
    args = []
    for p in params:
        fp = p.get("FunctionParameter", p)
        if fp.get("mode") not in skip:
            args.append(type_text(fp.get("argType", {})))
    return ", ".join(args)


def object_with_args(objtype: str, owa: Node) -> Target:
    schema, name = split(strings(owa.get("objname", ())))
    args: str | None
    if owa.get("args_unspecified"):
        args = None
    elif objtype == "procedure" and "objfuncargs" in owa:
        args = function_args(owa["objfuncargs"], keep_out=True)
    else:
        args = ", ".join(type_text(a) for a in owa.get("objargs", ()))
    return Target(objtype, schema, name, args=args)


def drop_target(objtype: str, obj: Node) -> Target:
    if "String" in obj:
        return Target(objtype, None, str(obj["String"]["sval"]))
    if "ObjectWithArgs" in obj:
        return object_with_args(objtype, obj["ObjectWithArgs"])
    if "TypeName" in obj:
        schema, name = split(strings(obj["TypeName"].get("names", ())))
        return Target(objtype, schema, name)
    items = obj.get("List", {}).get("items", [])
    if objtype == "cast":
        return Target(objtype, None, f"({type_text(items[0])} AS {type_text(items[1])})")
    if objtype == "transform":
        lang = strings(items[1:])[0]
        return Target(objtype, None, f"FOR {type_text(items[0])} LANGUAGE {quote_ident(lang)}")
    names = strings(items)
    if objtype in ("operator class", "operator family"):
        schema, name = split(names[1:])
        return Target(objtype, schema, name, args=names[0])
    if objtype in ("trigger", "rule", "policy"):
        schema, parent = split(names[:-1])
        return Target(objtype, schema, names[-1], parent=parent)
    schema, name = split(names)
    return Target(objtype, schema, name)


# -- statement verbs ------------------------------------------------------------------------

_COMMANDS = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "VariableShowStmt": "SHOW",
    "TruncateStmt": "TRUNCATE",
    "CreateStmt": "CREATE TABLE",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreatePolicyStmt": "CREATE POLICY",
    "AlterPolicyStmt": "ALTER POLICY",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "ExecuteStmt": "EXECUTE",
    "PrepareStmt": "PREPARE",
    "DeallocateStmt": "DEALLOCATE",
    "ExplainStmt": "EXPLAIN",
    "CopyStmt": "COPY",
    "CreateForeignServerStmt": "CREATE SERVER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "DropdbStmt": "DROP DATABASE",
    "DropRoleStmt": "DROP ROLE",
    "DropOwnedStmt": "DROP OWNED",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "AlterSystemStmt": "ALTER SYSTEM",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    "DropUserMappingStmt": "DROP USER MAPPING",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ClosePortalStmt": "CLOSE",
    "LockStmt": "LOCK TABLE",
    "LoadStmt": "LOAD",
    "CreatedbStmt": "CREATE DATABASE",
}
_TRANSACTION = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
}
_CAMEL = re.compile(r"[A-Z][a-z]*")


def command_of(ntype: str, body: Node) -> str:
    """The statement's own verb, close to PostgreSQL's command tag."""
    if ntype in _COMMANDS:
        return _COMMANDS[ntype]
    if ntype == "TransactionStmt":
        kind = str(body.get("kind", ""))
        return _TRANSACTION.get(kind, kind.removeprefix("TRANS_STMT_").replace("_", " "))
    if ntype == "VariableSetStmt":
        return "RESET" if str(body.get("kind", "")).startswith("VAR_RESET") else "SET"
    if ntype == "DropStmt":
        return "DROP " + objtype_name(body.get("removeType", "")).upper()
    if ntype == "AlterTableStmt":
        return "ALTER " + objtype_name(body.get("objtype", "OBJECT_TABLE")).upper()
    if ntype == "CreateTableAsStmt":
        matview = body.get("objtype") == "OBJECT_MATVIEW"
        return "CREATE MATERIALIZED VIEW" if matview else "CREATE TABLE AS"
    if ntype == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION"
    if ntype == "GrantStmt":
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if ntype == "VacuumStmt":
        return "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
    if ntype == "FetchStmt":
        return "MOVE" if body.get("ismove") else "FETCH"
    return " ".join(_CAMEL.findall(ntype.removesuffix("Stmt"))).upper()
