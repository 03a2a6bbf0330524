"""DROP COLUMN and ALTER COLUMN ... TYPE on tables without a key, and DROP COLUMN of identity
columns, through softguard, then `undo` (decision 0022, "Since then").

Rows without a key are found again by their row image (the table's other columns). What
undo guarantees, and what these tests check:
- a captured value only ever goes to a live row whose other columns still equal, as text,
  those of the row it was taken from, and each captured value to at most one row;
- rows unchanged since the operation come back as the multiset of rows they were (rows
  with equal images and different values are indistinguishable: which gets which value is
  arbitrary, the multiset is exact);
- rows changed or added since keep what they hold and get NULL (DROP COLUMN; an identity
  column: the values its sequence gives next) or their value converted back (ALTER TYPE),
  and the undo's result says how many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest

Twins = Callable[..., list[str]]


def through(proxy: Any, db: str, *stmts: str) -> list[str]:
    """Run statements through softguard; return the softguard notices."""
    seen: list[str] = []
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
        for s in stmts:
            c.execute(s.encode())
    return [s for s in seen if s.startswith("softguard:")]


def rows(sg: Any, db: str, query: str, params: Sequence[Any] = ()) -> list[Any]:
    with sg.connect(db) as c:
        return c.execute(query.encode(), params).fetchall()


def multiset(found: list[Any]) -> list[Any]:
    """Rows in an order that does not depend on the table's (None sorts first)."""
    return sorted(found, key=lambda r: [(v is not None, str(v)) for v in r])


def one_op(sg: Any, db: str) -> int:
    (op,) = sg.active_ops(db)
    return int(op)


# -- DROP COLUMN without a key --------------------------------------------------------------


def test_duplicates_nulls_and_writes_since(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE kl (a int, b text, c text)",
        "INSERT INTO kl VALUES (1, 'x', 'p'), (1, 'x', 'q'), (1, 'x', 'p'),"
        " (2, NULL, 'r'), (NULL, '', 's'), (NULL, NULL, 't'), (3, 'y', NULL), (3, 'y', ''),"
        " (5, 'v', 'old')",
    )
    before = rows(sg, db, "SELECT a, b, c FROM kl")
    notices = through(proxy, db, "ALTER TABLE kl DROP COLUMN c")
    op = one_op(sg, db)
    assert notices and "DROP COLUMN public.kl.c (restored as the last column)" in notices[0]
    # written since: a row changed (its image is gone), a row added; both kept
    sg.execute(db, "UPDATE kl SET b = 'z' WHERE a = 2", "INSERT INTO kl VALUES (4, 'w')")
    assert sg.undo(db, op) == [
        f"operation {op}: re-added column public.kl.c with 8 values"
        " (2 rows changed or added since: NULL)"
    ]
    want = [r for r in before if r[0] != 2] + [(2, "z", None), (4, "w", None)]
    assert multiset(rows(sg, db, "SELECT a, b, c FROM kl")) == multiset(want)
    # NULL and '' told apart, in the image and in the value
    assert rows(sg, db, "SELECT c FROM kl WHERE a IS NULL AND b = ''") == [("s",)]
    assert rows(sg, db, "SELECT c FROM kl WHERE a IS NULL AND b IS NULL") == [("t",)]
    assert multiset(rows(sg, db, "SELECT c FROM kl WHERE a = 3")) == [(None,), ("",)]


def test_one_column_table(proxy: Any, sg: Any, twins: Twins) -> None:
    """No other column: every row has the empty image; the values come back as a multiset."""
    (db,) = twins(1)
    sg.execute(
        db, "CREATE TABLE one (v text)", "INSERT INTO one VALUES ('a'), ('a'), (NULL), ('b')"
    )
    through(proxy, db, "ALTER TABLE one DROP COLUMN v")
    assert rows(sg, db, "SELECT count(*) FROM one") == [(4,)]
    op = one_op(sg, db)
    assert sg.undo(db, op) == [f"operation {op}: re-added column public.one.v with 4 values"]
    assert multiset(rows(sg, db, "SELECT v FROM one")) == [(None,), ("a",), ("a",), ("b",)]


