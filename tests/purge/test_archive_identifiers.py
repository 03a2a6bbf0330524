"""The purge archive's load.sql names captured columns the way PostgreSQL reads them back.

A column called ``order``, ``user`` or ``select`` is a keyword, one called ``MixedCase`` is
case-sensitive, one with a quote in it needs the quote doubled: each must come out quoted,
or load.sql is a syntax error (or loads into the wrong column). The archive is loaded with
psql into a database that never had the table, and the rows compared with what was deleted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.pg import TestServer
from typer.testing import CliRunner

from softguard.cli.main import app
from softguard.sql.classify import quote_ident

Ledger = Any  # the `ledger` fixture (tests/ledger/conftest.py)

CAPTURE = "-c softguard.capture=delete -c softguard.retention=604800"
COLUMNS = ("id", "order", "user", "select", "MixedCase", 'we"ird', "plain")
ROWS = [
    (1, 10, "ann", "a", "M1", 'q"1', "p1"),
    (2, 20, "bob", None, "M2", "q2", None),
    (3, 30, "cy", "c", None, 'q"3"', "p3"),
]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("order", '"order"'),
        ("user", '"user"'),
        ("select", '"select"'),
        ("MixedCase", '"MixedCase"'),
        ('we"ird', '"we""ird"'),
        ("plain_1", "plain_1"),
        ("1st", '"1st"'),
    ],
)
def test_the_one_quoting_function(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


@pytest.fixture
def fresh_db(pg_server: TestServer) -> Any:
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


def test_archive_loads_keyword_and_quoted_column_names(
    ledger: Ledger,
    rental_db: Callable[[], str],
    fresh_db: str,
    pg_server: TestServer,
    tmp_path: Path,
) -> None:
    db = rental_db()
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(
            sql.Identifier(c), sql.SQL("integer" if c in ("id", "order") else "text")
        )
        for c in COLUMNS
    )
    with ledger.connect(db) as c:
        c.execute(sql.SQL("CREATE TABLE public.odd ({}, PRIMARY KEY (id))").format(columns))
        c.cursor().executemany(
            sql.SQL("INSERT INTO public.odd ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
                sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
            ),
            ROWS,
        )
    with psycopg.connect(ledger.dsn(db), options=CAPTURE, autocommit=True) as c:
        c.execute("DELETE FROM public.odd")
    archive = tmp_path / "archive"
    result = CliRunner().invoke(
        app,
        [
            "purge",
            "--dsn",
            ledger.dsn(db),
            "--older-than",
            "0s",
            "--archive",
            str(archive),
            "--yes",
        ],
    )
    assert result.exit_code == 0, result.output
    [op_dir] = [
        d
        for d in archive.iterdir()
        if (d / "load.sql").is_file() and "odd" in (d / "load.sql").read_text()
    ]
    psql = [str(pg_server.bin("psql")), "-Xq", "-v", "ON_ERROR_STOP=1", "-f", "load.sql"]
    load = subprocess.run(
        [*psql, "-d", ledger.dsn(fresh_db)], cwd=op_dir, capture_output=True, text=True
    )
    assert load.returncode == 0, load.stderr
    with ledger.connect(fresh_db) as c:
        [table] = c.execute(
            "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables"
            " WHERE table_schema = 'softguard_restore'"
        ).fetchall()
        names = [
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE format('%%I.%%I', table_schema, table_name) = %s ORDER BY ordinal_position",
                [table[0]],
            ).fetchall()
        ]
        assert names == list(COLUMNS)
        got = c.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY id").format(
                sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), sql.SQL(table[0])
            )
        ).fetchall()
    assert got == ROWS
