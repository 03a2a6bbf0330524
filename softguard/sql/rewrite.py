"""Rewrite plans: the text softguard sends instead of the client's, and how to map the
server's answers back. Pure functions; the proxy applies them.

A plan replaces individual statements of a query string (located by their byte offsets)
and keeps everything else byte for byte. ``Segment``s record where each piece of the new
text came from, so an error position the server reports in the new text can be turned
into the position in the client's own text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from pglast import parse_sql
from pglast.enums.parsenodes import DropBehavior
from pglast.parser import ParseError, parse_sql_json
from pglast.stream import RawStream

from softguard.contract import BEGIN_CODE
from softguard.sql.classify import Statement, load_json


@dataclass(frozen=True, slots=True)
class Segment:
    """Characters [new_start, new_start + new_len) of the new text came from
    characters [old_start, old_start + old_len) of the original (0-based)."""

    new_start: int
    new_len: int
    old_start: int
    old_len: int
    rewritten: bool


@dataclass(frozen=True, slots=True)
class Replacement:
    """Replace one statement (``stmt.location``/``length`` bytes) with ``text``."""

    stmt: Statement
    text: str


_WORD = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*|[0-9]+""")


@dataclass(frozen=True, slots=True)
class RewritePlan:
    text: bytes
    segments: tuple[Segment, ...]
    original: str = ""  # the client's text (characters), to find a word of it again

    def prefixed(self, prefix: str) -> RewritePlan:
        """The same plan for ``prefix`` + the new text (the prefix maps to the start)."""
        shift = len(prefix)
        segments = tuple(
            Segment(s.new_start + shift, s.new_len, s.old_start, s.old_len, s.rewritten)
            for s in self.segments
        )
        return RewritePlan(
            prefix.encode() + self.text,
            (Segment(0, shift, 0, 0, True), *segments),
            self.original,
        )

    def original_position(self, position: int) -> int:
        """Map a 1-based character position in the new text to the original text.

        Inside a rewritten statement, the word at that position (an identifier, say the
        column an error names) is looked for in the client's statement: if it occurs
        there exactly once, that is the position; otherwise the statement's start."""
        index = position - 1
        for seg in self.segments:
            if seg.new_start <= index < seg.new_start + seg.new_len:
                if seg.rewritten:
                    return self._same_word(index, seg) or seg.old_start + 1
                return seg.old_start + (index - seg.new_start) + 1
        return position

    def _same_word(self, index: int, seg: Segment) -> int | None:
        if not self.original:
            return None
        new = self.text.decode("utf-8", "replace")
        found = _WORD.match(new, index)
        if found is None:
            return None
        word = found.group(0).lower()
        old = self.original[seg.old_start : seg.old_start + seg.old_len]
        hits = [m.start() for m in _WORD.finditer(old) if m.group(0).lower() == word]
        return seg.old_start + hits[0] + 1 if len(hits) == 1 else None


def statement_span(sql: bytes, stmt: Statement) -> tuple[int, int]:
    """Byte range of ``stmt`` in ``sql``."""
    end = stmt.location + stmt.length if stmt.length else len(sql)
    return stmt.location, end


def char_offset(sql: bytes, byte_offset: int) -> int:
    return len(sql[:byte_offset].decode("utf-8", "replace"))


def apply(sql: bytes, replacements: Sequence[Replacement]) -> RewritePlan:
    """The new text with each replaced statement swapped, plus the position map."""
    pieces: list[str] = []
    segments: list[Segment] = []
    cursor = 0
    new_pos = 0
    old_pos = 0
    for rep in sorted(replacements, key=lambda r: r.stmt.location):
        start, end = statement_span(sql, rep.stmt)
        kept = sql[cursor:start].decode("utf-8", "replace")
        replaced = sql[start:end].decode("utf-8", "replace")
        if kept:
            segments.append(Segment(new_pos, len(kept), old_pos, len(kept), False))
            pieces.append(kept)
            new_pos += len(kept)
            old_pos += len(kept)
        segments.append(Segment(new_pos, len(rep.text), old_pos, len(replaced), True))
        pieces.append(rep.text)
        new_pos += len(rep.text)
        old_pos += len(replaced)
        cursor = end
    rest = sql[cursor:].decode("utf-8", "replace")
    if rest:
        segments.append(Segment(new_pos, len(rest), old_pos, len(rest), False))
        pieces.append(rest)
    return RewritePlan("".join(pieces).encode(), tuple(segments), sql.decode("utf-8", "replace"))


def dollar_quote(*texts: str) -> str:
    """A dollar-quote tag that occurs in none of ``texts``."""
    for _ in range(100):
        tag = f"$sg{secrets.token_hex(4)}$"
        if not any(tag in t for t in texts):
            return tag
    raise RuntimeError("could not find a free dollar-quote tag")  # pragma: no cover


def cascade_variant(stmt_text: str) -> str:
    """The same DROP statement with CASCADE, deparsed by PostgreSQL's grammar."""
    parsed = parse_sql(stmt_text)
    node = parsed[0].stmt
    assert node is not None
    node.behavior = DropBehavior.DROP_CASCADE
    return str(RawStream()(node))


