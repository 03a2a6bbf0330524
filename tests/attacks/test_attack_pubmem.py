"""Attacks on what ledger version 13 (section pubmem, decision 0038) added: a DROP through
softguard records the publication memberships of what it keeps and removes them; undo adds
them back. The application's role (through softguard) tries to use that path to put a table
into a publication it may not alter, or to forge or replay a membership record for undo.
Each attempt is refused, and the publications are as they were (or as undo left them
exactly)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from fidelity.harness import APP_PW, APP_ROLE, app_role, grant_create, install_ledger

__all__ = ["app_role"]  # the fixture

PUBS = (
    "SELECT p.pubname, p.pubowner::regrole::text, pr.prrelid::regclass::text,"
    " pg_get_expr(pr.prqual, pr.prrelid) FROM pg_publication p"
    " LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid ORDER BY 1, 3"
)


def _arena(sg: Any, twins: Any) -> str:
    """The application's table in the superuser's publication (with a row filter), and a
    superuser's table the application may not read, in another of its publications."""
    (b,) = twins(1)
    grant_create(sg, b)
    install_ledger(sg, b)
    with psycopg.connect(sg.server.dsn(b, user=APP_ROLE, password=APP_PW), autocommit=True) as c:
        c.execute("CREATE TABLE pa_t (k int PRIMARY KEY, a int)")
        c.execute("INSERT INTO pa_t VALUES (1, 1)")
    sg.execute(
        b,
        "CREATE TABLE pa_secret (k int PRIMARY KEY, s text)",
        "INSERT INTO pa_secret VALUES (1, 'salary')",
        "REVOKE ALL ON pa_secret FROM PUBLIC",
        "CREATE PUBLICATION pa_sup FOR TABLE pa_t WHERE (a > 0)",
        "CREATE PUBLICATION pa_hr FOR TABLE pa_secret",
    )
    return b


def _pubs(sg: Any, db: str) -> list[Any]:
    with sg.connect(db) as c:
        return c.execute(PUBS).fetchall()


def _app(proxy: Any, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(db, user=APP_ROLE, password=APP_PW), autocommit=True)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _hidden(stmt: str, *args: str) -> str:
    """`stmt` run by a DO block, with softguard's schema (written `SG.` in it) named at
    run time ('soft' || 'guard.'), so that it reaches the database past the proxy's text
    check; `args` are its text parameters ($1, $2, ...)."""
    body = " || 'soft' || 'guard.' || ".join(_literal(p) for p in stmt.split("SG."))
    using = f" USING {', '.join(_literal(a) for a in args)}" if args else ""
    return f"DO $$ BEGIN EXECUTE {body}{using}; END $$"


CALLS = {
    "leave": "SELECT SG._leave_publications('pa_secret'::regclass, NULL)",
    "step": "SELECT SG._publications_step(ARRAY['pa_secret'::regclass::oid], '{}')",
    "rejoin": "SELECT SG._rejoin_publications(1, $1::jsonb, '[]')",
    "now": "SELECT SG._publication_now(1, $1::jsonb, 'x')",
    "column": "SELECT SG._column_publications(1)",
}


@pytest.mark.parametrize("name", list(CALLS))
def test_the_helpers_are_not_the_applications(
    proxy: Any, sg: Any, twins: Any, app_role: str, name: str
) -> None:
    """Called directly, each helper is refused: none of them is PUBLIC."""
    b = _arena(sg, twins)
    before = _pubs(sg, b)
    with sg.connect(b) as c:
        row = c.execute(
            "SELECT p.oid, p.pubowner FROM pg_publication p WHERE p.pubname = 'pa_sup'"
        ).fetchone()
        assert row is not None
        forged = {
            "pub": row[0],
            "pub_name": "pa_sup",
            "pub_owner": row[1],
            "table": c.execute("SELECT 'pa_secret'::regclass::oid").fetchone()[0],  # type: ignore[index]
            "table_name": "public.pa_secret",
            "columns": None,
            "filter": None,
        }
    args = [json.dumps([forged] if name == "rejoin" else forged)] if "$1" in CALLS[name] else []
    with _app(proxy, b) as c, pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        c.execute(_hidden(CALLS[name], *args).encode())
    assert "permission denied for function" in str(e.value)
    assert _pubs(sg, b) == before


