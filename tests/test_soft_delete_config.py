"""[[soft_delete]] configuration: what the TOML accepts, and what softguard finds wrong
when it checks the entries against a real database's catalog
(softguard/ledger/soft_delete_tables.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.pg import TestServer

from softguard.config import ConfigError, load_settings
from softguard.ledger.soft_delete_tables import check, resolve
from softguard.soft_delete_config import SoftDeleteRule


def _settings(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "softguard.toml"
    path.write_text(text)
    return load_settings(path)


def test_entries_are_read_in_order(tmp_path: Path) -> None:
    s = _settings(
        tmp_path,
        """
[[soft_delete]]
table = "public.orders"
mode = "quarantine"

[[soft_delete]]
table = "public.*"
column = "deleted_at"
deleted_by = "deleted_by"
deleted_by_value = "application_name"

[[soft_delete]]
table = "app.users"
column = "is_deleted"
mark = "boolean"
database = "prod_*"
""",
    )
    rules = s.soft_delete
    assert [r.table for r in rules] == ["public.orders", "public.*", "app.users"]
    assert rules[0].mode == "quarantine" and rules[0].column is None
    assert rules[1].mark == "timestamp" and rules[1].mark_value == "now()"
    assert rules[2].mark_value == "true"
    assert rules[2].matches("prod_eu", "app", "users")
    assert not rules[2].matches("dev", "app", "users")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('table = "customers"\ncolumn = "x"', "expected schema.table"),
        ('table = "a.b.c"\ncolumn = "x"', "expected schema.table"),
        ('table = "public.t"', "needs column"),
        ('table = "public.t"\ncolumn = "x"\nmark = "expression"', "needs value"),
        ('table = "public.t"\ncolumn = "x"\nvalue = "deleted_at + 1"', "may not refer to columns"),
        ('table = "public.t"\ncolumn = "x"\nvalue = "now() )"', "not a SQL expression"),
        ('table = "public.t"\ncolumn = "x"\nmark = "soon"', "mark"),
        ('table = "public.t"\ncolumn = "x"\ncolour = "red"', "colour"),
        ('table = "public.t"\ncolumn = "x"\ndeleted_by_value = "ip"', "deleted_by_value"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, f"[[soft_delete]]\n{entry}\n")


@pytest.fixture(scope="module")
def catalog_db(pg_server: TestServer) -> Iterator[str]:
    with pg_server.scratch_database() as name:
        with psycopg.connect(pg_server.superuser_dsn(name), autocommit=True) as c:
            c.execute(
                """
                CREATE SCHEMA app;
                CREATE TABLE public.good (id int PRIMARY KEY, deleted_at timestamptz,
                                          deleted_by text);
                CREATE TABLE public.dated (id int PRIMARY KEY, deleted_on date);
                CREATE TABLE public.flagged (id int PRIMARY KEY,
                                             gone boolean NOT NULL DEFAULT false);
                CREATE TABLE public.nokey (id int, deleted_at timestamptz);
                CREATE TABLE public.wrongtype (id int PRIMARY KEY, deleted_at text);
                CREATE TABLE public.badby (id int PRIMARY KEY, deleted_at timestamptz, by_id int);
                CREATE TABLE public.keyed (deleted_at timestamptz PRIMARY KEY);
                CREATE TABLE public.status (id int PRIMARY KEY, status text);
                CREATE TABLE app.orders (id int PRIMARY KEY, deleted_at timestamptz);
                CREATE TABLE app.items (id int PRIMARY KEY);
                CREATE TABLE app.parts (id int, at timestamptz, deleted_at timestamptz,
                                        PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
                CREATE TABLE app.parts_1 PARTITION OF app.parts
                    FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');
                """
            )
        yield name


def _resolve(pg_server: TestServer, db: str, *rules: dict[str, str]):  # type: ignore[no-untyped-def]
    with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
        return resolve(c, [SoftDeleteRule(**r) for r in rules], db)  # type: ignore[arg-type]


def test_good_tables_resolve(pg_server: TestServer, catalog_db: str) -> None:
    res = _resolve(
        pg_server,
        catalog_db,
        {"table": "public.good", "column": "deleted_at", "deleted_by": "deleted_by"},
        {"table": "public.dated", "column": "deleted_on"},
        {"table": "public.flagged", "column": "gone", "mark": "boolean"},
        {"table": "public.status", "column": "status", "mark": "expression", "value": "'gone'"},
        {"table": "app.parts", "column": "deleted_at"},
    )
    tables = res.tables.tables
    assert sorted(tables) == [
        ("app", "parts"),
        ("app", "parts_1"),
        ("public", "dated"),
        ("public", "flagged"),
        ("public", "good"),
        ("public", "status"),
    ]
    assert all(t.problem is None for t in tables.values()), tables
    good = tables[("public", "good")]
    assert (good.column_type, good.key, good.by_column) == (
        "timestamp with time zone",
        ("id",),
        "deleted_by",
    )
    assert tables[("app", "parts")].key == ("id", "at")
    # a partition named directly is soft-deleted like its partitioned table
    part = tables[("app", "parts_1")]
    assert (part.column, part.key, part.problem) == ("deleted_at", ("id", "at"), None)
    assert check(res, catalog_db) == ([], [])


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"table": "public.good", "column": "gone_at"}, "column 'gone_at' does not exist"),
        (
            {"table": "public.wrongtype", "column": "deleted_at"},
            "column 'deleted_at' is text; mark = 'timestamp' needs timestamptz",
        ),
        (
            {"table": "public.good", "column": "deleted_at", "mark": "boolean"},
            "mark = 'boolean' needs boolean",
        ),
        ({"table": "public.nokey", "column": "deleted_at"}, "has no primary key"),
        (
            {"table": "public.badby", "column": "deleted_at", "deleted_by": "by_id"},
            "deleted_by column 'by_id' is integer; it needs a text type",
        ),
        (
            {"table": "public.good", "column": "deleted_at", "deleted_by": "who"},
            "deleted_by column 'who' does not exist",
        ),
        ({"table": "public.keyed", "column": "deleted_at"}, "part of the table's key"),
        (
            {"table": "public.status", "column": "status", "mark": "expression", "value": "42"},
            None,  # an integer fits a text column
        ),
        (
            {
                "table": "public.flagged",
                "column": "gone",
                "mark": "expression",
                "value": "'not a boolean'",
            },
            "value \"'not a boolean'\" does not fit column 'gone' (boolean)",
        ),
    ],
)
def test_misconfiguration_is_explained(
    pg_server: TestServer, catalog_db: str, rule: dict[str, str], problem: str | None
) -> None:
    res = _resolve(pg_server, catalog_db, rule)
    (target,) = res.tables.tables.values()
    if problem is None:
        assert target.problem is None
        return
    assert target.problem is not None and problem in target.problem, target.problem
    errors, _ = check(res, catalog_db)
    assert errors == [
        f"soft_delete: {target.qualified} in database {catalog_db!r}: {target.problem}"
    ]


def test_first_matching_entry_wins_and_unmatched_warns(
    pg_server: TestServer, catalog_db: str
) -> None:
    res = _resolve(
        pg_server,
        catalog_db,
        {"table": "app.items", "mode": "quarantine"},
        {"table": "app.*", "column": "deleted_at"},
        {"table": "public.missing", "column": "deleted_at"},
        {"table": "public.good", "column": "deleted_at", "database": "elsewhere"},
    )
    tables = res.tables.tables
    assert sorted(tables) == [("app", "orders"), ("app", "parts"), ("app", "parts_1")]
    errors, warnings = check(res, catalog_db)
    assert errors == []
    assert warnings == [
        f"soft_delete: 'public.missing' matches no table in database {catalog_db!r}"
    ]


def test_a_pattern_covers_only_tables_with_the_column(
    pg_server: TestServer, catalog_db: str
) -> None:
    res = _resolve(pg_server, catalog_db, {"table": "public.*", "column": "deleted_at"})
    tables = res.tables.tables
    # dated, flagged, status have no deleted_at: not soft-delete tables, no error
    assert sorted(name for _, name in tables) == ["badby", "good", "keyed", "nokey", "wrongtype"]
    errors, warnings = check(res, catalog_db)
    assert [e.split(": ", 2)[1] for e in errors] == [
        f"public.keyed in database {catalog_db!r}",
        f"public.nokey in database {catalog_db!r}",
        f"public.wrongtype in database {catalog_db!r}",
    ]
    assert warnings == []
    # an exact name lacking the column is a mistake
    res = _resolve(pg_server, catalog_db, {"table": "public.dated", "column": "deleted_at"})
    assert res.tables.tables[("public", "dated")].problem is not None
