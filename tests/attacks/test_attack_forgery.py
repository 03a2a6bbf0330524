"""Attacks on the calls only softguard's rewrite should make (issue 16; threat model G11;
decision 0028).

alter_op runs as the client, so it and the capture functions it calls are executable by
PUBLIC. The application's role, through softguard, calls them itself: hidden in DO blocks
(decoded from hex, so no text check sees softguard's name), from code of its own that runs
inside a real alter_op (USING expressions), with a mark read from another session's
pg_stat_activity, or from a session registered by login role (behind a transaction pooler,
no session key). What must hold: refused with the data intact, or undone exactly
(`Arena.verdict`), and each test's own checks below.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from typing import Any

import psycopg
import pytest
from attacker import REFUSAL_CODES, Arena, Outcome, fixtures

from softguard.sql.rewrite import call_mark, jsonb_text

arena_template, arena = fixtures()

K3 = (
    "CREATE TABLE k3 (a int, b text, c text);"
    "INSERT INTO k3 VALUES (1, 'b1', 'c1'), (1, 'b2', 'c2'), (2, 'b3', 'c3');"
)


def setup(a: Arena, sql: str) -> None:
    """The role's own tables, made directly as the role (not an attack step)."""
    with a.connect("owner", via="direct") as c:
        c.execute(sql.encode())


def hidden(sql_text: str) -> str:
    """sql_text EXECUTEd from hex in a DO block: no text check sees what it calls."""
    return (
        "DO $$ BEGIN EXECUTE convert_from(decode('"
        + sql_text.encode().hex()
        + "', 'hex'), 'UTF8'); END $$"
    )


def refused(a: Arena, steps: list[Any], via: str = "proxy") -> None:
    out, _ = a.attempt(steps, via=via)
    assert out.error is not None, out.describe()
    assert out.sqlstate in REFUSAL_CODES, out.describe()


# -- the mark: the database computes what the proxy does --------------------------------------


@pytest.mark.parametrize(
    "ctx",
    [
        {"columns": [{"schema": None, "table": 'T "x",()\\\n\t\x01é😀', "column": "c"}]},
        {
            "offset": 12,
            "action": "ALTER TABLE",
            "drop_column": True,
            "retention_seconds": 604800,
            "client_addr": "127.0.0.1",
            "columns": [],
            "a": "",
            "bb": {"z": 1, "y": [1, False, None]},
        },
        {},
    ],
    ids=["odd_names", "ctx_keys", "empty"],
)
def test_mark_matches_the_database(arena: Arena, ctx: dict[str, Any]) -> None:
    """jsonb prints the proxy's ctx text back as it was sent, and softguard._hmac is
    HMAC-SHA-256: a mark made by the proxy verifies in the database."""
    text = jsonb_text(ctx)
    assert arena.direct("SELECT %s::jsonb::text", [text])[0][0] == text
    key = bytes(range(32))
    stmt = 'ALTER TABLE "T ""x""" DROP COLUMN é -- $$\'\\'
    mark = call_mark(key, stmt, text)
    db = arena.direct(
        "SELECT encode(softguard._hmac(%s, convert_to(%s, 'UTF8') || '\\x00'::bytea "
        "|| convert_to(%s::jsonb::text, 'UTF8')), 'hex')",
        [key, stmt, text],
    )[0][0]
    assert db == mark
    long_key = bytes(range(100))  # longer than a block: hashed first (RFC 2104)
    assert arena.direct("SELECT encode(softguard._hmac(%s, 'm'), 'hex')", [long_key])[0][0] == (
        hmac.new(long_key, b"m", hashlib.sha256).hexdigest()
    )


