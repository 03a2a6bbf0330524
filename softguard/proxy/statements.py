"""What the proxy sends for one Query/Parse message: the inspection seam applied.

``plan_message`` classifies the statement text, asks the policy, and answers with a
``Planned`` (what to send instead, if anything, and what the caller should count, log
and invalidate) or ``NeedLedger`` (the session must first wait for its database's
ledger). It reads the world only through ``PlanInputs`` (classifier, policy, ledger
view): the proxy, ``softguard explain`` and the tests plan with the same function. It
does no I/O and updates nothing shared; the only state it changes is what it is handed
(the classifier's cache, the session's ``SoftSession``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, cast

from softguard.contract import (
    BEGIN_CODE,
    HIDE_CODE,
    approval_gate_call,
    approval_id,
    client_text_marker,
)
from softguard.policy import (
    CAPTURED,
    PROTECTABLE,
    TAMPER_MESSAGE,
    Action,
    Decision,
    Mode,
    Policy,
    SessionInfo,
    decide_mode,
)
from softguard.sql import Kind
from softguard.sql.cache import shape_of
from softguard.sql.effects import effects
from softguard.sql.encoding import canonical_encoding, decode
from softguard.sql.prefilter import LARGE_OBJECT_FUNCTIONS, may_be_destructive
from softguard.sql.rewrite import (
    Replacement,
    RewritePlan,
    apply,
    call_mark,
    char_offset,
    dollar_quote,
    drop_call,
    large_object_calls,
    procedure_call,
    refusal,
    statement_span,
)
from softguard.sql.soft_delete import (
    CALL_MARK_FILLER,
    TAG_MARKER,
    Misconfigured,
    SoftDeleteTables,
    prepared_name,
    rewrite,
)
from softguard.sql.tamper import may_name_softguard, mentions_softguard
from softguard.wire import Message, parse_query_text
from softguard.wire.messages import message

if TYPE_CHECKING:
    from softguard.sql import Classification, Statement

log = logging.getLogger("softguard.session")
# Where the policy logs its decisions: a statement it allowed is remembered only while that
# logger is above DEBUG, so that at DEBUG every allowed statement still gets its line.
_policy_log = logging.getLogger("softguard.policy")
_ALLOWED_MEMO_SIZE = 4096

_Q = ord("Q")
_CONCURRENTLY = re.compile(r"\bconcurrently\b", re.IGNORECASE)
# Statements that may end a SQL-level prepared statement's name.
_PREPARED_NAME_VERBS = frozenset({"PREPARE", "DEALLOCATE", "DISCARD"})
# Statements after which the soft-delete tables of the database are read again.
_TABLE_DDL = frozenset(
    {"CREATE TABLE", "CREATE TABLE AS", "ALTER TABLE", "RENAME", "ALTER OBJECT SCHEMA"}
)
_PROCEDURES = {"truncate": ("truncate_op", "TRUNCATE TABLE"), "alter": ("alter_op", "ALTER TABLE")}

LedgerState = Literal[True] | str  # True when ready, else the refusal message


class Classifies(Protocol):
    """The classifier the planner uses (``softguard.sql.Classifier``)."""

    def classify_shape(self, sql: bytes, client_encoding: str = "UTF8") -> Classification: ...

    def classify_bytes(self, sql: bytes, client_encoding: str = "UTF8") -> Classification: ...

    def remembered_shape(self, sql: bytes, classification: Classification) -> bytes | None: ...


class LedgerView(Protocol):
    """What the planner knows of a database's ledger (``LedgerGate``, ``FixedLedger``)."""

    @property
    def soft_delete_rules(self) -> Sequence[object]: ...

    def state(self, database: str, user: str) -> LedgerState | None:
        """None while unknown (for this role); then True or the message to refuse protected
        statements with."""

    def soft_delete_tables(self, database: str) -> SoftDeleteTables | None:
        """None while not read yet."""

    def lacks_event_triggers(self, database: str) -> bool:
        """The ledger was installed without event triggers (decision 0025): table DDL
        makes it be checked again before the next protected statement (which equips new
        tables), and statements the proxy cannot read are refused where the database's
        backstop would have caught them."""


