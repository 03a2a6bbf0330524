"""psql through the proxy prints exactly what it prints directly (DESIGN.md §1).

psql is run as a subprocess (`-X`, no ~/.psqlrc) against the direct DSN and the proxied
one; return code, stdout and stderr must be identical. Nothing printed may contain the
port (which differs), so no \\conninfo.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.proxy import via_direct

from softguard.embedded import bundled_pg_bin_dir
from softguard.ledger import apply_migrations

PSQL_TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def schema(pg_server: Any, dbname: str) -> None:
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as c:
        c.execute(
            """
            CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8,2));
            INSERT INTO items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, 20) g;
            CREATE TABLE loaded (id int, name text, price numeric(8,2));
            COMMENT ON TABLE items IS 'things';
            """
        )
        # The first protected statement through softguard installs the ledger, whose
        # capture triggers then show in \d: install it up front so that direct and
        # proxied runs describe the same catalog.
        apply_migrations(c)


def psql(
    pg_server: Any, dsn: str, *args: str, stdin: str | None = None, psql_bin: Path | None = None
) -> tuple[tuple[int, str, str], int]:
    """(return code, stdout, stderr without softguard's NOTICE lines), and how many such
    lines there were."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCONNECT_TIMEOUT="10", PGAPPNAME="psql", LC_ALL="C", PAGER="cat")
    res = subprocess.run(
        [str(psql_bin or pg_server.bin("psql")), "-X", "-v", "ON_ERROR_STOP=0", "-d", dsn, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT,
        env=env,
    )
    err, n = _SOFTGUARD_NOTICE.subn("", res.stderr)
    return (res.returncode, res.stdout, err), n


# The one line DESIGN §2 adds for a reversible operation; its own tests check it.
_SOFTGUARD_NOTICE = re.compile(r"^(?:psql:[^\n]*?: )?NOTICE:  softguard: [^\n]*\n", re.MULTILINE)


def compare(
    pg_server: Any,
    dsns: tuple[str, str],
    *args: str,
    stdin: str | None = None,
    psql_bin: Path | None = None,
    softguard_notices: int = 0,
) -> Any:
    """psql directly and through the proxy print the same, but for exactly
    ``softguard_notices`` softguard NOTICE lines (none on ordinary traffic)."""
    direct, n_direct = psql(pg_server, dsns[0], *args, stdin=stdin, psql_bin=psql_bin)
    proxied, n_proxied = psql(pg_server, dsns[1], *args, stdin=stdin, psql_bin=psql_bin)
    assert proxied == direct
    assert (n_direct, n_proxied) == (0, 0 if via_direct() else softguard_notices)
    return direct


def test_multi_statement_c(pg_server: Any, dsns: tuple[str, str]) -> None:
    code, out, err = compare(pg_server, dsns, "-c", "select 1 as one; select 2 as two")
    assert code == 0 and err == ""
    assert "one" in out and "two" in out


def test_several_c_and_formats(pg_server: Any, dsns: tuple[str, str]) -> None:
    code, out, _ = compare(
        pg_server,
        dsns,
        "-c",
        "select id, name, price from items order by id limit 5",
        "-A",
        "-F",
        "|",
        "-c",
        "select count(*) from items",
        "-c",
        "select null::int as n, 'x'::text as t, array[1,2] as a, '{\"k\": 1}'::jsonb as j",
    )
    assert code == 0 and "1|item 1|0.50" in out


def test_error_with_position(pg_server: Any, dsns: tuple[str, str]) -> None:
    code, _out, err = compare(pg_server, dsns, "-c", "select * from nosuch")
    assert code == 1
    assert err == (
        'ERROR:  relation "nosuch" does not exist\n'
        "LINE 1: select * from nosuch\n"
        "                      ^\n"
    )


def test_script_with_errors_notices_and_variables(pg_server: Any, dsns: tuple[str, str]) -> None:
    script = r"""
\set lim 3
\set who 'world'
select :'who' as greeting, :lim + 1 as n;
select id, name from items where id <= :lim order by id;
select 1 +;
select nosuch from items;
DO $$ BEGIN RAISE NOTICE 'notice from %', 'plpgsql'; RAISE WARNING 'a warning'; END $$;
drop table if exists not_here;
begin;
select 1/0;
select 'in failed tx';
rollback;
select count(*) as cnt from items \gset
\echo count is :cnt
select :cnt * 2 as doubled;
select 'a' as x, 'b' as y \gx
\pset format csv
select id, price from items where id < 4 order by id;
\pset format aligned
\d items
\dt
create temp table tt (a int);
insert into tt values (1), (2);
update tt set a = a + 1;
delete from tt;
\echo done
"""
    code, out, err = compare(pg_server, dsns, "-f", "-", stdin=script)
    assert code == 0  # ON_ERROR_STOP=0: errors are reported, the script goes on
    assert "count is 20" in out and "done" in out
    assert "INSERT 0 2" in out and "UPDATE 2" in out and "DELETE 2" in out
    assert 'psql:<stdin>:6: ERROR:  syntax error at or near ";"' in err
    assert "NOTICE:  notice from plpgsql" in err
    assert "current transaction is aborted" in err


def test_copy_in_and_out(pg_server: Any, dsns: tuple[str, str], tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("".join(f'{i},"name, {i}",{i}.25\n' for i in range(1, 301)))
    outs = []
    for i, dsn in enumerate(dsns):
        dest = tmp_path / f"out{i}.csv"
        res = psql(
            pg_server,
            dsn,
            "-c",
            "truncate loaded",
            "-c",
            f"\\copy loaded from '{src}' with (format csv)",
            "-c",
            f"\\copy (select * from loaded order by id) to '{dest}' with (format csv, header)",
            "-c",
            "\\copy items to stdout",
            "-c",
            "select count(*), sum(price) from loaded",
        )
        outs.append((res, dest.read_text()))
    (direct, n_direct), copied = outs[0]
    (proxied, n_proxied), proxied_copied = outs[1]
    assert (proxied, proxied_copied) == (direct, copied)
    # the proxied run truncates the 300 rows the direct run loaded: a reversible TRUNCATE
    assert (n_direct, n_proxied) == (0, 0 if via_direct() else 1)
    code, out, err = direct
    assert code == 0 and err == ""
    assert "COPY 300" in out
    assert copied.splitlines()[1] == '1,"name, 1",1.25'


def test_copy_from_stdin_inline(pg_server: Any, dsns: tuple[str, str]) -> None:
    script = "truncate loaded;\ncopy loaded from stdin;\n1\ta\t1.5\n2\tb\t2.5\n\\.\n"
    script += "copy loaded from stdin;\nnot-a-number\tx\t1\n\\.\nselect * from loaded;\n"
    # the direct run loaded rows first: the proxied TRUNCATE is a reversible operation
    _code, out, err = compare(pg_server, dsns, "-f", "-", stdin=script, softguard_notices=1)
    assert "COPY 2" in out and "invalid input syntax for type integer" in err


def _psql_major(path: Path) -> int:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    return int(re.findall(r"(\d+)", out.stdout)[0])


def test_extended_protocol_bind(pg_server: Any, dsns: tuple[str, str]) -> None:
    # \bind (extended protocol from psql) needs psql 16+: take the server's own psql, or
    # the one bundled in the softguard[embedded] package.
    candidates = [pg_server.bin("psql")]
    bundled = bundled_pg_bin_dir()
    if bundled is not None:
        candidates.append(bundled / "psql")
    psql_bin = next((p for p in candidates if p.exists() and _psql_major(p) >= 16), None)
    if psql_bin is None:
        pytest.skip("\\bind needs psql 16+")
    script = (
        "select $1::int + $2::int as s \\bind 40 2 \\g\n"
        "select $1 \\bind \\g\n"
        "select $1::text as t, $2::int as i \\bind hello 7 \\g\n"
    )
    _code, out, err = compare(pg_server, dsns, "-f", "-", stdin=script, psql_bin=psql_bin)
    assert " 42" in out and "hello" in out
    assert "bind message supplies 0 parameters" in err


def test_single_transaction_and_on_error_stop(pg_server: Any, dsns: tuple[str, str]) -> None:
    script = "insert into loaded values (9000, 'x', 1);\nselect 1/0;\nselect 'unreached';\n"
    code, out, _err = compare(
        pg_server, dsns, "-1", "-v", "ON_ERROR_STOP=1", "-f", "-", stdin=script
    )
    assert code == 3 and "unreached" not in out
    code, out, _ = compare(
        pg_server, dsns, "-At", "-c", "select count(*) from loaded where id = 9000"
    )
    assert out == "0\n"
