"""The soft-delete rewrite (softguard/sql/soft_delete.py), as text: which DELETEs become
UPDATEs, what the UPDATE says, what stays untouched. Pure; the SQL it produces is run
against a real server in tests/ledger/test_soft_delete_sql.py and tests/proxy_softdelete.
"""

from __future__ import annotations

import json

import pytest
from pglast import ast, parse_sql

from softguard.sql.soft_delete import (
    CALL_MARK_FILLER,
    Misconfigured,
    SoftDeleteTables,
    SoftTarget,
    prepared_name,
    rewrite,
)

CUSTOMERS = SoftTarget(
    "public",
    "customers",
    "deleted_at",
    "timestamp with time zone",
    "timestamp",
    "now()",
    ("id",),
    by_column="deleted_by",
)
TABLES = SoftDeleteTables({("public", "customers"): CUSTOMERS})


def _update(text: str) -> ast.UpdateStmt:
    node = parse_sql(text)[0].stmt
    assert isinstance(node, ast.UpdateStmt), text
    return node


def test_top_level_delete_becomes_marking_update() -> None:
    done = rewrite("DELETE FROM customers WHERE id <= 10 RETURNING id", TABLES)
    assert done is not None
    assert done.retag and done.targets == (CUSTOMERS,) and done.prepared is None
    upd = _update(done.text)
    assert [t.name for t in upd.targetList] == ["deleted_at", "deleted_by"]
    assert "softguard.soft_delete_begin(CAST('customers' AS regclass), 'public.customers'" in (
        done.text
    )
    assert done.text.endswith("WHERE id <= 10 AND customers.deleted_at IS NULL RETURNING id"), (
        done.text
    )
    # the client's statement travels along, for the ledger
    assert '"statement":"DELETE FROM customers WHERE id <= 10 RETURNING id"' in done.text


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        ("DELETE FROM customers", "WHERE customers.deleted_at IS NULL"),
        (
            "DELETE FROM public.customers c WHERE c.id = $1",
            "WHERE c.id = $1 AND c.deleted_at IS NULL",
        ),
        ("DELETE FROM ONLY customers WHERE id = 1", "UPDATE ONLY customers SET"),
        (
            "DELETE FROM customers c USING reservations r WHERE r.customer_id = c.id OR c.id = 1",
            "FROM reservations AS r WHERE (r.customer_id = c.id OR c.id = 1)"
            " AND c.deleted_at IS NULL",
        ),
    ],
)
def test_forms(sql: str, expect: str) -> None:
    done = rewrite(sql, TABLES)
    assert done is not None and expect in done.text, done and done.text
    _update(done.text)


def test_returning_reads_the_old_marks() -> None:
    done = rewrite(
        "DELETE FROM customers c WHERE id = 1 RETURNING c.*, deleted_at, c.deleted_by AS who,"
        " coalesce(deleted_at, now()) AS t, (SELECT deleted_at FROM other) AS o",
        TABLES,
    )
    assert done is not None
    returning = done.text.rsplit(" RETURNING ", 1)[1]  # the client's text is in the info too
    assert returning.startswith("(SELECT sg_o FROM customers AS sg_o WHERE sg_o.id = c.id).*")
    assert "(SELECT sg_o.deleted_at FROM customers AS sg_o WHERE sg_o.id = c.id) AS deleted_at" in (
        returning
    )
    assert (
        "(SELECT sg_o.deleted_by FROM customers AS sg_o WHERE sg_o.id = c.id) AS who" in returning
    )
    assert "COALESCE((SELECT sg_o.deleted_at" in returning
    # a sub-select's own columns are its own
    assert "(SELECT deleted_at FROM other) AS o" in returning


def test_star_over_using_tables() -> None:
    done = rewrite(
        "DELETE FROM customers c USING reservations r, (SELECT 1 AS one) x, lateral f() AS g"
        " RETURNING *",
        TABLES,
    )
    assert done is not None and done.text.endswith(
        "RETURNING (SELECT sg_o FROM customers AS sg_o WHERE sg_o.id = c.id).*, r.*, x.*, g.*"
    )
    # a join without an alias merges columns: left alone
    done = rewrite(
        "DELETE FROM customers c USING reservations r JOIN vehicles USING (id) RETURNING *", TABLES
    )
    assert done is not None and done.text.endswith("RETURNING *")


