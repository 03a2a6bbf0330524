"""classify(sql): what would this SQL text do, by PostgreSQL's own grammar (pglast).

Pure: no I/O, never raises on bad SQL. The parse tree is libpg_query's JSON
(`parse_sql_json` + `orjson`), walked iteratively so hostile nesting cannot exhaust the
Python stack: `softguard.sql.analyze` walks it, `softguard.sql.rules` holds the per-node
rules, `softguard.sql.names` builds targets.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.parser import ParseError, parse_sql_json

from softguard.sql.grammar import name_readings, old_lexer_differs

__all__ = ["Classification", "Kind", "Statement", "Target", "classify", "quote_ident"]


class Kind(enum.StrEnum):
    """What a statement can do. Severity order (most severe first):
    UNPARSEABLE > DESTRUCTIVE > OPAQUE > SAFE."""

    SAFE = "safe"  # cannot destroy data
    DESTRUCTIVE = "destructive"  # destroys/changes data or objects (see .action/.targets)
    OPAQUE = "opaque"  # softguard cannot see what it will do (DO, CALL, EXECUTE, ...)
    UNPARSEABLE = "unparseable"  # pglast raised a ParseError (or the text was not inspectable)

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Kind.SAFE: 0, Kind.OPAQUE: 1, Kind.DESTRUCTIVE: 2, Kind.UNPARSEABLE: 3}

_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
_QUOTED_KEYWORDS = frozenset(RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS | COL_NAME_KEYWORDS)
_ROLE_SPECS = frozenset({"CURRENT_USER", "SESSION_USER", "CURRENT_ROLE", "PUBLIC"})


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_ident(): quote unless a plain lower-case non-keyword identifier."""
    if _PLAIN_IDENT.fullmatch(name) and name not in _QUOTED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Target:
    """An object a statement acts on, named as PostgreSQL normalised it.

    objtype: lower-case object type ("table", "schema", "function", "column", "trigger", ...).
    schema: None when unqualified (resolved later through the session's search_path).
    column: for objtype "column" (ALTER TABLE/TYPE ... DROP/ALTER COLUMN): name is the table.
    args: for functions/procedures/aggregates/operators, the argument types as SQL text
        ("integer, text"; "" for none; None when not given, as in ``DROP FUNCTION f``);
        for operator classes/families, the access method.
    parent: for triggers, rules, policies and constraints, the relation (or domain) they
        belong to (in ``schema``); for user mappings, the server.
    """

    objtype: str
    schema: str | None
    name: str
    column: str | None = None
    args: str | None = None
    parent: str | None = None

    def qualified(self) -> str:
        """Display form, quote_ident-style: public."Weird Name", f(integer), trg ON s.t."""
        if self.objtype in ("cast", "transform"):
            return self.name
        if self.objtype == "role" and self.name in _ROLE_SPECS:
            return self.name
        if self.objtype == "user mapping":
            return f"FOR {_maybe_role(self.name)} SERVER {quote_ident(self.parent or '')}"
        prefix = quote_ident(self.schema) + "." if self.schema is not None else ""
        if self.parent is not None:
            return f"{quote_ident(self.name)} ON {prefix}{quote_ident(self.parent)}"
        text = prefix + quote_ident(self.name)
        if self.column is not None:
            text += "." + quote_ident(self.column)
        if self.objtype in ("operator class", "operator family") and self.args:
            return f"{text} USING {quote_ident(self.args)}"
        if self.objtype == "operator":
            text = prefix + self.name  # operator names are never quoted
        if self.args is not None:
            text += f"({self.args})"
        return text


def _maybe_role(name: str) -> str:
    return name if name in _ROLE_SPECS else quote_ident(name)