WEIRD = """
CREATE TYPE kl_pair AS (x int, y text);
CREATE DOMAIN kl_pos AS int CHECK (VALUE > 0);
CREATE TABLE geo (
    "we""ird col" point,
    "ünï côde" jsonb,
    arr int[],
    comp kl_pair,
    dom kl_pos,
    ts timestamptz,
    f float8,
    "the value" text
);
INSERT INTO geo VALUES
    ('(1,2)', '{"b": 1, "a": [1, null]}', '{1,NULL,3}', '(1,"a b")', 1,
     '2026-01-02 03:04:05.678+01', 0.1, 'one'),
    ('(1,2)', '{"b": 1, "a": [1, null]}', '{1,NULL,3}', '(1,"a b")', 1,
     '2026-01-02 03:04:05.678+01', 0.1, 'one again'),
    ('(1,2.5)', '{}', '{}', '(,)', 2, NULL, 'NaN', NULL),
    (NULL, 'null', NULL, NULL, NULL, 'infinity', -0.0, 'three');
"""


def test_types_without_equality_and_odd_names(proxy: Any, sg: Any, twins: Twins) -> None:
    """point has no equality operator, jsonb/arrays/composites/domains compare as text; the
    session's formats (DateStyle, extra_float_digits) do not change what matches."""
    (db,) = twins(1)
    sg.execute(db, WEIRD)
    q = (
        'SELECT "we""ird col"::text, "ünï côde", arr, comp::text, dom, ts::text, f::text,'
        ' "the value" FROM geo'
    )
    before = rows(sg, db, q)
    through(
        proxy,
        db,
        "SET DateStyle = 'German, DMY'",
        "SET extra_float_digits = -5",
        "SET TimeZone = 'Pacific/Chatham'",
        'ALTER TABLE geo DROP COLUMN "the value"',
    )
    op = one_op(sg, db)
    assert sg.undo(db, op) == [
        f'operation {op}: re-added column public.geo."the value" with 4 values'
    ]
    assert multiset(rows(sg, db, q)) == multiset(before)


def test_ten_thousand_rows(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE many (g int, v text)",
        "INSERT INTO many SELECT g % 97, md5(g::text) FROM generate_series(1, 10000) g",
    )
    digest = "SELECT md5(string_agg(g || ':' || v, ',' ORDER BY g, v)) FROM many"
    before = rows(sg, db, digest)
    through(proxy, db, "ALTER TABLE many DROP COLUMN v")
    op = one_op(sg, db)
    assert sg.undo(db, op) == [f"operation {op}: re-added column public.many.v with 10000 values"]
    assert rows(sg, db, digest) == before


def test_images_made_to_collide(proxy: Any, sg: Any, twins: Twins) -> None:
    """The role changes rows after the DROP so that another row's image becomes that of a
    row whose value it wants: a value still goes only to a row equal, in every other
    column, to the row it was taken from, once; the row changed since gets NULL."""
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE acct (owner text, n int, secret text)",
        "INSERT INTO acct VALUES ('alice', 1, 's1'), ('bob', 2, 's2'), ('carol', 3, 's3')",
    )
    through(proxy, db, "ALTER TABLE acct DROP COLUMN secret")
    op = one_op(sg, db)
    through(
        proxy,
        db,
        # bob's row made to look like alice's
        "UPDATE acct SET owner = 'alice', n = 1 WHERE owner = 'bob'",
        "INSERT INTO acct VALUES ('alice', 1)",  # and a third one
    )
    lines = sg.undo(db, op)
    assert lines == [
        f"operation {op}: re-added column public.acct.secret with 2 values"
        " (2 rows changed or added since: NULL)"
    ]
    got = multiset(rows(sg, db, "SELECT owner, n, secret FROM acct"))
    assert got == [("alice", 1, None), ("alice", 1, None), ("alice", 1, "s1"), ("carol", 3, "s3")]
    # s2 was taken from (bob, 2): no row looks like that any more, so it is nowhere
    assert rows(sg, db, "SELECT count(*) FROM acct WHERE secret = 's2'") == [(0,)]