def test_session_key_is_handed_out_once(arena: Arena) -> None:
    """The proxy took the session's key at registration: the client asking for it gets
    none; a direct session that is not registered has none; one that registers itself
    gets a key (once) that marks only its own calls."""
    with arena.connect("owner") as c:
        c.execute(hidden("CREATE TEMP TABLE k AS SELECT softguard.session_key() AS k"))
        got = c.execute("SELECT k FROM k").fetchone()
        assert got is not None and re.fullmatch(r"[0-9]+\.[0-9]+:", got[0]), got
    with arena.connect("owner", via="direct") as c:
        assert c.execute("SELECT softguard.session_key()").fetchone() == (None,)
        c.execute("SELECT softguard.register_session('alter', 0, '')")
        first = c.execute("SELECT softguard.session_key()").fetchone()
        assert first is not None and re.fullmatch(r"[0-9]+\.[0-9]+:[0-9a-f]{64}", first[0])
        again = c.execute("SELECT softguard.session_key()").fetchone()
        assert again is not None and again[0] == first[0].partition(":")[0] + ":"


# -- forged calls of alter_op -----------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "CALL softguard.alter_op('ALTER TABLE k3 DROP COLUMN c', '{\"drop_column\": false}')",
        "CALL softguard.alter_op('ALTER TABLE k3 DROP COLUMN c', '{}')",
        "CALL softguard.alter_op('ALTER TABLE k3 ALTER COLUMN c TYPE text USING ''x''', "
        '\'{"columns": [{"schema": null, "table": "k3", "column": "a"}]}\', '
        "repeat('0', 64))",
        "CALL softguard.alter_op('ALTER TABLE k3 ALTER COLUMN c TYPE text USING ''x''', "
        '\'{"columns": [], "drop_column": false}\', NULL)',
    ],
    ids=["no_probe", "two_args", "bad_mark", "null_mark"],
)
def test_unmarked_alter_op_refused(arena: Arena, call: str) -> None:
    """alter_op called by the role itself, hidden in a DO block, without the session's
    mark (a made-up one, none, the old two-argument form, a ctx that skips the probe of a
    DROP COLUMN): refused with 42501, nothing recorded."""
    setup(arena, K3)
    last = arena.last_op()
    out, _ = arena.attempt([hidden(call)])
    assert out.sqlstate == "42501", out.describe()
    assert arena.ops_since(last) == []


def test_mark_read_from_another_session(arena: Arena) -> None:
    """Session A's ALTER COLUMN c TYPE (rewritten with its mark) waits on a lock; session B
    of the same role reads A's CALL from pg_stat_activity and replays its mark with A's
    statement and ctx, and with a ctx naming a instead of c: both refused (the mark is
    A's backend's, for that exact text); A's ALTER is kept and undone exactly."""
    setup(arena, K3)
    before, last = arena.snapshot(), arena.last_op()
    errors: list[BaseException] = []
    outcomes: list[str | None] = []
    seen = ""
    with (
        arena.connect("owner") as a,
        arena.connect("owner") as b,
        arena.connect("super", via="direct") as holder,
    ):
        a_pid = a.execute("SELECT pg_backend_pid()").fetchone()
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE public.k3 IN ACCESS SHARE MODE")

        def run_a() -> None:
            try:
                a.execute("ALTER TABLE k3 ALTER COLUMN c TYPE varchar(10) USING upper(c)")
            except psycopg.Error as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=run_a)
        thread.start()
        for _ in range(400):  # bounded: A's CALL shows once it waits for the lock
            row = b.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                a_pid,
            ).fetchone()
            if row is not None:
                seen = row[0]
                break
            b.execute("SELECT pg_sleep(0.05)")
        found = re.search(
            r"CALL softguard\.alter_op\((\$sg\w+\$)(.*?)\1, (\$sg\w+\$)(.*?)\3::jsonb, "
            r"'([0-9a-f]{64})'\)",
            seen,
            re.S,
        )
        if found:
            stmt, ctx, mark = found.group(2), found.group(4), found.group(5)
            for c in (ctx, ctx.replace('"column": "c"', '"column": "a"')):
                call = f"CALL softguard.alter_op($q${stmt}$q$, $q${c}$q$::jsonb, '{mark}')"
                try:
                    b.execute(hidden(call))
                    outcomes.append(None)
                except psycopg.Error as exc:
                    outcomes.append(exc.sqlstate)
        holder.execute("ROLLBACK")
        thread.join(timeout=120)
    assert found is not None, seen
    assert outcomes == ["42501", "42501"], outcomes
    assert not errors, errors
    ops = arena.verdict(before, last, Outcome())
    assert len(ops) == 1, ops


