"""The archive of an operation, written before purge destroys it (``purge --archive DIR``).

``archive_operation`` writes ``DIR/op-<id>/``: pg_dump archives of the relations and
schemas the operation keeps, SQL for its routines and types, its captured rows as CSV with
a psql script (load.sql) loading them, a manifest and a README. Identifiers in the SQL it
writes are quoted by ``softguard.sql.classify.quote_ident`` (PostgreSQL's rules: keywords,
case, quotes), the one quoting function of the project.

What holds:
- The archive is built in ``DIR/.op-<id>.partial`` and renamed when complete: an archive
  directory is whole or absent; ``ArchiveFailed`` leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from softguard.ledger.db import ArchiveFailed, PurgeError, error_line, milliseconds
from softguard.ledger.operations import json_default

ARCHIVE_FORMAT = "softguard-purge-archive"
ARCHIVE_FORMAT_VERSION = 1
#: Files of an operation's archive directory (``DIR/op-<id>/``).
MANIFEST = "manifest.json"
README = "README.txt"
TABLES_DUMP = "tables.dump"  # pg_dump -Fc --table=... (relations in softguard_quarantine)
TABLES_LIST = "tables.list"  # pg_restore -l of it, without softguard's capture triggers
SCHEMAS_DUMP = "schemas.dump"  # pg_dump -Fc --schema=... (renamed schemas)
SCHEMAS_LIST = "schemas.list"
DEFINITIONS_SQL = "definitions.sql"  # routines, types, domains kept in softguard_quarantine
LOAD_SQL = "load.sql"  # psql script loading captured rows into scratch tables
RESTORE_SCHEMA = "softguard_restore"  # where load.sql puts captured rows

_CAPTURE_TRIGGER_MARK = "zz_softguard_capture_"


def find_pg_tool(name: str) -> Path:
    """pg_dump / pg_restore: the server binaries softguard uses, else the PATH."""
    try:
        from softguard.embedded import find_pg_bin_dir

        candidate = find_pg_bin_dir() / name
        if candidate.is_file():
            return candidate
    except Exception:
        pass
    found = shutil.which(name)
    if found is None:
        raise PurgeError(f"{name} not found (install the PostgreSQL client tools)")
    return Path(found)


def _run_tool(op: int, args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=3600, env=env)
    except OSError as exc:
        raise ArchiveFailed(op, f"{what}: {exc}") from None
    if done.returncode != 0:
        err = done.stderr.strip().splitlines()
        raise ArchiveFailed(op, f"{what} failed: {err[-1] if err else done.returncode}")
    return done.stdout


def _dump(op: int, dsn: str, target: Path, selectors: list[str], lock_timeout: float) -> list[str]:
    """pg_dump -Fc with these --table/--schema options into target; then write its
    restore list without softguard's capture triggers next to it. Returns the TOC."""
    pg_dump = find_pg_tool("pg_dump")
    pg_restore = find_pg_tool("pg_restore")
    # the password (if the DSN has one) goes through the environment, not the command line
    env = dict(os.environ)
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ArchiveFailed(op, f"invalid DSN: {exc}") from None
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
        dsn = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    _run_tool(
        op,
        [
            str(pg_dump),
            "--format=custom",
            f"--lock-wait-timeout={milliseconds(lock_timeout)}",
            "--no-password",
            f"--file={target}",
            *selectors,
            f"--dbname={dsn}",
        ],
        "pg_dump",
        env,
    )
    toc = _run_tool(op, [str(pg_restore), "--list", str(target)], "pg_restore --list")
    kept = [line for line in toc.splitlines() if _CAPTURE_TRIGGER_MARK not in line]
    target.with_suffix(".list").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return [line for line in kept if line and not line.startswith(";")]


def _definitions(conn: psycopg.Connection[Any], op: int) -> tuple[list[str], list[str]]:
    """SQL for the routines, types and domains the operation keeps in softguard_quarantine
    (pg_dump cannot select them one by one). Returns (statements, labels); ArchiveFailed for
    what cannot be written (aggregates, base types)."""
    statements: list[str] = []
    labels: list[str] = []
    rows = conn.execute(
        """SELECT h.classid::regclass::text, h.objid, h.keyword, h.ident
             FROM softguard._held_objects(%s) h
            WHERE h.classid IN ('pg_proc'::regclass, 'pg_type'::regclass)
            ORDER BY h.classid, h.objid""",
        [op],
    ).fetchall()
    for catalog, objid, keyword, ident in rows:
        if catalog == "pg_proc":
            if keyword == "AGGREGATE":
                raise ArchiveFailed(op, f"aggregate {ident}: pg_dump cannot select it alone")
            r = conn.execute("SELECT pg_get_functiondef(%s::oid)", [objid]).fetchone()
            assert r is not None
            statements.append(str(r[0]).rstrip() + ";")
        else:
            statements.append(_type_definition(conn, op, objid, ident))
        labels.append(f"{keyword.lower()} {ident}")
    return statements, labels