def test_later_drop_of_an_image_column_blocks_undo(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(
        db, "CREATE TABLE kl2 (a int, b text, c text)", "INSERT INTO kl2 VALUES (1, 'x', 'y')"
    )
    through(proxy, db, "ALTER TABLE kl2 DROP COLUMN c")
    first = one_op(sg, db)
    through(proxy, db, "ALTER TABLE kl2 DROP COLUMN b")
    second = max(sg.active_ops(db))
    with pytest.raises(psycopg.Error) as info:
        sg.undo(db, first)
    assert info.value.diag.sqlstate == "55006"
    assert info.value.diag.message_hint == f"Undo operation {second} first, or use --cascade."
    with sg.connect(db) as c:
        c.execute("SELECT * FROM softguard.undo_op(%s, NULL, true)", [first])
    assert rows(sg, db, "SELECT a, b, c FROM kl2") == [(1, "x", "y")]


def test_several_columns_in_one_statement(proxy: Any, sg: Any, twins: Twins) -> None:
    """Each dropped column is kept by the columns the statement leaves alone."""
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE kl3 (a int, b text, c text, d int)",
        "INSERT INTO kl3 VALUES (1, 'b1', 'c1', 10), (1, 'b2', 'c2', 10), (2, 'b3', NULL, 20)",
    )
    before = rows(sg, db, "SELECT a, b, c, d FROM kl3")
    through(proxy, db, "ALTER TABLE kl3 DROP COLUMN b, DROP COLUMN c")
    op = one_op(sg, db)
    sg.undo(db, op)
    got = rows(sg, db, "SELECT a, b, c, d FROM kl3")
    # (1, 10) has two rows: b and c come back as a multiset each
    assert multiset([(r[0], r[3]) for r in got]) == multiset([(r[0], r[3]) for r in before])
    assert multiset([(r[0], r[1]) for r in got]) == multiset([(r[0], r[1]) for r in before])
    assert multiset([(r[0], r[2]) for r in got]) == multiset([(r[0], r[2]) for r in before])
    assert (2, "b3", None, 20) in got


# -- ALTER COLUMN ... TYPE without a key ----------------------------------------------------


def test_alter_type_without_key_then_undo(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE kt (a int, b text, c text)",
        # same image, old values that become the same new value
        "INSERT INTO kt VALUES (1, '007', 'x'), (1, '7', 'x'), (1, ' 7', 'x'),"
        # same image, old values that stay apart: their pairing must hold
        " (2, '1', 'y'), (2, '2', 'y'), (2, '3', 'y'), (NULL, NULL, NULL), (4, '04', NULL)",
    )
    before = rows(sg, db, "SELECT a, b, c FROM kt")
    notices = through(proxy, db, "ALTER TABLE kt ALTER COLUMN b TYPE int USING trim(b)::int")
    assert notices and "ALTER COLUMN TYPE public.kt.b" in notices[0]
    op = one_op(sg, db)
    sg.execute(
        db, "UPDATE kt SET b = 5 WHERE a = 2 AND b = 2", "INSERT INTO kt VALUES (6, 66, 'z')"
    )
    assert sg.undo(db, op) == [
        f"operation {op}: column public.kt.b back to text, 7 values restored"
        " (2 rows added or changed since: converted back)"
    ]
    want = [r for r in before if r != (2, "2", "y")] + [(2, "5", "y"), (6, "66", "z")]
    assert multiset(rows(sg, db, "SELECT a, b, c FROM kt")) == multiset(want)
    assert rows(
        sg,
        db,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'kt'::regclass AND attname = 'b'",
    ) == [("text",)]


