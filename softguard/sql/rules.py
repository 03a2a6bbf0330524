"""Per-node rules over libpg_query's JSON tree: which nodes destroy data, and on what.

`OWN[node_type](body)` returns the node's own non-SAFE operations (usually one; ALTER
TABLE may give several) without looking at its children; `softguard.sql.analyze` walks
the tree and applies them. Adding a non-SAFE rule here means adding its trigger word to
`softguard.sql.prefilter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from softguard.sql.model import Kind, Statement, Target
from softguard.sql.names import drop_target, objtype_name, rangevar, role, split, strings
from softguard.sql.prefilter import DANGEROUS_FUNCTIONS, OPAQUE_FUNCTIONS, REMOTE_FUNCTIONS

Node = dict[str, Any]
Rule = Callable[[Node], list[Statement]]

# -- own effects ----------------------------------------------------------------------------

_D, _O = Kind.DESTRUCTIVE, Kind.OPAQUE


def _cascade(body: Node) -> bool:
    return body.get("behavior") == "DROP_CASCADE"


def _drop(body: Node) -> list[Statement]:
    objtype = objtype_name(body.get("removeType", ""))
    targets = tuple(drop_target(objtype, o) for o in body.get("objects", ()))
    detail = "CONCURRENTLY" if body.get("concurrent") else ""
    return [
        Statement(
            _D,
            "DROP " + objtype.upper(),
            targets,
            _cascade(body),
            bool(body.get("missing_ok")),
            detail=detail,
        )
    ]


def _truncate(body: Node) -> list[Statement]:
    rels = body.get("relations", ())
    targets = tuple(rangevar(r.get("RangeVar", r)) for r in rels)
    notes = ["RESTART IDENTITY"] if body.get("restart_seqs") else []
    if any(not r.get("RangeVar", r).get("inh", False) for r in rels):
        notes.append("ONLY")
    return [Statement(_D, "TRUNCATE", targets, _cascade(body), detail=", ".join(notes))]


# In a DELETE's or UPDATE's detail: it has no WHERE clause (policy's require_where).
NO_WHERE = "no WHERE clause: every row"


def _dml(action: str) -> Rule:
    def rule(body: Node) -> list[Statement]:
        rel = body["relation"]
        notes = [] if rel.get("inh", False) else ["ONLY"]
        where = body.get("whereClause")
        if where is None:
            notes.append(NO_WHERE)
        elif "CurrentOfExpr" in where:
            notes.append(f"WHERE CURRENT OF {where['CurrentOfExpr'].get('cursor_name')}")
        return [Statement(_D, action, (rangevar(rel),), detail=", ".join(notes))]

    return rule


def _merge(body: Node) -> list[Statement]:
    commands = [
        w.get("MergeWhenClause", {}).get("commandType", "")
        for w in body.get("mergeWhenClauses", ())
    ]
    verbs = [c.removeprefix("CMD_") for c in commands if c in ("CMD_UPDATE", "CMD_DELETE")]
    if not verbs:
        return []
    detail = "WHEN ... THEN " + ", ".join(dict.fromkeys(verbs))
    return [Statement(_D, "MERGE", (rangevar(body["relation"]),), detail=detail)]


def _insert(body: Node) -> list[Statement]:
    if body.get("onConflictClause", {}).get("action") != "ONCONFLICT_UPDATE":
        return []
    rel = rangevar(body["relation"])
    return [Statement(_D, "INSERT ON CONFLICT DO UPDATE", (rel,), detail="updates existing rows")]


def _alter_table(body: Node) -> list[Statement]:
    objtype = objtype_name(body.get("objtype", "OBJECT_TABLE"))
    verb = "ALTER " + objtype.upper()
    rel = rangevar(body["relation"], objtype)
    is_type = objtype == "type"
    grouped: dict[str, list[Target]] = {}
    cascade = False
    if_exists = bool(body.get("missing_ok"))
    for item in body.get("cmds", ()):
        cmd = item.get("AlterTableCmd", {})
        subtype, name = cmd.get("subtype"), cmd.get("name")
        if subtype == "AT_DropColumn":
            action = "ALTER TYPE DROP ATTRIBUTE" if is_type else verb + " DROP COLUMN"
            target = Target("attribute" if is_type else "column", rel.schema, rel.name, name)
        elif subtype == "AT_AlterColumnType":
            action = "ALTER TYPE ALTER ATTRIBUTE TYPE" if is_type else verb + " ALTER COLUMN TYPE"
            target = Target("attribute" if is_type else "column", rel.schema, rel.name, name)
        elif subtype == "AT_DropConstraint":
            action = verb + " DROP CONSTRAINT"
            target = Target("constraint", rel.schema, str(name), parent=rel.name)
        else:
            continue
        grouped.setdefault(action, []).append(target)
        cascade = cascade or _cascade(cmd)
        if_exists = if_exists or bool(cmd.get("missing_ok"))
    # The subcommand that loses the most data leads, whatever order the client wrote them
    # in: the policy and the rewrite decide on the first one.
    ordered = sorted(grouped.items(), key=lambda item: _ALTER_RANK.get(item[0], 9))
    return [Statement(_D, a, tuple(t), cascade, if_exists) for a, t in ordered]


_ALTER_RANK = {
    "ALTER TABLE DROP COLUMN": 0,
    "ALTER TYPE DROP ATTRIBUTE": 0,
    "ALTER TABLE ALTER COLUMN TYPE": 1,
    "ALTER TYPE ALTER ATTRIBUTE TYPE": 1,
}


def _alter_domain(body: Node) -> list[Statement]:
    if body.get("subtype") != "X":
        return []
    schema, domain = split(strings(body.get("typeName", ())))
    target = Target("constraint", schema, str(body.get("name")), parent=domain)
    return [
        Statement(
            _D,
            "ALTER DOMAIN DROP CONSTRAINT",
            (target,),
            _cascade(body),
            bool(body.get("missing_ok")),
        )
    ]


def _simple(
    kind: Kind,
    action: str,
    target: Callable[[Node], tuple[Target, ...]],
    detail: Callable[[Node], str] = lambda b: "",
) -> Rule:
    def rule(body: Node) -> list[Statement]:
        return [
            Statement(
                kind,
                action,
                target(body),
                _cascade(body),
                bool(body.get("missing_ok")),
                detail=detail(body),
            )
        ]

    return rule


def _copy(body: Node) -> list[Statement]:
    rel = body.get("relation")
    targets = (rangevar(rel),) if rel else ()
    filename = str(body.get("filename", ""))[:80]
    if body.get("is_program"):
        return [Statement(_D, "COPY PROGRAM", targets, detail=f"runs shell command {filename!r}")]
    if filename and not body.get("is_from"):
        return [Statement(_D, "COPY TO FILE", targets, detail=f"writes server file {filename!r}")]
    return []


def _func_call(body: Node) -> list[Statement]:
    schema, name = split(strings(body.get("funcname", ())))
    target = (Target("function", schema, name),)
    if name in DANGEROUS_FUNCTIONS:
        return [Statement(_D, f"CALL FUNCTION {name}", target, detail=f"calls {name}()")]
    if name in REMOTE_FUNCTIONS:
        detail = f"{name}() opens a connection to another server"
        return [Statement(_D, f"CALL FUNCTION {name}", target, detail=detail)]
    if name in OPAQUE_FUNCTIONS and (name != "ts_rewrite" or len(body.get("args", ())) == 2):
        detail = f"{name}() runs SQL text softguard cannot see"
        return [Statement(_O, f"CALL FUNCTION {name}", target, detail=detail)]
    return []


def _do_language(body: Node) -> str:
    for arg in body.get("args", ()):
        d = arg.get("DefElem", {})
        if d.get("defname") == "language":
            return str(d.get("arg", {}).get("String", {}).get("sval", "?"))
    return "plpgsql"


def _call_target(body: Node) -> tuple[Target, ...]:
    schema, name = split(strings(body.get("funccall", {}).get("funcname", ())))
    return (Target("procedure", schema, name),)


def _roles(key: str) -> Callable[[Node], tuple[Target, ...]]:
    return lambda b: tuple(role(r) for r in b.get(key, ()))


def _server(body: Node) -> tuple[Target, ...]:
    return (Target("server", None, str(body.get("servername") or body.get("server_name"))),)


def _user_mapping(body: Node) -> tuple[Target, ...]:
    mapping = replace(role(body.get("user", {})), objtype="user mapping")
    return (replace(mapping, parent=str(body.get("servername"))),)


def _import_detail(body: Node) -> str:
    return f"from schema {body.get('remote_schema')} into {body.get('local_schema')}"


def _alter_system(body: Node) -> tuple[Target, ...]:
    name = body.get("setstmt", {}).get("name")
    return (Target("setting", None, str(name)),) if name else ()


OWN: dict[str, Rule] = {
    "DropStmt": _drop,
    "TruncateStmt": _truncate,
    "DeleteStmt": _dml("DELETE"),
    "UpdateStmt": _dml("UPDATE"),
    "MergeStmt": _merge,
    "InsertStmt": _insert,
    "AlterTableStmt": _alter_table,
    "AlterDomainStmt": _alter_domain,
    "CopyStmt": _copy,
    "FuncCall": _func_call,
    "DropdbStmt": _simple(
        _D,
        "DROP DATABASE",
        lambda b: (Target("database", None, str(b["dbname"])),),
        lambda b: (
            "WITH (FORCE)"
            if any(o.get("DefElem", {}).get("defname") == "force" for o in b.get("options", ()))
            else ""
        ),
    ),
    "DropRoleStmt": _simple(_D, "DROP ROLE", _roles("roles")),
    "DropOwnedStmt": _simple(_D, "DROP OWNED", _roles("roles")),
    "ReassignOwnedStmt": _simple(
        _D,
        "REASSIGN OWNED",
        _roles("roles"),
        lambda b: f"to {role(b.get('newrole', {})).qualified()}",
    ),
    "AlterSystemStmt": _simple(
        _D,
        "ALTER SYSTEM",
        _alter_system,
        lambda b: str(b.get("setstmt", {}).get("kind", "")).removeprefix("VAR_"),
    ),
    "DropTableSpaceStmt": _simple(
        _D, "DROP TABLESPACE", lambda b: (Target("tablespace", None, str(b["tablespacename"])),)
    ),
    "DropSubscriptionStmt": _simple(
        _D, "DROP SUBSCRIPTION", lambda b: (Target("subscription", None, str(b["subname"])),)
    ),
    "DropUserMappingStmt": _simple(
        _D,
        "DROP USER MAPPING",
        lambda b: (
            replace(
                role(b.get("user", {})), objtype="user mapping", parent=str(b.get("servername"))
            ),
        ),
    ),
    # Remote writes (decision 0013): what runs on the other server is beyond softguard.
    "CreateForeignServerStmt": _simple(
        _D, "CREATE SERVER", _server, lambda b: f"foreign data wrapper {b.get('fdwname')}"
    ),
    "AlterForeignServerStmt": _simple(_D, "ALTER SERVER", _server),
    "CreateUserMappingStmt": _simple(_D, "CREATE USER MAPPING", _user_mapping),
    "AlterUserMappingStmt": _simple(_D, "ALTER USER MAPPING", _user_mapping),
    "ImportForeignSchemaStmt": _simple(_D, "IMPORT FOREIGN SCHEMA", _server, _import_detail),
    "DoStmt": _simple(_O, "DO", lambda b: (), lambda b: f"DO block in {_do_language(b)}"),
    "CallStmt": _simple(_O, "CALL", _call_target, lambda b: "runs a procedure"),
    "ExecuteStmt": _simple(
        _O,
        "EXECUTE",
        lambda b: (Target("prepared statement", None, str(b["name"])),),
        lambda b: "runs a prepared statement",
    ),
    "LoadStmt": _simple(_O, "LOAD", lambda b: (), lambda b: "loads a shared library"),
}
# Node types the walk looks for inside other statements (DML only appears in CTEs).
INNER = frozenset(
    {"DeleteStmt", "UpdateStmt", "MergeStmt", "InsertStmt", "FuncCall", "ExecuteStmt"}
)
