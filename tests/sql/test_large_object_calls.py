"""softguard.sql.rewrite.large_object_calls: large-object calls renamed to softguard's
wrappers, by the parse tree's locations, and nothing else in the text (decision 0016)."""

from __future__ import annotations

import pytest

from softguard.sql.prefilter import LARGE_OBJECT_FUNCTIONS
from softguard.sql.rewrite import large_object_calls

CASES = [
    ("SELECT lo_put(1, 0, 'x')", "SELECT softguard.lo_put(1, 0, 'x')"),
    (
        "select lowrite(pg_catalog.lo_open (1, 131072), 'é lo_put(')",
        "select softguard.lowrite(softguard.lo_open (1, 131072), 'é lo_put(')",
    ),
    ('PREPARE p AS SELECT "lo_unlink"($1)', "PREPARE p AS SELECT softguard.lo_unlink($1)"),
    (
        "EXPLAIN ANALYZE SELECT PG_CATALOG . LO_UNLINK(1)",
        "EXPLAIN ANALYZE SELECT softguard.lo_unlink(1)",
    ),
    (
        "SELECT lo_unlink(o) FROM (SELECT lo_put(2, 0, '')) x, LATERAL lo_truncate(1, 2) y",
        "SELECT softguard.lo_unlink(o) FROM (SELECT softguard.lo_put(2, 0, '')) x, "
        "LATERAL softguard.lo_truncate(1, 2) y",
    ),
    ("SELECT lo_close(0) /* lo_put( */", "SELECT softguard.lo_close(0) /* lo_put( */"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_calls_renamed(text: str, expected: str) -> None:
    assert large_object_calls(text, LARGE_OBJECT_FUNCTIONS) == expected


@pytest.mark.parametrize(
    "text",
    [
        # inside a function body: not in the statement's tree, so not routable
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT lo_unlink(5)$$",
        "SELECT my.lo_put(1)",  # another schema's function of that name
        "SELECT 1",
        "not sql at all (",
    ],
)
def test_not_routable(text: str) -> None:
    assert large_object_calls(text, LARGE_OBJECT_FUNCTIONS) is None