def test_a_forged_membership_record_cannot_be_written(
    proxy: Any, sg: Any, twins: Any, app_role: str
) -> None:
    """The records undo reads are rows of softguard's own tables: the application can
    neither add a membership to a recorded DROP nor write one into a column's capture."""
    b = _arena(sg, twins)
    with _app(proxy, b) as c:
        c.execute("DROP TABLE pa_t")
    (op,) = sg.active_ops(b)
    forged = json.dumps(
        [{"step": "publications", "tables": [{"table": 1, "pub": 1}], "schemas": []}]
    )
    writes = [
        _hidden(f"UPDATE SG.operations SET restore = restore || $1::jsonb WHERE id = {op}", forged),
        _hidden(
            f"""UPDATE SG.captures SET info = info || '{{"publications": []}}' WHERE op_id = {op}"""
        ),
    ]
    with _app(proxy, b) as c:
        for write in writes:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute(write.encode())
            assert "permission denied for table" in str(e.value)


def test_a_forged_object_list_is_refused(proxy: Any, sg: Any, twins: Any, app_role: str) -> None:
    """_quarantine (PUBLIC, SECURITY DEFINER) called with a list naming the superuser's
    table, or a membership alone: refused, no publication changes."""
    b = _arena(sg, twins)
    before = _pubs(sg, b)
    with sg.connect(b) as c:
        secret = c.execute("SELECT 'pa_secret'::regclass::oid").fetchone()[0]  # type: ignore[index]
        member = c.execute(
            "SELECT pr.oid FROM pg_publication_rel pr WHERE pr.prrelid = 'pa_secret'::regclass"
        ).fetchone()[0]  # type: ignore[index]
    table = {
        "classid": 1259, "objid": secret, "objsubid": 0, "original": True, "normal": False,
        "is_temporary": False, "object_type": "table", "schema_name": "public",
        "object_name": "pa_secret", "object_identity": "public.pa_secret",
        "address_names": ["public", "pa_secret"], "address_args": [],
    }  # fmt: skip
    membership = {
        **table, "classid": 6106, "objid": member, "original": False,
        "object_type": "publication relation",
        "object_identity": "public.pa_secret in publication pa_hr",
    }  # fmt: skip
    call = (
        "SELECT SG._quarantine($1::jsonb, 'DROP TABLE pa_secret',"
        """ '{"action": "DROP TABLE"}', current_user)"""
    )
    for forged, why in (
        ([table, membership], "must be owner of table public.pa_secret"),
        ([membership], "the object list does not match"),
    ):
        with _app(proxy, b) as c, pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(_hidden(call, json.dumps(forged)).encode())
        assert why in str(e.value)
    assert _pubs(sg, b) == before


def test_undo_is_not_replayed(proxy: Any, sg: Any, twins: Any, app_role: str) -> None:
    """The application drops its table (it leaves the superuser's publication, as
    directly); undo puts it back with its row filter; neither the application nor a
    second undo can run it again."""
    b = _arena(sg, twins)
    before = _pubs(sg, b)
    with _app(proxy, b) as c:
        c.execute("DROP TABLE pa_t")
    assert all(r[2] is None or "pa_t" not in r[2] for r in _pubs(sg, b))  # as directly
    (op,) = sg.active_ops(b)
    with _app(proxy, b) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(_hidden(f"SELECT SG.undo_op({op})").encode())
    sg.undo(b, op)
    assert _pubs(sg, b) == before
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        sg.undo(b, op)
    assert _pubs(sg, b) == before


def test_a_publication_of_the_same_name_is_not_the_one(
    proxy: Any, sg: Any, twins: Any, app_role: str
) -> None:
    """The superuser's table leaves pa_hr by a DROP through softguard; pa_hr is dropped;
    the application creates its own publication pa_hr. Undo does not add the superuser's
    table to the application's publication (it would be published to whoever owns it):
    refused (55000, a HINT naming the owner), nothing changes."""
    b = _arena(sg, twins)
    with psycopg.connect(proxy.dsn(b), autocommit=True) as c:
        c.execute("DROP TABLE pa_secret")
    (op,) = sg.active_ops(b)
    sg.execute(b, "DROP PUBLICATION pa_hr")
    with _app(proxy, b) as c:
        c.execute("CREATE PUBLICATION pa_hr")
    before = sg.snapshot(b), _pubs(sg, b)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        sg.undo(b, op)
    assert "pa_hr" in str(e.value) and sg.server.superuser in (e.value.diag.message_hint or "")
    assert (sg.snapshot(b), _pubs(sg, b)) == before
    assert sg.active_ops(b) == [op]
