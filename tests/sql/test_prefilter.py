"""softguard.sql.prefilter: never a false negative; no parse for the hot-path statements."""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest

from softguard.sql import DANGEROUS_FUNCTIONS, OPAQUE_FUNCTIONS, Kind, classify
from softguard.sql.prefilter import may_be_destructive

CASES = Path(__file__).parent / "cases" / "classify.txt"
# Inputs of the classify fixture: every line that is not an expectation or a comment.
ALL_INPUTS = [
    "" if line == "<empty>" else line
    for line in CASES.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith(("#", "=> "))
]

HOT_PATH = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
    "select abalance from pgbench_accounts where aid = 98765;",
    "BEGIN",
    "BEGIN;",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1",
    "INSERT INTO t VALUES (1, 'a', now())",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
    "SET application_name = 'x'",
    "SET search_path TO public",
    "SHOW server_version",
    "SELECT id, updated_at, is_deleted, undo_log, todo FROM t WHERE created_at > $1",
    "SELECT * FROM t FOR SHARE",
    "SELECT 'é', \"ünïcode\" FROM t",
]


@pytest.mark.parametrize("sql", HOT_PATH)
def test_hot_path_statements_skip_the_parser(sql: str) -> None:
    assert not may_be_destructive(sql.encode())
    assert classify(sql).kind is Kind.SAFE


def test_fixture_inputs_loaded() -> None:
    assert len(ALL_INPUTS) >= 120


@pytest.mark.parametrize("sql", ALL_INPUTS, ids=[s[:60] for s in ALL_INPUTS])
def test_never_false_for_destructive_or_opaque_cases(sql: str) -> None:
    if classify(sql).kind in (Kind.DESTRUCTIVE, Kind.OPAQUE):
        assert may_be_destructive(sql.encode())


@pytest.mark.parametrize(
    "sql",
    [
        "/* */DELETE FROM t",
        "--x\nDROP TABLE t",
        "select 1;delete from t",
        "WITH d AS(DELETE FROM t) SELECT 1",
        "dElEtE FROM t",
        'SELECT U&"pg\\005fterminate\\005fbackend"(1)',
        'SELECT u&"x"',
        "SELECT pg_catalog.pg_terminate_backend(1)",
        'SELECT "lo_unlink"(1)',
        "SELECT lo_truncate64(1, 2)",
        "SELECT dblink_send_query('c', 'x')",
        "SELECT query_to_xml_and_xmlschema('x', true, false, '')",
        "SELECT pg_file_write('a', 'b', false)",
        "SELECT 1delete",  # PostgreSQL < 15 lexes this as 1 delete
        "DO $$BEGIN END$$",
        "DO'BEGIN END'",
        "EXECUTE p",
        "CALL p()",
        "PREPARE p AS SELECT 1",
        "EXPLAIN SELECT 1",
        "LOAD 'x'",
        "REASSIGN OWNED BY a TO b",
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING",
        "ALTER SYSTEM SET x = 1",
        "COPY t TO PROGRAM 'x'",
        "CREATE FUNCTION f() RETURNS void AS E'DEL\\x45TE FROM t' LANGUAGE sql",
        "TRUNCATE t",
        "UPDATE t SET a = 1",
    ],
)
def test_trigger_words_are_found(sql: str) -> None:
    assert may_be_destructive(sql.encode())


@pytest.mark.parametrize(
    "sql",
    ["xdelete", "deleted", "delete_me", "delete$", "éDELETE", "DELETEé", "pseudo", "updated_at"],
)
def test_longer_identifiers_are_not_keywords(sql: str) -> None:
    assert not may_be_destructive(sql.encode())


def test_every_dangerous_function_name_is_a_trigger() -> None:
    for name in DANGEROUS_FUNCTIONS | OPAQUE_FUNCTIONS:
        assert may_be_destructive(f"SELECT {name}(1)".encode()), name
        assert may_be_destructive(f"SELECT {name.upper()}(1)".encode()), name


def test_non_ascii_and_binary_bytes_are_safe_to_scan() -> None:
    assert not may_be_destructive(bytes(range(256)).replace(b"do", b""))
    assert may_be_destructive("é DROP ü".encode())
    assert may_be_destructive(b"\xff\xfe DROP TABLE t")
    assert not may_be_destructive(b"\xff\xfeDROP")  # one identifier for PostgreSQL


_TEMPLATES = [
    "{kw} FROM {t} WHERE {c}",
    "WITH d AS ({dml} RETURNING *) SELECT * FROM d",
    "SELECT {fn}({c}) FROM {t}",
    "EXPLAIN ANALYZE {dml}",
    "PREPARE p AS {dml}",
    "{sep}{dml}{sep}",
    "SELECT 1;{sep}{dml}",
    "DROP {obj} {t}",
    "ALTER TABLE {t} DROP COLUMN {c}",
    "TRUNCATE {t}",
    "CALL {t}()",
    "DO $$ BEGIN {dml}; END $$",
    "CREATE RULE r AS ON INSERT TO {t} DO ALSO {dml}",
]
_DML = ["DELETE FROM {t}", "UPDATE {t} SET a = 1", "delete from {t} where {c}"]
_OBJ = ["TABLE", "VIEW", "SCHEMA", "INDEX", "SEQUENCE", "TYPE", "DOMAIN", "FUNCTION"]
_SEP = [" ", "\n", "/* c */", "--c\n", "\t", "/* é */"]
_FN = sorted(DANGEROUS_FUNCTIONS | OPAQUE_FUNCTIONS)


def _case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def test_random_statements_never_false_negative() -> None:
    """A cheap stand-in for hypothesis: random spellings of destructive statements."""
    rng = random.Random(20240501)
    checked = 0
    for _ in range(2000):
        t = rng.choice(["t", '"T x"', "s.t", "pgbench_accounts", '"ü"'])
        c = rng.choice(["a = 1", "id IN (1, 2)", "true"])
        dml = rng.choice(_DML).format(t=t, c=c)
        sql = rng.choice(_TEMPLATES).format(
            kw=rng.choice(["DELETE", "SELECT *"]),
            t=t,
            c=c,
            dml=_case(rng, dml.split(" ", 1)[0]) + " " + dml.split(" ", 1)[1],
            fn=rng.choice(_FN),
            obj=rng.choice(_OBJ),
            sep=rng.choice(_SEP),
        )
        if classify(sql).kind in (Kind.DESTRUCTIVE, Kind.OPAQUE):
            checked += 1
            assert may_be_destructive(sql.encode()), sql
    assert checked > 1000


def test_random_identifiers_with_keyword_inside_do_not_match() -> None:
    rng = random.Random(7)
    for _ in range(500):
        left = "".join(rng.choice(string.ascii_lowercase) for _ in range(3))
        ident = f"{left}delete{left}"
        assert not re.search(r"\bdelete\b", ident)
        assert not may_be_destructive(ident.encode())
