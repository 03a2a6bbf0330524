"""The one policy seam: a statement's classification + who sent it -> what softguard does.

Every statement that is not provably harmless is sorted into a *category* (drop,
truncate, delete, update, alter, dangerous, opaque, unparseable, ...) and the
configuration says, per category, ``protect`` (rewrite it into a reversible operation),
``allow`` (pass it through, logged at DEBUG) or ``deny`` (refuse it with an error). Rules match on
role, application_name and database (shell-style patterns); the first rule that matches
the session and sets the category wins, else the defaults apply. Nothing else in the
proxy interprets classifications.

Rules that always hold here:
- A statement naming softguard's own schemas is refused, whatever the configuration.
- ``protect`` is only accepted for categories softguard can make reversible.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from softguard.sql import Classification, Kind, Statement, classify
from softguard.sql.drop_kinds import REVERSIBLE_DROPS
from softguard.sql.effects import StatementEffect
from softguard.sql.prefilter import LARGE_OBJECT_FUNCTIONS
from softguard.sql.rules import NO_WHERE

log = logging.getLogger("softguard.policy")

Verdict = Literal["protect", "allow", "deny"]
# What a session may do at all, before categories (decision 0019): ``read-only`` refuses
# every write, ``data`` refuses schema changes, ``full`` refuses nothing by itself.
Mode = Literal["full", "data", "read-only"]
MODES: tuple[Mode, ...] = ("full", "data", "read-only")
# ``[policy] preset = "agent"``: the recommended start for an AI agent's sessions. Keys
# the configuration sets itself win.
AGENT_PRESET: dict[str, object] = {
    "mode": "data",
    "drop": "protect",
    "truncate": "protect",
    "delete": "protect",
    "update": "protect",
    "alter": "protect",
    "dangerous": "deny",
    "remote": "deny",
    "opaque": "deny",
    "unparseable": "deny",
    "require_where": True,
    # a statement deleting or updating more rows than this is refused (decision 0021)
    "max_rows": 1000,
}

# DROP kinds softguard makes reversible (docs/decisions/0005-reversible-drop.md): every
# kind is classified in softguard.sql.drop_kinds (docs/drop-kinds.md).
PROTECTABLE_DROPS = REVERSIBLE_DROPS
# Refused by default: cluster-wide or irreversible by nature (DESIGN.md §3).
DANGEROUS_ACTIONS = frozenset(
    {
        "DROP DATABASE",
        "DROP ROLE",
        "DROP OWNED",
        "REASSIGN OWNED",
        "ALTER SYSTEM",
        "COPY PROGRAM",
        "COPY TO FILE",
        "DROP TABLESPACE",
        "DROP SUBSCRIPTION",
    }
)
# What reaches another server (decision 0013): set up, or written to, where softguard
# cannot keep anything. Refused by default.
REMOTE_ACTIONS = frozenset(
    {
        "CREATE SERVER",
        "ALTER SERVER",
        "CREATE USER MAPPING",
        "ALTER USER MAPPING",
        "IMPORT FOREIGN SCHEMA",
        "CALL FUNCTION dblink_connect",
        "CALL FUNCTION dblink_connect_u",
        "CALL FUNCTION dblink_exec",
        "CALL FUNCTION dblink",
        "CALL FUNCTION dblink_send_query",
    }
)
_CATEGORY_BY_ACTION = {
    "TRUNCATE": "truncate",
    "DELETE": "delete",
    "MERGE": "delete",
    "UPDATE": "update",
    "INSERT ON CONFLICT DO UPDATE": "update",
}
CATEGORIES = (
    "drop",
    "drop_other",
    "truncate",
    "delete",
    "update",
    "alter",
    "large_object",
    "dangerous",
    "remote",
    "opaque",
    "unparseable",
)
_PROTECTABLE = frozenset({"drop", "truncate", "delete", "update", "alter", "large_object"})
PROTECTABLE = _PROTECTABLE  # categories softguard can make reversible
# Captured in the database by triggers (decision 0006): passed as sent, even when nested
# (a DELETE inside WITH, EXPLAIN ANALYZE, PREPARE) since the triggers see it run.
CAPTURED = frozenset({"delete", "update"})
# The ledger takes the retention as an integer number of seconds (int4).
MAX_RETENTION_DAYS = 24855
# ALTER subcommands softguard can keep; other ALTERs in category "alter" pass as sent.
REWRITABLE_ALTERS = frozenset({"ALTER TABLE DROP COLUMN", "ALTER TABLE ALTER COLUMN TYPE"})
# Calls of the large-object functions softguard routes through its wrappers (decision 0016).
LARGE_OBJECT_CALLS = frozenset(f"CALL FUNCTION {name}" for name in LARGE_OBJECT_FUNCTIONS)
# Harmless on their own: under "deny" they pass (a write through the descriptor is refused).
_LARGE_OBJECT_HANDLES = frozenset({"CALL FUNCTION lo_open", "CALL FUNCTION lo_close"})
# The catalogs holding large objects: no trigger can capture their rows.
_LARGE_OBJECT_CATALOGS = frozenset({"pg_largeobject", "pg_largeobject_metadata"})
_INV_WRITE = 0x20000  # lo_open's mode bit for writing (libpq/libpq-fs.h)


_SIZE = re.compile(r"^(\d+)\s*([kmgt]?i?b)?$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size_bytes(text: str) -> int:
    """'65536', '64kB', '512MB', '1GiB' -> bytes (units of 1024, as PostgreSQL's)."""
    m = _SIZE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"expected a size like 64kB, 512MB or 1GiB (or bytes), got {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "")[:1]]


def _size(value: Any) -> Any:
    return parse_size_bytes(value) if isinstance(value, str) else value


# A size in bytes, or a text like '100MB' (max_table_bytes).
ByteSize = Annotated[int, BeforeValidator(_size), Field(ge=0)]
# Blast-radius limits (decision 0021): settable at top level and per rule, carried by the
# session's registration and enforced by the database.
LIMITS = ("max_rows", "max_table_bytes")
# What a rule with `tables` may deny on the tables it names (decision 0021).
TABLE_CATEGORIES = ("delete", "update", "truncate", "drop")


def like_pattern(shell: str) -> str:
    """A shell pattern ('billing.*') as a LIKE pattern matching the same names."""
    escaped = shell.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def category_of(stmt: Statement) -> str:
    """The policy category of one non-SAFE statement."""
    if stmt.action in REMOTE_ACTIONS:
        return "remote"
    if stmt.kind is Kind.OPAQUE:
        return "opaque"
    action = stmt.action
    if action in LARGE_OBJECT_CALLS or _writes_large_object_catalog(stmt):
        return "large_object"
    if action in PROTECTABLE_DROPS and stmt.command in ("", action):
        return "drop"
    if action in DANGEROUS_ACTIONS or action.startswith("CALL FUNCTION"):
        return "dangerous"
    category = _CATEGORY_BY_ACTION.get(action)
    if category is not None:
        return category
    if action.startswith("ALTER"):
        return "alter"
    if action.startswith("DROP"):
        return "drop_other"
    return "dangerous"  # an unknown destructive kind: refuse unless configured


def _writes_large_object_catalog(stmt: Statement) -> bool:
    """DELETE / UPDATE / TRUNCATE / MERGE on pg_largeobject(_metadata) (a superuser's)."""
    return stmt.action in ("DELETE", "UPDATE", "TRUNCATE", "MERGE") and any(
        t.name in _LARGE_OBJECT_CATALOGS and t.schema in (None, "pg_catalog") for t in stmt.targets
    )


class _Verdicts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _protect_only_where_possible(self) -> _Verdicts:
        for name in CATEGORIES:
            if getattr(self, name, None) == "protect" and name not in _PROTECTABLE:
                raise ValueError(
                    f"{name} = 'protect' is not available yet (protectable: "
                    f"{', '.join(sorted(_PROTECTABLE))}); use 'allow' or 'deny'"
                )
        return self


class Rule(_Verdicts):
    """Applies to sessions whose role, application_name and database all match."""

    name: str | None = Field(
        default=None, description="what refusals call this rule (default: its patterns)"
    )
    role: str = "*"
    application_name: str = "*"
    database: str = "*"
    mode: Mode | None = None
    require_where: bool | None = None
    max_rows: int | None = Field(default=None, ge=0)
    max_table_bytes: ByteSize | None = None
    drop: Verdict | None = None
    drop_other: Verdict | None = None
    truncate: Verdict | None = None
    delete: Verdict | None = None
    update: Verdict | None = None
    alter: Verdict | None = None
    large_object: Verdict | None = None
    dangerous: Verdict | None = None
    remote: Verdict | None = None
    opaque: Verdict | None = None
    unparseable: Verdict | None = None
    retention_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="how long operations of matching sessions stay undoable",
    )
    # Tables as policy targets (decision 0021): "schema.table" shell patterns, matched in the
    # database on the resolved table; the rule's categories (deny only) apply to those.
    tables: list[str] | None = None

    @model_validator(mode="after")
    def _tables_rule(self) -> Rule:
        if self.tables is None:
            return self
        if not self.tables:
            raise ValueError("tables: name at least one 'schema.table' pattern")
        for pattern in self.tables:
            if "." not in pattern or "[" in pattern or "]" in pattern:
                raise ValueError(
                    f"tables: {pattern!r} is not a 'schema.table' pattern (* and ? only)"
                )
        others = [
            key
            for key in self.model_fields_set
            if key not in ("name", "role", "application_name", "database", "tables")
        ]
        bad = [k for k in others if k not in TABLE_CATEGORIES or getattr(self, k) != "deny"]
        if bad or not others:
            raise ValueError(
                "a rule with tables may only set "
                + ", ".join(f'{c} = "deny"' for c in TABLE_CATEGORIES)
                + (f" (not {', '.join(sorted(bad))})" if bad else "")
            )
        return self

    def label(self, index: int) -> str:
        """How a refusal names this rule: its name, else its number and patterns."""
        if self.name:
            return f"rule {self.name!r}"
        patterns = [
            f"{key}={value}"
            for key, value in (
                ("role", self.role),
                ("application_name", self.application_name),
                ("database", self.database),
            )
            if value != "*"
        ]
        return f"rule {index + 1} ({', '.join(patterns) or 'every session'})"

    def matches(self, session: SessionInfo) -> bool:
        return (
            fnmatch.fnmatchcase(session.user, self.role)
            and fnmatch.fnmatchcase(session.application_name, self.application_name)
            and fnmatch.fnmatchcase(session.database, self.database)
        )


