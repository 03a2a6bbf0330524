"""Issue 11 item 5: large-object writes that destroy contents, whatever text carries them.

Every attack either is refused (a refusal SQLSTATE, the object as before) or is recorded and
`softguard undo` brings the bytes, owner and ACL back exactly (`Arena.verdict`; its snapshot
holds every large object's contents). Decision 0016: the proxy routes the calls it reads
through softguard's wrappers; the database refuses the functions to PUBLIC, so what the proxy
cannot read (a DO block, a function, a FunctionCall) fails with 42501.
"""

from __future__ import annotations

import pytest
from attacker import Arena, errors_of, fixtures
from test_attack_wire import as_outcome, oid_of

LO = 4343  # the data set has 4242 (owned by the application)
# Functions an attack calls are created beforehand (the snapshot compares functions too).
SETUP = f"""
SELECT lo_from_bytea({LO}, convert_to(repeat('contents of the object ', 500), 'UTF8'));
CREATE FUNCTION wipe() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN lo_unlink({LO}); END $$;
CREATE FUNCTION wipe2(o oid) RETURNS int LANGUAGE sql AS 'SELECT lo_unlink(o)';
"""

arena_template, arena = fixtures()


def setup(arena: Arena, steps: list[str]) -> None:
    """The application's own objects, made directly as the owner (not an attack)."""
    out = arena.attack(steps, via="direct")
    assert out.error is None, out.describe()


WRITE = 131072  # INV_WRITE

ATTACKS: dict[str, list[str]] = {
    "lo_put": [f"SELECT lo_put({LO}, 0, 'XXXXXXXX')"],
    "lo_put_qualified": [f"SELECT pg_catalog.lo_put({LO}, 3, 'XX')"],
    "lo_unlink": [f"SELECT lo_unlink({LO})"],
    "lo_unlink_in_from": [f"SELECT * FROM lo_unlink({LO})"],
    "lowrite": [f"BEGIN; SELECT lowrite(lo_open({LO}, {WRITE}), 'overwritten'); COMMIT"],
    "lowrite_two_statements": [
        "BEGIN",
        f"SELECT lo_open({LO}, {WRITE})",
        "SELECT lowrite(0, 'overwritten')",
        "COMMIT",
    ],
    "lo_truncate": [f"BEGIN; SELECT lo_truncate(lo_open({LO}, {WRITE}), 0); COMMIT"],
    "lo_truncate64": [f"BEGIN; SELECT lo_truncate64(lo_open({LO}, {WRITE}), 5); COMMIT"],
    "lowrite_read_fd": [
        "BEGIN",
        f"SELECT lo_open({LO}, 262144)",
        "SELECT lowrite(0, 'overwritten')",
        "COMMIT",
    ],
    "lowrite_unwrapped_fd": [
        "BEGIN",
        f"DO $$ BEGIN PERFORM lo_open({LO}, {WRITE}); END $$",
        "SELECT lowrite(0, 'overwritten')",
        "COMMIT",
    ],
    "prepare": ["PREPARE p(oid) AS SELECT lo_unlink($1)", f"EXECUTE p({LO})"],
    "do_block": [f"DO $$ BEGIN PERFORM lo_unlink({LO}); END $$"],
    "do_dynamic": ["DO $$ BEGIN EXECUTE 'SELECT lo_' || 'put(" + str(LO) + ", 0, ''zz'')'; END $$"],
    "function": ["SELECT wipe()"],
    "sql_function": [f"SELECT wipe2({LO})"],
    "several_in_one": [f"SELECT lo_put({LO}, 0, 'a'), lo_put({LO}, 5, 'b'), lo_unlink({LO})"],
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_large_object_attack(arena: Arena, name: str) -> None:
    setup(arena, [SETUP])
    arena.attempt(ATTACKS[name])


@pytest.mark.parametrize(
    "step", [f"SELECT lo_from_bytea({LO}, 'replaced')", f"SELECT lo_create({LO})"]
)
def test_create_over_an_existing_oid_fails_by_itself(arena: Arena, step: str) -> None:
    """Not wrapped: PostgreSQL refuses to create over an existing OID (23505)."""
    setup(arena, [SETUP])
    before = arena.snapshot()
    out = arena.attack([step])
    assert out.sqlstate == "23505", out.describe()
    assert arena.snapshot() == before


@pytest.mark.parametrize("name", ["lo_put", "lo_unlink", "lowrite", "lo_truncate"])
def test_captured_and_undone(arena: Arena, name: str) -> None:
    """The protected forms are not refused: they run, and undo puts the bytes back."""
    setup(arena, [SETUP])
    out, ops = arena.attempt(ATTACKS[name])
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops if o.get("undo_of") is None] == ["LARGE OBJECT"]
    assert any(f"large object {LO}" in n for n in out.notices), out.notices