def _type_definition(conn: psycopg.Connection[Any], op: int, objid: int, ident: str) -> str:
    r = conn.execute(
        "SELECT t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,"
        " t.typrelid FROM pg_type t WHERE t.oid = %s",
        [objid],
    ).fetchone()
    assert r is not None
    typtype, base, notnull, default, typrelid = r
    if typtype == "d":
        checks = conn.execute(
            "SELECT format('CONSTRAINT %%I %%s', conname, pg_get_constraintdef(oid))"
            " FROM pg_constraint WHERE contypid = %s ORDER BY conname",
            [objid],
        ).fetchall()
        parts = [f"CREATE DOMAIN {ident} AS {base}"]
        if default is not None:
            parts.append(f"DEFAULT {default}")
        if notnull:
            parts.append("NOT NULL")
        parts.extend(str(c[0]) for c in checks)
        return " ".join(parts) + ";"
    if typtype == "e":
        labels = conn.execute(
            "SELECT quote_literal(enumlabel) FROM pg_enum WHERE enumtypid = %s"
            " ORDER BY enumsortorder",
            [objid],
        ).fetchall()
        return f"CREATE TYPE {ident} AS ENUM ({', '.join(str(x[0]) for x in labels)});"
    if typtype == "c":
        attrs = conn.execute(
            "SELECT format('%%I %%s', attname, format_type(atttypid, atttypmod))"
            " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum",
            [typrelid],
        ).fetchall()
        return f"CREATE TYPE {ident} AS ({', '.join(str(a[0]) for a in attrs)});"
    if typtype == "r":
        sub = conn.execute(
            "SELECT format_type(rngsubtype, NULL) FROM pg_range WHERE rngtypid = %s", [objid]
        ).fetchone()
        assert sub is not None
        return f"CREATE TYPE {ident} AS RANGE (SUBTYPE = {sub[0]});"
    raise ArchiveFailed(op, f"type {ident}: softguard cannot write its definition")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export_captures(
    conn: psycopg.Connection[Any], op: int, directory: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """rows-<capture>.csv for each capture with rows; returns (manifest entries, load.sql)."""
    cur = conn.cursor(row_factory=dict_row)
    captures = cur.execute(
        # columns as the rows were written (a key or image kept as stable text: text)
        "SELECT id, relid, table_identity, event, n_rows, softguard._kept_columns(c) AS columns,"
        " info, created_at FROM softguard.captures c WHERE op_id = %s ORDER BY id",
        [op],
    ).fetchall()
    entries: list[dict[str, Any]] = []
    load = [
        f"-- captured rows of softguard operation {op}: run from this directory,",
        f"--   psql -v ON_ERROR_STOP=1 -d TARGET -f {LOAD_SQL}",
        f"-- Each capture becomes a table {RESTORE_SCHEMA}.op{op}_capture<id>; copy its rows",
        "-- into the live table yourself (INSERT ... SELECT), after checking them.",
        f"CREATE SCHEMA IF NOT EXISTS {RESTORE_SCHEMA};",
    ]
    for cap in captures:
        entry: dict[str, Any] = dict(cap)
        columns = cap["columns"] if isinstance(cap["columns"], list) else None
        if cap["n_rows"] and columns:
            name = f"rows-{cap['id']}.csv"
            path = directory / name
            fmt = _copy_capture(conn, int(cap["id"]), columns, path, cap["table_identity"])
            entry["file"] = name
            entry["file_format"] = fmt
            table = f"{RESTORE_SCHEMA}.op{op}_capture{cap['id']}"
            if fmt == "columns":
                # Here, not at the top: the SQL reader would cost every CLI command's start.
                from softguard.sql.classify import quote_ident

                cols = ", ".join(
                    f"{quote_ident(c[0])} {c[1]}" for c in columns if isinstance(c, list)
                )
            else:
                cols = '"row" text'
            load.append(f"-- {cap['event']} of {cap['table_identity']}: {cap['n_rows']} rows")
            load.append(f"CREATE TABLE {table} ({cols});")
            load.append(f"\\copy {table} FROM '{name}' WITH (FORMAT csv, HEADER true)")
        if cap["event"] == "soft_delete" and cap["n_rows"]:
            # The key and old mark are not the data: the rows themselves, as they are now.
            name = f"soft-deleted-rows-{cap['id']}.csv"
            query_row = conn.execute(
                "SELECT softguard.soft_delete_rows_query(%s)", [cap["id"]]
            ).fetchone()
            if query_row is not None and query_row[0] is not None:
                with conn.transaction():
                    _copy_to(
                        conn,
                        sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
                            sql.SQL(query_row[0])
                        ),
                        directory / name,
                    )
                entry["rows_file"] = name
                table = f"{RESTORE_SCHEMA}.op{op}_rows{cap['id']}"
                load.append(f"-- rows of {cap['table_identity']} soft-deleted, as purge found them")
                load.append(f"CREATE TABLE {table} (LIKE {cap['table_identity']});")
                load.append(f"\\copy {table} FROM '{name}' WITH (FORMAT csv, HEADER true)")
        entries.append(entry)
    return entries, load


