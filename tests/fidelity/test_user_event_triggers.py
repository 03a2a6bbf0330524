"""Issue 16 class 1: softguard's machinery must not show in what a user's own event trigger
sees. softguard equips every new table with its capture triggers from an event trigger, in
the client's session; those nested CREATE TRIGGER / ALTER TABLE commands ran PostgreSQL's
ddl_command_* events for the user's event triggers too, so a DDL log (a common audit
habit) recorded commands the client never sent. Twins: the same DDL directly and through
softguard, each database with the same logging event trigger."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fidelity.harness import APP_PW, APP_ROLE, app_role, grant_create, install_ledger

__all__ = ["app_role"]  # the fixture

AUDIT = """
CREATE TABLE public.ddl_log (n serial, event text, tag text, object text);
CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO public.ddl_log (event, tag, object)
    SELECT tg_event, c.command_tag, c.object_identity FROM pg_event_trigger_ddl_commands() c;
END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl();
CREATE FUNCTION public.log_start() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO public.ddl_log (event, tag) VALUES (tg_event, tg_tag);
END $$;
CREATE EVENT TRIGGER log_start ON ddl_command_start EXECUTE FUNCTION public.log_start();
"""

DDL = [
    "CREATE TABLE public.orders (id int PRIMARY KEY, note text)",
    "CREATE TABLE public.parts (k int, v text) PARTITION BY RANGE (k)",
    "CREATE TABLE public.parts_lo PARTITION OF public.parts FOR VALUES FROM (0) TO (10)",
    "CREATE TABLE public.copied AS SELECT 1 AS a",
    "CREATE SCHEMA app CREATE TABLE inner_t (a int)",
]


def _log(sg: Any, db: str) -> list[tuple[Any, ...]]:
    with sg.connect(db) as c:
        return c.execute("SELECT event, tag, object FROM public.ddl_log ORDER BY n").fetchall()


def test_user_event_triggers_see_only_the_clients_commands(
    proxy: Any, sg: Any, twins: Any, app_role: str
) -> None:
    if proxy.is_direct:
        pytest.skip("about softguard's machinery (SOFTGUARD_TEST_VIA=direct)")
    a, b = twins()
    for db in (a, b):
        grant_create(sg, db)
        with sg.connect(db) as c:
            c.execute(AUDIT.encode())
    install_ledger(sg, b)
    for db in (a, b):
        with sg.connect(db) as c:  # the set-up's own DDL (and the install's), not the client's
            c.execute("TRUNCATE public.ddl_log")
    for dsn in (sg.server.dsn(a, APP_ROLE, APP_PW), proxy.dsn(b, APP_ROLE, APP_PW)):
        with psycopg.connect(dsn, autocommit=True) as c:
            for stmt in DDL:
                c.execute(stmt.encode())
    direct, proxied = _log(sg, a), _log(sg, b)
    assert len(direct) >= len(DDL)
    assert proxied == direct
    # and the tables are equipped all the same
    with sg.connect(b) as c:
        rels = c.execute(
            "SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger"
            " WHERE tgname = 'zz_softguard_capture_delete' ORDER BY 1"
        ).fetchall()
    assert {r[0] for r in rels} >= {"orders", "parts", "parts_lo", "copied", "app.inner_t"}