def test_other_role_without_privilege(arena: Arena) -> None:
    """The wrappers run as softguard's owner: they check the caller's privilege first."""
    setup(arena, [SETUP])
    for step in (f"SELECT lo_put({LO}, 0, 'x')", f"SELECT lo_unlink({LO})"):
        out, ops = arena.attempt([step], who="other")
        assert out.sqlstate == "42501", out.describe()
        assert not ops


def test_other_role_with_update_grant(arena: Arena) -> None:
    setup(arena, [SETUP, f"GRANT UPDATE, SELECT ON LARGE OBJECT {LO} TO {arena.other}"])
    out, _ = arena.attempt([f"SELECT lo_put({LO}, 0, 'x')"], who="other")
    assert out.error is None, out.describe()
    out, _ = arena.attempt([f"SELECT lo_unlink({LO})"], who="other")
    assert out.sqlstate == "42501", out.describe()  # unlink needs ownership


def test_unlink_undo_restores_owner_and_acl(arena: Arena) -> None:
    setup(arena, [SETUP, f"GRANT SELECT ON LARGE OBJECT {LO} TO {arena.other}"])
    acl = "SELECT lomowner::regrole::text, lomacl::text FROM pg_largeobject_metadata WHERE oid = %s"
    before = arena.direct(acl, [LO])
    arena.attempt([f"SELECT lo_unlink({LO})"])
    assert arena.direct(acl, [LO]) == before


@pytest.mark.parametrize(
    "step",
    [
        f"DELETE FROM pg_largeobject WHERE loid = {LO}",
        f"UPDATE pg_largeobject SET data = '' WHERE loid = {LO}",
        f"DELETE FROM pg_catalog.pg_largeobject_metadata WHERE oid = {LO}",
        f"SELECT lo_put({LO}, 0, 'super')",
        f"SELECT lo_unlink({LO})",
    ],
)
def test_superuser_variants(arena: Arena, step: str) -> None:
    setup(arena, [SETUP])
    arena.attempt([step], who="super")


def _function_call(arena: Arena, signature: str, args: list[bytes]) -> list[object]:
    s = arena.raw()
    try:
        return s.function_call(oid_of(arena, signature), args)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("signature", "args"),
    [
        ("lo_unlink(oid)", [str(LO).encode()]),
        ("lo_truncate(integer, integer)", [b"0", b"0"]),
        ("lowrite(integer, bytea)", [b"0", b"\\x00"]),
        ("lo_open(oid, integer)", [str(LO).encode(), str(WRITE).encode()]),
    ],
)
def test_function_call_writes_refused(arena: Arena, signature: str, args: list[bytes]) -> None:
    setup(arena, [SETUP])
    before, last = arena.snapshot(), arena.last_op()
    msgs = _function_call(arena, signature, args)
    errs = errors_of(msgs)
    assert errs and errs[0].sqlstate == "42501", msgs
    arena.verdict(before, last, as_outcome(msgs))


def test_function_call_read_passes(arena: Arena) -> None:
    """libpq's lo_open for reading, loread and lo_close still work through FunctionCall."""
    setup(arena, [SETUP])
    s = arena.raw()
    try:
        s.query(b"BEGIN")
        opened = s.function_call(
            oid_of(arena, "lo_open(oid, integer)"), [str(LO).encode(), b"262144"]
        )
        assert not errors_of(opened), opened
        read = s.function_call(oid_of(arena, "loread(integer, integer)"), [b"0", b"8"])
        assert not errors_of(read), read
        closed = s.function_call(oid_of(arena, "lo_close(integer)"), [b"0"])
        assert not errors_of(closed), closed
        s.query(b"COMMIT")
    finally:
        s.close()


def test_fd_reuse_after_function_call_close(arena: Arena) -> None:
    """A descriptor softguard opened, closed by FunctionCall and re-opened on another object
    for writing by FunctionCall: the re-open is refused, so the write cannot land unkept."""
    setup(arena, [SETUP, f"SELECT lo_from_bytea({LO + 1}, 'second object')"])
    before, last = arena.snapshot(), arena.last_op()
    s = arena.raw()
    try:
        s.query(b"BEGIN")
        s.query(f"SELECT lo_open({LO}, {WRITE})".encode())
        s.function_call(oid_of(arena, "lo_close(integer)"), [b"0"])
        reopened = s.function_call(
            oid_of(arena, "lo_open(oid, integer)"),
            [str(LO + 1).encode(), str(WRITE).encode()],
        )
        assert errors_of(reopened), reopened
        s.query(b"ROLLBACK")
    finally:
        s.close()
    arena.verdict(before, last, as_outcome([]))