# Code of the role's own that runs inside alter_op's statement (a USING expression): it
# writes what it found to the session's temporary table loot (not part of the snapshot).
LOOT = "CREATE TEMP TABLE loot (q text, tried int, got int)"
STEAL = """
CREATE FUNCTION steal(v text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    got int := 0;
    tried int := 0;
BEGIN
    -- inside the real alter_op's statement: every capture function on ops 1..20
    FOR op IN 1 .. 20 LOOP
        tried := tried + 1;
        BEGIN
            PERFORM softguard._capture_column(op, 'public.k3'::regclass, 1, '{}');
            got := got + 1;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
        BEGIN
            PERFORM softguard._capture_type(op, 'public.k3'::regclass, 3, '{c}');
            got := got + 1;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
        FOR cid IN 1 .. 20 LOOP
            BEGIN
                PERFORM softguard._capture_type_after(op, cid);
                got := got + 1;
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END LOOP;
    END LOOP;
    INSERT INTO loot VALUES (current_query(), tried, got);
    RETURN v;
END $f$;
"""


def test_capture_functions_from_code_inside_alter_op(arena: Arena) -> None:
    """The role's USING expression runs inside the real alter_op's statement and calls
    _capture_column, _capture_type and _capture_type_after on every operation id it can
    guess: every call refused; the ALTER itself is kept and undone exactly."""
    setup(arena, K3 + STEAL)

    def loot(c: psycopg.Connection[Any]) -> Any:
        return c.execute("SELECT tried, got FROM loot").fetchall()

    out, ops = arena.attempt(
        [LOOT, "ALTER TABLE k3 ALTER COLUMN b TYPE varchar(20) USING steal(b)", loot]
    )
    assert out.error is None, out.describe()
    assert len(ops) == 1, ops
    found = out.results[-1]
    assert found and all(tried == 20 and got == 0 for tried, got in found), found


def test_stolen_mark_with_other_ctx(arena: Arena) -> None:
    """The role's USING code records the running CALL (current_query(): the statement, ctx
    and mark); then, in the same session, it calls alter_op with that mark and a ctx
    naming a, for a statement that also rewrites c with its own type: refused (the mark
    binds the exact text)."""
    setup(arena, K3 + STEAL)

    def forge(c: psycopg.Connection[Any]) -> None:
        q = c.execute("SELECT q FROM loot LIMIT 1").fetchone()
        assert q is not None
        found = re.search(r"'([0-9a-f]{64})'\)", q[0])
        assert found, q
        stmt = "ALTER TABLE k3 ALTER COLUMN a TYPE bigint, ALTER COLUMN c TYPE text USING ''x''"
        ctx = '{"columns": [{"schema": null, "table": "k3", "column": "a"}]}'
        c.execute(hidden(f"CALL softguard.alter_op('{stmt}', '{ctx}', '{found.group(1)}')"))

    refused(arena, [LOOT, "ALTER TABLE k3 ALTER COLUMN b TYPE varchar(20) USING steal(b)", forge])


def test_column_dropped_by_code_inside_alter_op(arena: Arena) -> None:
    """The role's USING expression, inside the real alter_op's statement, drops a column
    of another table: refused by the backstop (alter_op's call did not keep it), never
    lost."""
    setup(
        arena,
        K3
        + "CREATE TABLE other (x int, y text); INSERT INTO other VALUES (1, 'y1'), (2, 'y2');"
        + "CREATE FUNCTION dropper(v text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN "
        "IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'other'::regclass "
        "AND attname = 'y' AND NOT attisdropped) THEN "
        "EXECUTE 'ALTER TABLE other DROP COLUMN y'; END IF; RETURN v; END $f$;",
    )
    refused(arena, ["ALTER TABLE k3 ALTER COLUMN b TYPE varchar(20) USING dropper(b)"])