def test_nested_forms_keep_their_own_tag() -> None:
    cte = rewrite("WITH d AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM d", TABLES)
    assert cte is not None and not cte.retag
    assert cte.text.startswith("WITH d AS (UPDATE customers SET")
    explain = rewrite("EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM customers WHERE id = 1", TABLES)
    assert explain is not None and not explain.retag and "UPDATE customers SET" in explain.text
    prepared = rewrite("PREPARE p(int) AS DELETE FROM customers WHERE id = $1", TABLES)
    assert prepared is not None and not prepared.retag and prepared.prepared == "p"
    copy = rewrite("COPY (DELETE FROM customers WHERE id = 1 RETURNING id) TO STDOUT", TABLES)
    assert copy is not None and "UPDATE customers SET" in copy.text


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN DELETE FROM customers",  # not run
        "EXPLAIN (ANALYZE false) DELETE FROM customers",
        "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM customers",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM customers'",
        "DELETE FROM other.customers",
        "DELETE FROM reservations WHERE customer_id = 1",
        "SELECT 1",
        "not sql at all",
        "DELETE FROM customers; DELETE FROM customers",  # one statement at a time only
    ],
)
def test_untouched(sql: str) -> None:
    assert rewrite(sql, TABLES) is None


def test_where_current_of_keeps_existing_marks() -> None:
    done = rewrite("DELETE FROM customers WHERE CURRENT OF cur", TABLES)
    assert done is not None and done.retag
    assert "deleted_at = CASE WHEN customers.deleted_at IS NULL THEN (SELECT softguard" in (
        done.text
    )
    assert "ELSE customers.deleted_by END WHERE CURRENT OF cur" in done.text


def test_boolean_and_expression_marks() -> None:
    flag = SoftTarget("public", "t", "gone", "boolean", "boolean", "true", ("id",))
    status = SoftTarget("public", "s", "status", "text", "expression", "'deleted'", ("id",))
    tables = SoftDeleteTables({("public", "t"): flag, ("public", "s"): status})
    a = rewrite("DELETE FROM t", tables)
    b = rewrite("DELETE FROM s", tables)
    assert a is not None and a.text.endswith("WHERE t.gone IS NOT TRUE")
    assert b is not None and b.text.endswith(
        "WHERE s.status IS DISTINCT FROM CAST('deleted' AS text)"
    )


def test_unqualified_name_picks_the_only_table_else_public() -> None:
    other = SoftTarget("app", "customers", "gone", "boolean", "boolean", "true", ("id",))
    tables = SoftDeleteTables({("app", "customers"): other})
    done = rewrite("DELETE FROM customers", tables)
    assert done is not None and "'app.customers'" in done.text
    both = SoftDeleteTables({("app", "customers"): other, ("public", "customers"): CUSTOMERS})
    done = rewrite("DELETE FROM customers", both)
    assert done is not None and "'public.customers'" in done.text
    done = rewrite("DELETE FROM app.customers", both)
    assert done is not None and "'app.customers'" in done.text


def test_misconfigured_target_raises() -> None:
    broken = SoftTarget(
        "public", "customers", "deleted_at", "text", "timestamp", "now()", (), problem="no key"
    )
    tables = SoftDeleteTables({("public", "customers"): broken})
    with pytest.raises(Misconfigured, match=r"DELETE on public\.customers is refused: .*no key"):
        rewrite("DELETE FROM customers", tables)
    with pytest.raises(Misconfigured):
        tables.rewrite("DELETE FROM customers")
    with pytest.raises(Misconfigured):  # remembered
        tables.rewrite("DELETE FROM customers")


def test_quoted_names() -> None:
    odd = SoftTarget("My Schema", "Odd T", "Gone At", "date", "timestamp", "now()", ("Id",))
    tables = SoftDeleteTables({("My Schema", "Odd T"): odd})
    done = rewrite('DELETE FROM "My Schema"."Odd T" RETURNING "Gone At"', tables)
    assert done is not None
    assert '\'"My Schema"."Odd T"\'::regclass' in done.text.replace("CAST(", "").replace(
        " AS regclass)", "::regclass"
    )
    assert '"Odd T"."Gone At" IS NULL' in done.text
    assert 'sg_o."Id" = "Odd T"."Id"' in done.text


def test_execute_of_a_prepared_soft_delete_is_retagged() -> None:
    done = rewrite("EXECUTE p(1)", SoftDeleteTables(), prepared=frozenset({"p"}))
    assert done is not None and done.retag and done.text == "EXECUTE p(1)"
    assert rewrite("EXECUTE q(1)", SoftDeleteTables(), prepared=frozenset({"p"})) is None


@pytest.mark.parametrize(
    ("sql", "change"),
    [
        ("PREPARE p AS SELECT 1", ("prepare", "p")),
        ("DEALLOCATE p", ("deallocate", "p")),
        ("DEALLOCATE PREPARE ALL", ("deallocate", "")),
        ("DISCARD ALL", ("discard", "")),
        ("DISCARD PLANS", None),
        ("SELECT 1", None),
    ],
)
def test_prepared_name(sql: str, change: tuple[str, str] | None) -> None:
    assert prepared_name(sql) == change