class PolicyConfig(_Verdicts):
    """Defaults per category, then rules (first match that sets a category wins)."""

    preset: Literal["agent"] | None = None
    mode: Mode = "full"
    # DELETE and UPDATE without a WHERE clause refused (a blast-radius limit, issue 15).
    require_where: bool = False
    # Rows one statement may delete or update (cascades counted), the largest table a
    # TRUNCATE or DROP may remove: None, no limit (decision 0021).
    max_rows: int | None = Field(default=None, ge=0)
    max_table_bytes: ByteSize | None = None
    drop: Verdict = "protect"
    drop_other: Verdict = "allow"
    truncate: Verdict = "protect"
    delete: Verdict = "protect"
    update: Verdict = "allow"
    alter: Verdict = "protect"
    # lo_put, lowrite, lo_truncate, lo_unlink: run through softguard's wrappers, which keep
    # the object first (decision 0016); writes to the catalogs are refused.
    large_object: Verdict = "protect"
    dangerous: Verdict = "deny"
    remote: Verdict = "deny"
    opaque: Verdict = "allow"
    # Text softguard cannot parse that the server may run (decision 0011); what the server
    # rejects too is passed whatever this says.
    unparseable: Verdict = "deny"
    retention_days: float = Field(
        default=7.0, gt=0, le=MAX_RETENTION_DAYS, description="how long operations stay undoable"
    )
    rules: list[Rule] = Field(default_factory=list)

    @property
    def protects_updates(self) -> bool:
        """Can any session's UPDATEs be protected or denied (so registered for capture)?
        Then the database needs its UPDATE capture triggers (decision 0023)."""
        return self.update != "allow" or any(r.update not in (None, "allow") for r in self.rules)

    @property
    def has_read_only(self) -> bool:
        """Can any session be in read-only mode?"""
        return self.mode == "read-only" or any(r.mode == "read-only" for r in self.rules)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("preset") == "agent":
            return {**AGENT_PRESET, **data}
        return data


