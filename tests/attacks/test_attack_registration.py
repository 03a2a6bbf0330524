"""Issue 10 item 1 (threat model G6): protection comes from the session's registration.

The proxy registers every session in softguard.sessions before the client's first message
(decision 0012); the client's settings may only add to it. Each attack here tries to get
around the registration itself: lower it, remove it, get a statement in before it, or
write the table it lives in. What must hold: the DELETE that follows is captured, kept
for the configured retention, and undone exactly (or the attempt is refused).
"""

from __future__ import annotations

import socket
import struct

import pytest
from attacker import Arena, chr_built, fixtures

arena_template, arena = fixtures()

CAPTURE_OFF = f"SELECT set_config({chr_built('softguard.capture')}, 'off', false)"
RETENTION_ZERO = f"SELECT set_config({chr_built('softguard.retention')}, '0', false)"


def _dynamic(sql_text: str) -> str:
    """``sql_text`` run by a DO block, with every 'softguard' spelled so no text check sees it."""
    hidden = sql_text.replace("softguard", "' || concat('soft', 'guard') || '")
    return f"DO $$ BEGIN EXECUTE '{hidden}'; END $$"


def _kept_a_week(arena: Arena, last: int) -> None:
    ops = arena.ledger_view(last)
    assert ops, "nothing recorded"
    assert all(o["retention_days"] >= 6 for o in ops), ops


def test_registration_cannot_be_lowered(arena: Arena) -> None:
    """register_session is callable by anyone, and only ever adds."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            _dynamic("SELECT softguard.register_session(''off'', 0, ''6.6.6.6'')"),
            CAPTURE_OFF,
            RETENTION_ZERO,
            "DELETE FROM parent WHERE id = 2",
        ]
    )
    assert out.error is None, out.describe()
    _kept_a_week(arena, last)
    ops = arena.ops_since(last)
    assert all("6.6.6.6" not in str(o["client_addr"]) for o in ops), ops
    assert len(arena.verdict(before, last, out)) == 1


def test_owner_cannot_remove_its_registration(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([_dynamic("DELETE FROM softguard.sessions")])
    assert out.sqlstate == "42501", out.describe()
    arena.verdict(before, last, out)
    out = arena.attack([_dynamic("UPDATE softguard.sessions SET capture = ''{}''")])
    assert out.sqlstate == "42501", out.describe()


def test_capture_off_after_discard_all(arena: Arena) -> None:
    """DISCARD ALL / RESET ALL return settings to their defaults; the registration stays."""
    arena.attempt(["DISCARD ALL", "RESET ALL", CAPTURE_OFF, "DELETE FROM parent WHERE id = 3"])


@pytest.mark.parametrize(
    "proof",
    ["'00000000-0000-0000-0000-000000000000'", "''", "'not a uuid'", "NULL"],
    ids=["other_uuid", "empty", "garbage", "null"],
)
def test_a_false_proof_does_not_unregister(arena: Arena, proof: str) -> None:
    """The session's own setting softguard.session_proof stands for its backend start time
    (decision 0024, "Since then"): the role overwrites it, plainly (a name built at run
    time) and in a DO block, then deletes. The registration still holds: captured, kept a
    week, undone exactly."""
    doubled = proof.replace("'", "''")  # inside _dynamic's EXECUTE '...'
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack(
        [
            f"SELECT set_config({chr_built('softguard.session_proof')}, {proof}, false)",
            _dynamic(f"SELECT set_config(''softguard.session_proof'', {doubled}, false)"),
            "DELETE FROM parent WHERE id = 4",
        ]
    )
    assert out.error is None, out.describe()
    _kept_a_week(arena, last)
    assert len(arena.verdict(before, last, out)) == 1


def test_capture_off_inside_a_function(arena: Arena) -> None:
    made = arena.attack(
        [
            "CREATE FUNCTION quiet_delete() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN "
            f"PERFORM set_config({chr_built('softguard.capture')}, '', true); "
            "DELETE FROM child WHERE id < 8; END $f$"
        ]
    )
    assert made.error is None, made.describe()
    arena.attempt(["SELECT quiet_delete()"])


def test_retention_zero_for_a_drop_and_a_truncate(arena: Arena) -> None:
    """The proxy's ctx for rewritten statements carries a retention too: the registration
    is the floor for those as well (here the setting is what the attacker can reach)."""
    before, last = arena.snapshot(), arena.last_op()
    out = arena.attack([RETENTION_ZERO, "TRUNCATE big", "DROP TABLE nokey"])
    assert out.error is None, out.describe()
    _kept_a_week(arena, last)
    arena.verdict(before, last, out)


def _startup(user: str, db: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", user), ("database", db))
    )
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _query(text: str) -> bytes:
    payload = text.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(payload) + 4) + payload


def test_statement_sent_with_the_startup_packet_is_captured(arena: Arena) -> None:
    """A client that does not wait for ReadyForQuery: its statements reach the server only
    after the session is registered."""
    before, last = arena.snapshot(), arena.last_op()
    attack = _query(f"{CAPTURE_OFF}; {RETENTION_ZERO}") + _query("DELETE FROM parent WHERE id = 4")
    with socket.create_connection((arena.proxy.host, arena.proxy.port), timeout=30) as sock:
        sock.sendall(_startup(arena.role("owner"), arena.db) + attack)
        seen = b""
        for _ in range(1000):  # until the DELETE's ReadyForQuery (three in all)
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
            if seen.count(b"Z\0\0\0\5") >= 3:
                break
        assert b"DELETE 1" in seen, seen[-300:]
        sock.sendall(b"X\0\0\0\4")
    _kept_a_week(arena, last)
    assert len(arena.ops_since(last)) == 1
    arena.verdict(before, last, arena.attack([]))
