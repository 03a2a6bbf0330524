"""Row images of keyless tables over values whose text can change without their row being
written (decision 0022, "Stable images"), through softguard against a direct twin.

For each class of such values (enum labels renamed; every reg* type, whose text is a name
the catalog and search_path decide; aclitem, which names roles; timestamptz, which the
session's TimeZone prints; and each of them nested in domains, arrays, composites, ranges
and multiranges) a keyless table `kt (k <type>, v int)` holds rows whose k differ. Through
softguard, under another search_path and TimeZone, `v` is dropped or retyped; then, on both
databases alike, the catalog is changed so that the k values swap their texts (labels,
schema or role names swapped: no row is written); then undo. Each row must hold its own v,
as on the twin that never lost it: a value on another row would be a silent wrong restore.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    extra: tuple[str, ...] = field(default=())


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
    "enum_domain": Case(
        MOOD + "CREATE DOMAIN dmood AS mood CHECK (VALUE <> 'c');",
        "dmood",
        ("'a'", "'b'"),
        SWAP_LABELS,
    ),
    "enum_array": Case(
        MOOD, "mood[]", ("'[0:1]={a,c}'", "'[0:1]={b,c}'"), SWAP_LABELS, extra=("'{{a},{b}}'",)
    ),
    "enum_composite": Case(
        MOOD + "CREATE TYPE pm AS (m mood, t text);",
        "pm",
        ("ROW('a', 'x')", "ROW('b', 'x')"),
        SWAP_LABELS,
        extra=("ROW(NULL, NULL)",),
    ),
    "enum_composite_array": Case(
        MOOD + "CREATE TYPE pm AS (m mood, t text);",
        "pm[]",
        ("ARRAY[ROW('a', 'x')::pm, NULL]", "ARRAY[ROW('b', 'x')::pm, NULL]"),
        SWAP_LABELS,
    ),
    "enum_range": Case(
        MOOD + "CREATE TYPE mr AS RANGE (subtype = mood, multirange_type_name = mmr);",
        "mr",
        ("'[a,c)'", "'[b,c)'"),
        SWAP_LABELS,
        extra=("'empty'", "'(,b]'"),
    ),
    "enum_multirange": Case(
        MOOD + "CREATE TYPE mr AS RANGE (subtype = mood, multirange_type_name = mmr);",
        "mmr",
        ("'{[a,b), [c,c]}'", "'{[b,c)}'"),
        SWAP_LABELS,
        extra=("'{}'",),
    ),
    "regclass": Case(
        in_both("CREATE TABLE @.t (x int);"), "regclass", ("'s1.t'", "'s2.t'"), SWAP_SCHEMAS
    ),
    "regclass_array_domain": Case(
        in_both("CREATE TABLE @.t (x int);") + "CREATE DOMAIN rels AS regclass[];",
        "rels",
        ("'{s1.t,s2.t}'", "'{s2.t,s1.t}'"),
        SWAP_SCHEMAS,
    ),
    "regtype": Case(
        in_both("CREATE DOMAIN @.ty AS int;"), "regtype", ("'s1.ty'", "'s2.ty'"), SWAP_SCHEMAS
    ),
    "regproc": Case(
        in_both("CREATE FUNCTION @.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
        "regproc",
        ("'s1.f'", "'s2.f'"),
        SWAP_SCHEMAS,
    ),
    "regprocedure": Case(
        in_both("CREATE FUNCTION @.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
        "regprocedure",
        ("'s1.f()'", "'s2.f()'"),
        SWAP_SCHEMAS,
    ),
    "regoper": Case(
        in_both(
            "CREATE FUNCTION @.eq(int, int) RETURNS bool LANGUAGE sql AS 'SELECT $1 = $2';"
            "CREATE OPERATOR @.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = @.eq);"
        ),
        "regoper",
        ("'s1.==='", "'s2.==='"),
        SWAP_SCHEMAS,
    ),
    "regoperator": Case(
        in_both(
            "CREATE FUNCTION @.eq(int, int) RETURNS bool LANGUAGE sql AS 'SELECT $1 = $2';"
            "CREATE OPERATOR @.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = @.eq);"
        ),
        "regoperator",
        ("'s1.===(integer,integer)'", "'s2.===(integer,integer)'"),
        SWAP_SCHEMAS,
    ),
    "regnamespace": Case(SCHEMAS, "regnamespace", ("'s1'", "'s2'"), SWAP_SCHEMAS),
    "regconfig": Case(
        in_both("CREATE TEXT SEARCH CONFIGURATION @.cfg (COPY = simple);"),
        "regconfig",
        ("'s1.cfg'", "'s2.cfg'"),
        SWAP_SCHEMAS,
    ),
    "regdictionary": Case(
        in_both("CREATE TEXT SEARCH DICTIONARY @.d (TEMPLATE = simple);"),
        "regdictionary",
        ("'s1.d'", "'s2.d'"),
        SWAP_SCHEMAS,
    ),
    "regcollation": Case(
        in_both('CREATE COLLATION @.co FROM "C";'),
        "regcollation",
        ("'s1.co'", "'s2.co'"),
        SWAP_SCHEMAS,
    ),
    "regclass_in_composite": Case(
        in_both("CREATE TABLE @.t (x int);") + "CREATE TYPE rc AS (r regclass, n int);",
        "rc",
        ("ROW('s1.t', 1)", "ROW('s2.t', 1)"),
        SWAP_SCHEMAS,
    ),
    "regrole": Case("", "regrole", ("'{r1}'", "'{r2}'"), swap_roles=True),
    "aclitem": Case("", "aclitem", ("'{r1}=r/{r2}'", "'{r2}=r/{r1}'"), swap_roles=True),
    "aclitem_array": Case(
        "",
        "aclitem[]",
        ("'{{r1}=r/{r2},{r2}=w/{r1}}'", "'{{r2}=r/{r1},{r1}=w/{r2}}'"),
        swap_roles=True,
    ),
    # no catalog change: equal instants written with other offsets, kept under another
    # TimeZone than undo's
    "timestamptz": Case(
        "",
        "timestamptz",
        ("'2024-03-31 01:30+00'", "'2024-03-31 02:30+00'"),
        extra=("'2024-03-31 03:30+02'", "'infinity'", "'-infinity'"),
    ),
    "tstzrange": Case(
        "",
        "tstzrange",
        ("'[2024-03-31 01:30+00,2024-04-01 00:00+00)'", "'[2024-03-31 02:30+00,)'"),
        extra=("'empty'",),
    ),
    "timestamptz_array": Case(
        "",
        "timestamptz[]",
        ("'{\"2024-03-31 01:30+00\",NULL}'", "'{\"2024-03-31 02:30+00\",NULL}'"),
    ),
    # a CHECK added NOT VALID over a row that breaks it: compared, never re-checked
    "domain_not_valid": Case(
        "CREATE DOMAIN posint AS int;",
        "posint",
        ("-1", "5"),
        extra=("-1",),
    ),
}
POST_SETUP = {
    "domain_not_valid": "ALTER DOMAIN posint ADD CONSTRAINT positive CHECK (VALUE > 0) NOT VALID",
}

STATEMENTS = {
    "drop": "ALTER TABLE kt DROP COLUMN v",
    "retype": "ALTER TABLE kt ALTER COLUMN v TYPE bigint USING v * 1000",
}
SESSION = ("SET search_path = s2, s1, public", "SET TimeZone = 'Asia/Kathmandu'")


@pytest.fixture
def roles(sg: Any) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"r1": f"kt_r1_{tag}", "r2": f"kt_r2_{tag}"}
    with sg.connect("postgres") as c:
        for n in names.values():
            c.execute(f'CREATE ROLE "{n}"'.encode())
    try:
        yield names
    finally:
        with sg.connect("postgres") as c:
            for n in (*names.values(), f"kt_tmp_{tag}"):
                c.execute(f'DROP ROLE IF EXISTS "{n}"'.encode())


def with_roles(text: str, roles: dict[str, str]) -> str:
    for k, name in roles.items():
        text = text.replace("{" + k + "}", name)
    return text


def table_rows(sg: Any, db: str) -> list[tuple[str | None, Any]]:
    with sg.connect(db) as c:
        got = c.execute("SELECT k::text, v FROM public.kt").fetchall()
    return sorted(got, key=lambda r: (r[0] is not None, str(r[0]), str(r[1])))


@pytest.mark.parametrize("stmt", sorted(STATEMENTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_whose_text_changes(
    proxy: Any, sg: Any, twins: Twins, roles: dict[str, str], case: str, stmt: str
) -> None:
    swap_and_undo(proxy, sg, twins, roles, case, stmt, keyed=False)


# The same classes as a primary key (types with a btree equality): rows are found by the
# key, compared by what it holds as images are.
KEYED = [
    "enum",
    "enum_composite",
    "enum_domain",
    "enum_range",
    "regclass",
    "regclass_in_composite",
    "regnamespace",
    "regoperator",
    "regrole",
    "regtype",
]


@pytest.mark.parametrize("stmt", sorted(STATEMENTS))
@pytest.mark.parametrize("case", KEYED)
def test_keys_whose_text_changes(
    proxy: Any, sg: Any, twins: Twins, roles: dict[str, str], case: str, stmt: str
) -> None:
    swap_and_undo(proxy, sg, twins, roles, case, stmt, keyed=True)


def swap_and_undo(
    proxy: Any, sg: Any, twins: Twins, roles: dict[str, str], case: str, stmt: str, keyed: bool
) -> None:
    c = CASES[case]
    twin, db = twins(2)
    values = [with_roles(v, roles) for v in (c.values if keyed else (*c.values, *c.extra))]
    fill = ", ".join(f"(({v})::{c.typ}, {i + 1})" for i, v in enumerate(values))
    for d in (twin, db):
        sg.execute(
            d,
            *([with_roles(c.setup, roles)] if c.setup else []),
            f"CREATE TABLE public.kt (k {c.typ}{' PRIMARY KEY' if keyed else ''}, v int)",
            f"INSERT INTO public.kt VALUES {fill}" + ("" if keyed else ", (NULL, 0)"),
            *([POST_SETUP[case]] if case in POST_SETUP else []),
        )
    seen: list[str] = []
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
        for s in (*SESSION, STATEMENTS[stmt]):
            conn.execute(s.encode())
    assert any(n.startswith("softguard:") and "reversible" in n for n in seen), seen
    (op,) = sg.active_ops(db)
    # the texts of the two k values swap; no row of kt is written
    for d in (twin, db):
        sg.execute(d, *c.mutate)
    if c.swap_roles:
        tmp = roles["r1"].replace("kt_r1_", "kt_tmp_")
        sg.execute(
            "postgres",
            f'ALTER ROLE "{roles["r1"]}" RENAME TO "{tmp}"',
            f'ALTER ROLE "{roles["r2"]}" RENAME TO "{roles["r1"]}"',
            f'ALTER ROLE "{tmp}" RENAME TO "{roles["r2"]}"',
        )
    sg.undo(db, op)
    assert table_rows(sg, db) == table_rows(sg, twin)
    with sg.connect(db) as conn:
        assert conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.kt'::regclass AND attname = 'v'"
        ).fetchall() == [("integer",)]


def test_image_kept_before_version_8_still_undone(pg_server: Any) -> None:
    """A capture taken by a version-7 ledger keeps its image in the types' own text (an
    instant written under the capturing session's TimeZone, an enum label): after the upgrade
    to version 8 undo still reads it as it was written (_image_stable), every value back."""
    from support.ledger_versions import install_ledger_at

    from softguard.ledger import apply_migrations
    from softguard.ledger.migrate import current_version

    with pg_server.scratch_database() as db:
        with psycopg.connect(pg_server.superuser_dsn(db), autocommit=True) as c:
            install_ledger_at(c, 7)
            c.execute(
                "CREATE TYPE mood AS ENUM ('a', 'b');"
                "CREATE TABLE public.kt (t timestamptz, m mood, v int);"
                "INSERT INTO public.kt VALUES ('2024-03-31 01:30+00', 'a', 1),"
                " ('2024-03-31 02:30+00', 'a', 2), ('2024-03-31 01:30+00', 'b', 3), (NULL, NULL, 4)"
            )
            before = sorted(c.execute("SELECT t, m::text, v FROM public.kt").fetchall(), key=str)
            c.execute("SET TimeZone = 'America/St_Johns'")
            c.execute("CALL softguard.alter_op('ALTER TABLE public.kt DROP COLUMN v', '{}')")
            c.execute("RESET TimeZone")
            (op,) = c.execute("SELECT max(id) FROM softguard.operations").fetchone() or (None,)
            apply_migrations(c)
            assert c.execute("SELECT max(version) FROM softguard.migrations").fetchone() == (
                current_version(),
            )
            undone = c.execute("SELECT softguard.undo_op(%s)", [op]).fetchall()
            assert undone == [(f"operation {op}: re-added column public.kt.v with 4 values",)]
            after = sorted(c.execute("SELECT t, m::text, v FROM public.kt").fetchall(), key=str)
            assert after == before


def test_purge_archive_keeps_stable_images_as_columns(
    proxy: Any, sg: Any, twins: Twins, tmp_path: Any
) -> None:
    """The purge archive of a keyless DROP COLUMN over an enum and a timestamptz: the CSV
    still has one column per captured column (the image columns as their stable text, the
    value as itself), not the fallback of whole row texts."""
    import json
    import subprocess
    import sys

    (db,) = twins(1)
    sg.execute(
        db,
        MOOD + "CREATE TABLE public.kt (m mood, t timestamptz, v text);"
        "INSERT INTO public.kt VALUES ('a', '2024-03-31 01:30+00', 'one'), ('b', NULL, 'two')",
    )
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        conn.execute(b"ALTER TABLE kt DROP COLUMN v")
    (op,) = sg.active_ops(db)
    archive = tmp_path / "archive"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "softguard",
            "purge",
            "--dsn",
            sg.dsn(db),
            "--older-than",
            "0s",
            "--archive",
            str(archive),
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((archive / f"op-{op}" / "manifest.json").read_text())
    (cap,) = [c for c in manifest["captures"] if c.get("file")]
    assert cap["file_format"] == "columns", cap
    assert cap["columns"] == [["m", "text"], ["t", "text"], ["sg_value", "text"]]
    text = (archive / f"op-{op}" / cap["file"]).read_text()
    assert "one" in text and "two" in text