class Action(StrEnum):
    ALLOW = "allow"
    PROTECT = "protect"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who is asking: what rules match on."""

    user: str
    database: str
    application_name: str
    client_addr: str


@dataclass(frozen=True, slots=True)
class Limits:
    """A session's blast-radius limits (None: none) and the rule that set each."""

    max_rows: int | None
    max_rows_by: str
    max_table_bytes: int | None
    max_table_bytes_by: str

    def __bool__(self) -> bool:
        return self.max_rows is not None or self.max_table_bytes is not None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    category: str
    statement: Statement | None
    reason: str = ""
    hint: str = ""  # for the refused: what the session may do instead


TAMPER_MESSAGE = (
    "softguard: statements may not read, change or drop softguard's own schemas "
    "(softguard, softguard_quarantine)"
)


class Policy:
    # Slots: the compiled fast path reads ``generation`` at its offset (decision 0034).
    __slots__ = ("_config", "generation")

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self._config = config or PolicyConfig()
        # Counts configuration changes (SIGHUP), for callers caching a decision per session.
        self.generation = 0

    @property
    def config(self) -> PolicyConfig:
        return self._config

    @config.setter
    def config(self, config: PolicyConfig) -> None:
        self._config = config
        self.generation += 1

    def retention_seconds(self, session: SessionInfo) -> int:
        """How long this session's operations stay undoable: the first matching rule that
        sets ``retention_days``, else the default."""
        days = self.config.retention_days
        for rule in self.config.rules:
            if rule.retention_days is not None and rule.matches(session):
                days = rule.retention_days
                break
        return max(int(days * 86400), 1)

    def mode(self, session: SessionInfo) -> tuple[Mode, str]:
        """The session's mode and what set it (for refusals: a rule's label, or the
        defaults)."""
        return self.setting("mode", session), self.source("mode", session)  # type: ignore[return-value]

    def captured_events(self, session: SessionInfo) -> list[str]:
        """Which row changes the database should capture for this session."""
        return [c for c in ("delete", "update") if self.verdict(c, session) == "protect"]

    def registered_categories(self, session: SessionInfo) -> list[str]:
        """What the session's registration tells the database (decision 0012): every
        category this session may not run as it is, protected or denied. The database
        captures DELETE and UPDATE for them and its backstop refuses the hidden forms of
        DROP, TRUNCATE and DROP COLUMN (a DO block, a function: what the proxy cannot read
        or refuse)."""
        # A denied DELETE or UPDATE the proxy could not see (a DO block, a function) is
        # captured: kept, since it could not be refused.
        kept = [
            c
            for c in ("delete", "update", "drop", "truncate", "alter")
            if self.verdict(c, session) != "allow"
        ]
        # Modes are held by the database too (decision 0019): 'schema' refuses DDL from
        # anywhere (a function, a DO block); 'read_only' makes transactions read-only.
        mode, _ = self.mode(session)
        if mode != "full":
            kept.append("schema")
        if mode == "read-only":
            kept.append("read_only")
        return kept

    def limits(self, session: SessionInfo) -> Limits:
        """The session's blast-radius limits and what set each (decision 0021)."""
        rows = self.setting("max_rows", session)
        size = self.setting("max_table_bytes", session)
        return Limits(
            rows,  # type: ignore[arg-type]
            self.source("max_rows", session) if rows is not None else "",
            size,  # type: ignore[arg-type]
            self.source("max_table_bytes", session) if size is not None else "",
        )

    def table_denials(self, session: SessionInfo) -> list[dict[str, Any]]:
        """What this session may not do to which tables, for its registration: {pattern
        (LIKE), shown (as configured), category, by (the rule)}. Rules with `tables` deny
        their patterns; a category the session's policy denies outright is denied on every
        table ("*.*", "approvable": a person's approval of the statement lifts it, as it
        lifts the proxy's refusal), so that the database refuses the DELETE, UPDATE, DROP
        or TRUNCATE the proxy could not see (a DO block, a function) instead of keeping it."""
        every: list[dict[str, Any]] = [
            {
                "pattern": "%",
                "shown": "*.*",
                "category": c,
                "by": self.source(c, session),
                "approvable": True,
            }
            for c in TABLE_CATEGORIES
            if self.verdict(c, session) == "deny"
        ]
        return every + [
            {"pattern": like_pattern(t), "shown": t, "category": c, "by": rule.label(index)}
            for index, rule in enumerate(self.config.rules)
            if rule.tables is not None and rule.matches(session)
            for t in rule.tables
            for c in TABLE_CATEGORIES
            if getattr(rule, c) == "deny"
        ]

    def source(self, key: str, session: SessionInfo) -> str:
        """What decided *key* (a category or setting) for *session*: a rule's label, or
        the defaults. Rules with `tables` decide only in the database."""
        for index, rule in enumerate(self.config.rules):
            if rule.tables is None and getattr(rule, key) is not None and rule.matches(session):
                return rule.label(index)
        return "the default policy" + (", preset agent" if self.config.preset else "")

    def setting(self, key: str, session: SessionInfo) -> object:
        """A per-rule setting (first matching rule that sets it, else the default)."""
        for rule in self.config.rules:
            value = getattr(rule, key)
            if value is not None and rule.tables is None and rule.matches(session):
                return value
        return getattr(self.config, key)

    def verdict(self, category: str, session: SessionInfo) -> Verdict:
        return self.setting(category, session)  # type: ignore[return-value]

    def decide_function_call(
        self, oid: int, session: SessionInfo, mode: int | None = None
    ) -> Decision:
        """ALLOW or DENY a FunctionCall ('F') message calling function *oid*: see
        `decide_function_call`."""
        return decide_function_call(self, oid, session, mode)

    def decide(
        self,
        classification: Classification,
        session: SessionInfo,
        *,
        source: str,
        log_it: bool = True,
    ) -> list[Decision]:
        """One decision per non-SAFE statement (one for the whole text if unparseable)."""
        # Allowed statements are the bulk of traffic: a line each only at DEBUG (a line per
        # UPDATE at INFO was a measurable share of the proxy's CPU, issue 13).
        log_allowed = log_it and log.isEnabledFor(logging.DEBUG)
        log_it = log_it and log.isEnabledFor(logging.INFO)
        if classification.kind is Kind.UNPARSEABLE:
            # Text that means different statements in different client encodings is
            # refused whatever the configuration: softguard cannot know which one runs.
            if classification.ambiguous:
                verdict: Verdict = "deny"
            elif classification.inert:
                verdict = "allow"  # the server rejects it too: let it answer with its error
            else:
                verdict = self.verdict("unparseable", session)
            if log_allowed if verdict == "allow" else log_it:
                log.log(
                    logging.DEBUG if verdict == "allow" else logging.INFO,
                    "unparseable statement via %s (%s): %s; user=%s db=%s",
                    source,
                    verdict,
                    classification.error,
                    session.user,
                    session.database,
                )
            action = Action.DENY if verdict == "deny" else Action.ALLOW
            reason = f"softguard could not parse this statement: {classification.error}"
            if classification.ambiguous:
                reason = f"softguard: statement refused: {classification.error}"
            return [Decision(action, "unparseable", None, reason)]
        decisions = []
        for stmt in classification.statements:
            if stmt.kind is Kind.SAFE:
                continue
            category = category_of(stmt)
            verdict = self.verdict(category, session)
            for inner in stmt.nested:
                # A statement is as restricted as the most restricted thing inside it.
                inner_category = category_of(inner)
                if self.verdict(inner_category, session) == "deny":
                    category, verdict, stmt_for_reason = inner_category, "deny", inner
                    break
            else:
                stmt_for_reason = stmt
            if category == "large_object":
                verdict = _large_object_verdict(stmt, verdict)
            elif verdict == "protect" and category not in CAPTURED:
                # Rewritten statements must be exactly what the rewrite handles: an ALTER
                # TABLE whose destructive subcommand is DROP COLUMN, or a statement whose
                # own verb is the destructive one (not a DROP hidden in something else).
                if category == "alter":
                    if stmt.action not in REWRITABLE_ALTERS:
                        verdict = "allow"
                elif stmt.command not in ("", stmt.action):
                    verdict = "allow"
            if log_allowed if verdict == "allow" else log_it:
                log.log(
                    logging.DEBUG if verdict == "allow" else logging.INFO,
                    "%s %s via %s: %s; user=%s db=%s app=%s client=%s",
                    verdict,
                    category,
                    source,
                    stmt_for_reason.summary(),
                    session.user,
                    session.database,
                    session.application_name or "-",
                    session.client_addr,
                )
            reason = hint = ""
            if verdict == "deny":
                reason, hint = _reason(category, stmt_for_reason, self.source(category, session))
                if category == "large_object" and stmt is stmt_for_reason:
                    reason = _large_object_reason(stmt)
            elif _unbounded(category, stmt) and self.setting("require_where", session):
                verdict = "deny"
                reason = (
                    f"softguard: {stmt.summary()} without a WHERE clause is refused "
                    f"(require_where, {self.source('require_where', session)})"
                )
                hint = _UNBOUNDED_HINT
            decisions.append(Decision(Action(verdict), category, stmt, reason, hint))
        return decisions