@dataclass(frozen=True, slots=True)
class Statement:
    """One top-level statement of the text (or, inside `nested`, one operation in it).

    action: the upper-case verb phrase of what the statement does that matters most
        ("DROP TABLE", "DELETE", "CALL FUNCTION pg_terminate_backend", ...); for SAFE
        statements the statement's own verb ("SELECT", "BEGIN", "SET", ...).
    command: the statement's own top-level verb. It differs from ``action`` when the
        destructive operation is wrapped or hidden: ``EXPLAIN ANALYZE DELETE ...`` has
        action "DELETE", command "EXPLAIN"; ``WITH d AS (DELETE ...) SELECT`` has action
        "DELETE", command "SELECT"; ``PREPARE p AS DELETE ...`` command "PREPARE". A
        rewriter must only rewrite statements whose command is the action it handles.
    location, length: byte offsets into the UTF-8 text (length 0 = to the end).
    nested: every other non-SAFE operation of the statement: those found inside it
        (data-modifying CTEs, dangerous function calls, the statement wrapped by EXPLAIN
        ANALYZE/PREPARE, what a rule/function/view being created would run), including
        the one promoted to ``action`` when the statement's own verb is harmless, and
        further destructive subcommands of one ALTER TABLE. Each has location 0 and may
        carry its own ``nested``.
    """

    kind: Kind
    action: str
    targets: tuple[Target, ...] = ()
    cascade: bool = False
    if_exists: bool = False
    location: int = 0
    length: int = 0
    detail: str = ""
    command: str = ""
    nested: tuple[Statement, ...] = field(default=())

    def summary(self) -> str:
        """Short text such as "DELETE FROM public.orders" or "DROP TABLE a, b"."""
        names = ", ".join(t.qualified() for t in self.targets)
        if not names or self.action.startswith("CALL FUNCTION"):
            return self.action
        return f"{_SUMMARY_VERBS.get(self.action, self.action)} {names}"


@dataclass(frozen=True, slots=True)
class Classification:
    """The result for a whole text. ``kind`` is the most severe over its statements.

    An UNPARSEABLE text has ``statements == ()`` and the parser's message in ``error``.
    A text with no statements (empty, only comments, only ``;``) is SAFE with
    ``statements == ()``; so is the shared result of a prefilter hit
    (see `softguard.sql.Classifier`).
    """

    kind: Kind
    statements: tuple[Statement, ...]
    error: str | None = None
    # UNPARSEABLE because the text reads as different statements in different client
    # encodings (softguard.sql.reading): refused whatever the policy says.
    ambiguous: bool = False
    # UNPARSEABLE text the server rejects too (softguard.sql.reading): nothing in it runs,
    # so the policy lets the server answer with its own error.
    inert: bool = False

    @property
    def destructive(self) -> tuple[Statement, ...]:
        return tuple(s for s in self.statements if s.kind is Kind.DESTRUCTIVE)

    @property
    def opaque(self) -> tuple[Statement, ...]:
        return tuple(s for s in self.statements if s.kind is Kind.OPAQUE)


_SUMMARY_VERBS = {"DELETE": "DELETE FROM", "MERGE": "MERGE INTO", "INSERT": "INSERT INTO"}

SAFE_EMPTY = Classification(Kind.SAFE, ())

# Bodies (function strings) are classified recursively; hostile nesting stops here.
MAX_BODY_DEPTH = 4


def classify(sql: str) -> Classification:
    """Classify every statement of *sql*. Pure; never raises on bad SQL."""
    return _classify(sql, 0, None)


def classify_nested(sql: str, depth: int) -> Classification:
    """classify() for SQL found inside other SQL (function bodies), *depth* levels down."""
    return _classify(sql, depth, None)


# A numeric constant used as a value (``{"A_Const":{"ival":...,"location":N}}``). Inside
# a JSON string every quote is escaped, so ``{"`` only matches the tree's own structure.
_NUMERIC_CONST = re.compile(
    rb'\{"A_Const":\{"(?:ival|fval)":\{(?:"(?:ival|fval)":(?:-?\d+|"[-0-9.eE+]*"))?\}'
    rb',"location":(\d+)\}\}'
)


def classify_with_constants(sql: str) -> tuple[Classification, frozenset[int] | None]:
    """classify(), plus the UTF-8 byte offsets of the numeric constants the statement uses
    as plain values (``WHERE id = 42``, ``LIMIT 10``; a negative one at its ``-``), or None
    when the text did not parse. No rule reads such a value, so texts that differ only
    there classify alike (`softguard.sql.cache` relies on it); numbers anywhere else
    (``EXPLAIN (ANALYZE 1)``, strings, names, comments) are not listed."""
    found: list[int] = []
    result = _classify(sql, 0, found)
    return result, None if result.kind is Kind.UNPARSEABLE else frozenset(found)


def _classify(sql: str, depth: int, constants: list[int] | None) -> Classification:
    result = _classify_text(sql, depth, constants)
    if depth == 0 and result.kind is Kind.UNPARSEABLE:
        return unparseable(sql, result)
    return result


