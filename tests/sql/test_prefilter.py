"""softguard.sql.prefilter: never a false negative; no parse for the hot-path statements."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from softguard.sql import Kind, classify
from softguard.sql.prefilter import may_be_destructive

CASES = Path(__file__).parent / "cases" / "classify.txt"
# Inputs of the classify fixture: every line that is not an expectation or a comment.
ALL_INPUTS = [
    "" if line == "<empty>" else line
    for line in CASES.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith(("#", "=> "))
]

# The reference, written from PostgreSQL's documentation (functions that destroy data or
# state; functions that run SQL given as text), not imported from softguard: a name dropped
# from the implementation's lists must turn these tests red.
DESTROYING_CALLS = {
    "pg_terminate_backend": "pg_terminate_backend(12345)",
    "pg_cancel_backend": "pg_cancel_backend(12345)",
    "pg_drop_replication_slot": "pg_drop_replication_slot('s')",
    "pg_replication_origin_drop": "pg_replication_origin_drop('o')",
    "pg_promote": "pg_promote(true, 60)",
    "pg_logical_slot_get_changes": "pg_logical_slot_get_changes('s', NULL, NULL)",
    "pg_logical_slot_get_binary_changes": "pg_logical_slot_get_binary_changes('s', NULL, NULL)",
    "pg_replication_slot_advance": "pg_replication_slot_advance('s', '0/0')",
    "lo_unlink": "lo_unlink(16500)",
    "lo_put": "lo_put(16500, 0, 'x')",
    "lowrite": "lowrite(0, 'x')",
    "lo_open": "lo_open(16500, 131072)",
    "lo_close": "lo_close(0)",
    "lo_truncate": "lo_truncate(0, 10)",
    "lo_truncate64": "lo_truncate64(0, 10)",
    "lo_export": "lo_export(16500, '/tmp/x')",
    "dblink_exec": "dblink_exec('dbname=x', 'DELETE FROM t')",
    "dblink_connect": "dblink_connect('c', 'dbname=x')",
    "dblink_connect_u": "dblink_connect_u('c', 'dbname=x')",
    "pg_file_unlink": "pg_file_unlink('x')",
    "pg_file_write": "pg_file_write('x', 'y', false)",
    "pg_file_rename": "pg_file_rename('x', 'y')",
}
OPAQUE_CALLS = {
    "dblink": "dblink('dbname=x', 'DELETE FROM t RETURNING 1')",
    "dblink_send_query": "dblink_send_query('c', 'DELETE FROM t')",
    "dblink_open": "dblink_open('c', 'SELECT 1')",
    "query_to_xml": "query_to_xml('DELETE FROM t RETURNING 1', true, false, '')",
    "query_to_xmlschema": "query_to_xmlschema('SELECT 1', true, false, '')",
    "query_to_xml_and_xmlschema": "query_to_xml_and_xmlschema('SELECT 1', true, false, '')",
    "ts_stat": "ts_stat('SELECT v FROM t')",
    "ts_rewrite": "ts_rewrite('a & b'::tsquery, 'SELECT t, s FROM aliases')",
}
REFERENCE_CALLS = [
    *((n, c, Kind.DESTRUCTIVE) for n, c in DESTROYING_CALLS.items()),
    *((n, c, Kind.OPAQUE) for n, c in OPAQUE_CALLS.items()),
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
        "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO t",
        "/**/import/**/foreign schema s from server x into t",
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


@pytest.mark.parametrize(("name", "call", "kind"), REFERENCE_CALLS, ids=lambda v: str(v)[:40])
def test_every_reference_function_is_classified_and_a_trigger(
    name: str, call: str, kind: Kind
) -> None:
    for sql in (
        f"SELECT {call}",
        f"SELECT pg_catalog.{call.upper()}",
        f'SELECT "{name}"{call.removeprefix(name)}',
        f"SELECT * FROM {call} AS r(a int)",
    ):
        assert classify(sql).kind is kind, sql
        assert may_be_destructive(sql.encode()), sql


def test_a_three_argument_ts_rewrite_is_safe() -> None:
    # ts_rewrite(query, target, substitute) runs no SQL text: only the two-argument form does
    sql = "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)"
    assert classify(sql).kind is Kind.SAFE


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
_FN = sorted(DESTROYING_CALLS) + sorted(set(OPAQUE_CALLS) - {"ts_rewrite"})


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
        assert not may_be_destructive(ident.encode())