# Functions a FunctionCall ('F') message may run, by OID. Built-in OIDs are fixed in
# PostgreSQL's pg_proc.dat and the same in every version (tests/test_policy_read_server.py
# checks them against the server); user objects never get an OID below 16384, so no OID
# here can name another function. These are the large-object functions libpq's lo_*() API
# calls through FunctionCall; any other OID is refused.
FASTPATH_FUNCTIONS: dict[int, str] = {
    715: "lo_create",
    952: "lo_open",
    953: "lo_close",
    954: "loread",
    955: "lowrite",
    956: "lo_lseek",
    957: "lo_creat",
    958: "lo_tell",
    964: "lo_unlink",
    1004: "lo_truncate",
    3170: "lo_lseek64",
    3171: "lo_tell64",
    3172: "lo_truncate64",
}


def _function_call_classification(name: str) -> Classification:
    return classify(f"SELECT pg_catalog.{name}()")


def decide_function_call(
    policy: Policy, oid: int, session: SessionInfo, mode: int | None = None
) -> Decision:
    """ALLOW or DENY a FunctionCall ('F') of function *oid*: refused unless the function
    is in `FASTPATH_FUNCTIONS`, and then decided as ``SELECT <function>(...)`` would be.
    A FunctionCall cannot be routed through softguard's large-object wrappers, so a
    large-object write (lowrite, lo_truncate, lo_unlink) is refused unless the
    "large_object" category is allowed; lo_close and lo_open for reading pass, lo_open for
    writing (*mode*, its second argument, when known) is decided as a write. A refused call
    is answered with `softguard.wire.function_call.function_call_refusal`."""
    name = FASTPATH_FUNCTIONS.get(oid)
    if name is None:
        reason = (
            f"softguard: FunctionCall of function OID {oid} is refused: softguard only lets "
            "the large-object functions through this protocol message"
        )
        log.info(
            "deny function_call via function call: OID %s; user=%s db=%s client=%s",
            oid,
            session.user,
            session.database,
            session.client_addr,
        )
        return Decision(Action.DENY, "function_call", None, reason)
    if name == "lo_close" or (name == "lo_open" and mode is not None and not mode & _INV_WRITE):
        return Decision(Action.ALLOW, "function_call", None)
    shown = name
    if name == "lo_open":
        name, shown = "lowrite", "lo_open for writing"  # decided as the write it allows
    decisions = policy.decide(_function_call_classification(name), session, source="function call")
    for decision in decisions:
        if decision.action is not Action.ALLOW:
            reason = f"softguard: FunctionCall of {shown} is refused by policy"
            if decision.category == "large_object":
                reason += (
                    ": softguard keeps a large object before a write only when the call "
                    "comes as SQL"
                )
            elif decision.reason:
                reason = decision.reason
            return Decision(Action.DENY, decision.category, decision.statement, reason)
    return Decision(Action.ALLOW, "function_call", None)


