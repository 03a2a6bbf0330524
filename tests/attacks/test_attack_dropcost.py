"""Attacks on what decision 0041 changed: `_is_quarantine_schema` lost its `SET search_path`
so that PostgreSQL inlines it into the queries that call it; what it compares with is then
resolved where it is inlined. The application's role brings its own `=` and `~` for text,
first on its search_path, and asks it on a direct connection (it is PUBLIC; the proxy
refuses statements naming softguard's schemas), then DROPs and undoes a table through
softguard under that search_path.

What must hold: the answer is PostgreSQL's comparison (its operators are written
`OPERATOR(pg_catalog.=)` / `OPERATOR(pg_catalog.~)`), a live schema never reads as
quarantine, and the DROP is kept and undone as with any search_path. (Main's version held
through its `SET`; this guards the inlined one.)
"""

from __future__ import annotations

from attacker import Arena, fixtures

arena_template, arena = fixtures()

# The role's own operators: every text equals and matches every other (in a schema of its
# own, which the set-up makes for it).
HOSTILE = """
CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
CREATE OPERATOR evil.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
CREATE TABLE public.dc (id int PRIMARY KEY, v text);
INSERT INTO public.dc VALUES (1, 'one'), (2, 'two');
"""


def _arm(arena: Arena) -> None:
    arena.direct(f"CREATE SCHEMA evil AUTHORIZATION {arena.owner}")
    with arena.connect("owner", via="direct") as c:
        c.execute(HOSTILE)


def test_own_operators_do_not_make_a_live_schema_quarantine(arena: Arena) -> None:
    _arm(arena)
    # directly: the proxy refuses any statement naming softguard's schemas
    with arena.connect("owner", via="direct") as c:
        c.execute("SET search_path = evil, pg_catalog, public")
        assert c.execute("SELECT 'x' = 'y'").fetchone() == (True,)  # they are in effect
        rows = c.execute(
            "SELECT softguard._is_quarantine_schema('public'),"
            " softguard._is_quarantine_schema('softguard_quarantine'),"
            " softguard._is_quarantine_schema('softguard_q12_s'),"
            " softguard._is_quarantine_schema(n.nspname)"
            "  FROM pg_namespace n WHERE n.nspname = 'evil'"
        ).fetchall()
    assert rows == [(False, True, True, False)]


def test_drop_and_undo_under_own_operators(arena: Arena) -> None:
    _arm(arena)
    before = arena.last_op()
    with arena.connect("owner") as c:
        c.add_notice_handler(lambda _d: None)
        c.execute("SET search_path = evil, pg_catalog, public")
        c.execute("DROP TABLE public.dc")
    ops = arena.ops_since(before)
    assert [o["kind"] for o in ops] == ["DROP TABLE"], ops
    assert arena.direct("SELECT to_regclass('public.dc')") == [(None,)]
    done = arena.undo([ops[0]["id"]])
    assert done.returncode == 0, done.stdout + done.stderr
    assert arena.direct("SELECT count(*) FROM public.dc") == [(2,)]
