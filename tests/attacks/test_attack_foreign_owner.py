"""Undo's check of the code writing rows would run, and its shortcut (decision 0042).

``_foreign_code`` now answers "none" without its catalog walk when pg_shdepend records no
function of this database owned by a role that is neither a superuser nor the one running
undo. The client's function must still be found however it came to be the client's: made
by the application's role itself, handed to it by a superuser (ALTER FUNCTION ... OWNER
TO), made by a role that was a superuser then and is not now, or reassigned to it
(REASSIGN OWNED). Each time undo must refuse (42501, naming the function) before the
function runs with the operator's rights, and put the rows back once the function is gone.
These pass on 5880cea too (its walk had no shortcut): they hold the shortcut to the walk.
"""

from __future__ import annotations

import uuid

import pytest
from attacker import Arena, fixtures

arena_template, arena = fixtures()

SPY = (
    "CREATE FUNCTION public.spy(i int) RETURNS int LANGUAGE plpgsql AS $f$ BEGIN "
    "INSERT INTO public.loot SELECT current_user, rolsuper::text FROM pg_roles "
    "WHERE rolname = current_user; RETURN i; END $f$"
)


def _grant_loot(arena: Arena) -> None:
    arena.direct("CREATE TABLE public.loot (who text, su text)")
    arena.direct("GRANT ALL ON public.loot TO PUBLIC")


def _made_by_owner(arena: Arena, role: str) -> None:
    with arena.connect("owner", via="direct") as c:
        c.execute(SPY)


def _handed_over(arena: Arena, role: str) -> None:
    arena.direct(SPY)  # the superuser's
    arena.direct(f'ALTER FUNCTION public.spy(int) OWNER TO "{arena.owner}"')


def _demoted(arena: Arena, role: str) -> None:
    arena.direct(f'CREATE ROLE "{role}" SUPERUSER')
    arena.direct(f'SET ROLE "{role}"; {SPY}')
    arena.direct(f'ALTER ROLE "{role}" NOSUPERUSER')


def _reassigned(arena: Arena, role: str) -> None:
    arena.direct(f'CREATE ROLE "{role}"')
    arena.direct(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    arena.direct(f'SET ROLE "{role}"; {SPY}')
    arena.direct(f'REASSIGN OWNED BY "{role}" TO "{arena.owner}"')


PATHS = {
    "made_by_owner": _made_by_owner,
    "handed_over": _handed_over,
    "demoted_superuser": _demoted,
    "reassigned": _reassigned,
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_undo_finds_the_clients_function_however_it_got_it(arena: Arena, path: str) -> None:
    role = "sg_fo_" + uuid.uuid4().hex[:8]  # names made here: safe to quote as they are
    _grant_loot(arena)
    PATHS[path](arena, role)
    arena.direct("ALTER TABLE public.big ADD CONSTRAINT big_spy CHECK (public.spy(id) > 0)")
    arena.direct("DELETE FROM public.loot")
    last = arena.last_op()
    with arena.connect("owner") as c:
        c.execute("DELETE FROM big WHERE id <= 2")
    ops = [o["id"] for o in arena.ops_since(last)]
    assert ops, "the DELETE was not captured"
    r = arena.undo(ops)
    loot = arena.direct("SELECT who, su FROM public.loot")
    assert "true" not in {su for _, su in loot}, f"client code ran as a superuser: {loot}"
    assert r.returncode != 0 and "would run public.spy(integer)" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )
    arena.direct("ALTER TABLE public.big DROP CONSTRAINT big_spy")
    r = arena.undo(ops)
    assert r.returncode == 0, r.stdout + r.stderr
    assert arena.direct("SELECT count(*) FROM big WHERE id <= 2") == [(2,)]
    if path in ("demoted_superuser", "reassigned"):
        arena.direct(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