# A mode's refusals: (SQLSTATE, what the mode allows, the hint) per effect refused.
_MODE_REFUSALS: dict[tuple[str, str], tuple[str, str]] = {
    ("read-only", "write"): ("25006", "it may read, not change data"),
    ("read-only", "ddl"): ("25006", "it may read, not change the schema"),
    ("read-only", "code"): ("25006", "it may not run code softguard cannot read"),
    ("read-only", "escape"): ("25006", "it may not switch read-only off"),
    ("data", "ddl"): ("42501", "it may change data, not the schema"),
}
_MODE_HINTS = {
    "read-only": "Run only queries that read (SELECT, EXPLAIN without ANALYZE, SHOW). "
    'Changes need a session whose softguard rule gives mode "data" or "full".',
    "data": "INSERT, UPDATE, DELETE, MERGE and TRUNCATE are allowed (and reversible). "
    'Ask an operator to make schema changes, or to give this role mode "full".',
}


def decide_mode(
    mode: Mode, label: str, effects: Sequence[StatementEffect]
) -> tuple[str, str, str] | None:
    """(SQLSTATE, message, hint) refusing the first statement *mode* does not allow,
    else None. *label* names what set the mode (a rule)."""
    if mode == "full":
        return None
    for effect in effects:
        found = _MODE_REFUSALS.get((mode, effect.effect.value))
        if found is not None:
            sqlstate, allows = found
            message = (
                f"softguard: {effect.verb} is refused: this session is in {mode} mode "
                f"({label}): {allows}"
            )
            return sqlstate, message, _MODE_HINTS[mode]
    return None


