"""Values put back by undo are the values the rows held, not text read back in the catalog of
undo time (decision 0022, "Restore forms"), through softguard against a direct twin.

For each class of values whose text the catalog decides (an enum label; the name of a table,
type, function, role or schema under a reg* type; alone, in an array, a domain or a
composite) a table `rt (id int PRIMARY KEY, k <type>)` holds two rows whose k differ and a
NULL. Through softguard the rows are deleted, truncated, updated (update protection), or k is
dropped or retyped; then, on both databases alike, the catalog is changed so that the two k
values swap their texts (labels, schema or role names swapped: no row is written); then
undo. Each row must hold its own k again, as on the twin that never lost it: compared by text
after the same swap on both sides, which is comparing by oid (labels and names are unique).
When the object a kept value names is dropped before undo, undo refuses (42704) naming the
column, and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

Twins = Callable[..., list[str]]


@dataclass(frozen=True)
class Case:
    setup: str  # objects the column type needs; {r1} {r2}: two roles of this test
    typ: str
    values: tuple[str, str]  # two k values whose texts the mutation swaps
    mutate: tuple[str, ...] = ()  # per database; roles are renamed once (cluster-wide)
    swap_roles: bool = False
    drop: str = ""  # drops what the first value names (refusal case); "" for none


SWAP_LABELS = (
    "ALTER TYPE mood RENAME VALUE 'a' TO 'tmp'",
    "ALTER TYPE mood RENAME VALUE 'b' TO 'a'",
    "ALTER TYPE mood RENAME VALUE 'tmp' TO 'b'",
)
SWAP_SCHEMAS = (
    "ALTER SCHEMA s1 RENAME TO s_tmp",
    "ALTER SCHEMA s2 RENAME TO s1",
    "ALTER SCHEMA s_tmp RENAME TO s2",
)
MOOD = "CREATE TYPE mood AS ENUM ('a', 'b', 'c');"
SCHEMAS = "CREATE SCHEMA s1; CREATE SCHEMA s2;"


def in_both(sql: str) -> str:
    """The same object made in schema s1 and in s2."""
    return SCHEMAS + sql.replace("@", "s1") + sql.replace("@", "s2")


CASES: dict[str, Case] = {
    "enum": Case(MOOD, "mood", ("'a'", "'b'"), SWAP_LABELS),
    "enum_array": Case(MOOD, "mood[]", ("'[0:1]={a,c}'", "'{{b,c},{a,NULL}}'"), SWAP_LABELS),
    "enum_domain": Case(
        MOOD + "CREATE DOMAIN dmood AS mood CHECK (VALUE <> 'c');",
        "dmood",
        ("'a'", "'b'"),
        SWAP_LABELS,
    ),
    "enum_composite": Case(
        MOOD + "CREATE TYPE pm AS (m mood, t text);",
        "pm",
        ("ROW('a', 'x,\"y')", "ROW('b', NULL)"),
        SWAP_LABELS,
    ),
    "regclass": Case(
        in_both("CREATE TABLE @.t (x int);"),
        "regclass",
        ("'s1.t'", "'s2.t'"),
        SWAP_SCHEMAS,
        drop="DROP TABLE s1.t",
    ),
    "regtype": Case(
        in_both("CREATE DOMAIN @.ty AS int;"),
        "regtype",
        ("'s1.ty'", "'s2.ty'"),
        SWAP_SCHEMAS,
        drop="DROP DOMAIN s1.ty",
    ),
    "regproc": Case(
        in_both("CREATE FUNCTION @.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
        "regproc",
        ("'s1.f'", "'s2.f'"),
        SWAP_SCHEMAS,
        drop="DROP FUNCTION s1.f()",
    ),
    "regprocedure": Case(
        in_both("CREATE FUNCTION @.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
        "regprocedure",
        ("'s1.f()'", "'s2.f()'"),
        SWAP_SCHEMAS,
        drop="DROP FUNCTION s1.f()",
    ),
    "regrole": Case("", "regrole", ("'{r1}'", "'{r2}'"), swap_roles=True, drop='DROP ROLE "{r1}"'),
    "regnamespace": Case(
        SCHEMAS, "regnamespace", ("'s1'", "'s2'"), SWAP_SCHEMAS, drop="DROP SCHEMA s1"
    ),
}

STATEMENTS = {
    "delete": "DELETE FROM rt WHERE id > 0",
    "truncate": "TRUNCATE rt",
    "update": "UPDATE rt SET k = NULL",
    "drop_column": "ALTER TABLE rt DROP COLUMN k",
    "retype": "ALTER TABLE rt ALTER COLUMN k TYPE text",
}
SESSION = ("SET search_path = s2, s1, public",)


@pytest.fixture
def roles(sg: Any) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"r1": f"rt_r1_{tag}", "r2": f"rt_r2_{tag}"}
    with sg.connect("postgres") as c:
        for n in names.values():
            c.execute(f'CREATE ROLE "{n}"'.encode())
    try:
        yield names
    finally:
        with sg.connect("postgres") as c:
            for n in (*names.values(), f"rt_tmp_{tag}"):
                c.execute(f'DROP ROLE IF EXISTS "{n}"'.encode())


@pytest.fixture(scope="module")
def updating(proxy_factory: Any) -> Any:
    return proxy_factory("--protect-updates", fresh=True)


def with_roles(text: str, roles: dict[str, str]) -> str:
    for k, name in roles.items():
        text = text.replace("{" + k + "}", name)
    return text


def table_rows(sg: Any, db: str) -> list[tuple[Any, ...]]:
    with sg.connect(db) as c:
        return c.execute("SELECT id, k::text FROM public.rt ORDER BY id").fetchall()


def prepare(
    sg: Any, dbs: list[str], proxy: Any, roles: dict[str, str], case: str, stmt: str
) -> int:
    """The table on every database of `dbs`, the statement through softguard on the last:
    returns its operation."""
    c = CASES[case]
    fill = ", ".join(
        f"({i + 1}, ({with_roles(v, roles)})::{c.typ})" for i, v in enumerate(c.values)
    )
    for d in dbs:
        sg.execute(
            d,
            *([with_roles(c.setup, roles)] if c.setup else []),
            f"CREATE TABLE public.rt (id int PRIMARY KEY, k {c.typ})",
            f"INSERT INTO public.rt VALUES {fill}, (3, NULL)",
        )
    seen: list[str] = []
    with psycopg.connect(proxy.dsn(dbs[-1]), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
        for s in (*SESSION, STATEMENTS[stmt]):
            conn.execute(s.encode())
    assert any(n.startswith("softguard:") and "reversible" in n for n in seen), seen
    (op,) = sg.active_ops(dbs[-1])
    return int(op)


def swap(sg: Any, dbs: list[str], roles: dict[str, str], case: str) -> None:
    c = CASES[case]
    for d in dbs:
        if c.mutate:
            sg.execute(d, *c.mutate)
    if c.swap_roles:
        tmp = roles["r1"].replace("rt_r1_", "rt_tmp_")
        sg.execute(
            "postgres",
            f'ALTER ROLE "{roles["r1"]}" RENAME TO "{tmp}"',
            f'ALTER ROLE "{roles["r2"]}" RENAME TO "{roles["r1"]}"',
            f'ALTER ROLE "{tmp}" RENAME TO "{roles["r2"]}"',
        )


def proxy_for(stmt: str, proxy: Any, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("updating") if stmt == "update" else proxy


@pytest.mark.parametrize("stmt", sorted(STATEMENTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_swapped_texts_give_back_the_values_held(
    proxy: Any,
    sg: Any,
    twins: Twins,
    roles: dict[str, str],
    request: pytest.FixtureRequest,
    case: str,
    stmt: str,
) -> None:
    twin, db = twins(2)
    op = prepare(sg, [twin, db], proxy_for(stmt, proxy, request), roles, case, stmt)
    swap(sg, [twin, db], roles, case)
    sg.undo(db, op)
    assert table_rows(sg, db) == table_rows(sg, twin)


@pytest.mark.parametrize("stmt", sorted(STATEMENTS))
@pytest.mark.parametrize("case", sorted(n for n, c in CASES.items() if c.drop))
def test_value_whose_object_is_gone_refuses(
    proxy: Any,
    sg: Any,
    twins: Twins,
    roles: dict[str, str],
    request: pytest.FixtureRequest,
    case: str,
    stmt: str,
) -> None:
    (db,) = twins(1)
    op = prepare(sg, [db], proxy_for(stmt, proxy, request), roles, case, stmt)
    before = table_rows_or_columns(sg, db)
    sg.execute("postgres" if CASES[case].swap_roles else db, with_roles(CASES[case].drop, roles))
    with sg.connect(db) as c, pytest.raises(psycopg.errors.UndefinedObject) as err:
        c.execute("SELECT softguard.undo_op(%s)", [op])
    assert '"k"' in str(err.value) or ".k" in str(err.value), str(err.value)
    assert "no longer exists" in str(err.value)
    assert table_rows_or_columns(sg, db) == before
    assert sg.active_ops(db) == [op]


def table_rows_or_columns(sg: Any, db: str) -> tuple[Any, ...]:
    with sg.connect(db) as c:
        cols = c.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.rt'::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum"
        ).fetchall()
        rows = c.execute("SELECT rt::text FROM public.rt ORDER BY id").fetchall()
    return cols, rows


def test_pinned_types_skipped_hold_no_enum_or_reg(
    proxy: Any, sg: Any, twins: Twins, roles: dict[str, str]
) -> None:
    """_capture_columns answers the types initdb pins (oids below 10000) without a catalog
    lookup, from a fixed list of those that hold reg* values: the list is complete on this
    server, so no pinned type escapes the restore form."""
    (db,) = twins(1)
    prepare(sg, [db], proxy, roles, "enum", "delete")  # installs the ledger
    with sg.connect(db) as c:
        missed = c.execute(
            "SELECT t.oid::regtype::text FROM pg_type t"
            " WHERE t.oid < 10000 AND t.typtype <> 'p' AND softguard._restore_unstable(t.oid)"
            " AND softguard._restore_pinned(t.oid)"
        ).fetchall()
    assert missed == []


@pytest.mark.parametrize("stmt", ["delete", "drop_column"])
def test_purge_archive_writes_values_under_their_names_of_now(
    proxy: Any,
    sg: Any,
    twins: Twins,
    roles: dict[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Any,
    stmt: str,
) -> None:
    """The purge archive of a capture holding enum values in their restore form: the CSV has
    one column per captured column and the labels (after a swap, the labels of now, as undo
    would put them back), not the oids the ledger keeps."""
    import json

    from support.cli import run_cli

    (db,) = twins(1)
    op = prepare(sg, [db], proxy_for(stmt, proxy, request), roles, "enum", stmt)
    swap(sg, [db], roles, "enum")
    archive = tmp_path / "archive"
    r = run_cli(
        "purge", "--dsn", sg.dsn(db), "--older-than", "0s", "--archive", str(archive), "--yes"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((archive / f"op-{op}" / "manifest.json").read_text())
    (cap,) = [c for c in manifest["captures"] if c.get("file")]
    assert cap["file_format"] == "columns", cap
    lines = (archive / f"op-{op}" / cap["file"]).read_text().splitlines()
    column = "sg_value" if stmt == "drop_column" else "k"
    head = lines[0].split(",")
    by_id = {f[head.index("id")]: f[head.index(column)] for f in (x.split(",") for x in lines[1:])}
    # row 1 held the member labelled 'a' then, 'b' since the swap; row 2 the other one
    assert by_id == {"1": "b", "2": "a", "3": ""}, lines