def test_column_retyped_by_code_inside_alter_op(arena: Arena) -> None:
    """As above, but the code rewrites (same type) a column of a table an earlier ALTER of
    the same transaction retyped, whose capture recorded that table's types: refused, since
    only the running call's own operation counts."""
    setup(
        arena,
        K3
        + "CREATE TABLE other (id int PRIMARY KEY, x int, y text);"
        + "INSERT INTO other VALUES (1, 1, 'y1'), (2, 2, 'y2');"
        + "CREATE FUNCTION retyper(v text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN "
        "IF NOT EXISTS (SELECT FROM other WHERE y = 'gone') THEN "
        "EXECUTE 'ALTER TABLE other ALTER COLUMN y TYPE text USING ''gone'''; END IF; "
        "RETURN v; END $f$;",
    )
    refused(
        arena,
        [
            "BEGIN",
            "ALTER TABLE other ALTER COLUMN x TYPE bigint",
            "ALTER TABLE k3 ALTER COLUMN b TYPE varchar(20) USING retyper(b)",
            "COMMIT",
        ],
    )


@pytest.mark.parametrize(
    "call",
    [
        "SELECT softguard._alter_phase('x', 'capture')",
        "SELECT softguard._alter_op(repeat('0', 64))",
    ],
)
def test_window_helpers_refuse_without_token(arena: Arena, call: str) -> None:
    """_alter_phase and _alter_op with a made-up token, inside a real DROP COLUMN's
    transaction: refused."""
    setup(arena, K3)
    refused(arena, ["BEGIN", "ALTER TABLE k3 DROP COLUMN b", hidden(call), "COMMIT"])


# -- a session registered by login role: no key ---------------------------------------------


def _pooled(c: psycopg.Connection[Any]) -> None:
    c.execute("SELECT softguard.register_role('alter,drop', 0, NULL, NULL, NULL, NULL, '[]')")


def test_pooled_role_drop_column_is_probed(arena: Arena) -> None:
    """A session of a role registered behind a transaction pooler has no key: its
    unmarked alter_op of a DROP COLUMN is probed (c is kept and undone exactly); one whose
    ctx would skip the probe ("drop_column": false) is refused with 0A000."""
    setup(arena, K3)
    with arena.connect("owner", via="direct") as c:
        _pooled(c)
    out, ops = arena.attempt(
        ["CALL softguard.alter_op('ALTER TABLE k3 DROP COLUMN c', '{}')"], via="direct"
    )
    assert out.error is None, out.describe()
    assert len(ops) == 1, ops
    out, _ = arena.attempt(
        ["CALL softguard.alter_op('ALTER TABLE k3 DROP COLUMN c', '{\"drop_column\": false}')"],
        via="direct",
    )
    assert out.sqlstate == "0A000", out.describe()


@pytest.mark.parametrize(
    "ctx",
    ['{"columns": [{"schema": null, "table": "k3", "column": "c"}], "drop_column": false}', "{}"],
    ids=["names_c", "names_nothing"],
)
def test_pooled_role_type_change_refused(arena: Arena, ctx: str) -> None:
    """The same session's type change (only ctx names its columns): refused, the column's
    values intact."""
    setup(arena, K3)
    with arena.connect("owner", via="direct") as c:
        _pooled(c)
    stmt = "ALTER TABLE k3 ALTER COLUMN c TYPE text USING ''x''"
    out, _ = arena.attempt([f"CALL softguard.alter_op('{stmt}', '{ctx}')"], via="direct")
    assert out.error is not None, out.describe()