def test_cache_is_bounded_and_per_tables() -> None:
    tables = SoftDeleteTables({("public", "customers"): CUSTOMERS})
    first = tables.rewrite("DELETE FROM customers WHERE id = 1")
    assert first is tables.rewrite("DELETE FROM customers WHERE id = 1")
    for i in range(1100):
        tables.rewrite(f"DELETE FROM customers WHERE id = {i + 2}")
    assert len(tables._rewrites) <= 1024


def test_merge_delete_becomes_a_marking_update_then_do_nothing() -> None:
    done = rewrite(
        "MERGE INTO customers t USING src s ON t.id = s.id"
        " WHEN MATCHED AND s.gone THEN DELETE"
        " WHEN MATCHED THEN UPDATE SET phone = s.phone"
        " WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
        TABLES,
    )
    assert done is not None and not done.retag  # MERGE n stays MERGE n
    tail = done.text.rsplit(
        f"CAST(now() AS timestamp with time zone), '{CALL_MARK_FILLER}')), ", 1
    )[1]
    assert tail == (
        "deleted_by = CURRENT_USER WHEN MATCHED AND s.gone THEN DO NOTHING"
        " WHEN MATCHED THEN UPDATE SET phone = s.phone"
        " WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)"
    )
    assert "WHEN MATCHED AND s.gone AND t.deleted_at IS NULL THEN UPDATE SET deleted_at" in (
        done.text
    )
    assert '"verb":"MERGE","verify":true' in done.text
    # a MERGE that deletes nothing is left alone
    assert (
        rewrite("MERGE INTO customers t USING src s ON true WHEN MATCHED THEN DO NOTHING", TABLES)
        is None
    )


def test_proxy_refuses_what_it_cannot_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DELETE on a soft-delete table is never passed on as a hard delete by mistake: a
    rewrite that fails (here: forced) becomes a refusal the server raises, 0A000."""
    from softguard.proxy.statements import _soft_delete

    tables = SoftDeleteTables({("public", "customers"): CUSTOMERS})

    def boom(_text: str) -> None:
        raise RecursionError("too deep")

    monkeypatch.setattr(tables, "rewrite", boom)
    out = _soft_delete(tables, "DELETE FROM customers", None)
    assert out is not None
    text, retag, claim, prepared_delete = out
    assert not retag and claim is None and not prepared_delete
    assert "ERRCODE = '0A000'" in text and "could not be rewritten" in text
    # a statement naming no soft-delete table is not even parsed
    assert _soft_delete(tables, "DELETE FROM orders", None) is None


def test_whole_row_references_read_the_old_row() -> None:
    done = rewrite(
        "DELETE FROM customers c WHERE id = 1 RETURNING c, (c).deleted_at, (c).id", TABLES
    )
    assert done is not None
    returning = done.text.rsplit(" RETURNING ", 1)[1]
    old = "(SELECT sg_o FROM customers AS sg_o WHERE sg_o.id = c.id)"
    assert returning == f"{old} AS c, {old}.deleted_at, {old}.id", returning


@pytest.mark.parametrize(
    ("text", "bindable"),
    [
        ("DELETE FROM customers WHERE id = 1", True),
        ("DELETE FROM customers c USING src s WHERE c.id = s.id RETURNING c.*", True),
        ("WITH s AS (SELECT 1 AS id) DELETE FROM customers WHERE id IN (SELECT id FROM s)", True),
        # a data-modifying WITH shares the marking UPDATE's transition tables
        ("WITH u AS (UPDATE customers SET phone = 'x' RETURNING 1) DELETE FROM customers", False),
        ("WITH d AS (DELETE FROM customers RETURNING 1) SELECT * FROM d", False),
        ("MERGE INTO customers t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE", False),
        ("PREPARE p AS DELETE FROM customers WHERE id = $1", False),
        ("EXPLAIN ANALYZE DELETE FROM customers", False),
    ],
)
def test_claim_only_for_a_plain_top_level_delete(text: str, bindable: bool) -> None:
    """Decision 0031: the proxy binds the claim only where the marking UPDATE is the text's
    one modifying statement; the claim is what soft_delete_begin's setting will hold."""
    done = rewrite(text, TABLES)
    assert done is not None
    assert (done.claim is not None) is bindable
    assert CALL_MARK_FILLER in done.text and len(CALL_MARK_FILLER) == 64
    if done.claim is not None:
        claim = json.loads(done.claim)
        assert claim["table"] == "public.customers" and claim["statement"] == text
