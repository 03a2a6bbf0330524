"""Issue 13: shape the bytes so that the compiled fast path takes them.

The compiled path (decision 0034) relays, unread, a chunk that is one whole Query whose
text the memo (digits read as 0) knows harmless, or whole messages ending in a Sync with
nothing softguard reads before it (Bind/Execute/Sync). The application's role tries to
get a DELETE, a statement naming softguard, or a denied statement past the proxy inside
such a shape: a Query glued to a Sync, hidden in the body of a message softguard skips,
split across chunks, pipelined, after a harmless twin of the same digit-folded shape,
through prepared statements (protocol-level and SQL-level), and after the memo filled and
emptied. Raw protocol: no driver sends these. Each attack ends with a marker Query, so
every answer is read whatever the attack did to the stream; chunk boundaries are paced
(TCP may still merge them: the attack must hold either way).
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from attacker import REFUSAL_CODES, Arena, Outcome, ServerError, deny_arena_fixture, fixtures

from softguard.policy import TAMPER_MESSAGE

arena_template, arena = fixtures()
arena_deny = deny_arena_fixture('delete = "deny"\n')
# Updates allowed with a WHERE clause, and denied outright to the "agent" application.
arena_where = deny_arena_fixture(
    'require_where = true\n[[policy.rules]]\napplication_name = "agent"\nupdate = "deny"\n'
)

MARKER = b"SELECT 'hotpath-attack-done'"
DELETE = b"DELETE FROM parent WHERE id = 1"
HARMLESS = b"SELECT count(*) FROM parent WHERE id = 1"


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def query(text: bytes) -> bytes:
    return msg(b"Q", text + b"\0")


def parse(text: bytes, name: bytes = b"") -> bytes:
    return msg(b"P", name + b"\0" + text + b"\0\0\0")


def bind(stmt: bytes = b"", portal: bytes = b"") -> bytes:
    return msg(b"B", portal + b"\0" + stmt + b"\0\0\0\0\0\0\0")


EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")
BES = bind() + EXECUTE + SYNC


def _is_marker_row(m: Any) -> bool:
    return isinstance(m, tuple) and m[0] == b"D" and m[1].endswith(MARKER.split(b"'")[1])


class Attacker:
    """A raw session through the proxy whose fast path is warm (the memo knows the
    harmless texts, a prepared statement has run), sending chunks one by one."""

    def __init__(self, arena: Arena) -> None:
        self.session = arena.raw()
        self.session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.seen: list[Any] = []
        for _ in range(3):
            self.exchange([query(HARMLESS)])
            self.exchange([parse(HARMLESS) + BES])
        self.seen.clear()

    def exchange(self, chunks: Sequence[bytes]) -> list[Any]:
        """Send each chunk, then the marker Query; every message up to the marker's
        ReadyForQuery (or the connection's end)."""
        for chunk in chunks:
            self.session.sock.sendall(chunk)
            time.sleep(0.02)  # pacing only: a chunk of its own, most likely
        self.session.sock.sendall(query(MARKER))
        got: list[Any] = []
        try:
            while True:
                batch = self.session.until_ready()
                got += batch
                if any(_is_marker_row(m) for m in batch):
                    break
        except (ConnectionError, OSError):
            got.append("closed")
        self.seen += got
        return got

    def outcome(self) -> Outcome:
        """The first refusal, if any. Other errors (a Bind of a statement the refusal left
        undefined, a protocol violation) are the stream's own: the snapshot judges."""
        out = Outcome()
        errors = [
            m for m in self.seen if isinstance(m, ServerError) and m.sqlstate in REFUSAL_CODES
        ]
        if errors:
            err = psycopg.Error(errors[0].fields.get("M", ""))
            err.sqlstate = errors[0].sqlstate
            out.error, out.failed_step = err, 0
        return out

    def close(self) -> None:
        try:
            self.session.close()
        except OSError:
            pass


def attack(arena: Arena, rounds: Sequence[Sequence[bytes]]) -> Attacker:
    """Each round's chunks on a warm session; the verdict: refused with the data intact,
    or recorded and undone exactly."""
    before, last = arena.snapshot(), arena.last_op()
    attacker = Attacker(arena)
    try:
        for chunks in rounds:
            attacker.exchange(chunks)
    finally:
        attacker.close()
    arena.verdict(before, last, attacker.outcome())
    return attacker


def split(data: bytes, *cuts: int) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


HIDDEN = query(DELETE)

SHAPES: dict[str, list[list[bytes]]] = {
    # One chunk: a Query and a Sync after it (the Sync path's shape, a Query inside).
    "query_glued_to_sync": [[HIDDEN + SYNC]],
    "bind_execute_query_sync": [[bind() + EXECUTE + HIDDEN + SYNC]],
    "query_then_bes": [[HIDDEN + BES]],
    # Messages softguard skips unread, their bodies holding a Query: the server frames them
    # by the same lengths, so the Query stays a body there too.
    "flush_body_hides_query": [[bind() + EXECUTE + msg(b"H", HIDDEN) + SYNC]],
    "copydata_hides_query": [[msg(b"d", HIDDEN) + SYNC]],
    "describe_body_hides_query": [[msg(b"D", b"S" + HIDDEN) + SYNC]],
    # A skipped message's length ending inside the next one: the Query's bytes start where
    # the proxy's framing and the server's would disagree, if they could.
    "skip_ends_inside_query": [[bind() + EXECUTE + b"H" + struct.pack("!I", 8) + HIDDEN + SYNC]],
    # A Query not alone in its chunk, or not whole.
    "pipelined_after_harmless": [[query(HARMLESS) + HIDDEN]],
    "split_in_header": [split(HIDDEN, 3)],
    "split_in_text": [split(HIDDEN, 12, 20)],
    "split_before_nul": [split(HIDDEN, len(HIDDEN) - 1)],
    "harmless_then_split_delete": [[query(HARMLESS) + HIDDEN[:9], HIDDEN[9:]]],
    # A NUL inside the text: the fast path reads up to the last byte, the server up to the
    # first NUL; the proxy must not relay what it did not read.
    "nul_then_delete": [[msg(b"Q", HARMLESS + b"\0" + DELETE + b"\0")]],
    "delete_then_nul": [[msg(b"Q", DELETE + b"\0" + HARMLESS + b"\0")]],
    # A length field one short or one long.
    "length_one_short": [[b"Q" + struct.pack("!I", len(DELETE) + 4) + DELETE + b"\0"]],
    "length_one_long": [[b"Q" + struct.pack("!I", len(DELETE) + 6) + DELETE + b"\0" + SYNC]],
    # Prepared statements: a destructive one behind the Bind/Execute/Sync shape.
    "named_parse_then_bes": [[parse(DELETE, b"s2") + SYNC], [bind(b"s2") + EXECUTE + SYNC]],
    "unnamed_parse_alone_then_bes": [[parse(DELETE)], [BES]],
    "parse_glued_to_bes": [[parse(DELETE) + BES]],
    # A driver's Parse ... Sync whose Parse is harmless (the compiled path takes those):
    # the DELETE after it, inside it, or behind its length.
    "harmless_parse_then_query": [[parse(HARMLESS) + HIDDEN + BES]],
    "harmless_parse_then_delete_parse": [[parse(HARMLESS) + parse(DELETE) + BES]],
    "harmless_parse_nul_then_delete": [[parse(HARMLESS + b"\0" + DELETE) + BES]],
    "harmless_parse_length_swallows_delete": [
        [
            b"P"
            + struct.pack("!I", len(parse(HARMLESS)) - 1 + len(parse(DELETE)))
            + parse(HARMLESS)[5:]
            + parse(DELETE)
            + BES
        ]
    ],
    "harmless_parse_split_before_sync": [[parse(HARMLESS) + bind() + EXECUTE], [HIDDEN + SYNC]],
    "sql_prepare_then_protocol_bind": [
        [query(b"PREPARE d AS " + DELETE)],
        [bind(b"d") + EXECUTE + SYNC],
    ],
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shaped_delete_is_protected(arena: Arena, name: str) -> None:
    attack(arena, SHAPES[name])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shaped_delete_is_denied(arena_deny: Arena, name: str) -> None:
    attacker = attack(arena_deny, SHAPES[name])
    rows = arena_deny.direct("SELECT count(*) FROM parent WHERE id = 1")
    assert rows == [(1,)], attacker.seen


# The same statement twice: first a harmless twin of its digit-folded shape (the memo
# learns it), then the one that matters. Escapes are the digits that change a name.
DIGIT_TWINS = {
    "unicode_escaped_schema": (
        b'SELECT * FROM U&"\\0000oftguard".operations',
        b'SELECT * FROM U&"\\0073oftguard".operations',
    ),
    "octal_escaped_setting": (
        b"SELECT set_config(E'\\000oftguard.x', 'on', false)",
        b"SELECT set_config(E'\\163oftguard.x', 'on', false)",
    ),
    "plain_escape_string": (
        b"SELECT set_config('\\000oftguard.x', 'on', false)",
        b"SELECT set_config('\\163oftguard.x', 'on', false)",
    ),
    "hex_escaped_setting": (
        b"SELECT set_config(E'\\x00oftguard.x', 'on', false)",
        b"SELECT set_config(E'\\x73oftguard.x', 'on', false)",
    ),
    "unicode_escaped_string": (
        b"SELECT set_config(U&'\\0000oftguard.x', 'on', false)",
        b"SELECT set_config(U&'\\0073oftguard.x', 'on', false)",
    ),
    # An allowed UPDATE's shape is remembered by the session (statements.remember_allowed):
    # not one whose digits could spell softguard.
    "update_through_escaped_schema": (
        b'UPDATE parent SET name = name WHERE id = (SELECT 1 FROM U&"\\0000oftguard".x)',
        b'UPDATE parent SET name = name WHERE id = (SELECT 1 FROM U&"\\0073oftguard".operations)',
    ),
}


@pytest.mark.parametrize("name", sorted(DIGIT_TWINS))
def test_a_digit_twin_does_not_open_softguard(arena: Arena, name: str) -> None:
    """The twin is run (or fails) first, as a lone Query and again; the text naming
    softguard is refused by the proxy itself, with its tamper message."""
    twin, target = DIGIT_TWINS[name]
    attacker = Attacker(arena)
    try:
        for _ in range(3):
            attacker.exchange([query(twin)])
        attacker.seen.clear()
        got = attacker.exchange([query(target)])
    finally:
        attacker.close()
    errors = [m for m in got if isinstance(m, ServerError)]
    assert errors, got
    assert errors[0].sqlstate == "42501", errors[0].fields
    assert errors[0].fields.get("M") == TAMPER_MESSAGE, errors[0].fields


def test_softguard_named_in_the_fast_shapes(arena: Arena) -> None:
    """Texts naming softguard, as lone Queries after their harmless look-alikes and
    glued to a Sync: each refused by the proxy."""
    texts = [
        b"SELECT * FROM softguard.operations",
        b"SELECT * FROM SOFTGUARD.operations",
        b'SELECT * FROM "softguard"."operations"',
        b"TABLE softguard.operations",
        b"SELECT * FROM softguard . operations WHERE id = 1",
    ]
    attacker = Attacker(arena)
    try:
        for text in texts:
            look_alike = text.replace(b"oftguard", b"oftguarx").replace(b"OFTGUARD", b"OFTGUARX")
            attacker.exchange([query(look_alike)])
            for chunks in ([query(text)], [query(text) + SYNC]):
                attacker.seen.clear()
                got = attacker.exchange(chunks)
                errors = [m for m in got if isinstance(m, ServerError)]
                assert errors and errors[0].fields.get("M") == TAMPER_MESSAGE, (text, got)
    finally:
        attacker.close()


def test_the_memo_filling_and_emptying_lets_nothing_through(arena_deny: Arena) -> None:
    """Thousands of distinct harmless lone Queries (the compiled memo holds 4,096, then
    empties) with the denied DELETE after every thousand: each one refused."""
    attacker = Attacker(arena_deny)
    refused = 0
    try:
        for i in range(4500):
            name = "".join(chr(ord("a") + (i // 26**k) % 26) for k in range(3))
            text = f"SELECT count(*) AS {name} FROM parent WHERE id = {i % 7}".encode()
            attacker.session.sock.sendall(query(text))
            attacker.session.until_ready()
            if i % 1000 == 999:
                got = attacker.session.query(DELETE + b" AND %d = %d" % (i, i))
                errors = [m for m in got if isinstance(m, ServerError)]
                assert errors and errors[0].sqlstate == "42501", got
                refused += 1
    finally:
        attacker.close()
    assert refused == 4
    assert arena_deny.direct("SELECT count(*) FROM parent") == [(5,)]


def _refused(got: list[Any]) -> list[str]:
    return [m.sqlstate for m in got if isinstance(m, ServerError)]


def test_an_allowed_update_shape_stays_that_shape(arena_where: Arena) -> None:
    """The session remembers `UPDATE ... WHERE id = <n>` as allowed (after one plan, the
    next ones pass unplanned); a look-alike without the WHERE clause, or with it in a
    string or a comment, is decided again: refused, as a lone Query or glued after one
    the memo passes."""
    before = arena_where.snapshot()
    warm = b"UPDATE parent SET name = name WHERE id = %d"
    attacker = Attacker(arena_where)
    try:
        for i in range(1, 5):
            assert _refused(attacker.exchange([query(warm % i)])) == []
        for text in (
            b"UPDATE parent SET name = upper(name)",
            b"UPDATE parent SET name = upper(name) -- WHERE id = 1",
            b"UPDATE parent SET name = upper(name) || ' WHERE id = 1'",
        ):
            for chunks in ([query(text)], [query(warm % 2) + query(text)]):
                got = attacker.exchange(chunks)
                assert _refused(got) == ["42501"], (text, got)
    finally:
        attacker.close()
    assert arena_where.snapshot() == before


def test_an_allowed_parse_shape_stays_that_shape(arena_where: Arena) -> None:
    """The same through a driver's Parse ... Sync: the remembered UPDATE shape passes, a
    look-alike without its WHERE clause is refused, alone or after one that passes."""
    before = arena_where.snapshot()
    warm = b"UPDATE parent SET name = name WHERE id = %d"
    attacker = Attacker(arena_where)
    try:
        for i in range(1, 5):
            assert _refused(attacker.exchange([parse(warm % i) + BES])) == []
        for text in (
            b"UPDATE parent SET name = upper(name)",
            b"UPDATE parent SET name = upper(name) -- WHERE id = 1",
        ):
            for chunks in ([parse(text) + BES], [parse(warm % 2) + BES + parse(text) + BES]):
                got = attacker.exchange(chunks)
                assert _refused(got) == ["42501"], (text, got)
    finally:
        attacker.close()
    assert arena_where.snapshot() == before


def test_a_session_remembers_for_itself_alone(arena_where: Arena) -> None:
    """A session whose UPDATEs are allowed has remembered the shape; another session of
    the same role, but the application the policy denies updates to, sending that shape
    is refused."""
    before = arena_where.snapshot()
    text = b"UPDATE parent SET name = upper(name) WHERE id = %d"
    allowed = Attacker(arena_where)
    agent = arena_where.raw(application_name="agent")
    try:
        for i in range(1, 4):
            allowed.exchange([query(b"UPDATE parent SET name = name WHERE id = %d" % i)])
            allowed.exchange([query(text % i)])
        assert _refused(allowed.seen) == []
        for i in range(1, 4):
            got = agent.query(text % i)
            assert _refused(got) == ["42501"], got
    finally:
        allowed.close()
        agent.close()
    after = arena_where.snapshot()
    assert after != before  # the allowed session did update (upper-cased the names)
    assert arena_where.direct("SELECT count(*) FROM parent WHERE name <> upper(name)") == [(2,)]
