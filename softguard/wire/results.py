"""Making a rewritten statement's results look like the original's (sans-IO).

softguard's server-side procedures bracket what they do with two private notices,
SQLSTATE ``SGBEG`` (message: the statement's character offset in the client's text) and
``SGEND`` (message: the command tag the original statement would have returned); see
docs/decisions/0005-reversible-drop.md. Between them, errors and notices come from inside
a PL/pgSQL procedure: their CONTEXT and internal-query fields are removed and an internal
error position becomes a position in the client's text. The ``CALL`` command tag that
follows ``SGEND`` is replaced by the original tag. Positions of other statements in a
rewritten query string are mapped back through the query's ``RewritePlan``.

A soft delete is a DELETE sent as an UPDATE (softguard/sql/soft_delete.py): its
``UPDATE n`` tag is turned back into ``DELETE n``, for the statements of a Query the proxy
names (by position), and in the extended protocol for the CommandComplete that follows a
private notice ``SGTAG`` (raised by the capture trigger of a statement the proxy marked).

The filter sees every NoticeResponse, ErrorResponse, CommandComplete and ReadyForQuery
of a session while it has a rewritten statement in flight, in order. It also keeps what a
later Bind can still run of softguard's rewrites: the names of the prepared statements
(protocol-level and SQL-level, "" the unnamed one) made from a rewritten text. A name is
forgotten only once the server has surely dropped it: the Close, DEALLOCATE, DISCARD ALL
or replacing Parse was sent before a ReadyForQuery whose answers held no error (a message
skipped after an error, or a DISCARD refused in a failed transaction, drops nothing).
The proxy drops the filter once nothing it tracks is left (proxy/core.py).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Protocol

from softguard.contract import BEGIN_CODE, END_CODE, HIDE_CODE, TAG_CODE
from softguard.wire.messages import error_response, message, parse_fields

_N, _E, _C, _Z = b"NECZ"
# Every name at once (DEALLOCATE ALL, DISCARD ALL), and "some name softguard could not
# read" (a rewritten PREPARE it could not parse): no statement name holds a NUL.
ALL_NAMES = "\0all"
UNKNOWN_NAME = "\0unknown"
# Fields that only describe softguard's procedure, never the client's statement.
_INNER_FIELDS = ("W", "q", "p")


class PositionMap(Protocol):
    def original_position(self, position: int) -> int: ...


LEDGER_MISSING = (
    "softguard: the softguard ledger is missing from this database (was it dropped and "
    "re-created?); the statement was not run"
)


class ResultFilter:
    __slots__ = (
        "_completes",
        "_dropping",
        "_failed",
        "_hide_next",
        "_inside",
        "_maps",
        "_offset",
        "_retag_next",
        "_tag",
        "ledger_missing",
        "names",
    )

    def __init__(self) -> None:
        # Set when the server said softguard's procedures do not exist: the proxy's
        # belief that the ledger is installed is stale.
        self.ledger_missing = False
        # One entry per message that ends with ReadyForQuery (Query, Sync, FunctionCall):
        # its rewrite plan, the positions of its statements to retag, and the statement
        # names the messages sent before it (since the previous one) drop.
        self._maps: deque[tuple[PositionMap | None, frozenset[int], set[str]]] = deque()
        # Prepared statements made from a rewritten text, as far as the server may still
        # hold them; the names the client's messages since the last Query/Sync drop; and
        # whether an error came since the last ReadyForQuery (then its drops may not have
        # happened: skipped, or refused).
        self.names: set[str] = set()
        self._dropping: set[str] = set()
        self._failed = False
        self._inside = False
        self._offset = 0
        self._tag: str | None = None
        self._completes = 0  # CommandCompletes since the last ReadyForQuery
        self._retag_next = False
        # softguard's approval gate ran (HIDE_CODE): its CommandComplete is not the client's.
        self._hide_next = False

    def expect_ready(self, plan: PositionMap | None, retag: frozenset[int] = frozenset()) -> None:
        """A Query (with its rewrite plan and statements to retag, if any), Sync or
        FunctionCall was sent."""
        self._maps.append((plan, retag, self._dropping))
        self._dropping = set()

    def made(self, name: str) -> None:
        """A rewritten text became the prepared statement ``name`` (or may have): kept
        until surely dropped, whatever drop of it is still on its way."""
        for dropping in (*(entry[2] for entry in self._maps), self._dropping):
            if ALL_NAMES in dropping:
                # Sent before this name was made: it drops only the names made before.
                dropping.discard(ALL_NAMES)
                dropping.update(self.names)
            dropping.discard(name)
        self.names.add(name)

    def dropped(self, name: str) -> None:
        """A message that drops ``name`` (ALL_NAMES: every one) if the server runs it."""
        if self.names:
            self._dropping.add(name)

    @property
    def idle(self) -> bool:
        """Nothing owed, nothing a Bind could run: the filter has nothing left to do."""
        return not self._maps and not self.names and not self._inside

    def _ready(self) -> None:
        """A ReadyForQuery: the drops sent before it happened, unless an error came."""
        if not self._maps:
            self._failed = False
            return
        dropping = self._maps.popleft()[2]
        if dropping and not self._failed and self.names:
            if ALL_NAMES in dropping:
                self.names.clear()
            else:
                self.names -= dropping
        self._failed = False

    def process(self, mtype: int, body: bytes) -> bytes | None:
        """None: forward the message as is; else the bytes to send instead (b"" drops)."""
        if mtype == _C:
            if self._hide_next:
                self._hide_next = False
                return b""
            index = self._completes
            self._completes += 1
            tag = self._tag
            if tag is not None:
                self._tag = None
                return message(b"C", tag.encode() + b"\0")
            retag = self._retag_next or (bool(self._maps) and index in self._maps[0][1])
            self._retag_next = False
            if retag and body.startswith(b"UPDATE "):
                return message(b"C", b"DELETE " + body[7:])
            return None
        if mtype == _Z:
            self._ready()
            self._inside = False
            self._tag = None
            self._completes = 0
            self._retag_next = False
            self._hide_next = False
            return None
        if mtype == _E:
            self._failed = True
            return self._notice_or_error(mtype, body)
        if mtype == _N:
            return self._notice_or_error(mtype, body)
        return None

    def _notice_or_error(self, mtype: int, body: bytes) -> bytes | None:
        fields = parse_fields(body)
        code = fields.get("C")
        if mtype == _E and code in ("3F000", "42883") and "softguard" in fields.get("M", ""):
            self.ledger_missing = True
            return error_response(
                "55000",
                LEDGER_MISSING,
                severity=fields.get("V") or fields.get("S") or "ERROR",
                hint="Retry: softguard checks the ledger again and installs it if it can.",
            )
        if mtype == _N and code == BEGIN_CODE:
            self._inside = True
            try:
                self._offset = int(fields.get("M", "0"))
            except ValueError:
                self._offset = 0
            return b""
        if mtype == _N and code == HIDE_CODE:
            self._inside = False
            self._hide_next = True
            return b""
        if mtype == _N and code == TAG_CODE:
            self._retag_next = True
            return b""
        if mtype == _N and code == END_CODE:
            self._inside = False
            self._tag = fields.get("M") or None
            return b""
        if self._inside:
            if mtype == _N and not _hide_quarantine(fields):
                return b""
            if mtype == _E and "D" in fields:
                # e.g. 2BP01 lists dependents; those already in quarantine are gone for
                # the client, as after a real DROP.
                kept = [ln for ln in fields["D"].split("\n") if not _QUARANTINE_NAME.search(ln)]
                if kept:
                    fields["D"] = "\n".join(kept)
                else:
                    del fields["D"]
            inner_position = fields.get("p")
            for key in _INNER_FIELDS:
                fields.pop(key, None)
            if fields.get("R") == "exec_stmt_raise":
                # softguard's own RAISE: its source location is the PL/pgSQL interpreter's.
                for key in "FLR":
                    fields.pop(key, None)
            if inner_position is not None and inner_position.isdigit():
                fields["P"] = str(self._offset + int(inner_position))
            if mtype == _E:
                self._inside = False
            return _encode(mtype, fields)
        position = fields.get("P")
        plan = self._maps[0][0] if self._maps else None
        if position is not None and plan is not None and position.isdigit():
            fields["P"] = str(plan.original_position(int(position)))
            return _encode(mtype, fields)
        return None


def _encode(mtype: int, fields: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return message(bytes((mtype,)), body)


_QUARANTINE_NAME = re.compile(r"\bsoftguard_q(?:uarantine\.|\d+_)")
_CASCADES_TO = "drop cascades to "


def _hide_quarantine(fields: dict[str, str]) -> bool:
    """Remove objects already in quarantine from a "drop cascades to" notice.

    A DROP ... CASCADE probed through softguard also reaches objects an earlier operation
    moved into quarantine (a view that still reads the table). A real DROP would not
    mention them: they are gone. Returns False when nothing is left to say.
    """
    text = fields.get("M", "")
    if not text.startswith(_CASCADES_TO):
        return True
    if fields.get("D") is None:
        return _QUARANTINE_NAME.search(text) is None
    items = [line for line in fields["D"].split("\n") if not _QUARANTINE_NAME.search(line)]
    if len(items) == len(fields["D"].split("\n")):
        return True
    if not items:
        return False
    if len(items) == 1:
        fields["M"] = items[0]
        del fields["D"]
    else:
        fields["M"] = f"{_CASCADES_TO}{len(items)} other objects"
        fields["D"] = "\n".join(items)
    return True


# The fields without_context looks for, and those it removes (the PL/pgSQL location
# too): one list for both of its paths, as bytes for the fast one.
_CONTEXT_FIELDS = (*_INNER_FIELDS, "F", "L", "R")
_INNER_CODES = frozenset("".join(_INNER_FIELDS).encode())
_CONTEXT_CODES = frozenset("".join(_CONTEXT_FIELDS).encode())
_SOFTGUARD_PREFIX = "softguard: "
_SOFTGUARD_MESSAGE = b"M" + _SOFTGUARD_PREFIX.encode()


def without_context(mtype: int, body: bytes) -> bytes | None:
    """softguard's own NOTICE raised from a capture trigger, without the PL/pgSQL CONTEXT
    and internal-query fields that would reveal the trigger (None: nothing to remove)."""
    parts = body.split(b"\0")
    fields = parts[:-2]
    if (
        len(parts) > 2
        and not parts[-1]
        and not parts[-2]
        and all(fields)
        and len({p[0] for p in fields}) == len(fields)
        and body.isascii()
    ):
        # The usual body (whole fields, each code once, the terminator last, nothing a
        # decoding would replace): the fields are cut out as bytes, nothing decoded or
        # encoded again; the same answer as the general path below.
        if not any(p.startswith(_SOFTGUARD_MESSAGE) for p in fields):
            return None
        if not any(p[0] in _INNER_CODES for p in fields):
            return None
        kept = [p for p in fields if p[0] not in _CONTEXT_CODES]
        kept.append(b"")
        kept.append(b"")
        return message(bytes((mtype,)), b"\0".join(kept))
    return _without_context(mtype, body)


def _without_context(mtype: int, body: bytes) -> bytes | None:
    """``without_context`` for any body: decoded field by field (as ``parse_fields`` reads
    it), encoded again."""
    fields = parse_fields(body)
    if not fields.get("M", "").startswith(_SOFTGUARD_PREFIX) or not any(
        key in fields for key in _INNER_FIELDS
    ):
        return None
    for key in _CONTEXT_FIELDS:
        fields.pop(key, None)
    return _encode(mtype, fields)