def test_alter_type_of_every_column_stays_refused(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(db, "CREATE TABLE kt1 (b text)", "INSERT INTO kt1 VALUES ('1')")
    with pytest.raises(psycopg.Error) as info:
        through(proxy, db, "ALTER TABLE kt1 ALTER COLUMN b TYPE int USING b::int")
    assert info.value.diag.sqlstate == "0A000"
    assert "every other column" in (info.value.diag.message_primary or "")
    assert info.value.diag.message_hint
    assert sg.active_ops(db) == []


# -- identity columns -----------------------------------------------------------------------

IDENTITY = {
    "always_keyed": (
        "CREATE TABLE idt (k int PRIMARY KEY, v text,"
        " i int GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5 CACHE 3))",
        "INSERT INTO idt (k, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "INSERT INTO idt (k, v) VALUES (99, 'n') RETURNING i",
        3,
    ),
    "by_default_keyless": (
        "CREATE TABLE idt (v text, i bigint GENERATED BY DEFAULT AS IDENTITY"
        " (MINVALUE -100 START WITH -3 INCREMENT BY -2 CYCLE))",
        "INSERT INTO idt (v) VALUES ('a'), ('a'), ('b'); INSERT INTO idt VALUES ('c', 42)",
        "INSERT INTO idt (v) VALUES ('n') RETURNING i",
        0,
    ),
    "always_primary_key": (
        "CREATE TABLE idt (i int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)",
        "INSERT INTO idt (v) VALUES ('a'), ('b');"
        " SELECT nextval(pg_get_serial_sequence('idt', 'i'))",
        "INSERT INTO idt (v) VALUES ('n') RETURNING i",
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(IDENTITY))
def test_identity_column_dropped_then_undone(proxy: Any, sg: Any, twins: Twins, case: str) -> None:
    """Values, identity kind, sequence options and the next value all come back: an insert
    after the undo gets what it would have got had the column never been dropped."""
    create, fill, insert, n = IDENTITY[case]
    twin, db = twins(2)
    for d in (twin, db):
        sg.execute(d, create, fill)
    ident = (
        "SELECT a.attname, a.attidentity, a.attnotnull, s.seqtypid::regtype, s.seqstart,"
        " s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,"
        " pg_get_serial_sequence('idt', 'i')"
        " FROM pg_attribute a JOIN pg_sequence s"
        " ON s.seqrelid = pg_get_serial_sequence('idt', 'i')::regclass"
        " WHERE a.attrelid = 'idt'::regclass AND a.attname = 'i'"
    )
    values = "SELECT v, i FROM idt"
    through(proxy, db, "ALTER TABLE idt DROP COLUMN i")
    op = one_op(sg, db)
    n = n or len(rows(sg, db, "SELECT * FROM idt"))
    assert sg.undo(db, op) == [f"operation {op}: re-added column public.idt.i with {n} values"]
    assert rows(sg, db, ident) == rows(sg, twin, ident)
    assert multiset(rows(sg, db, values)) == multiset(rows(sg, twin, values))
    assert rows(sg, db, insert) == rows(sg, twin, insert)
    if case == "always_primary_key":
        pk = "SELECT conname FROM pg_constraint WHERE conrelid = 'idt'::regclass"
        assert rows(sg, db, pk) == [("idt_pkey",)]


def test_identity_rows_added_since_get_the_next_values(proxy: Any, sg: Any, twins: Twins) -> None:
    (db,) = twins(1)
    sg.execute(
        db,
        "CREATE TABLE idn (v text, i int GENERATED ALWAYS AS IDENTITY)",
        "INSERT INTO idn (v) VALUES ('a'), ('b')",
    )
    through(proxy, db, "ALTER TABLE idn DROP COLUMN i")
    op = one_op(sg, db)
    sg.execute(db, "INSERT INTO idn VALUES ('c')")
    assert sg.undo(db, op) == [
        f"operation {op}: re-added column public.idn.i with 2 values"
        " (1 row changed or added since: new identity values)"
    ]
    assert multiset(rows(sg, db, "SELECT v, i FROM idn")) == [("a", 1), ("b", 2), ("c", 3)]
    assert rows(sg, db, "INSERT INTO idn (v) VALUES ('d') RETURNING i") == [(4,)]


# -- partitions and inheritance children ----------------------------------------------------

FAMILIES = {
    "partitioned_keyless": [
        "CREATE TABLE fam (a int, b text) PARTITION BY RANGE (a)",
        "CREATE TABLE fam1 PARTITION OF fam FOR VALUES FROM (0) TO (10)",
        "CREATE TABLE fam2 PARTITION OF fam FOR VALUES FROM (10) TO (20)",
        "CREATE INDEX ON fam (b)",
        "INSERT INTO fam VALUES (1, 'x'), (1, 'y'), (11, 'z'), (12, NULL)",
    ],
    "partitioned_keyed": [
        "CREATE TABLE fam (a int PRIMARY KEY, b text) PARTITION BY RANGE (a)",
        "CREATE TABLE fam1 PARTITION OF fam FOR VALUES FROM (0) TO (10)",
        "CREATE TABLE fam2 PARTITION OF fam FOR VALUES FROM (10) TO (20)",
        "INSERT INTO fam VALUES (1, 'x'), (2, 'y'), (11, 'z')",
    ],
    "inherited_keyless": [
        "CREATE TABLE fam (a int, b text)",
        "CREATE TABLE fam1 (x int) INHERITS (fam)",
        "INSERT INTO fam VALUES (1, 'x'), (1, 'y')",
        "INSERT INTO fam1 VALUES (1, 'x', 5), (2, 'q', 6)",
    ],
}


@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_column_of_a_parent_and_its_children(proxy: Any, sg: Any, twins: Twins, case: str) -> None:
    """Re-adding the parent's column adds the children's: their values follow, by their own
    key or image."""
    (db,) = twins(1)
    sg.execute(db, *FAMILIES[case])
    q = "SELECT tableoid::regclass::text, a, b FROM fam"
    before = rows(sg, db, q)
    through(proxy, db, "ALTER TABLE fam DROP COLUMN b")
    sg.undo(db, one_op(sg, db))
    assert multiset(rows(sg, db, q)) == multiset(before)