class _Known:
    """A classifier that answers one text's classification, made beforehand."""

    __slots__ = ("result",)

    def __init__(self, result: Classification) -> None:
        self.result = result

    def classify_shape(self, sql: bytes, client_encoding: str = "UTF8") -> Classification:
        return self.result

    def classify_bytes(self, sql: bytes, client_encoding: str = "UTF8") -> Classification:
        return self.result

    def remembered_shape(self, sql: bytes, classification: Classification) -> bytes | None:
        return None  # made for this text alone


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything ``plan_message`` reads besides the message and who sent it.

    ``allowed`` remembers which (shape-cached) classifications the policy lets a session
    run as sent, so that the next statement of the same shape skips the decision (issue
    13: an allowed UPDATE cost ~45 µs of planning, most of it deciding again what the
    policy had already decided). Keyed by the classification's and the session's ``id``
    (hashing a ``SessionInfo`` costs a Python call), entries hold both, so that neither
    ``id`` can be reused while remembered, and a hit checks both are the very objects; the
    policy's generation is part of the key."""

    classifier: Classifies
    policy: Policy
    ledger: LedgerView
    allowed: dict[tuple[int, int, str, int], tuple[Classification, SessionInfo]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # (database, backend) -> the session key it handed out (decision 0028): behind a
    # session-mode pooler the next client of a backend is handed no key again
    call_keys: dict[tuple[str, str], bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FixedLedger:
    """A ledger view with fixed answers: ``softguard explain`` (as if the ledger were
    installed) and tests."""

    ready: LedgerState | None = True
    tables: SoftDeleteTables | None = None
    soft_delete_rules: Sequence[object] = ()

    def state(self, database: str, user: str) -> LedgerState | None:
        return self.ready

    def soft_delete_tables(self, database: str) -> SoftDeleteTables | None:
        return self.tables

    def lacks_event_triggers(self, database: str) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Planned:
    """The planner's answer for one message.

    ``raw``: the message to send instead (None: forward it as sent); ``plan`` maps
    positions in the sent text back to the client's; ``retag``: indices of the Query's
    statements whose ``UPDATE n`` must read ``DELETE n`` (soft deletes; a Parse carries
    TAG_MARKER instead). ``kind``/``action``: what softguard_statements counts ("" when
    the caller must not count it again); ``protected``: (category, statement text) of each
    statement made reversible, in order, for the operation log lines;
    ``reread_soft_delete``: the text has table DDL after which the database's soft-delete
    tables must be read again.
    """

    raw: bytes | None
    plan: RewritePlan | None = None
    retag: frozenset[int] = frozenset()
    kind: str = "safe"
    action: str = "allow"
    protected: tuple[tuple[str, str], ...] = ()
    reread_soft_delete: bool = False
    # (the client's text, why it was refused): ask the ledger for a person's approval.
    approval: tuple[str, str] | None = None


# The answer for almost every message: counted as safe, forwarded as sent.
SAFE = Planned(None)
# Statements the policy lets pass as sent, by (kind, action): shared answers, so the relay
# allocates nothing for them either.
_PASSED: dict[tuple[str, str], Planned] = {}


def _passed(kind: str, action: str) -> Planned:
    planned = _PASSED.get((kind, action))
    if planned is None:
        planned = _PASSED[kind, action] = Planned(None, kind=kind, action=action)
    return planned


@dataclass(frozen=True, slots=True)
class NeedLedger:
    """The session's database must be checked for the ledger before deciding; ``kind``
    and ``action`` are counted now (the message is planned again, uncounted, after)."""

    kind: str
    action: str


class SoftSession:
    """A session's SQL-level prepared statements that hold a soft delete (PREPARE p AS
    DELETE ... rewritten): ``EXECUTE p`` answers ``UPDATE n`` and must read ``DELETE n``.
    ``call_key``: the key the registration handed back (softguard.session_key(), decision
    0028), which marks the session's alter_op calls as softguard's own; None without one."""

    __slots__ = ("call_key", "prepared")

    def __init__(self) -> None:
        self.prepared: set[str] = set()
        self.call_key: bytes | None = None

    def track(self, text: bytes, classification: Classification) -> None:
        """Forget names a DEALLOCATE / DISCARD ALL / new PREPARE in ``text`` ends."""
        for stmt in classification.statements:
            if stmt.command not in _PREPARED_NAME_VERBS:
                continue
            start, end = statement_span(text, stmt)
            change = prepared_name(text[start:end].decode("utf-8", "replace"))
            if change is None:
                continue
            what, name = change
            if what == "discard" or (what == "deallocate" and not name):
                self.prepared.clear()
            else:
                self.prepared.discard(name)


def mode_refusal(mode: Mode, label: str, text: bytes, enc: str) -> tuple[str, str, str] | None:
    """The refusal of a text the session's mode does not allow (decision 0019), else None.
    Text that cannot be read or parsed is left to the classification (unparseable)."""
    return _mode_check(mode, label, text, enc)[0]


def _mode_check(
    mode: Mode, label: str, text: bytes, enc: str
) -> tuple[tuple[str, str, str] | None, int]:
    """(mode_refusal's answer, how many statements the text holds)."""
    try:
        found = effects(decode(text, enc))
    except ValueError:
        return None, 0
    if found is None:
        return None, 0
    return decide_mode(mode, label, found), len(found)


_CALL_KEYS_SIZE = 4096


def take_call_key(
    inputs: PlanInputs, soft: SoftSession, database: str, answer: str, pooled: bool
) -> None:
    """The registration's ``softguard.session_key()`` answer, 'backend:key' (decision
    0028): the session's key, or the one this process was handed for that backend before
    (*pooled*: a session-mode pooler hands backends on). No key: the session's alter_op
    calls go unmarked, which the database refuses for a registered session."""
    backend, _, hex_key = answer.partition(":")
    try:
        key = bytes.fromhex(hex_key) if hex_key else None
    except ValueError:
        key = None
    if not pooled:
        soft.call_key = key
        return
    if key is None:
        soft.call_key = inputs.call_keys.get((database, backend))
        return
    keys = inputs.call_keys
    keys[(database, backend)] = key
    while len(keys) > _CALL_KEYS_SIZE:  # the oldest backends first
        del keys[next(iter(keys))]
    soft.call_key = key


def passes_unread(text: bytes, soft: SoftSession) -> bool:
    """True when ``plan_message`` would answer ``SAFE`` for ``text`` (with no classification
    known beforehand), decided from the bytes alone: the prefilter proves the text harmless,
    it does not name softguard, and no prepared soft delete is in play. The relay's fast
    path: no classification, no decoding, no ``Planned``."""
    if soft.prepared:
        return False
    if len(text) <= UNREAD_MEMO_BYTES:
        known = harmless_shape(text.translate(_FOLD_DIGITS))
        if known is not None:
            return known
    return not may_be_destructive(text) and not mentions_softguard(text)


# The checks above cost ~25,000 instructions for a 60-byte SELECT (bench/serve_cpu.py:
# the prefilter's regex scans a harmless text to its end), more than the rest of its
# relay; the verdict is remembered by the text with every digit read as 0. Exact: the
# prefilter treats all digits alike (none is in a keyword, all block a keyword's end,
# none blocks its start), and `may_name_softguard` reads no digit: where it says no, no
# digit variant names softguard either.
UNREAD_MEMO_BYTES = 512
_FOLD_DIGITS = bytes.maketrans(b"123456789", b"000000000")


@functools.lru_cache(maxsize=4096)
def harmless_shape(folded: bytes) -> bool | None:
    """``passes_unread``'s answer for every text that folds to ``folded`` (a prepared soft
    delete aside), or None when only the exact text can tell (it may name softguard)."""
    if may_be_destructive(folded):
        return False
    return None if may_name_softguard(folded.lower()) else True


# A session's Query and Parse shapes (``Classifier.remembered_shape``) that its policy lets
# pass as sent, with what to count for each: (kind, action). A Parse's key is its shape
# after a NUL, which no Query text holds: the two never share a key.
AllowedShapes = dict[bytes, tuple[str, str]]
_ALLOWED_SHAPES_SIZE = 256


def remember_allowed(
    allowed: AllowedShapes,
    classifier: Classifies,
    text: bytes,
    classification: Classification,
    *,
    parse: bool,
) -> None:
    """Remember that every Query (``parse``: Parse) of ``text``'s shape passes as sent in
    this session, under the policy's current generation (the session empties ``allowed``
    when it changes): the relay's fast paths then send the next ones without planning
    (``allowed_passes``).

    Called where ``plan_message``'s own memo holds the decision, so the same conditions
    hold (not a soft-delete session, no reread, not at DEBUG, every decision ALLOW and none
    opaque), and with more, since the key is the shape and not the classification:
    - the classifier keeps this classification for every text of that shape (its numbers
      are plain values, which no rule reads);
    - no statement is table DDL: whether it rereads the soft-delete tables depends on the
      ledger's state, not only on the policy;
    - the shape is ASCII (so is every text of it: only digits differ), read alike in every
      client encoding, and spells no softguard name (``may_name_softguard`` reads no digit,
      so no text of the shape names softguard);
    - it is short enough for the fast path (``UNREAD_MEMO_BYTES``)."""
    if len(text) > UNREAD_MEMO_BYTES or any(
        s.command in _TABLE_DDL for s in classification.statements
    ):
        return
    shape = classifier.remembered_shape(text, classification)
    if shape is None or not shape.isascii() or may_name_softguard(shape.lower()):
        return
    if len(allowed) >= _ALLOWED_SHAPES_SIZE:
        allowed.clear()
    allowed[b"\0" + shape if parse else shape] = (classification.kind.value, Action.ALLOW.value)


def allowed_passes(
    text: bytes, allowed: AllowedShapes, *, parse: bool = False
) -> tuple[str, str] | None:
    """What to count for ``text`` (a Query's, or a Parse's) when the session's memo says it
    passes as sent, else None (the caller has checked what ``passes_unread`` checks first:
    full mode, no prepared soft delete, no classification held)."""
    if len(text) > UNREAD_MEMO_BYTES:
        return None
    shape = shape_of(text)
    return allowed.get(b"\0" + shape if parse else shape)


def plan_message(
    inputs: PlanInputs,
    info: SessionInfo,
    msg: Message,
    *,
    log_it: bool = True,
    soft: SoftSession | None = None,
    client_encoding: str = "UTF8",
    known: Classification | None = None,
    approving: bool = False,
    mode: Mode | None = None,
    allowed: AllowedShapes | None = None,
) -> Planned | NeedLedger:
    """Plan one Query/Parse message of ``info``'s session.

    ``log_it``: log the policy's decisions and name what to count (False for a message
    planned again after the ledger wait: it was logged and counted before). ``soft``: the
    session's prepared soft deletes, updated as PREPARE/DEALLOCATE go by.
    ``client_encoding``: the session's, as the server last reported it: the text is read
    as the server will read it (decision 0011). ``known``: the text's exact classification,
    already made (off the event loop, for large texts). ``approving``: plan the text as it
    runs once a person approved it (decision 0020): no mode refusal, denied categories
    protected where they can be, else allowed. ``mode``: the session's mode under the
    current policy, when the caller knows it (else looked up). ``allowed``: the session's
    memo of Query and Parse shapes the policy lets pass as sent (``remember_allowed``),
    filled here.
    """
    text = parse_query_text(msg.type, msg.body)
    classifier: Classifies = inputs.classifier if known is None else _Known(known)
    enc = client_encoding
    if mentions_softguard(text):
        log.warning(
            "refused statement naming softguard's schemas: user=%s db=%s client=%s",
            info.user,
            info.database,
            info.client_addr,
        )
        kind = classifier.classify_shape(text, enc).kind.value if log_it else ""
        return _refused(msg, text, refusal("42501", TAMPER_MESSAGE), kind, Action.DENY.value)
    if mode is None:
        mode = cast(Mode, inputs.policy.setting("mode", info))
    if mode != "full" and not approving:
        by_mode, count = _mode_check(mode, inputs.policy.source("mode", info), text, enc)
        if by_mode is not None:
            if log_it:
                log.info(
                    "deny %s mode via %s: %s; user=%s db=%s app=%s client=%s",
                    mode,
                    "query" if msg.type == _Q else "parse",
                    by_mode[1],
                    info.user,
                    info.database,
                    info.application_name or "-",
                    info.client_addr,
                )
            kind = classifier.classify_shape(text, enc).kind.value if log_it else ""
            if mode != "read-only" and count == 1 and _approvable(inputs, info, msg, text, enc):
                return _approval_plan(inputs, info, msg, text, enc, by_mode, kind, soft)
            return _refused(msg, text, refusal(*by_mode), kind, Action.DENY.value)
    retag: set[int] = set()
    if soft is not None and soft.prepared:
        exact = classifier.classify_bytes(text, enc)
        soft.track(text, exact)
        retag = _executes_to_retag(text, exact, soft)
    classification = classifier.classify_shape(text, enc)
    ledger = inputs.ledger
    reread = (bool(ledger.soft_delete_rules) or ledger.lacks_event_triggers(info.database)) and any(
        s.command in _TABLE_DDL for s in classification.statements
    )
    if classification.kind is Kind.SAFE:
        if not retag:
            return Planned(None, reread_soft_delete=True) if reread else SAFE
        rebuilt = _rebuild(msg, text, [], None, frozenset(retag))
        return Planned(rebuilt.raw, rebuilt.plan, rebuilt.retag, reread_soft_delete=reread)
    policy = inputs.policy
    source = "query" if msg.type == _Q else "parse"
    memo_key = None
    if not retag and not reread and not approving and not _policy_log.isEnabledFor(logging.DEBUG):
        memo_key = (id(classification), id(info), source, policy.generation)
        remembered = inputs.allowed.get(memo_key)
        if remembered is not None and remembered[0] is classification and remembered[1] is info:
            if allowed is not None:
                remember_allowed(
                    allowed, inputs.classifier, text, classification, parse=source != "query"
                )
            return _passed(classification.kind.value if log_it else "", Action.ALLOW.value)
    decisions = policy.decide(classification, info, source=source, log_it=log_it and not approving)
    if approving:
        decisions = [_approved(d) for d in decisions]
    kind = classification.kind.value if log_it else ""
    action = _strictest(decisions)
    if any(d.action is not Action.ALLOW for d in decisions):
        # A shape-cached classification has another text's offsets: rewrite from the exact one.
        exact = classifier.classify_bytes(text, enc)
        if exact is not classification:
            decisions = policy.decide(exact, info, source=source, log_it=False)
            if approving:
                decisions = [_approved(d) for d in decisions]
            classification = exact
    if _offsets_unreliable(text, enc) and any(
        _cuts_text(d, bool(ledger.soft_delete_rules)) for d in decisions
    ):
        # Rewriting and capture bookkeeping cut the text at the parser's offsets, which
        # count the UTF-8 reading, not these bytes: refuse rather than cut wrongly.
        refused = refusal("0A000", _ENCODING_REFUSAL.format(enc))
        return _refused(msg, text, refused, kind, Action.DENY.value)
    replacements: list[Replacement] = []
    # A Parse holds one statement: refused, the whole message is the refusal, whose
    # parameters then get types it can bind (_typed_parameters), not the ones the
    # statement would have given them.
    alone = msg.type != _Q and len(classification.statements) == 1
    protected: list[tuple[str, str]] = []
    claims: list[str | None] = []  # of each soft delete rewritten (SoftRewrite.claim)
    marked = 0  # PREPAREs of a soft delete: the text starts with TAG_MARKER (_rebuild, _markable)
    for decision in decisions:
        stmt = decision.statement
        if decision.action is Action.ALLOW:
            if decision.category == "opaque" and _backstopped(policy, info):
                state = ledger.state(info.database, info.user)
                if state is None:
                    return NeedLedger(kind, action)
                if ledger.lacks_event_triggers(info.database):
                    refused = refusal("55000", _NO_BACKSTOP, _NO_BACKSTOP_HINT)
                    if stmt is None or alone:
                        return _refused(msg, text, refused, kind, action)
                    replacements.append(Replacement(stmt, refused))
            continue
        if decision.action is Action.DENY:
            if (
                not approving
                and stmt is not None
                and decision.category not in _NOT_APPROVABLE
                and len(classification.statements) == 1
                and mode != "read-only"
                and _approvable(inputs, info, msg, text, enc)
            ):
                denied = ("42501", decision.reason, decision.hint)
                return _approval_plan(inputs, info, msg, text, enc, denied, kind, soft)
            refused = refusal("42501", decision.reason, decision.hint or None)
            if stmt is None or alone:
                return _refused(msg, text, refused, kind, action, reread=reread)
            replacements.append(Replacement(stmt, refused))
            continue
        assert stmt is not None  # PROTECT is only decided for a parsed statement
        state = ledger.state(info.database, info.user)
        if state is None:
            return NeedLedger(kind, action)
        if state is not True:
            refused = refusal("55000", state)
            if alone:
                return _refused(msg, text, refused, kind, action)
            replacements.append(Replacement(stmt, refused))
            continue
        if decision.category in CAPTURED:
            start, end = statement_span(text, stmt)
            stmt_text = text[start:end].decode("utf-8", "replace")
            protected.append((decision.category, stmt_text))
            if decision.category == "delete" and ledger.soft_delete_rules:
                tables = ledger.soft_delete_tables(info.database)
                if tables is None:
                    return NeedLedger(kind, action)
                soft_text = _soft_delete(tables, stmt_text, soft)
                if soft_text is not None:
                    new_text, is_retag, claim, prepared_delete = soft_text
                    if is_retag:
                        retag.add(_index_of(classification, stmt))
                    marked += prepared_delete
                    replacements.append(Replacement(stmt, new_text))
                    claims.append(claim)
            continue  # the database's capture triggers keep the rows: sent as is
        start, end = statement_span(text, stmt)
        stmt_text = text[start:end].decode("utf-8", "replace")
        if decision.category == "large_object":
            protected.append((decision.category, stmt_text))
            replacements.append(Replacement(stmt, _large_object_text(stmt_text)))
            continue
        if stmt.action == "DROP INDEX" and _CONCURRENTLY.search(stmt_text):
            # Cannot run inside a procedure (nor any transaction); an index holds no data.
            log.info("DROP INDEX CONCURRENTLY passes unprotected: %s", stmt.summary())
            continue
        protected.append((decision.category, stmt_text))
        ctx: dict[str, object] = {
            "client_addr": info.client_addr.rpartition(":")[0] or info.client_addr,
            "retention_seconds": policy.retention_seconds(info),
            "offset": char_offset(text, start),
            "action": stmt.action,
        }
        if decision.category == "drop":
            call = drop_call(stmt_text, ctx)
        else:
            procedure, tag = _PROCEDURES[decision.category]
            key = None
            if procedure == "alter_op":
                ctx.update(_alter_ctx(stmt))
                key = soft.call_key if soft is not None else None
            call = procedure_call(procedure, stmt_text, {**ctx, "action": tag}, key)
        replacements.append(Replacement(stmt, call))
    if not replacements and not retag:
        if not protected and not reread:
            if memo_key is not None and all(
                d.action is Action.ALLOW and d.category != "opaque" for d in decisions
            ):
                # The same decision for every text of this shape, session and policy (an
                # opaque statement's also depends on the ledger's state: not remembered).
                if len(inputs.allowed) >= _ALLOWED_MEMO_SIZE:
                    inputs.allowed.clear()
                inputs.allowed[memo_key] = (classification, info)
                if allowed is not None:
                    remember_allowed(
                        allowed, inputs.classifier, text, classification, parse=source != "query"
                    )
            return _passed(kind, action)
        return Planned(
            None, kind=kind, action=action, protected=tuple(protected), reread_soft_delete=reread
        )
    markable = _markable(classification, marked)
    rebuilt = _rebuild(
        msg,
        text,
        replacements,
        None,
        frozenset(retag),
        client_text=len(classification.statements) > 1 and not markable,
        marked=markable,
    )
    key = soft.call_key if soft is not None else None
    if key is not None and len(claims) == 1 and claims[0] is not None:
        if len(classification.statements) == 1 and (text.isascii() or _utf8(enc)):
            rebuilt = _bind_claim(rebuilt, key, claims[0])
    return Planned(rebuilt.raw, rebuilt.plan, rebuilt.retag, kind, action, tuple(protected), reread)


# Statements that never run an UPDATE, nor any code that could (no expression is
# evaluated, no trigger fires): a text holding only these besides PREPAREs of soft deletes
# can carry TAG_MARKER.
_INERT = frozenset({"SET", "RESET", "SHOW", "BEGIN", "START TRANSACTION"})


def _markable(classification: Classification, prepared_deletes: int) -> bool:
    """Whether the text can start with TAG_MARKER: it holds ``prepared_deletes`` PREPAREs
    of a soft delete and nothing else but _INERT statements. The capture trigger tags every
    UPDATE run at trigger depth 1 while ``current_query()`` is this text: the text's own
    statements, and every statement a PREPARE in it made, bound later by the protocol (its
    source text is the whole Query's). With only these in it, that is the soft deletes'
    marking UPDATEs, which must answer DELETE n (decision 0043). Any other statement (an
    UPDATE, a SELECT calling a function, another PREPARE, an EXECUTE, a soft DELETE
    retagged by position) could run an UPDATE under it: the text is left unmarked."""
    if prepared_deletes == 0:
        return False
    inert = sum(
        1 for s in classification.statements if s.kind is Kind.SAFE and s.command in _INERT
    )
    return inert + prepared_deletes == len(classification.statements)


def _refused(
    msg: Message, text: bytes, refused: str, kind: str, action: str, *, reread: bool = False
) -> Planned:
    """The whole message replaced by the refusal ``refused`` (a Parse's parameters typed so
    that it binds: ``_rebuild``)."""
    rebuilt = _rebuild(msg, text, [], refused)
    return Planned(rebuilt.raw, rebuilt.plan, kind=kind, action=action, reread_soft_delete=reread)


def _utf8(client_encoding: str) -> bool:
    return client_encoding.upper() in ("UTF8", "UTF-8", "UNICODE")


def _bind_claim(rebuilt: _Rebuilt, key: bytes, claim: str) -> _Rebuilt:
    """The message with its soft delete's filler replaced by the session's mark of the
    text as sent and of the claim (decision 0031): the capture trigger then believes the
    claim of this statement without reading the rows twice. The text must be the one
    statement of its message (any other statement of it, or code its own statement calls,
    could make the same call again while the same text runs: the trigger sees that only
    for the latter), with the filler once in it; otherwise it is left unmarked."""
    raw = rebuilt.raw
    filler = CALL_MARK_FILLER.encode()
    if raw.count(filler) != 1:
        return rebuilt
    sent = parse_query_text(raw[0], raw[5:])
    mark = call_mark(key, sent.decode("utf-8"), claim).encode()
    return _Rebuilt(raw.replace(filler, mark), rebuilt.plan, rebuilt.retag)


_ENCODING_REFUSAL = (
    "softguard: a statement softguard must rewrite or capture is refused when it holds "
    "non-ASCII characters in client_encoding {0}: set client_encoding to UTF8"
)


_LARGE_OBJECT_REFUSAL = (
    "softguard: this statement calls a large-object function softguard cannot route through "
    "its wrappers (inside a function body or string), so it could not keep the object first"
)
_LARGE_OBJECT_HINT = "Call lo_put, lo_unlink, lo_open/lowrite or lo_truncate in their own SELECT."


def _large_object_text(stmt_text: str) -> str:
    """The statement with its large-object calls routed through softguard's wrappers, which
    keep the object first (decision 0016); a refusal when a call cannot be routed."""
    routed = large_object_calls(stmt_text, LARGE_OBJECT_FUNCTIONS)
    if routed is None:
        return refusal("0A000", _LARGE_OBJECT_REFUSAL, _LARGE_OBJECT_HINT)
    return routed


def _offsets_unreliable(text: bytes, client_encoding: str) -> bool:
    """The parser's offsets are byte offsets of the UTF-8 text: they are the wire's only
    when the session sends UTF-8, or the text is ASCII (the same in every encoding)."""
    return client_encoding.upper() not in ("UTF8", "UTF-8", "UNICODE") and not text.isascii()


def _cuts_text(decision: Decision, soft_delete: bool) -> bool:
    """Whether carrying out ``decision`` rewrites part of the text (captured statements
    are sent as they are, unless a soft delete may rewrite them)."""
    if decision.action is Action.ALLOW or decision.statement is None:
        return False
    if decision.action is Action.DENY:
        return True
    return decision.category not in CAPTURED or (decision.category == "delete" and soft_delete)


def _soft_delete(
    tables: SoftDeleteTables, stmt_text: str, soft: SoftSession | None
) -> tuple[str, bool, str | None, bool] | None:
    """(text to send, whether its tag must read DELETE, the claim it may bind, whether it
    prepares a DELETE: SoftRewrite) for a statement that deletes from a soft-delete table;
    None when it does not."""
    if not tables:
        return None
    lowered = stmt_text.lower()
    if not any(name in lowered for name in tables.lowered_names):
        return None
    try:
        done = tables.rewrite(stmt_text)
    except Misconfigured as exc:
        log.error("%s", exc)
        return (
            refusal("55000", str(exc), "Fix the soft_delete entry (or the table) and retry."),
            False,
            None,
            False,
        )
    except Exception as exc:  # a statement pglast cannot print back: refuse, never guess
        log.exception("soft-delete rewrite failed for: %s", stmt_text)
        message = (
            "softguard: this DELETE on a soft-delete table could not be rewritten into a "
            f"soft delete ({type(exc).__name__}); it was not run"
        )
        hint = "Simplify the statement, or report it."
        return refusal("0A000", message, hint), False, None, False
    if done is None:
        return None
    if done.prepared is not None and soft is not None:
        soft.prepared.add(done.prepared)
    return done.text, done.retag, done.claim, done.prepared_delete


def _index_of(classification: Classification, stmt: Statement) -> int:
    """Position of ``stmt`` among the query's top-level statements (one CommandComplete
    each)."""
    for index, candidate in enumerate(classification.statements):
        if candidate is stmt:
            return index
    return -1


def _executes_to_retag(text: bytes, classification: Classification, soft: SoftSession) -> set[int]:
    """Indices of the ``EXECUTE p`` statements of ``text`` that run a prepared soft delete."""
    found: set[int] = set()
    for index, stmt in enumerate(classification.statements):
        if stmt.action != "EXECUTE":
            continue
        start, end = statement_span(text, stmt)
        done = rewrite(
            text[start:end].decode("utf-8", "replace"),
            SoftDeleteTables(),
            prepared=frozenset(soft.prepared),
        )
        if done is not None and done.retag:
            found.add(index)
    return found


def _alter_ctx(stmt: Statement) -> dict[str, object]:
    """alter_op's view of an ALTER TABLE (migration 0004): the columns whose type it changes
    ("columns"), and whether any subcommand drops a column (none: no probe)."""
    subs = (stmt, *stmt.nested)
    return {
        "columns": [
            {"schema": t.schema, "table": t.name, "column": t.column}
            for s in subs
            if s.action == "ALTER TABLE ALTER COLUMN TYPE"
            for t in s.targets
        ],
        "drop_column": any(s.action == "ALTER TABLE DROP COLUMN" for s in subs),
    }


def _strictest(decisions: list[Decision]) -> str:
    actions = {d.action for d in decisions}
    for action in (Action.DENY, Action.PROTECT):
        if action in actions:
            return action.value
    return Action.ALLOW.value


@dataclass(frozen=True, slots=True)
class _Rebuilt:
    raw: bytes
    plan: RewritePlan | None
    retag: frozenset[int] = frozenset()


# Refusals a person cannot lift through softguard: irreversible by nature, or work on
# another server (run them directly if they must run).
_NOT_APPROVABLE = frozenset(("dangerous", "remote"))

# A DO block, CALL or EXECUTE where the database has no backstop (decision 0025).
_NO_BACKSTOP = (
    "softguard: a statement softguard cannot read (DO, CALL, EXECUTE) is refused in this"
    " database: softguard was installed there without event triggers, so a DROP it runs"
    " would not be caught"
)
_NO_BACKSTOP_HINT = (
    "Send the statements themselves, or run softguard init as a role that may create event"
    ' triggers (runbook, "Managed PostgreSQL").'
)


def _backstopped(policy: Policy, info: SessionInfo) -> bool:
    """Whether the database's backstop would stand behind this session's opaque
    statements: it refuses the hidden DROP and TRUNCATE of protected sessions."""
    return any(policy.verdict(c, info) != "allow" for c in ("drop", "truncate"))


def _approved(decision: Decision) -> Decision:
    """A denied statement a person approved: protected where softguard can keep it, else
    passed."""
    if decision.action is not Action.DENY:
        return decision
    if decision.category in PROTECTABLE and decision.statement is not None:
        return Decision(Action.PROTECT, decision.category, decision.statement)
    return Decision(Action.ALLOW, decision.category, decision.statement)


def _approvable(inputs: PlanInputs, info: SessionInfo, msg: Message, text: bytes, enc: str) -> bool:
    """Whether a refused text can be offered for approval: one statement in a simple
    Query (the gate runs before it in the same transaction), read as UTF-8 (the ledger
    binds the approval to its characters), on a database whose ledger is ready."""
    return (
        msg.type == _Q
        and (text.isascii() or canonical_encoding(enc) == "UTF8")
        and inputs.ledger.state(info.database, info.user) is True
    )


def _approval_plan(
    inputs: PlanInputs,
    info: SessionInfo,
    msg: Message,
    text: bytes,
    enc: str,
    refused: tuple[str, str, str],
    kind: str,
    soft: SoftSession | None,
) -> Planned | NeedLedger:
    """The refused text behind softguard's approval gate (decision 0020): the server runs
    it once if a person approved exactly this text for this role, else raises the refusal
    with the approval id to ask for."""
    approval = approval_id(info.user, info.database, text)
    inner = plan_message(
        inputs, info, msg, log_it=False, soft=soft, client_encoding=enc, approving=True
    )
    if isinstance(inner, NeedLedger):
        return inner
    sqlstate, message_text, hint = refused
    if inner.retag:  # a soft delete's tag positions would shift: refuse without approval
        plain = refusal(sqlstate, message_text, hint or None)
        return _refused(msg, text, plain, kind, Action.DENY.value)
    body = text if inner.raw is None else parse_query_text(_Q, inner.raw[5:])
    ask = (
        f"A person can approve it once: softguard approve {approval}; then send exactly "
        "the same statement again within an hour."
    )
    call = approval_gate_call(
        approval, sqlstate, f"{message_text} (approval id {approval})", f"{hint} {ask}".strip()
    )
    q = dollar_quote(call)
    prefix = (
        client_text_marker(text)
        + f"DO {q}DECLARE m text := current_setting('client_min_messages'); BEGIN "
        "PERFORM set_config('client_min_messages', 'notice', true); "
        f"RAISE NOTICE USING ERRCODE = '{BEGIN_CODE}', MESSAGE = '0'; "
        f"PERFORM {call}; "
        f"RAISE NOTICE USING ERRCODE = '{HIDE_CODE}', MESSAGE = '0'; "
        f"PERFORM set_config('client_min_messages', m, true); END{q};\n"
    )
    plan = (inner.plan or apply(text, [])).prefixed(prefix)
    log.info(
        "approval %s offered for refused statement; user=%s db=%s client=%s",
        approval,
        info.user,
        info.database,
        info.client_addr,
    )
    return Planned(
        message(b"Q", prefix.encode() + body + b"\0"),
        plan,
        kind=kind,
        action=Action.DENY.value,
        # Not paired with operation notices: the gate may refuse, and then none comes.
        approval=(text.decode("utf-8", "replace"), message_text),
    )


def _rebuild(
    msg: Message,
    text: bytes,
    replacements: list[Replacement],
    whole: str | None,
    retag: frozenset[int] = frozenset(),
    *,
    client_text: bool = False,
    marked: bool = False,
) -> _Rebuilt:
    """The Query/Parse message carrying the new text (the Parse keeps its name and types).

    A Parse whose statement must have its tag turned back starts with TAG_MARKER: the
    server's capture trigger then says so when it runs (whatever portal runs it).
    ``marked``: the text is one ``PREPARE p AS DELETE ...`` made a soft delete; it starts
    with TAG_MARKER too, since a protocol Bind of ``p`` runs it with this text as its
    current_query() (the server reads the marker, not the proxy: a Bind is not read). An
    ``EXECUTE p`` has its own text, so the marker never tags it twice; a text holding other
    statements is not marked (they would be tagged too)."""
    plan = None
    if whole is not None:
        new_text = whole.encode()
    else:
        plan = apply(text, replacements)
        new_text = plan.text
    if msg.type == _Q:
        if plan is not None and client_text:
            # The other statements of the text may capture rows: the capture trigger
            # records the client's text from this comment, not softguard's rewrite.
            plan = plan.prefixed(client_text_marker(text))
            new_text = plan.text
        if plan is not None and marked:
            plan = plan.prefixed(TAG_MARKER)
            new_text = plan.text
        return _Rebuilt(message(b"Q", new_text + b"\0"), plan, retag)
    if retag or marked:
        new_text = TAG_MARKER.encode() + new_text
        if plan is not None:
            plan = plan.prefixed(TAG_MARKER)
    name_end = msg.body.index(b"\0")
    rest = msg.body[name_end + 1 + len(text) + 1 :]
    if whole is not None and len(rest) >= 2:
        rest = _typed_parameters(rest)
    return _Rebuilt(message(b"P", msg.body[: name_end + 1] + new_text + b"\0" + rest), plan)


_UNSPECIFIED_OID = bytes(4)
_TEXT_OID = (25).to_bytes(4, "big")


def _typed_parameters(types: bytes) -> bytes:
    """A refused Parse's parameter types: those the client left unspecified (0) become
    text, the declared ones stay. The refusal (a DO block) uses none of them, and
    PostgreSQL cannot type an unused parameter declared unknown (42P18); text takes every
    value sent in text format (bytea, chosen before, failed with 22P02 on a backslash
    before the refusal was reached), and a declared type reads its value at Bind as it
    would have directly, so the client's Execute reaches the refusal."""
    count = int.from_bytes(types[:2], "big")
    end = 2 + 4 * count
    if len(types) < end:
        return types  # malformed: the server says so
    oids = (types[i : i + 4] for i in range(2, end, 4))
    declared = b"".join(_TEXT_OID if oid == _UNSPECIFIED_OID else oid for oid in oids)
    return types[:2] + declared + types[end:]
