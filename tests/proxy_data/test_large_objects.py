"""Large-object writes through softguard (decision 0016), with real drivers: psycopg in the
simple and the extended protocol, asyncpg. Each write runs as it would directly, the
operation's NOTICE names the object, and `softguard undo` brings the bytes (and, after
lo_unlink, the object under its OID with its owner) back exactly. A write by FunctionCall
cannot be kept first: it is refused and the object is untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest
from attacks.attacker import Arena, errors_of, fixtures

arena_template, arena = fixtures()

LO = 5151
CONTENTS = bytes(range(256)) * 40  # 10 KiB: five pg_largeobject pages, every byte value
WRITE = 131072

# name -> (statement, parameters) as the application sends it
WRITES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "lo_put": ("SELECT lo_put(%s, %s, %s)", (LO, 100, b"\x00\xffoverwritten")),
    "lo_unlink": ("SELECT lo_unlink(%s)", (LO,)),
    "lo_truncate": ("SELECT lo_truncate(lo_open(%s, %s), %s)", (LO, WRITE, 7)),
    "lowrite": ("SELECT lowrite(lo_open(%s, %s), %s)", (LO, WRITE, b"rewritten")),
}
MODES = ["simple", "prepared", "asyncpg"]


def _state(arena: Arena) -> list[tuple[Any, ...]]:
    return arena.direct(
        "SELECT m.oid::bigint, m.lomowner::regrole::text, m.lomacl::text, "
        "(SELECT string_agg(data, '' ORDER BY pageno) FROM pg_largeobject WHERE loid = m.oid) "
        "FROM pg_largeobject_metadata m WHERE m.oid = %s",
        [LO],
    )


def _run(arena: Arena, mode: str, text: str, params: tuple[Any, ...]) -> list[str]:
    """Run one write in a transaction through the proxy; the softguard notices it got."""
    if mode == "asyncpg":
        return asyncio.run(_run_asyncpg(arena, text, params))
    notices: list[str] = []
    with psycopg.connect(arena.proxied_dsn()) as c:
        c.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        if mode == "simple":
            literal = text % tuple(
                f"'\\x{p.hex()}'::bytea" if isinstance(p, bytes) else str(p) for p in params
            )
            c.execute(literal.encode())
        else:
            c.execute(text, params, prepare=True)
        c.commit()
    return [n for n in notices if n.startswith("softguard:")]


async def _run_asyncpg(arena: Arena, text: str, params: tuple[Any, ...]) -> list[str]:
    notices: list[str] = []
    conn = await asyncpg.connect(arena.proxied_dsn())
    try:
        conn.add_log_listener(lambda _c, m: notices.append(str(m.message)))
        numbered = text
        for i in range(len(params)):
            numbered = numbered.replace("%s", f"${i + 1}", 1)
        async with conn.transaction():
            await conn.fetch(numbered, *params)
    finally:
        await conn.close()
    return [n for n in notices if n.startswith("softguard:")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(WRITES))
def test_write_then_undo_exact(arena: Arena, name: str, mode: str) -> None:
    arena.direct(f"SELECT lo_from_bytea({LO}, %s)", [CONTENTS])
    arena.direct(f"ALTER LARGE OBJECT {LO} OWNER TO {arena.owner}")
    arena.direct(f"GRANT SELECT ON LARGE OBJECT {LO} TO {arena.other}")
    before, last = _state(arena), arena.last_op()
    text, params = WRITES[name]
    notices = _run(arena, mode, text, params)
    assert _state(arena) != before  # the write happened, as it would directly
    ops = arena.ops_since(last)
    assert [o["kind"] for o in ops] == ["LARGE OBJECT"]
    assert len(notices) == 1 and f"large object {LO}" in notices[0], notices
    assert f"operation {ops[0]['id']} " in notices[0]
    assert "softguard." not in ops[0]["statement"], ops[0]["statement"]  # the client's text
    r = arena.undo([ops[0]["id"]])
    assert r.returncode == 0, r.stdout + r.stderr
    assert _state(arena) == before


def test_lowrite_by_function_call_refused(arena: Arena) -> None:
    arena.direct(f"SELECT lo_from_bytea({LO}, %s)", [CONTENTS])
    arena.direct(f"ALTER LARGE OBJECT {LO} OWNER TO {arena.owner}")
    before, last = _state(arena), arena.last_op()
    lo_open = int(arena.direct("SELECT 'lo_open(oid, integer)'::regprocedure::oid")[0][0])
    lowrite = int(arena.direct("SELECT 'lowrite(integer, bytea)'::regprocedure::oid")[0][0])
    s = arena.raw()
    try:
        s.query(b"BEGIN")
        opened = s.function_call(lo_open, [str(LO).encode(), str(WRITE).encode()])
        assert errors_of(opened) and errors_of(opened)[0].sqlstate == "42501", opened
        s.query(b"ROLLBACK")
        s.query(b"BEGIN")
        read = s.query(f"SELECT lo_open({LO}, 262144)".encode())  # descriptor 0, for reading
        assert not errors_of(read), read
        written = s.function_call(lowrite, [b"0", b"\\x414243"])
        assert errors_of(written) and errors_of(written)[0].sqlstate == "42501", written
        s.query(b"ROLLBACK")
    finally:
        s.close()
    assert _state(arena) == before
    assert arena.ops_since(last) == []


def test_reading_in_a_read_only_transaction(arena: Arena) -> None:
    """Reads go through softguard.lo_open / lo_close too: they write nothing in the ledger,
    so a READ ONLY transaction (or a standby) can read large objects."""
    arena.direct(f"SELECT lo_from_bytea({LO}, %s)", [CONTENTS])
    arena.direct(f"ALTER LARGE OBJECT {LO} OWNER TO {arena.owner}")
    with psycopg.connect(arena.proxied_dsn()) as c:
        c.execute("BEGIN READ ONLY")
        fd = c.execute(f"SELECT lo_open({LO}, 262144)").fetchone()
        assert fd is not None
        data = c.execute("SELECT loread(%s, 16)", [fd[0]]).fetchone()
        assert data == (CONTENTS[:16],)
        c.execute("SELECT lo_close(%s)", [fd[0]])
        c.execute("COMMIT")
