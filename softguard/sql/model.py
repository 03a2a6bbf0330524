"""The SQL seam's data model: what a statement does (`Kind`, `Target`, `Statement`) and
the result for a whole text (`Classification`). Immutable values, no logic beyond display.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

__all__ = [
    "MAX_BODY_DEPTH",
    "SAFE_EMPTY",
    "Classification",
    "Kind",
    "Statement",
    "Target",
    "quote_ident",
]


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