def unparseable(text: str, result: Classification) -> Classification:
    """*result*, the UNPARSEABLE classification of *text*, marked ``inert`` when the server
    rejects the text too: it does not parse with the keywords that older servers take as
    names read as names (softguard.sql.grammar), nor lexes differently there. A parse
    tree softguard could not inspect is never inert: the server runs it."""
    error = result.error or ""
    if error.startswith(_NOT_INSPECTED):
        return result
    quoted = name_readings(text)
    if quoted is not None:
        older = _classify(quoted, 0, None)
        if older.kind is not Kind.UNPARSEABLE:
            if older.kind is Kind.SAFE:
                return replace(result, inert=True)
            what = ", ".join(s.summary() for s in older.statements if s.kind is not Kind.SAFE)
            return replace(
                result,
                error=f"{error}; PostgreSQL 14-17 take some of its words as names, and "
                f"then it runs {what}",
            )
    if old_lexer_differs(text):
        return replace(
            result, error=f"{error}; PostgreSQL 14 reads a number followed by letters as two"
        )
    return replace(result, inert=True)


_NOT_INSPECTED = ("parse tree not inspectable", "softguard could not inspect")


def _classify_text(sql: str, depth: int, constants: list[int] | None) -> Classification:
    try:
        raw = parse_sql_json(sql)
        if constants is not None:
            encoded_raw = raw.encode()
            constants.extend(int(m.group(1)) for m in _NUMERIC_CONST.finditer(encoded_raw))
        tree = load_json(raw)
        if not isinstance(tree, dict):
            raise ValueError("parse tree is not an object")
    except ParseError as exc:
        return Classification(Kind.UNPARSEABLE, (), error=str(exc) or "syntax error")
    except (RecursionError, ValueError) as exc:
        return Classification(Kind.UNPARSEABLE, (), error=f"parse tree not inspectable: {exc}")
    try:
        encoded: bytes | None = None
        statements = []
        for raw in tree.get("stmts", ()):
            node = raw["stmt"]
            location, length = int(raw.get("stmt_location", 0)), int(raw.get("stmt_len", 0))
            if "CreateFunctionStmt" in node:
                # PL/pgSQL is parsed from the statement's own text.
                encoded = sql.encode() if encoded is None else encoded
                end = location + length if length else len(encoded)
                text = encoded[location:end].decode(errors="replace")
            else:
                text = ""
            statements.append(_analyze.analyze(node, depth, text, location, length))
    except Exception as exc:  # a tree shape the rules do not expect: never pass it silently
        return Classification(
            Kind.UNPARSEABLE, (), error=f"softguard could not inspect the statement: {exc!r}"
        )
    if not statements:
        return SAFE_EMPTY
    kind = max((s.kind for s in statements), key=_SEVERITY.__getitem__)
    return Classification(kind, tuple(statements))


# -- JSON loading -------------------------------------------------------------------------

_JSON_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:("(?:[^"\\]|\\.)*")|([-+0-9.eE]+)|(true|false|null)|([{}\[\]:,]))', re.S
)
_CONSTANTS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


def load_json(data: str | bytes) -> Any:
    """orjson.loads, falling back to an iterative parser for trees deeper than orjson's
    1024-level limit (``SELECT 1+1+...`` with a few hundred terms already gets there)."""
    try:
        result = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "recursion" not in str(exc) and "depth" not in str(exc):
            raise
        result = _loads_iterative(data.encode() if isinstance(data, str) else data)
    return result


class _Object:
    """An open JSON object while parsing: the dict and the key awaiting its value."""

    __slots__ = ("key", "obj")

    def __init__(self) -> None:
        self.obj: dict[str, Any] = {}
        self.key: str | None = None


def _loads_iterative(data: bytes) -> Any:
    stack: list[_Object | list[Any]] = []
    root: Any = None
    pos, end = 0, len(data)
    while pos < end:
        match = _JSON_TOKEN.match(data, pos)
        if match is None:
            if data[pos:].strip():
                raise ValueError(f"bad JSON at byte {pos}")
            break
        pos = match.end()
        string, number, constant, punct = match.groups()
        opened: _Object | list[Any] | None = None
        if punct is not None:
            if punct in (b",", b":"):
                continue
            if punct in (b"]", b"}"):
                stack.pop()
                continue
            opened = _Object() if punct == b"{" else []
            value: Any = opened.obj if isinstance(opened, _Object) else opened
        elif string is not None:
            value = orjson.loads(string) if b"\\" in string else string[1:-1].decode()
        elif number is not None:
            value = orjson.loads(number)
        else:
            value = _CONSTANTS[constant]
        if not stack:
            root = value
        else:
            top = stack[-1]
            if isinstance(top, list):
                top.append(value)
            elif top.key is None:
                top.key = value
            else:
                top.obj[top.key] = value
                top.key = None
        if opened is not None:
            stack.append(opened)
    return root


from softguard.sql import analyze as _analyze  # noqa: E402  (it builds on the model above)