def _copy_capture(
    conn: psycopg.Connection[Any], cid: int, columns: list[Any], path: Path, table: str
) -> str:
    """COPY a capture's rows to CSV: one column per captured column ('columns'), or, when
    the row text no longer parses (a type gone since), the row text itself ('row_text').
    Enum and reg* values a ledger kept by what they were (a third element in their column,
    ledger version 9) are written under their names of now, as undo would put them back;
    when one is gone the file falls back to the row texts."""
    try:
        with conn.transaction():
            rtype = _answer(
                conn, "SELECT softguard._row_type(%s, %s)", json.dumps(columns), f"purge{cid}"
            )
            # text or typed (ledger version 10, decision 0030), restore forms rebuilt
            # (_restored_cols): _capture_src reads them all
            src = _answer(
                conn,
                "SELECT softguard._capture_src(%s, %s, ARRAY[%s]::bigint[], %s)",
                json.dumps(columns),
                rtype,
                cid,
                table,
            )
            _copy_to(conn, _csv_of(src), path)
        return "columns"
    except psycopg.Error:
        pass
    with conn.transaction():
        src = _answer(conn, "SELECT softguard._capture_text_src(%s)", cid)
        _copy_to(conn, _csv_of(src), path)
    return "row_text"


def _answer(conn: psycopg.Connection[Any], query: str, *args: Any) -> str:
    """The one value a query of softguard's answers (a type name, a query text)."""
    row = conn.execute(query, list(args)).fetchone()
    assert row is not None
    return str(row[0])


def _csv_of(src: str) -> sql.Composed:
    """COPY of the query `src` (built by the ledger) as CSV with a header."""
    return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(sql.SQL(src))


def _copy_to(conn: psycopg.Connection[Any], query: sql.Composed, path: Path) -> None:
    with path.open("wb") as f, conn.cursor() as cur, cur.copy(query) as copy:
        for data in copy:
            f.write(bytes(data))


def _readme(op: int, manifest: dict[str, Any]) -> str:
    lines = [
        f"softguard archive of operation {op}",
        f"  statement: {manifest['operation'].get('statement')}",
        f"  database:  {manifest['database']} (PostgreSQL {manifest['server_version']})",
        f"  archived:  {manifest['archived_at']} by {manifest['archived_by']}",
        "",
        "The objects are named as they were in quarantine (softguard_quarantine.op<id>_<n>_<name>,",
        "schemas softguard_q<id>_<name>); manifest.json maps them to their original names",
        "(operation.objects, operation.restore). To load them into a database TARGET (a scratch",
        "database is safest):",
        "",
    ]
    files = manifest["files"]
    if DEFINITIONS_SQL in files or TABLES_DUMP in files:
        lines.append("  psql -d TARGET -c 'CREATE SCHEMA IF NOT EXISTS softguard_quarantine'")
    if DEFINITIONS_SQL in files:
        lines.append(f"  psql -v ON_ERROR_STOP=1 -d TARGET -f {DEFINITIONS_SQL}")
    if TABLES_DUMP in files:
        lines.append(f"  pg_restore -d TARGET -L {TABLES_LIST} {TABLES_DUMP}")
    if SCHEMAS_DUMP in files:
        lines.append(f"  pg_restore -d TARGET -L {SCHEMAS_LIST} {SCHEMAS_DUMP}")
    if any("file" in c for c in manifest["captures"]):
        lines.append(f"  psql -v ON_ERROR_STOP=1 -d TARGET -f {LOAD_SQL}   # from this directory")
        lines.append("")
        lines.append(
            "load.sql loads each capture's rows (rows-<capture>.csv) into a table of schema"
        )
        lines.append(f"{RESTORE_SCHEMA}; 'delete'/'truncate' captures are removed rows, 'update'")
        lines.append("captures the rows' values before the change, 'column' captures a dropped")
        lines.append(
            "column's values by key. Copy them into the live tables with INSERT ... SELECT."
        )
    lines.append("")
    lines.append(
        "The *.list files are the dumps' contents without softguard's capture triggers"
        " (they need the softguard ledger); pg_restore -l FILE.dump shows everything."
    )
    lines.append("files and their sha256: see manifest.json.")
    return "\n".join(lines) + "\n"


