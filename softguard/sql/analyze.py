"""Parse a text and walk each statement's tree, combining the rules into `Statement`s.

`classify_text(sql, depth)`: parse with pglast, load the tree, `analyze` each statement.

`analyze(node)`: the node's own effect (`rules.OWN`) plus every non-SAFE operation found
anywhere inside it (data-modifying CTEs, dangerous function calls), unless it wraps another
statement (EXPLAIN, PREPARE) or creates code that runs later (rules, views, triggers,
policies, functions): those are judged by `_WRAPPERS`. Every walk is iterative, and SQL
inside function bodies is classified at most `MAX_BODY_DEPTH` levels down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pglast.parser import ParseError, parse_plpgsql_json, parse_sql_json
from pglast.parser import split as split_statements

from softguard.sql.model import (
    _SEVERITY,
    MAX_BODY_DEPTH,
    SAFE_EMPTY,
    Classification,
    Kind,
    Statement,
    Target,
)
from softguard.sql.names import command_of, function_args, rangevar, split, strings
from softguard.sql.prefilter import may_be_destructive
from softguard.sql.rules import INNER, OWN
from softguard.sql.tree import collector_paused, load_json

Node = dict[str, Any]

# -- walking --------------------------------------------------------------------------------


def _walk(root: Any) -> list[Statement]:
    """Every non-SAFE operation inside *root* (not *root* itself), iteratively:
    data-modifying statements first, then function calls. Hot: keep it tight."""
    found: list[Statement] = []
    calls: list[Statement] = []
    cte_queries: set[int] = set()  # ids of the {"DeleteStmt": ...} wrappers under ctequery
    stack: list[Any] = [root]
    pop, push = stack.pop, stack.append
    while stack:
        obj = pop()
        if type(obj) is list:
            stack.extend(reversed(obj))
            continue
        if type(obj) is not dict:
            continue
        for key, value in obj.items():
            kind = type(value)
            if kind is dict:
                if key in INNER:
                    for effect in OWN[key](value):
                        if key == "FuncCall":
                            calls.append(effect)
                            continue
                        where = "data-modifying CTE" if id(obj) in cte_queries else "contains"
                        detail = _join(f"{where}: {effect.summary()}", effect.detail)
                        found.append(replace(effect, detail=detail))
                elif key == "ctequery":
                    cte_queries.add(id(value))
                push(value)
            elif kind is list:
                push(value)
    return found + calls


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _combine(
    command: str, own: list[Statement], inner: list[Statement], location: int, length: int
) -> Statement:
    """One Statement: the first most severe operation is promoted to kind/action/targets."""
    candidates = own + inner
    if not candidates:
        return Statement(Kind.SAFE, command, (), False, False, location, length, "", command)
    primary = candidates[0]
    for c in candidates[1:]:
        if c.kind.severity > primary.kind.severity:
            primary = c
    others = [c.summary() for c in candidates if c is not primary]
    detail = _join(primary.detail, ("also " + ", ".join(others)) if others else "")
    p = primary
    return Statement(
        p.kind, p.action, p.targets, p.cascade, p.if_exists, location, length, detail,
        command, tuple(own[1:] + inner),
    )  # fmt: skip


def analyze(
    node: Node, depth: int = 0, text: str = "", location: int = 0, length: int = 0
) -> Statement:
    """Classify one statement node ``{"NodeType": {...}}`` found at byte *location* (of
    *length*) in its text. *text* is the statement's own SQL, needed only for CREATE
    FUNCTION ... LANGUAGE plpgsql."""
    ((ntype, body),) = node.items()
    command = command_of(ntype, body)
    wrapper = _WRAPPERS.get(ntype)
    if wrapper is not None:
        stmt = wrapper(body, command, depth, text)
        return replace(stmt, location=location, length=length) if location or length else stmt
    rule = OWN.get(ntype)
    own = rule(body) if rule is not None else []
    return _combine(command, own, _walk(body), location, length)


# -- wrappers and deferred code -------------------------------------------------------------

Wrapper = Callable[[Node, str, int, str], Statement]
_FALSE = frozenset({"false", "off", "no", "n", "f", "0", "of", "fa", "fal", "fals"})


def _explain(body: Node, command: str, depth: int, text: str) -> Statement:
    # PostgreSQL takes the last of repeated options (``ANALYZE false, ANALYZE true``):
    # any ANALYZE that is not plainly false counts, so option order cannot talk it round.
    for option in body.get("options", ()):
        d = option.get("DefElem", {})
        if d.get("defname") != "analyze":
            continue
        arg = d.get("arg") or {}
        value: object = arg.get("String", {}).get("sval", "true")  # bare ANALYZE is true
        if "Integer" in arg:
            value = arg["Integer"].get("ival", 0)  # libpg_query omits zero values
        elif "Boolean" in arg:
            value = arg["Boolean"].get("boolval", False)
        if str(value).lower() in _FALSE or value is False:
            continue
        inner = analyze(body["query"], depth)
        if inner.kind is Kind.SAFE:
            break
        detail = _join(f"EXPLAIN ANALYZE executes {inner.summary()}", inner.detail)
        return replace(inner, command=command, detail=detail, nested=(inner,))
    return Statement(Kind.SAFE, command, command=command)


def _prepare(body: Node, command: str, depth: int, text: str) -> Statement:
    inner = analyze(body["query"], depth)
    if inner.kind is Kind.SAFE:
        return Statement(Kind.SAFE, command, command=command)
    detail = _join(
        f"PREPARE of {inner.summary()} (runs on EXECUTE {body.get('name')})", inner.detail
    )
    return replace(inner, command=command, detail=detail, nested=(inner,))


def _deferred(target: Callable[[Node], Target]) -> Wrapper:
    """CREATE RULE/VIEW/TRIGGER/POLICY: nothing runs now; report what would run later."""

    def wrapper(body: Node, command: str, depth: int, text: str) -> Statement:
        return _creates(command, target(body), _walk(body), [])

    return wrapper


def _creates(
    command: str, created: Target, inner: list[Statement], problems: list[str]
) -> Statement:
    if not inner and not problems:
        return Statement(Kind.SAFE, command, command=command)
    what = f"creates {created.objtype} {created.qualified()} that"
    reason = f"{what} runs {inner[0].summary()} later" if inner else f"{what} {problems[0]}"
    return Statement(
        Kind.OPAQUE, command, (created,), detail=reason, command=command, nested=tuple(inner)
    )


def _create_function(body: Node, command: str, depth: int, text: str) -> Statement:
    schema, name = split(strings(body.get("funcname", ())))
    is_proc = bool(body.get("is_procedure"))
    args = function_args(body.get("parameters", ()), keep_out=is_proc)
    created = Target("procedure" if is_proc else "function", schema, name, args=args)
    language, source = "sql", None
    for option in body.get("options", ()):
        d = option.get("DefElem", {})
        arg = d.get("arg", {})
        if d.get("defname") == "language":
            language = str(arg.get("String", {}).get("sval", "?"))
        elif d.get("defname") == "as":
            source = strings(arg.get("List", {}).get("items", ()))
    inner: list[Statement] = []
    problems: list[str] = []
    if "sql_body" in body:
        inner = _walk(body["sql_body"])
    elif depth >= MAX_BODY_DEPTH:
        problems.append("is nested too deeply to inspect")
    elif language == "sql" and source:
        result = classify_nested(source[0], depth + 1)
        if result.kind is Kind.UNPARSEABLE:
            problems.append(f"has a body softguard cannot parse ({result.error})")
        inner = [s for s in result.statements if s.kind is not Kind.SAFE]
    elif language == "plpgsql":
        _plpgsql(text, depth, inner, problems)
    else:
        problems.append(f"is written in {language}, which softguard cannot inspect")
    return _creates(command, created, inner, problems)


def _plpgsql(text: str, depth: int, inner: list[Statement], problems: list[str]) -> None:
    try:
        tree = load_json(parse_plpgsql_json(text))
    except (ParseError, ValueError) as exc:
        problems.append(f"has a PL/pgSQL body softguard cannot parse ({exc})")
        return
    stack: list[Any] = [tree]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(reversed(obj))
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if (
                key in _DYNAMIC
                or (key == "PLpgSQL_stmt_open" and "dynquery" in value)
                or (key == "PLpgSQL_stmt_return_query" and "dynquery" in value)
            ):
                problems.append("runs dynamic SQL (EXECUTE)")
            elif key == "PLpgSQL_expr":
                _plpgsql_expr(value, depth, inner, problems)
                continue
            if isinstance(value, (dict, list)):
                stack.append(value)


_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})


def _plpgsql_expr(expr: Node, depth: int, inner: list[Statement], problems: list[str]) -> None:
    query, mode = str(expr.get("query", "")), int(expr.get("parseMode", 0))
    if mode == 1 or not may_be_destructive(query.encode()):
        return  # a type name, or text that cannot be destructive
    if mode >= 3:  # assignment "target := expression"
        query = query.split("=", 1)[-1]
    result = classify_nested(query if mode == 0 else "SELECT " + query, depth + 1)
    if result.kind is Kind.UNPARSEABLE:
        problems.append(f"has a statement softguard cannot parse: {query[:60]!r}")
    inner.extend(s for s in result.statements if s.kind is not Kind.SAFE)


def _relation_target(
    objtype: str, name_key: str, rel_key: str = "relation"
) -> Callable[[Node], Target]:
    def target(body: Node) -> Target:
        rel = rangevar(body[rel_key])
        return Target(objtype, rel.schema, str(body.get(name_key)), parent=rel.name)

    return target


_WRAPPERS: dict[str, Wrapper] = {
    "ExplainStmt": _explain,
    "PrepareStmt": _prepare,
    "CreateFunctionStmt": _create_function,
    "RuleStmt": _deferred(_relation_target("rule", "rulename")),
    "CreateTrigStmt": _deferred(_relation_target("trigger", "trigname")),
    "CreatePolicyStmt": _deferred(_relation_target("policy", "policy_name", "table")),
    "AlterPolicyStmt": _deferred(_relation_target("policy", "policy_name", "table")),
    "ViewStmt": _deferred(lambda b: rangevar(b["view"], "view")),
}


# -- texts ----------------------------------------------------------------------------------


def classify_nested(sql: str, depth: int) -> Classification:
    """classify() for SQL found inside other SQL (function bodies), *depth* levels down."""
    return classify_text(sql, depth)


# A numeric constant used as a value (``{"A_Const":{"ival":...,"location":N}}``). Inside
# a JSON string every quote is escaped, so ``{"`` only matches the tree's own structure.
_NUMERIC_CONST = re.compile(
    rb'\{"A_Const":\{"(?:ival|fval)":\{(?:"(?:ival|fval)":(?:-?\d+|"[-0-9.eE+]*"))?\}'
    rb',"location":(\d+)\}\}'
)


# A constant (``{"A_Const":{"sval":{"sval":"..."},"location":N}}``): no rule reads one, and
# a long IN list or VALUES holds hundreds of thousands of them. Large trees have them
# replaced by null before loading (like `_NUMERIC_CONST`, it only matches the tree's own
# structure, never text inside a JSON string).
_CONSTANT_NODE = re.compile(
    rb'\{"A_Const":\{(?:"(?:ival|fval|sval|bsval|boolval)":\{(?:"(?:ival|fval|sval|bsval'
    rb'|boolval)":(?:-?\d+|true|false|"[^"\\]*(?:\\.[^"\\]*)*"))?\},)?(?:"isnull":true,)?'
    rb'"location":-?\d+\}\}'
)
_PRUNE_FROM = 4096
# Texts longer than this get no constants (no cache keeps their shape).
CONSTANTS_UP_TO = 65536


def classify_text(sql: str, depth: int, constants: list[int] | None = None) -> Classification:
    """Classify every statement of *sql* found *depth* levels down in function bodies;
    collect into *constants* the byte offsets of its numeric value constants (see
    `softguard.sql.classify.classify_with_constants`). Never raises on bad SQL."""
    with collector_paused():
        if len(sql) > _CHUNK_FROM and depth == 0:
            chunked = _classify_chunks(sql)
            if chunked is not None:
                return chunked
        return _classify_tree(sql, depth, constants)


# A text larger than this is parsed in pieces of about _CHUNK characters, cut after the
# ";" that ends a statement (where pglast's own splitter says statements end): the JSON
# tree of a whole 16 MB text is gigabytes, a piece's is small and freed before the next.
_CHUNK_FROM = 1 << 20
_CHUNK = 1 << 18


def _classify_chunks(sql: str) -> Classification | None:
    """classify_text() of a large *sql*, piece by piece, with the statements' offsets
    those of the whole text; None when the text does not split (then it is parsed whole,
    which reports the error)."""
    try:
        found = split_statements(sql, with_parser=True, only_slices=True)
        slices = [s for s in found if isinstance(s, slice)]
    except (ParseError, ValueError, RecursionError):
        return None
    statements: list[Statement] = []
    start = 0  # character offset of the current piece
    start_byte = 0  # its byte offset in the UTF-8 text
    ascii_only = sql.isascii()
    index = 0
    while start < len(sql):
        end = len(sql)
        while index < len(slices):
            stop = slices[index].stop
            index += 1
            if stop - start >= _CHUNK and index < len(slices):
                semicolon = sql.find(";", stop)
                if semicolon >= 0:
                    end = semicolon + 1
                break
        piece = sql[start:end]
        result = _classify_tree(piece, 0, None)
        if result.kind is Kind.UNPARSEABLE:
            return None
        piece_bytes = len(piece) if ascii_only else len(piece.encode())
        for stmt in result.statements:
            # length 0 means "to the end": of the piece here, of the text for the caller
            length = stmt.length or (piece_bytes - stmt.location if end < len(sql) else 0)
            statements.append(replace(stmt, location=stmt.location + start_byte, length=length))
        start_byte += piece_bytes
        start = end
    if not statements:
        return SAFE_EMPTY
    kind = max((s.kind for s in statements), key=_SEVERITY.__getitem__)
    return Classification(kind, tuple(statements))


def _classify_tree(sql: str, depth: int, constants: list[int] | None) -> Classification:
    try:
        text_json = parse_sql_json(sql)
        raw = text_json.encode()
        del text_json  # the tree of a large text is hundreds of MB: never hold two copies
        if constants is not None and len(sql) <= CONSTANTS_UP_TO:
            constants.extend(int(m.group(1)) for m in _NUMERIC_CONST.finditer(raw))
        if len(raw) > _PRUNE_FROM:
            raw = _CONSTANT_NODE.sub(b"null", raw)
        tree = load_json(raw)
        del raw
        if not isinstance(tree, dict):
            raise ValueError("parse tree is not an object")
    except ParseError as exc:
        return Classification(Kind.UNPARSEABLE, (), error=str(exc) or "syntax error")
    except (RecursionError, ValueError) as exc:
        return Classification(Kind.UNPARSEABLE, (), error=f"parse tree not inspectable: {exc}")
    try:
        encoded: bytes | None = None
        statements = []
        nodes = tree.get("stmts", [])
        del tree
        for index, raw_stmt in enumerate(nodes):
            nodes[index] = None  # free each statement's tree once it is analyzed
            node = raw_stmt["stmt"]
            location = int(raw_stmt.get("stmt_location", 0))
            length = int(raw_stmt.get("stmt_len", 0))
            if "CreateFunctionStmt" in node:
                # PL/pgSQL is parsed from the statement's own text.
                encoded = sql.encode() if encoded is None else encoded
                end = location + length if length else len(encoded)
                text = encoded[location:end].decode(errors="replace")
            else:
                text = ""
            statements.append(analyze(node, depth, text, location, length))
    except Exception as exc:  # a tree shape the rules do not expect: never pass it silently
        return Classification(
            Kind.UNPARSEABLE, (), error=f"softguard could not inspect the statement: {exc!r}"
        )
    if not statements:
        return SAFE_EMPTY
    kind = max((s.kind for s in statements), key=_SEVERITY.__getitem__)
    return Classification(kind, tuple(statements))
