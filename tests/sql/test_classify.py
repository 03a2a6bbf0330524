"""softguard.sql.classify: table-driven cases plus the properties the proxy relies on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from softguard.sql import (
    Classification,
    Classifier,
    Kind,
    Statement,
    Target,
    classify,
    quote_ident,
)
from softguard.sql.classify import SAFE_EMPTY

CASES = Path(__file__).parent / "cases" / "classify.txt"


def load_cases() -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    sql: str | None = None
    for line in CASES.read_text(encoding="utf-8").splitlines():
        if line.startswith("=> "):
            assert sql is not None, f"expectation without input: {line}"
            cases.append((sql, line[3:]))
            sql = None
        elif line.strip() and not line.startswith("#"):
            assert sql is None, f"input without expectation: {sql}"
            sql = "" if line == "<empty>" else line
    return cases


def render(result: Classification) -> str:
    if not result.statements:
        return f"{result.kind} | - | - | - | -"
    top = max(s.kind.severity for s in result.statements)
    st = next(s for s in result.statements if s.kind.severity == top)
    flags = [f for f, on in (("cascade", st.cascade), ("if_exists", st.if_exists)) if on]
    targets = ", ".join(t.qualified() for t in st.targets) or "-"
    return f"{result.kind} | {st.action} | {st.command} | {targets} | {' '.join(flags) or '-'}"


ALL_CASES = load_cases()


def test_fixture_is_big_enough() -> None:
    assert len(ALL_CASES) >= 120


@pytest.mark.parametrize(("sql", "expected"), ALL_CASES, ids=[c[0][:60] for c in ALL_CASES])
def test_case(sql: str, expected: str) -> None:
    assert render(classify(sql)) == expected


def first(sql: str) -> Statement:
    result = classify(sql)
    assert result.statements, result
    return result.statements[0]


# -- details that the fixture format does not show --------------------------------------


def test_drop_table_targets_are_normalised() -> None:
    st = first('DROP TABLE IF EXISTS Public."Weird Name", Other CASCADE')
    assert st.targets == (
        Target("table", "public", "Weird Name"),
        Target("table", None, "other"),
    )
    assert st.targets[0].qualified() == 'public."Weird Name"'
    assert st.cascade and st.if_exists


def test_long_identifiers_are_truncated_like_postgres() -> None:
    assert first("DROP TABLE " + "x" * 80).targets[0].name == "x" * 63


def test_function_args_text() -> None:
    st = first("DROP FUNCTION s.f(int, text), g")
    assert st.targets[0] == Target("function", "s", "f", args="integer, text")
    assert st.targets[1].args is None  # args not given: any overload
    assert first("DROP FUNCTION f()").targets[0].args == ""


def test_column_targets() -> None:
    st = first("ALTER TABLE s.t DROP COLUMN c")
    assert st.targets == (Target("column", "s", "t", column="c"),)
    assert st.targets[0].qualified() == "s.t.c"


def test_alter_table_with_several_destructive_commands_reports_all() -> None:
    st = first("ALTER TABLE t DROP COLUMN a, ALTER COLUMN b TYPE text, DROP CONSTRAINT k")
    assert st.action == "ALTER TABLE DROP COLUMN"
    assert [n.action for n in st.nested] == [
        "ALTER TABLE ALTER COLUMN TYPE",
        "ALTER TABLE DROP CONSTRAINT",
    ]
    assert "also" in st.detail


def test_truncate_detail_records_restart_identity() -> None:
    st = first("TRUNCATE a, b RESTART IDENTITY CASCADE")
    assert "RESTART IDENTITY" in st.detail
    assert st.cascade


def test_delete_without_where_is_noted() -> None:
    assert "no WHERE" in first("DELETE FROM t").detail
    assert "no WHERE" not in first("DELETE FROM t WHERE id = 1").detail


def test_cte_delete_detail_and_nested() -> None:
    st = first("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d")
    assert (st.kind, st.action, st.command) == (Kind.DESTRUCTIVE, "DELETE", "SELECT")
    assert st.detail.startswith("data-modifying CTE: DELETE FROM orders")
    assert [n.action for n in st.nested] == ["DELETE"]


def test_cte_and_dangerous_call_both_reported_dml_first() -> None:
    st = first("WITH d AS (DELETE FROM t RETURNING *) SELECT pg_terminate_backend(1) FROM d")
    assert st.action == "DELETE"
    assert {n.action for n in st.nested} == {"DELETE", "CALL FUNCTION pg_terminate_backend"}


def test_top_level_delete_with_cte_delete_keeps_both() -> None:
    st = first("WITH d AS (DELETE FROM t RETURNING *) DELETE FROM u")
    assert st.targets == (Target("table", None, "u"),)
    assert [n.summary() for n in st.nested] == ["DELETE FROM t"]


def test_explain_analyze_detail() -> None:
    st = first("EXPLAIN ANALYZE DELETE FROM t WHERE a = 1")
    assert st.detail.startswith("EXPLAIN ANALYZE executes DELETE FROM t")
    assert st.nested[0].command == "DELETE"


def test_prepare_detail() -> None:
    st = first("PREPARE p(int) AS DELETE FROM t WHERE id = $1")
    assert (st.kind, st.command) == (Kind.DESTRUCTIVE, "PREPARE")
    assert st.detail.startswith("PREPARE of DELETE FROM t")


def test_create_rule_detail() -> None:
    st = first("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u")
    assert st.kind is Kind.OPAQUE
    assert st.detail == "creates rule r ON t that runs DELETE FROM u later"


def test_plpgsql_dynamic_sql_is_opaque() -> None:
    st = first(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SELECT 1'; END $$"
    )
    assert st.kind is Kind.OPAQUE
    assert "dynamic SQL" in st.detail


def test_plpgsql_function_in_multi_statement_text_with_non_ascii_prefix() -> None:
    sql = (
        "SELECT 'héllo wörld'; CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql "
        "AS $$ BEGIN DELETE FROM t; END $$; SELECT 2"
    )
    result = classify(sql)
    assert [s.kind for s in result.statements] == [Kind.SAFE, Kind.OPAQUE, Kind.SAFE]


def test_copy_program_detail() -> None:
    st = first("COPY t TO PROGRAM 'rm -rf /'")
    assert st.detail == "runs shell command 'rm -rf /'"


# -- multi-statement texts and byte locations -------------------------------------------


def test_multi_statement_kinds_and_byte_locations() -> None:
    sql = "SELECT 'é€'; /* ü */ DELETE FROM t; SELECT 1"
    data = sql.encode()
    result = classify(sql)
    assert result.kind is Kind.DESTRUCTIVE
    kinds = [s.kind for s in result.statements]
    assert kinds == [Kind.SAFE, Kind.DESTRUCTIVE, Kind.SAFE]
    delete = result.statements[1]
    assert result.destructive == (delete,)
    start = delete.location
    assert data[start : start + delete.length] == b"DELETE FROM t"
    assert data[start:].startswith(b"DELETE")
    assert start != sql.index("DELETE")  # characters != bytes here
    last = result.statements[2]
    assert last.length == 0 and data[last.location :] == b"SELECT 1"


def test_most_severe_kind_wins() -> None:
    assert classify("SELECT 1; DO $$ BEGIN END $$").kind is Kind.OPAQUE
    assert classify("DO $$ BEGIN END $$; DROP TABLE t").kind is Kind.DESTRUCTIVE
    assert classify("DROP TABLE t; SELECT (").kind is Kind.UNPARSEABLE
    assert Kind.UNPARSEABLE.severity > Kind.DESTRUCTIVE.severity > Kind.OPAQUE.severity
    assert Kind.OPAQUE.severity > Kind.SAFE.severity


@pytest.mark.parametrize("sql", ["", "   ", ";", ";;", "/* x */", "-- x", "\n;\n"])
def test_empty_texts_are_safe_without_statements(sql: str) -> None:
    result = classify(sql)
    assert result == Classification(Kind.SAFE, ())


@pytest.mark.parametrize("sql", ["SELECT FROM WHERE", "DROP TABEL t", "\x01\x02", "'", '"'])
def test_unparseable_has_message_and_no_statements(sql: str) -> None:
    result = classify(sql)
    assert result.kind is Kind.UNPARSEABLE
    assert result.statements == ()
    assert result.error


# -- hostile input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 10_000 + "1" + ")" * 10_000,
        "SELECT " + "(SELECT " * 10_000 + "1" + ")" * 10_000,
        "SELECT " + "f(" * 10_000 + "1" + ")" * 10_000,
        "SELECT " + "NOT " * 10_000 + "true",
        "SELECT " + "ARRAY[" * 5_000 + "1" + "]" * 5_000,
    ],
    ids=["parens", "subselects", "calls", "not", "arrays"],
)
def test_deep_nesting_never_raises(sql: str) -> None:
    result = classify(sql)
    assert result.kind in (Kind.SAFE, Kind.UNPARSEABLE)


def test_deep_tree_past_orjson_limit_is_still_inspected() -> None:
    # 2,000 nested additions parse fine but exceed orjson's 1024-level JSON limit.
    deep = "1" + "+1" * 2_000
    assert classify(f"SELECT {deep}").kind is Kind.SAFE
    result = classify(f"WITH d AS (DELETE FROM t RETURNING 1) SELECT {deep} FROM d")
    assert result.kind is Kind.DESTRUCTIVE
    assert classify(f"SELECT pg_terminate_backend({deep})").kind is Kind.DESTRUCTIVE


def test_nested_function_bodies_are_bounded() -> None:
    body = "DELETE FROM t"
    for i in range(12):
        tag = f"$b{i}$"
        body = f"CREATE FUNCTION f{i}() RETURNS void LANGUAGE sql AS {tag} {body} {tag}"
    result = classify(body)
    assert result.kind is Kind.OPAQUE


def test_huge_statement() -> None:
    values = ", ".join(f"({i}, 'row {i}')" for i in range(50_000))
    assert classify(f"INSERT INTO t VALUES {values}").kind is Kind.SAFE
    ids = ", ".join(str(i) for i in range(50_000))
    result = classify(f"DELETE FROM t WHERE id IN ({ids})")
    assert result.kind is Kind.DESTRUCTIVE


# -- model ------------------------------------------------------------------------------


def test_results_are_immutable() -> None:
    st = first("DROP TABLE t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.action = "SELECT"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("t", "t"), ("T", '"T"'), ("select", '"select"'), ("a b", '"a b"'), ('x"y', '"x""y"')],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


# -- Classifier -------------------------------------------------------------------------


def test_classifier_prefilter_cache_and_parse_counters() -> None:
    c = Classifier(cache_size=8)
    assert c.classify_bytes(b"SELECT abalance FROM a WHERE aid = 1;").kind is Kind.SAFE
    assert c.stats.prefiltered == 1 and c.stats.parsed == 0
    first_result = c.classify_bytes(b"DELETE FROM t")
    second_result = c.classify_bytes(b"DELETE FROM t")
    assert first_result is second_result
    assert (c.stats.parsed, c.stats.cache_hits) == (1, 1)
    assert c.classify_bytes(bytearray(b"DELETE FROM t")) is first_result


def test_classifier_cache_is_bounded_lru() -> None:
    c = Classifier(cache_size=3)
    for i in range(10):
        c.classify_bytes(f"DELETE FROM t WHERE id = {i}".encode())
    assert len(c) == 3
    assert c.stats.evictions == 7
    c.classify_bytes(b"DELETE FROM t WHERE id = 7")  # hit, becomes most recent
    c.classify_bytes(b"DELETE FROM t WHERE id = 100")  # evicts id = 8
    parsed = c.stats.parsed
    c.classify_bytes(b"DELETE FROM t WHERE id = 7")
    assert c.stats.parsed == parsed
    c.classify_bytes(b"DELETE FROM t WHERE id = 8")
    assert c.stats.parsed == parsed + 1


def test_classifier_does_not_cache_huge_texts() -> None:
    c = Classifier(cache_size=10, max_text_bytes=100)
    sql = b"DELETE FROM t WHERE note = '" + b"x" * 200 + b"'"
    c.classify_bytes(sql)
    assert len(c) == 0


def test_classifier_invalid_utf8_is_unparseable() -> None:
    result = Classifier().classify_bytes(b"DELETE FROM t WHERE a = '\xff'")
    assert result.kind is Kind.UNPARSEABLE
    assert result.error and "UTF-8" in result.error


def test_classifier_matches_classify_on_all_cases() -> None:
    c = Classifier()
    for sql, _ in ALL_CASES:
        got = c.classify_bytes(sql.encode())
        full = classify(sql)
        if got is not SAFE_EMPTY:
            assert got == full, sql
        else:  # prefiltered: only texts that cannot be destructive or opaque
            assert full.kind in (Kind.SAFE, Kind.UNPARSEABLE), sql