def archive_operation(
    conn: psycopg.Connection[Any],
    dsn: str,
    op: int,
    directory: Path,
    *,
    lock_timeout: float,
) -> Path:
    """Write operation ``op`` to ``directory/op-<op>/`` and return that path:

    - tables.dump: ``pg_dump --format=custom --table=...`` of the relations it keeps in
      softguard_quarantine; schemas.dump: ``--schema=...`` of its renamed schemas (each
      with a ``.list`` for ``pg_restore -L``: the same without softguard's triggers);
    - definitions.sql: its routines, types and domains in softguard_quarantine;
    - rows-<capture>.csv and load.sql: its captured rows (``COPY ... TO STDOUT``);
    - manifest.json: the ledger row (objects, restore plan), what each file holds, sha256;
    - README.txt: how to load it with pg_restore / psql.

    Raises ArchiveFailed (nothing left behind) if any part cannot be written.
    """
    directory = directory.resolve()
    final = directory / f"op-{op}"
    partial = directory / f".op-{op}.partial"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
    except OSError as exc:
        raise ArchiveFailed(op, f"{directory}: {exc.strerror or exc}") from None
    try:
        manifest = _write_archive(conn, dsn, op, partial, lock_timeout)
        manifest["files"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(partial.iterdir())
        }
        (partial / README).write_text(_readme(op, manifest), encoding="utf-8")
        (partial / MANIFEST).write_text(
            json.dumps(manifest, default=json_default, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    except ArchiveFailed:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except (OSError, psycopg.Error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ArchiveFailed(op, error_line(exc)) from None
    return final


def _write_archive(
    conn: psycopg.Connection[Any], dsn: str, op: int, out: Path, lock_timeout: float
) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    ledger_row = cur.execute("SELECT * FROM softguard.operations WHERE id = %s", [op]).fetchone()
    if ledger_row is None:
        raise ArchiveFailed(op, "no such operation")
    info = conn.execute(
        "SELECT current_database(), current_setting('server_version'), now(), session_user"
    ).fetchone()
    assert info is not None
    relations = cur.execute(
        "SELECT ident, relkind, in_schema FROM softguard.held_relations(%s) ORDER BY relid",
        [op],
    ).fetchall()
    schemas = [
        str(r[0])
        for r in conn.execute(
            "SELECT n.nspname FROM pg_namespace n WHERE n.nspname ~ ('^softguard_q' || %s || '_')"
            " ORDER BY n.nspname",
            [op],
        ).fetchall()
    ]
    manifest: dict[str, Any] = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_FORMAT_VERSION,
        "database": info[0],
        "server_version": info[1],
        "archived_at": info[2],
        "archived_by": info[3],
        "operation": dict(ledger_row),
        "relations": [
            {"name": r["ident"], "relkind": r["relkind"], "schema": r["in_schema"]}
            for r in relations
        ],
        "schemas": schemas,
    }
    loose = [r["ident"] for r in relations if r["in_schema"] is None]
    if loose:
        toc = _dump(op, dsn, out / TABLES_DUMP, [f"--table={t}" for t in loose], lock_timeout)
        manifest["tables_dump"] = {"file": TABLES_DUMP, "list": TABLES_LIST, "toc": toc}
    if schemas:
        toc = _dump(op, dsn, out / SCHEMAS_DUMP, [f"--schema={s}" for s in schemas], lock_timeout)
        manifest["schemas_dump"] = {"file": SCHEMAS_DUMP, "list": SCHEMAS_LIST, "toc": toc}
    statements, labels = _definitions(conn, op)
    if statements:
        (out / DEFINITIONS_SQL).write_text(
            "SET check_function_bodies = off;\n"
            "CREATE SCHEMA IF NOT EXISTS softguard_quarantine;\n" + "\n".join(statements) + "\n",
            encoding="utf-8",
        )
    manifest["definitions"] = labels
    captures, load = _export_captures(conn, op, out)
    manifest["captures"] = captures
    if any("file" in c for c in captures):
        (out / LOAD_SQL).write_text("\n".join(load) + "\n", encoding="utf-8")
    manifest["restore_how"] = (
        "see README.txt: pg_restore -L <list> <dump> for the objects, psql -f definitions.sql"
        " first for routines and types, psql -f load.sql for captured rows"
    )
    return manifest
