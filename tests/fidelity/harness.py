"""Twins for the fidelity tier (issue 16): the same steps run directly on one copy of the
rental database and through softguard on the other, as the superuser or as a non-superuser
application role that owns the objects it drops (the ledger installed beforehand by a
superuser, as a deployment does). Comparison: tests/support/drop_harness.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.catalog_check import check_dsn
from support.drop_harness import Step, compare_runs, run

from softguard.ledger.migrate import apply_migrations

APP_ROLE = "sg_fid_app"
APP_PW = "fid-app-pw"
SUPER = ("superuser",)  # a shell type needs a superuser to create


@dataclass
class Case:
    setup: Sequence[str]  # run directly on both twins as the acting role
    steps: Sequence[Step]
    sg: Sequence[int]  # softguard notices per step
    roles: Sequence[str] = ("superuser", "app")


@pytest.fixture(scope="module")
def app_role(pg_server: Any) -> str:
    pg_server.ensure_role(APP_ROLE, APP_PW)
    return APP_ROLE


def grant_create(sg: Any, db: str) -> None:
    with sg.connect(db) as c:
        role = sql.Identifier(APP_ROLE)
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))
        c.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(db), role))


def install_ledger(sg: Any, db: str) -> None:
    """Installing the ledger needs a superuser: done before the application connects."""
    with sg.connect(db) as c:
        apply_migrations(c)


def check(proxy: Any, sg: Any, twins: Any, case: Case, role: str) -> None:
    user = pw = None
    if role == "app":
        user, pw = APP_ROLE, APP_PW
        # softguard's twin: the ledger installed beforehand by a superuser (a copy of a
        # template that has it: install_ledger's work, done once per session)
        (a,), (b,) = twins(1), twins(1, ledger=True)
        for db in (a, b):
            grant_create(sg, db)
    else:
        a, b = twins()
    for db in (a, b):
        with psycopg.connect(
            sg.server.dsn(db, user=user, password=pw) if user else sg.dsn(db), autocommit=True
        ) as c:
            for s in case.setup:
                c.execute(s.encode())
    direct_dsn = sg.server.dsn(a, user=user, password=pw) if user else sg.dsn(a)
    direct = run(direct_dsn, case.steps, "simple")
    proxied = run(proxy.dsn(b, user=user, password=pw), case.steps, "simple")
    compare_runs(direct, proxied, case.sg, case.steps)
    assert sg.schema_dump(b) == sg.schema_dump(a)
    for db in (a, b):  # issue 16 class 4
        check_dsn(sg.dsn(db), "the case")