_UNBOUNDED_HINT = (
    "Add a WHERE clause naming the rows to change. To empty a table, TRUNCATE it "
    "(reversible with softguard)."
)
# What a refused category's HINT tells the client to do instead (issue 15 item 4).
_CATEGORY_HINTS = {
    "drop": "This session may not drop objects; ask an operator.",
    "drop_other": "This session may not drop objects; ask an operator.",
    "truncate": "This session may not TRUNCATE; DELETE with a WHERE clause may be allowed.",
    "delete": "This session may not delete rows; ask an operator.",
    "update": "This session may not update rows; ask an operator.",
    "alter": "This session may not change tables' columns; ask an operator.",
    "dangerous": "This cannot be undone, so softguard refuses it; ask an operator to run it "
    "directly if it is needed.",
    "remote": "softguard cannot keep what another server loses; ask an operator to set up "
    "or run remote work directly.",
    "opaque": "Send the statements themselves instead of a DO block, CALL or EXECUTE, so "
    "softguard can see them and make them reversible.",
}


def _unbounded(category: str, stmt: Statement) -> bool:
    return category in ("delete", "update") and NO_WHERE in stmt.detail


def _large_object_verdict(stmt: Statement, verdict: Verdict) -> Verdict:
    """A large-object statement's verdict: calls are protected by the wrappers (the planner
    refuses what it cannot route); catalog writes cannot be kept; under "deny" a statement
    that only opens or closes descriptors passes."""
    calls = {s.action for s in (stmt, *stmt.nested) if s.action in LARGE_OBJECT_CALLS}
    if not calls:
        return "deny" if verdict == "protect" else verdict
    if verdict == "deny" and calls <= _LARGE_OBJECT_HANDLES:
        return "allow"
    return verdict


def _large_object_reason(stmt: Statement) -> str:
    if stmt.action in LARGE_OBJECT_CALLS:
        return f"softguard: {stmt.summary()} is refused by policy (large_object)"
    return (
        f"softguard: {stmt.summary()} is refused: softguard cannot keep rows of the "
        "large-object catalogs (no trigger fires on them); use lo_put, lo_unlink or "
        "lo_open/lowrite through softguard instead"
    )


def _reason(category: str, stmt: Statement, source: str) -> tuple[str, str]:
    what = stmt.summary()
    hint = _CATEGORY_HINTS.get(category, "")
    if category == "opaque":
        return (
            f"softguard: {what} is refused by policy: softguard cannot see what it would do"
            f"{' (' + stmt.detail + ')' if stmt.detail else ''}; decided by {source}",
            hint,
        )
    return f"softguard: {what} is refused by policy ({category}); decided by {source}", hint
