"""What the proxy and the database agree on: every shared name and format, in one place.

The database side is migrations/install/10_contract.sql and the functions named below.
tests/ledger/test_contract.py checks that each constant appears in the installed database
code and that the operation NOTICE the database emits parses here, for every kind.

Pure: no I/O, no imports from the rest of softguard, so that wire, sql, proxy, ledger and cli
can all use it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# -- private notices around a rewritten statement -----------------------------------------
# SQLSTATEs of class SG are not PostgreSQL's: the proxy swallows these notices.

#: First notice of a rewritten statement; message: the statement's offset in the client's text.
BEGIN_CODE = "SGBEG"
#: Last notice; message: the command tag the original statement would have returned.
END_CODE = "SGEND"
#: Before the CommandComplete of a soft delete sent through the extended protocol: its
#: ``UPDATE n`` is the client's ``DELETE n``.
TAG_CODE = "SGTAG"
#: The probe's abort inside the database (softguard._probe); never reaches a client.
PROBE_CODE = "SGPRB"

#: Leading comment of a rewritten soft delete whose command tag must read DELETE: the
#: capture trigger sees it in current_query() and raises TAG_CODE.
TAG_MARKER = "/*softguard:delete*/"

#: Leading comment of a rewritten Query: the client's text, hex-encoded, which the capture
#: trigger records as the operation's statement (softguard._client_text). The proxy refuses
#: client texts that begin with "/*softguard:" (softguard.sql.tamper).
CLIENT_TEXT_MARKER = "/*softguard:text="


def client_text_marker(original: bytes) -> str:
    return f"{CLIENT_TEXT_MARKER}{original.hex()}*/"


# -- settings ------------------------------------------------------------------------------

#: Session defaults the proxy sets in the StartupMessage (``-c name=value``). They may only
#: add to what the session's registration says (below): a client can overwrite them.
CAPTURE_SETTING = "softguard.capture"  # 'delete', 'delete,update', or 'off'
RETENTION_SETTING = "softguard.retention"  # seconds
#: Transaction-local settings the database keeps for itself.
CUR_OP_SETTING = "softguard.cur_op"  # the open capture operation: '<stmt time>/<id>/<kind>'
TRUNCATE_OP_SETTING = "softguard.truncate_op"  # the operation truncate_op opened
PROBE_SETTING = "softguard.probe"  # 'on' while _probe runs a statement
SOFT_DELETE_SETTING_PREFIX = "softguard.sd_"  # + table oid: the soft delete being captured
#: Session setting register_session writes: the proof that stands for the backend start time.
SESSION_PROOF_SETTING = "softguard.session_proof"

#: Every setting name the two sides share.
SETTINGS = (
    CAPTURE_SETTING,
    RETENTION_SETTING,
    CUR_OP_SETTING,
    TRUNCATE_OP_SETTING,
    PROBE_SETTING,
    SOFT_DELETE_SETTING_PREFIX,
    SESSION_PROOF_SETTING,
)

# -- registered sessions -------------------------------------------------------------------
# Which sessions are protected is decided in the database from a registration the client
# cannot change (docs/decisions/0012-registered-sessions.md): the proxy runs this function on
# every session's own connection after authentication, before the client's first message.

#: softguard.register_session(events text, retention integer, addr text): only ever adds.
REGISTER_SESSION_FUNCTION = "softguard.register_session"


#: softguard.register_limits(max_rows bigint, max_rows_by text, max_table_bytes bigint,
#: max_table_bytes_by text, denied_tables jsonb): only ever lowers a limit, adds denied
#: tables (decision 0021).
REGISTER_LIMITS_FUNCTION = "softguard.register_limits"


#: softguard.register_role(events text, retention integer, max_rows bigint, max_rows_by
#: text, max_table_bytes bigint, max_table_bytes_by text, denied_tables jsonb): the same
#: for every session of the caller's login role, where a transaction pooler hands each
#: transaction to any backend (decision 0026).
REGISTER_ROLE_FUNCTION = "softguard.register_role"

#: softguard.session_key(): the key that marks the session's alter_op calls as softguard's own,
#: returned once per backend, to the registration (decision 0028); the registration's row
#: carries it (hex, or NULL) just before the client port.
SESSION_KEY_FUNCTION = "softguard.session_key"


def register_session_query(
    events: str,
    retention_seconds: int,
    client_addr: str,
    limits: tuple[int | None, str, int | None, str, str] | None = None,
    *,
    by_role: bool = False,
) -> bytes:
    """The registration as one simple Query text (in its own read-write transaction, so a
    role whose default is read-only is registered too). *limits*: (max_rows, what set it,
    max_table_bytes, what set it, the denied tables as JSON), registered after the session
    when given. *by_role*: register the login role instead of this backend (behind a
    transaction pooler)."""
    if not _PLAIN.fullmatch(events) or not _PLAIN.fullmatch(client_addr):
        raise ValueError("registration values must be plain (letters, digits, . : , % -)")
    if by_role:
        rows, rows_by, size, size_by, tables = limits or (None, "", None, "", "[]")
        return (
            f"BEGIN READ WRITE; SELECT {REGISTER_ROLE_FUNCTION}('{events}', "
            f"{int(retention_seconds)}, {_bigint(rows)}, {_text(rows_by)}, {_bigint(size)}, "
            f"{_text(size_by)}, {_text(tables)}::jsonb), pg_catalog.inet_client_port(); COMMIT"
        ).encode()
    with_limits = ""
    if limits is not None:
        rows, rows_by, size, size_by, tables = limits
        # the rules' labels travel hex-encoded: no quoting, whatever the session's settings
        with_limits = (
            f", {REGISTER_LIMITS_FUNCTION}({_bigint(rows)}, {_text(rows_by)}, "
            f"{_bigint(size)}, {_text(size_by)}, {_text(tables)}::jsonb)"
        )
    # inet_client_port(): where the server sees this connection come from, for the proxy
    # to tell whether something (a pooler) sits between it and the server. Evaluated left
    # to right: the limits join the row register_session wrote.
    return (
        f"BEGIN READ WRITE; SELECT {REGISTER_SESSION_FUNCTION}('{events}', "
        f"{int(retention_seconds)}, '{client_addr}'){with_limits}, {SESSION_KEY_FUNCTION}(), "
        "pg_catalog.inet_client_port(); COMMIT"
    ).encode()


def _bigint(value: int | None) -> str:
    return "NULL::bigint" if value is None else f"{int(value)}::bigint"


def _text(value: str) -> str:
    return f"pg_catalog.convert_from(pg_catalog.decode('{value.encode().hex()}', 'hex'), 'UTF8')"


_PLAIN = re.compile(r"[A-Za-z0-9.:,%_-]*")

# -- the operation NOTICE ------------------------------------------------------------------
# 'softguard: <action> <targets> is reversible as operation <id> until <YYYY-MM-DD>', formatted
# by softguard._op_notice only. <action> is the statement's kind as the client would say it
# ('DROP TABLE', 'DELETE FROM', 'TRUNCATE TABLE', 'ALTER TABLE DROP COLUMN', ...); a soft
# delete's targets end with ' (soft delete: <column> set)', dropped columns' with
# ' (restored as the last column)' (or 'columns').

NOTICE_PREFIX = "softguard: "
NOTICE_MARKER = "is reversible as operation"
#: The same, as the proxy searches NoticeResponse bodies for it (server encoding: ASCII).
NOTICE_MARKER_BYTES = NOTICE_MARKER.encode()
_NOTICE = re.compile(
    r"softguard: (?P<what>.*) is reversible as operation (?P<op>[0-9]+)"
    r" until (?P<expires>\S+)\Z",
    re.S,
)


#: Kinds of the operations 65_definitions.sql records (also their NOTICE's <action>): a
#: definition replaced in place, a sequence's value or parameters changed.
DEFINITION_KINDS = tuple(
    f"CREATE OR REPLACE {what}" for what in ("FUNCTION", "PROCEDURE", "VIEW", "RULE", "TRIGGER")
)
SEQUENCE_KIND = "ALTER SEQUENCE"


@dataclass(frozen=True, slots=True)
class OperationNotice:
    op: int
    what: str  # '<action> <targets>'
    expires: str  # YYYY-MM-DD


def format_operation_notice(action: str, targets: str, op: int, expires: str) -> str:
    """The NOTICE text, as softguard._op_notice writes it (for tests and the demo)."""
    return f"{NOTICE_PREFIX}{action} {targets} {NOTICE_MARKER} {op} until {expires}"


def parse_operation_notice(message: str) -> OperationNotice | None:
    """The operation a NOTICE message announces, or None if it announces none."""
    match = _NOTICE.match(message)
    if match is None:
        return None
    return OperationNotice(int(match["op"]), match["what"], match["expires"])


# -- errors other code reacts to -----------------------------------------------------------
# SQLSTATE plus a DETAIL of 'key=value' pairs separated by spaces (values without spaces),
# never prose to match.

#: Undo is blocked by a later active operation: DETAIL 'blocked_by=<id>'.
BLOCKED_CODE = "55006"
BLOCKED_BY = "blocked_by"


def parse_detail(detail: str | None) -> dict[str, str]:
    """The key=value pairs of a structured DETAIL ({} for anything else)."""
    pairs: dict[str, str] = {}
    for part in (detail or "").split():
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            return {}
        pairs[key] = value
    return pairs


def blocking_operation(sqlstate: str | None, detail: str | None) -> int | None:
    """The operation that blocks an undo, from its error (None: not that error)."""
    if sqlstate != BLOCKED_CODE:
        return None
    value = parse_detail(detail).get(BLOCKED_BY, "")
    return int(value) if value.isdigit() else None


# -- the undo result -----------------------------------------------------------------------

#: softguard.undo_steps(op, rename_to, cascade, on_conflict) returns rows of this type.
UNDO_STEP_TYPE = "softguard.undo_step"
UNDO_STEP_COLUMNS = ("op", "action", "object", "detail", "rows")


@dataclass(frozen=True, slots=True)
class UndoStep:
    """One thing an undo did: ``action`` a fixed word (restored, re-added, cleared, ...),
    ``object`` what it acted on, ``detail`` the sentence shown to people, ``rows`` how many
    rows when it moved rows."""

    op: int
    action: str
    object: str
    detail: str
    rows: int | None

    def line(self) -> str:
        """What `softguard undo` prints for it."""
        return f"operation {self.op}: {self.detail}"


# -- approvals (migrations/install/86_approvals.sql, docs/decisions/0020-approval.md) ------

APPROVAL_GATE_FUNCTION = "softguard._approval_gate"
REQUEST_APPROVAL_FUNCTION = "softguard.request_approval"


def approval_sha(role: str, database: str, text: bytes) -> str:
    """softguard._approval_sha: what an approval is bound to (the text as UTF-8 bytes)."""
    data = role.encode() + b"\x01" + database.encode() + b"\x01" + text
    return hashlib.sha256(data).hexdigest()


def approval_id(role: str, database: str, text: bytes) -> str:
    return approval_sha(role, database, text)[:16]


def approval_gate_call(approval: str, sqlstate: str, message: str, hint: str) -> str:
    """The call that runs before an approvable statement: returns if a person approved it
    (once), else raises the refusal."""
    args = ", ".join(_literal(v) for v in (approval, sqlstate, message, hint))
    return f"{APPROVAL_GATE_FUNCTION}({args})"


# Raised (as a NOTICE) by the approval gate once it let the statement through: the proxy
# drops it and the gate's own CommandComplete, so the client sees its statement's only.
HIDE_CODE = "SGHID"


def _literal(value: str) -> str:
    # E'': the same meaning whatever standard_conforming_strings says.
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
