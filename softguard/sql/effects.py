"""What each statement of a text does to the database, coarsely: reads, writes data,
changes the schema, or only touches the session. The policy's *modes* (read-only, data,
full) decide on this; the destructive classification (`softguard.sql.classify`) decides
everything else.

Unlike the classification this always parses (no prefilter: an INSERT is harmless to
the destructive classifier and a write here), so only sessions with a mode other than
``full`` pay for it. The server enforces read-only mode too (a read-only transaction
refuses every write, including a function's); this module's job there is to refuse what
would turn the server's read-only off, and to give clear errors early.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from softguard.sql.tree import collector_paused, load_json

__all__ = ["READ_ONLY_SETTINGS", "Effect", "StatementEffect", "effects"]


class Effect(enum.StrEnum):
    READ = "read"  # reads only (or nothing)
    SESSION = "session"  # session state: SET, BEGIN, PREPARE, EXECUTE, DISCARD ...
    WRITE = "write"  # changes rows (INSERT, UPDATE, DELETE, MERGE, COPY FROM, TRUNCATE ...)
    CODE = "code"  # runs code softguard cannot read (DO, CALL)
    DDL = "ddl"  # changes the schema, roles, privileges, or the server
    ESCAPE = "escape"  # would switch the server's read-only enforcement off


# Settings whose change would end read-only mode (the server's own enforcement).
READ_ONLY_SETTINGS = frozenset(
    {"default_transaction_read_only", "transaction_read_only", "session characteristics"}
)


@dataclass(frozen=True, slots=True)
class StatementEffect:
    effect: Effect
    verb: str  # e.g. "INSERT", "CREATE TABLE", "SET default_transaction_read_only"


_DML = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "TruncateStmt": "TRUNCATE",
    "NotifyStmt": "NOTIFY",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
}
_SESSION = {
    "TransactionStmt": "transaction control",
    "VariableShowStmt": "SHOW",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "FetchStmt": "FETCH",
    "ClosePortalStmt": "CLOSE",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "LockStmt": "LOCK",
}
_CODE = {"DoStmt": "DO", "CallStmt": "CALL"}
_WRITING_NODES = frozenset(("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"))


def effects(text: str) -> list[StatementEffect] | None:
    """The effect of each statement of *text*, in order; None when it does not parse
    (the destructive classification decides unparseable text)."""
    try:
        with collector_paused():
            tree = load_json(parse_sql_json(text))
    except ParseError:
        return None
    return [_effect(raw.get("stmt") or {}) for raw in tree.get("stmts", [])]


def _only(node: dict[str, Any]) -> tuple[str, Any]:
    ((name, body),) = node.items()
    return name, body


def _effect(node: dict[str, Any]) -> StatementEffect:
    if not node:
        return StatementEffect(Effect.READ, "empty")
    name, body = _only(node)
    escape = _escape(name, body) if _mentions_set_config(node) or name in _ESCAPABLE else None
    if escape is not None:
        return StatementEffect(Effect.ESCAPE, escape)
    if name == "SelectStmt":
        return _query_effect(node, "SELECT")
    if name in _DML:
        return StatementEffect(Effect.WRITE, _DML[name])
    if name in _SESSION:
        return StatementEffect(Effect.SESSION, _SESSION[name])
    if name in _CODE:
        return StatementEffect(Effect.CODE, _CODE[name])
    if name in ("VariableSetStmt", "DiscardStmt"):
        return StatementEffect(Effect.SESSION, "SET" if name == "VariableSetStmt" else "DISCARD")
    if name == "ExplainStmt":
        analyze = any(_option(o, "analyze") for o in body.get("options") or [])
        inner = _effect(body.get("query") or {})
        if analyze:
            return StatementEffect(inner.effect, f"EXPLAIN ANALYZE {inner.verb}")
        return StatementEffect(Effect.READ, f"EXPLAIN {inner.verb}")
    if name in ("PrepareStmt", "DeclareCursorStmt"):
        inner = _effect(body.get("query") or {})
        verb = "PREPARE" if name == "PrepareStmt" else "DECLARE CURSOR"
        return StatementEffect(inner.effect, f"{verb} {inner.verb}")
    if name == "CopyStmt":
        if body.get("is_from"):
            return StatementEffect(Effect.WRITE, "COPY FROM")
        return StatementEffect(Effect.READ, "COPY TO")
    return StatementEffect(Effect.DDL, _ddl_verb(name))


def _query_effect(node: dict[str, Any], verb: str) -> StatementEffect:
    _, body = _only(node)
    if body.get("intoClause"):
        return StatementEffect(Effect.DDL, "SELECT INTO")
    if body.get("lockingClause"):
        return StatementEffect(Effect.WRITE, f"{verb} FOR UPDATE/SHARE")
    if any(name in _WRITING_NODES for name in _node_names(node)):
        return StatementEffect(Effect.WRITE, f"{verb} with a data-modifying WITH")
    return StatementEffect(Effect.READ, verb)


_DDL_VERBS = {
    "CreateStmt": "CREATE TABLE",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "CreateTrigStmt": "CREATE TRIGGER",
    "RuleStmt": "CREATE RULE",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CompositeTypeStmt": "CREATE TYPE",
    "CreateEnumStmt": "CREATE TYPE",
    "CreateDomainStmt": "CREATE DOMAIN",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "DropStmt": "DROP",
    "GrantStmt": "GRANT/REVOKE",
    "GrantRoleStmt": "GRANT/REVOKE role",
    "RenameStmt": "ALTER ... RENAME",
    "CommentStmt": "COMMENT",
}


def _ddl_verb(name: str) -> str:
    if name in _DDL_VERBS:
        return _DDL_VERBS[name]
    base = name.removesuffix("Stmt")
    words: list[str] = []
    for ch in base:
        if ch.isupper() and words:
            words.append(" ")
        words.append(ch.upper())
    return "".join(words)


def _option(node: Any, wanted: str) -> bool:
    elem = node.get("DefElem") if isinstance(node, dict) else None
    if not elem or elem.get("defname") != wanted:
        return False
    arg = elem.get("arg")
    if arg is None:
        return True
    value = _constant(arg)
    return value not in ("false", "off", "0", False, 0)


_ESCAPABLE = frozenset(("VariableSetStmt", "TransactionStmt", "DiscardStmt"))


def _escape(name: str, body: Any) -> str | None:
    """The verb of a statement that would switch read-only enforcement off, else None."""
    if name == "VariableSetStmt":
        setting = (body.get("name") or "").lower()
        kind = body.get("kind", "")
        if kind == "VAR_RESET_ALL":
            return "RESET ALL"
        if setting in READ_ONLY_SETTINGS or (
            setting == "transaction" and _sets_read_write(body.get("args"))
        ):
            verb = "RESET" if kind == "VAR_RESET" else "SET"
            return f"{verb} {setting}"
        return None
    if name == "DiscardStmt":
        return "DISCARD ALL" if body.get("target") == "DISCARD_ALL" else None
    if name == "TransactionStmt":
        return "BEGIN READ WRITE" if _sets_read_write(body.get("options")) else None
    # Anything else mentioning set_config: refused unless every call names a harmless
    # setting as a constant.
    return "set_config" if _unsafe_set_config(body) else None


def _sets_read_write(options: Any) -> bool:
    for option in options or []:
        elem = option.get("DefElem") if isinstance(option, dict) else None
        if elem and elem.get("defname") == "transaction_read_only":
            return _constant(elem.get("arg")) in (0, "0", False, "false", "off")
    return False


def _constant(node: Any) -> Any:
    """The value of an A_Const (possibly under a TypeCast), else None."""
    if not isinstance(node, dict):
        return None
    if "TypeCast" in node:
        return _constant(node["TypeCast"].get("arg"))
    const = node.get("A_Const")
    if const is None:
        return None
    for key in ("ival", "sval", "boolval", "fval"):
        if key in const:
            inner = const[key]
            if isinstance(inner, dict):
                return next(iter(inner.values()), 0 if key == "ival" else False)
            return inner
    return None


def _node_names(node: Any) -> Iterator[str]:
    """Every node type name in a tree (bounded by the tree's size)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key[:1].isupper():
                    yield key
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _calls(node: Any, function: str) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            call = item.get("FuncCall")
            if isinstance(call, dict):
                names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", [])]
                if names and names[-1].lower() == function:
                    yield call
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _mentions_set_config(node: Any) -> bool:
    return any(True for _ in _calls(node, "set_config"))


def _unsafe_set_config(node: Any) -> bool:
    for call in _calls(node, "set_config"):
        args = call.get("args") or []
        name = _constant(args[0]) if args else None
        if not isinstance(name, str) or name.lower() in READ_ONLY_SETTINGS:
            return True
    return False