def drop_call(stmt_text: str, ctx: dict[str, object]) -> str:
    """``CALL softguard.drop_op(...)`` for one DROP statement (see decision 0005)."""
    cascade = cascade_variant(stmt_text)
    ctx_json = orjson.dumps(ctx).decode()
    q = dollar_quote(stmt_text, cascade, ctx_json)
    return f"CALL softguard.drop_op({q}{stmt_text}{q}, {q}{cascade}{q}, {q}{ctx_json}{q}::jsonb)"


def procedure_call(
    procedure: str, stmt_text: str, ctx: dict[str, object], key: bytes | None = None
) -> str:
    """``CALL softguard.<procedure>(stmt, ctx)``: truncate_op, alter_op (decision 0006).
    With the session's *key* (alter_op, decision 0028), a third argument marks the call as
    softguard's own: ``call_mark(key, stmt, ctx)``."""
    ctx_json = orjson.dumps(ctx).decode() if key is None else jsonb_text(ctx)
    q = dollar_quote(stmt_text, ctx_json)
    mark = "" if key is None else f", '{call_mark(key, stmt_text, ctx_json)}'"
    return f"CALL softguard.{procedure}({q}{stmt_text}{q}, {q}{ctx_json}{q}::jsonb{mark})"


def call_mark(key: bytes, stmt_text: str, ctx_json: str) -> str:
    """HMAC-SHA-256 of the statement and ctx under the session's key, as hex: what
    softguard._marked computes in the database over ``stmt``, a NUL byte (no text holds
    one) and ``ctx::text``. *ctx_json* must be ``jsonb_text``'s (what ``::text`` gives back)."""
    msg = stmt_text.encode() + b"\0" + ctx_json.encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def jsonb_text(value: object) -> str:
    """*value* (dicts, lists, str, int, bool, None) as PostgreSQL's jsonb prints it, so that
    the text sent is the text ``::jsonb::text`` gives back: object keys shortest first, then
    by their bytes; ", " and ": " between items; strings escaped as escape_json does."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        inner = ", ".join(f"{_jsonb_string(k)}: {jsonb_text(v)}" for k, v in items)
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    if isinstance(value, str):
        return _jsonb_string(value)
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)
    raise TypeError(f"jsonb_text: {type(value).__name__} is not printed the same by jsonb")


def _jsonb_string(text: str) -> str:
    # json.dumps escapes exactly what escape_json does (", \\, \b \f \n \r \t, other
    # controls as lowercase \u00xx) and leaves the rest, non-ASCII included, as it is
    return json.dumps(text, ensure_ascii=False)


def refusal(sqlstate: str, message: str, hint: str | None = None) -> str:
    """A statement that makes the server raise softguard's refusal.

    Raised by the server, the error puts the client's transaction into the same failed
    state a failing statement would; the proxy removes the PL/pgSQL context it carries.
    """
    hint_clause = ""
    body_texts = [message] + ([hint] if hint else [])
    q = dollar_quote(*body_texts)
    inner = dollar_quote(*body_texts, q)
    if hint:
        hint_clause = f", HINT = {inner}{hint}{inner}"
    return (
        f"DO {q}BEGIN "
        "PERFORM set_config('client_min_messages', 'notice', true); "
        f"RAISE NOTICE USING ERRCODE = '{BEGIN_CODE}', MESSAGE = '0'; "
        f"RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = {inner}{message}{inner}"
        f"{hint_clause}; END{q}"
    )


# A function name as written before its "(": [schema .] name, each plain or quoted.
_FUNC_NAME = re.compile(
    r'(?:(?:"pg_catalog"|pg_catalog)\s*\.\s*)?(?:"(?P<q>[a-z_0-9]+)"|(?P<p>[A-Za-z_][A-Za-z0-9_]*))'
    r"(?=\s*\()",
    re.IGNORECASE,
)


def large_object_calls(stmt_text: str, names: frozenset[str]) -> str | None:
    """*stmt_text* with every call of a large-object function in *names* (unqualified or
    ``pg_catalog.``) renamed to softguard's wrapper, ``softguard.<name>`` (decision 0016);
    None when a call could not be located in the text (inside a string body, or spelled in
    a way this does not read): the caller refuses rather than let it run unkept."""
    try:
        tree = load_json(parse_sql_json(stmt_text))
    except ParseError:
        return None
    raw = stmt_text.encode()
    spans: list[tuple[int, int, str]] = []
    stack: list[object] = [tree]
    for _ in range(1_000_000):  # bounded walk: the JSON tree is finite
        if not stack:
            break
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        call = node.get("FuncCall")
        if isinstance(call, dict):
            parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", ())]
            if parts and parts[-1] in names and parts[:-1] in ([], ["pg_catalog"]):
                start = int(call.get("location", -1))
                found = _FUNC_NAME.match(raw.decode("utf-8", "replace"), _char(raw, start))
                if start < 0 or found is None:
                    return None
                name = (found.group("q") or found.group("p") or "").lower()
                if name != parts[-1]:
                    return None
                spans.append((found.start(), found.end(), name))
        stack.extend(node.values())
    else:
        return None
    if not spans:
        return None
    pieces: list[str] = []
    cursor = 0
    for start, end, name in sorted(spans):
        pieces.append(stmt_text[cursor:start])
        pieces.append(f"softguard.{name}")
        cursor = end
    pieces.append(stmt_text[cursor:])
    return "".join(pieces)


def _char(raw: bytes, byte_offset: int) -> int:
    return len(raw[: max(byte_offset, 0)].decode("utf-8", "replace"))
