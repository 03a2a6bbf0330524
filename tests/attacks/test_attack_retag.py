"""Issue 13: make the proxy drop its result filter too early.

The proxy filters a session's answers while a rewritten statement (here a DROP, sent as
softguard's CALL) is in flight or prepared, and drops the filter afterwards so that the
fast paths take the session back. The application's role, speaking raw protocol through
a real `softguard serve`, tries to make the filter go while a rewritten prepared
statement can still run, so that its raw answer reaches the client: softguard's private
notices (SGBEG/SGEND/SGTAG/SGHID), the CALL tag instead of DROP TABLE, a PL/pgSQL
context naming softguard. Moves: Close of a name never prepared, a Parse reusing the
rewritten name, DISCARD ALL / DEALLOCATE inside a failed transaction, Parse/Close/Sync
pipelined without waiting, an error mid-pipeline skipping the Close, DEALLOCATE ALL
pipelined before a new rewritten Parse, the unnamed statement run again by a Bind alone,
and the same through a prepared DO. Each ends with the data as before (the verdict undoes
what was recorded).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

import pytest
from attacker import Arena, Outcome, ServerError, fixtures

arena_template, arena = fixtures()

DROP = b"DROP TABLE IF EXISTS big"
DO = b"DO $$BEGIN PERFORM 1; END$$"
MARKER = b"SELECT 'retag-attack-done'"
PRIVATE = ("SGBEG", "SGEND", "SGTAG", "SGHID")


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def query(text: bytes) -> bytes:
    return msg(b"Q", text + b"\0")


def parse(text: bytes, name: bytes = b"") -> bytes:
    return msg(b"P", name + b"\0" + text + b"\0\0\0")


def bind(stmt: bytes = b"") -> bytes:
    return msg(b"B", b"\0" + stmt + b"\0\0\0\0\0\0\0")


def close(name: bytes, kind: bytes = b"S") -> bytes:
    return msg(b"C", kind + name + b"\0")


EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")


def run(stmt: bytes = b"") -> bytes:
    return bind(stmt) + EXECUTE + SYNC


S1 = parse(DROP, b"s1") + SYNC

ATTACKS: dict[str, list[bytes]] = {
    "close_of_a_name_never_prepared": [S1, close(b"zz") + close(b"S1") + SYNC, run(b"s1")],
    "close_of_a_portal_of_that_name": [S1, close(b"s1", b"P") + SYNC, run(b"s1")],
    "parse_reusing_the_rewritten_name": [S1, parse(b"SELECT 1", b"s1") + SYNC, run(b"s1")],
    "discard_all_in_a_failed_transaction": [
        S1,
        query(b"BEGIN"),
        query(b"SELEC 1"),
        query(b"DISCARD ALL"),
        query(b"DEALLOCATE s1"),
        query(b"ROLLBACK"),
        run(b"s1"),
    ],
    "discard_all_inside_a_transaction": [
        S1,
        query(b"BEGIN; DISCARD ALL"),
        query(b"ROLLBACK"),
        run(b"s1"),
    ],
    "pipelined_parse_close_sync_bind": [
        S1 + run(b"s1") + close(b"s1") + SYNC + run(b"s1") + parse(DROP, b"s1") + SYNC + run(b"s1")
    ],
    "error_mid_pipeline_skips_the_close": [
        S1,
        parse(b"SELEC 1") + close(b"s1") + SYNC,
        run(b"s1"),
        bind(b"nope") + EXECUTE + close(b"s1") + SYNC + run(b"s1"),
    ],
    "deallocate_all_before_a_new_rewritten_parse": [
        S1 + query(b"DEALLOCATE ALL") + parse(DROP, b"s2") + SYNC,
        run(b"s2"),
    ],
    "unnamed_statement_run_again": [parse(DROP) + run(), run(), run(), msg(b"H"), run()],
    "unnamed_replaced_after_an_error": [parse(DROP) + run(), parse(b"SELEC") + SYNC, run()],
    "through_a_prepared_do": [
        S1,
        parse(DO, b"d1") + close(b"s1") + parse(b"SELEC") + SYNC,
        run(b"d1"),
        run(b"s1"),
        parse(DO) + run() + run(b"s1"),
    ],
    "rewritten_do_then_close_in_failed_block": [
        parse(b"DO $$BEGIN DROP TABLE IF EXISTS big; END$$", b"d2") + SYNC,
        query(b"BEGIN") + query(b"SELEC") + close(b"d2") + SYNC + query(b"ROLLBACK"),
        run(b"d2"),
    ],
}


def _read_all(session: Any) -> list[Any]:
    got: list[Any] = []
    try:
        while True:
            batch = session.until_ready()
            got += batch
            if any(
                isinstance(m, tuple) and m[0] == b"D" and b"retag-attack" in m[1] for m in batch
            ):
                return got
    except (ConnectionError, OSError):
        got.append("closed")
        return got


def _leaks(seen: Sequence[Any]) -> list[str]:
    """What only a rewritten statement's raw answer would show the client."""
    leaks: list[str] = []
    for m in seen:
        if isinstance(m, ServerError):
            text = " ".join(m.fields.get(k, "") for k in "MWq")
            if "softguard.drop_op" in text or "PL/pgSQL" in m.fields.get("W", ""):
                leaks.append(f"error {m.fields}")
        elif isinstance(m, tuple) and m[0] == b"N":
            fields = {p[:1]: p[1:] for p in m[1].split(b"\0") if p}
            code = fields.get(b"C", b"").decode()
            if code in PRIVATE or b"drop_op" in fields.get(b"W", b""):
                leaks.append(f"notice {code} {fields.get(b'M', b'')!r}")
        elif isinstance(m, tuple) and m[0] == b"C" and m[1].startswith(b"CALL"):
            leaks.append("CALL tag")
    return leaks


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_filter_is_not_dropped_early(arena: Arena, name: str) -> None:
    before, last = arena.snapshot(), arena.last_op()
    session = arena.raw()
    session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    seen: list[Any] = []
    try:
        for chunk in ATTACKS[name]:
            session.sock.sendall(chunk)
            time.sleep(0.02)  # pacing only: the answers may still merge
        # Ordinary traffic afterwards, then the last word: the marker.
        session.sock.sendall(query(b"SELECT 1") + parse(b"SELECT 2") + run() + query(MARKER))
        seen = _read_all(session)
    finally:
        session.close()
    assert "closed" not in seen, seen
    assert not _leaks(seen), _leaks(seen)
    tags = [m[1] for m in seen if isinstance(m, tuple) and m[0] == b"C"]
    if b"DO $$" not in b"".join(ATTACKS[name]):
        assert b"DROP TABLE\0" in tags, tags  # the rewritten DROP ran, answered as a DROP
    arena.verdict(before, last, Outcome())
