"""Issue 18 item 3: work sent through a channel the proxy does not read (FunctionCall).

A FunctionCall ('F') message names a function by OID and carries its arguments as
parameters: no SQL text at all. Drivers rarely send it, so these attacks speak raw
protocol 3.0 through the proxy.
"""

from __future__ import annotations

import psycopg
import pytest
from attacker import Arena, Outcome, errors_of, fixtures

arena_template, arena = fixtures()

LO = 4242


def oid_of(arena: Arena, signature: str) -> int:
    return int(arena.direct("SELECT %s::regprocedure::oid", [signature])[0][0])


def as_outcome(msgs: list[object]) -> Outcome:
    """Outcome of a raw exchange, in the shape `Arena.verdict` reads."""
    errs = errors_of(msgs)
    out = Outcome()
    if errs:
        err = psycopg.Error(errs[0].fields.get("M", ""))
        err.sqlstate = errs[0].sqlstate
        out.error, out.failed_step = err, 0
    return out


FUNCTION_CALLS = {
    "lo_unlink": ("lo_unlink(oid)", [str(LO).encode()]),
    "lo_put": ("lo_put(oid, bigint, bytea)", [str(LO).encode(), b"0", b"\\x0000000000"]),
}


@pytest.mark.parametrize("name", ["lo_unlink", "lo_put"])
def test_function_call_cannot_destroy_a_large_object(arena: Arena, name: str) -> None:
    signature, args = FUNCTION_CALLS[name]
    before, last = arena.snapshot(), arena.last_op()
    s = arena.raw()
    try:
        msgs = s.function_call(oid_of(arena, signature), args)
    finally:
        s.close()
    arena.verdict(before, last, as_outcome(msgs))


def test_function_call_cannot_terminate_another_client(arena: Arena) -> None:
    with arena.connect("owner", via="direct") as victim:
        victim.autocommit = False
        victim.execute("SELECT 1")
        s = arena.raw()
        try:
            msgs = s.function_call(
                oid_of(arena, "pg_terminate_backend(integer, bigint)"),
                [str(victim.info.backend_pid).encode(), b"0"],
            )
        finally:
            s.close()
        alive = True
        try:
            victim.execute("SELECT 1")
        except psycopg.OperationalError:
            alive = False
        assert alive, f"victim terminated; answer {msgs}"
        assert errors_of(msgs), msgs


def test_function_call_cannot_switch_capture_off(arena: Arena) -> None:
    before, last = arena.snapshot(), arena.last_op()
    s = arena.raw()
    try:
        msgs = s.function_call(
            oid_of(arena, "set_config(text, text, boolean)"), [b"softguard.capture", b"", b"f"]
        )
        if not errors_of(msgs):
            msgs += s.query(b"DELETE FROM parent WHERE id = 5")
    finally:
        s.close()
    arena.verdict(before, last, as_outcome(msgs))


def test_function_call_harmless_still_works(arena: Arena) -> None:
    """Control: a large-object FunctionCall (what libpq's lo_* API sends) gets the server's
    answer; any other function is refused with a hint to use SELECT, and the session goes on."""
    s = arena.raw()
    try:
        msgs = s.function_call(oid_of(arena, "lo_creat(integer)"), [b"-1"])
        assert not errors_of(msgs), msgs
        assert any(m[0] == b"V" for m in msgs if isinstance(m, tuple)), msgs
        refused = s.function_call(oid_of(arena, "int4pl(integer, integer)"), [b"1", b"2"])
        errors = errors_of(refused)
        assert [e.fields["C"] for e in errors] == ["42501"], refused
        assert "SELECT" in errors[0].fields.get("H", ""), refused
        assert not errors_of(s.query(b"SELECT 1"))
    finally:
        s.close()


def test_raw_query_drop_is_protected(arena: Arena) -> None:
    """Control for the raw client itself: a DROP in a Query message is made reversible."""
    before, last = arena.snapshot(), arena.last_op()
    s = arena.raw()
    try:
        msgs = s.query(b"DROP TABLE big")
    finally:
        s.close()
    assert arena.ops_since(last)
    arena.verdict(before, last, as_outcome(msgs))
