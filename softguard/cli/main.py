"""Entry point: ``softguard serve`` and ``softguard explain``."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from softguard.cli.common import fail

if TYPE_CHECKING:
    from softguard.config import Settings

app = typer.Typer(
    name="softguard",
    help="A PostgreSQL proxy that makes destructive SQL reversible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _setup_logging(level: str, log_file: Path | None = None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        from logging.handlers import WatchedFileHandler

        # Watched: after logrotate moves the file, the next line goes to a new one.
        handler = WatchedFileHandler(log_file)
    handler.setFormatter(
        logging.Formatter("%(asctime)s softguard[%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def _die(message: str, code: int = 2) -> typer.Exit:
    return fail(message, code)


@app.command()
def serve(
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on \\[default: 127.0.0.1:6432]")
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="DSN of the PostgreSQL server; unset: start an embedded throwaway server"
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file")] = None,
    upstream_pooler: Annotated[
        str | None,
        typer.Option(
            help="'session' when a session-mode pooler or TCP proxy sits between softguard "
            "and the server, 'transaction' for a transaction-mode pooler (protection per "
            "login role) [default: none]"
        ),
    ] = None,
    users_file: Annotated[
        Path | None,
        typer.Option(help="clients log in to softguard with these verifiers (softguard user)"),
    ] = None,
    upstream_passfile: Annotated[
        Path | None,
        typer.Option(help="passwords softguard logs in to the server with (libpq passfile)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="worker processes sharing the port \\[default: 1]")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="certificate (PEM) for client TLS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="private key (PEM) for client TLS")] = None,
    require_tls: Annotated[
        bool | None,
        typer.Option(
            "--require-tls",
            help="refuse clients that do not negotiate TLS (FATAL 28000); needs --tls-cert",
            show_default=False,
        ),
    ] = None,
    max_client_conn: Annotated[
        int | None, typer.Option(help="client connections per worker \\[default: 5000]")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="data directory for the embedded server")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error \\[default: info]")
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="append the log to this file \\[default: stderr]")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics; keep it on loopback "
            "(e.g. 127.0.0.1:9187); with --workers N, worker i uses PORT+i \\[default: off]",
        ),
    ] = None,
    protect_updates: Annotated[
        bool,
        typer.Option(
            "--protect-updates",
            help="keep before-images of every UPDATE (policy update = protect everywhere)",
        ),
    ] = False,
    purge_every: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="purge expired operations every DURATION (30m, 1h, 1d) \\[default: off]",
        ),
    ] = None,
    purge_dsn: Annotated[
        str | None,
        typer.Option(
            metavar="DSN",
            help="superuser DSN for the scheduled purge (database name replaced per"
            " database) \\[default: the upstream DSN]",
        ),
    ] = None,
) -> None:
    """Run the proxy (SIGHUP reloads the configuration, SIGTERM/SIGINT stop it)."""
    # Until the proxy handles it, a SIGHUP (a closed terminal, a reload) must not kill
    # serve half-way through starting an embedded server.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    flags: dict[str, Any] = {
        "listen": listen,
        "upstream": upstream,
        "upstream_pooler": upstream_pooler,
        "users_file": users_file,
        "upstream_passfile": upstream_passfile,
        "workers": workers,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "require_tls": require_tls,
        "max_client_conn": max_client_conn,
        "data_dir": data_dir,
        "log_level": log_level,
        "log_file": log_file,
        "metrics": metrics,
        "purge_every": purge_every,
        "purge_dsn": purge_dsn,
    }

    # Here, not at the top: pydantic and the SQL reader cost every other command's start.
    from softguard.config import ConfigError, load_settings

    def load() -> Settings:
        loaded = load_settings(config, **flags)
        if protect_updates:
            loaded.policy.update = "protect"
            for rule in loaded.policy.rules:
                if rule.update is not None:
                    rule.update = "protect"
        return loaded

    try:
        settings = load()
    except ConfigError as exc:
        raise _die(str(exc)) from None
    try:
        _setup_logging(settings.log_level, settings.log_file)
    except OSError as exc:
        raise _die(f"cannot open --log-file {settings.log_file}: {exc.strerror or exc}") from None
    from softguard.proxy.metrics import MetricsError
    from softguard.proxy.server import TlsFileError, check_client_tls, serve_forever
    from softguard.proxy.upstream import UpstreamError, UpstreamTarget

    try:
        check_client_tls(settings)  # before anything starts: a TLS error, not a listen error
    except TlsFileError as exc:
        raise _die(str(exc), 1) from None
    embedded = None
    dsn = settings.upstream
    if dsn is None:
        embedded = _start_embedded(settings)
        dsn = embedded.dsn()
    try:
        try:
            target = UpstreamTarget.from_dsn(dsn)
        except UpstreamError as exc:
            raise _die(str(exc)) from None
        if settings.soft_delete:
            _check_soft_delete(settings, dsn)
        from softguard.ledger.scheduler import start_scheduled_purge

        def on_listening(port: int) -> None:
            proxied = f"{_url_host(settings.listen_host)}:{port}"
            typer.echo(f"softguard: listening on {proxied}, upstream {target.display}")
            if embedded is not None:
                typer.echo(
                    f"softguard: embedded PostgreSQL in {embedded.data_dir}; "
                    "connect through softguard:\n"
                    f"  psql 'postgresql://{embedded.superuser}@{proxied}/postgres'"
                )
            typer.echo(
                "softguard: ops, show, undo and purge connect to the database directly, "
                f"not through softguard:\n  export SOFTGUARD_DSN='{_ledger_dsn(dsn)}'"
            )
            sys.stdout.flush()

        purge = start_scheduled_purge(settings, dsn)  # in this (the parent) process only
        try:
            serve_forever(settings, target, reload=load, on_listening=on_listening)
        except MetricsError as exc:
            raise _die(str(exc), 1) from None
        except OSError as exc:
            raise _die(f"cannot listen on {settings.listen}: {exc.strerror or exc}", 1) from None
        finally:
            if purge is not None:
                purge.close()
    finally:
        if embedded is not None:
            embedded.cleanup() if settings.data_dir is None else embedded.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _ledger_dsn(dsn: str) -> str:
    """The upstream DSN without its password, for the ledger commands."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    if "password" not in params:
        return dsn
    params.pop("password")
    return make_conninfo("", **params)


def _soft_delete_catalog(settings: Settings, dsn: str) -> tuple[str, Any]:
    """(database, Resolution) of the [[soft_delete]] entries against the catalog of the
    database ``dsn`` names. Raises psycopg.Error or LedgerError when it cannot be read."""
    from softguard.ledger.db import connect
    from softguard.ledger.soft_delete_tables import resolve

    with connect(dsn) as conn:
        database = str(conn.info.dbname)
        return database, resolve(conn, settings.soft_delete, database)


def _check_soft_delete(settings: Settings, dsn: str) -> None:
    """Check the [[soft_delete]] entries against the upstream database's catalog: refuse to
    start on a table whose configuration does not fit it (other databases are checked when
    a client first uses them)."""
    import psycopg

    from softguard.ledger.db import LedgerError, error_line
    from softguard.ledger.soft_delete_tables import check

    try:
        database, resolution = _soft_delete_catalog(settings, dsn)
    except (psycopg.Error, LedgerError) as exc:
        typer.echo(
            f"softguard: warning: soft_delete not checked at start ({error_line(exc)}); "
            "it is checked when a client first uses each database",
            err=True,
        )
        return
    errors, warnings = check(resolution, database)
    for line in warnings:
        typer.echo(f"softguard: warning: {line}", err=True)
    if errors:
        raise _die("\n".join(errors))
    typer.echo(f"softguard: soft_delete checked against database {database!r}")


def _start_embedded(settings: Settings):  # type: ignore[no-untyped-def]
    from softguard.embedded import EmbeddedError, EmbeddedPostgres, NoServerBinaries

    try:
        server = EmbeddedPostgres(settings.data_dir, die_with_parent=True)
    except NoServerBinaries as exc:
        raise _die(f"{exc}; or pass --upstream DSN to run in front of a server") from None
    typer.echo("softguard: no --upstream given; starting an embedded PostgreSQL ...")
    try:
        server.start()
    except EmbeddedError as exc:
        raise _die(f"cannot start the embedded PostgreSQL: {exc}", 1) from None
    if server.port_note is not None:
        typer.echo(f"softguard: embedded PostgreSQL: {server.port_note}", err=True)
    return server


@app.command()
def explain(
    sql: Annotated[str, typer.Argument(help="SQL text to classify")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file")] = None,
    role: Annotated[str, typer.Option(help="the session's role, for policy rules")] = "postgres",
    application_name: Annotated[str, typer.Option(help="for policy rules")] = "",
    database: Annotated[str, typer.Option(help="for policy rules (default: --dsn's)")] = "postgres",
    dsn: Annotated[
        str | None,
        typer.Option(
            # Escaped: Rich reads [soft_delete] as markup and prints "[]".
            help="read the \\[\\[soft_delete]] tables from this database's catalog, to show the "
            "soft-delete rewrite (only the catalog is read)"
        ),
    ] = None,
) -> None:
    """Show how softguard classifies, decides on and rewrites a statement, without running it."""
    from softguard.config import ConfigError, load_settings
    from softguard.policy import CAPTURED, Policy, SessionInfo
    from softguard.proxy.statements import (
        FixedLedger,
        NeedLedger,
        PlanInputs,
        mode_refusal,
        plan_message,
    )
    from softguard.sql import Classifier, classify
    from softguard.sql.soft_delete import SoftDeleteTables
    from softguard.wire import Framer, parse_query_text
    from softguard.wire.messages import message

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _die(str(exc)) from None
    result = classify(sql)
    typer.echo(f"kind: {result.kind.value}")
    if result.error:
        typer.echo(f"error: {result.error}")
    for i, stmt in enumerate(result.statements, 1):
        targets = ", ".join(t.qualified() for t in stmt.targets) or "-"
        flags = " ".join(
            f for f, on in (("CASCADE", stmt.cascade), ("IF EXISTS", stmt.if_exists)) if on
        )
        typer.echo(f"{i}. {stmt.kind.value:12} {stmt.action:24} {targets} {flags}".rstrip())
        if stmt.detail:
            typer.echo(f"   {stmt.detail}")
    if dsn is not None:
        database = _dsn_database(dsn)  # the rules see the database the catalog is read from
    session = SessionInfo(role, database, application_name, "127.0.0.1:0")
    policy = Policy(settings.policy)
    mode, mode_source = policy.mode(session)
    typer.echo(f"mode: {mode} ({mode_source})")
    limits = policy.limits(session)
    typer.echo(
        "limits: "
        + "; ".join(
            f"{name} {value} ({source})" if value is not None else f"{name} none"
            for name, value, source in (
                ("max_rows", limits.max_rows, limits.max_rows_by),
                ("max_table_bytes", limits.max_table_bytes, limits.max_table_bytes_by),
            )
        )
    )
    for denial in policy.table_denials(session):
        typer.echo(f"tables: {denial['category']} denied on {denial['shown']} ({denial['by']})")
    by_mode = mode_refusal(mode, mode_source, sql.encode(), "UTF8")
    if by_mode is not None:
        typer.echo(f"policy: deny ({mode} mode) SQLSTATE {by_mode[0]}\n   {by_mode[1]}")
    decisions = policy.decide(result, session, source="query", log_it=False)
    for decision in decisions:
        what = decision.statement.summary() if decision.statement else "the text"
        typer.echo(f"policy: {decision.action.value} ({decision.category}) {what}")
        if decision.reason:
            typer.echo(f"   {decision.reason}")
    # What the proxy would send, as if the ledger were installed.
    soft_tables: SoftDeleteTables | None = None
    if dsn is not None and settings.soft_delete:
        soft_tables = _read_soft_delete_tables(settings, dsn)
    ledger = FixedLedger(
        tables=soft_tables,
        soft_delete_rules=settings.soft_delete if soft_tables is not None else (),
    )
    _, msgs, _ = Framer(want=None).feed(message(b"Q", sql.encode() + b"\0"))
    inputs = PlanInputs(Classifier(0), policy, ledger)
    planned = plan_message(inputs, session, msgs[0], log_it=False)
    assert not isinstance(planned, NeedLedger)  # the fixed ledger always answers
    if planned.raw is not None:
        sent = parse_query_text(ord("Q"), planned.raw[5:]).decode()
        typer.echo(f"sent instead:\n   {sent}")
    elif any(d.category in CAPTURED and d.action.value == "protect" for d in decisions):
        # without the catalog (--dsn), say which entries would apply
        soft = _soft_delete_entries(settings, result, database) if soft_tables is None else []
        if soft:
            typer.echo(
                "soft delete: on " + ", ".join(soft) + " the DELETE is sent as an UPDATE "
                "marking the rows (built from the table's catalog when it runs); elsewhere "
                "sent as is, the database captures the rows it removes"
            )
        else:
            typer.echo("sent as is; the database captures the rows it changes")
    else:
        typer.echo("sent as is")


def _dsn_database(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn).get("dbname") or "postgres")


def _read_soft_delete_tables(settings: Settings, dsn: str) -> Any:
    import psycopg

    from softguard.ledger.db import LedgerError, error_line
    from softguard.ledger.soft_delete_tables import check

    try:
        database, resolution = _soft_delete_catalog(settings, dsn)
    except (psycopg.Error, LedgerError) as exc:
        raise _die(f"cannot read the catalog through --dsn: {error_line(exc)}") from None
    errors, warnings = check(resolution, database)
    for line in errors + warnings:
        typer.echo(line)
    return resolution.tables


def _soft_delete_entries(settings: Settings, result: Any, database: str) -> list[str]:
    """'schema.table (column ...)' of the [[soft_delete]] entries a DELETE target matches
    (an unqualified name: any schema; the first entry that matches decides)."""
    found = []
    for stmt in result.statements:
        for inner in (stmt, *stmt.nested):
            if inner.action != "DELETE":
                continue
            for target in inner.targets:
                rule = next(
                    (
                        r
                        for r in settings.soft_delete
                        if r.matches(database, target.schema, target.name)
                    ),
                    None,
                )
                if rule is not None and rule.mode == "soft":
                    found.append(
                        f"{target.qualified()} (entry {rule.table!r}, "
                        f"column {rule.column}, mark {rule.mark})"
                    )
    return found


def _register_commands() -> None:
    from softguard.cli import approval_cmds, grant_cmd, purge_cmd
    from softguard.cli.demo_cmd import demo
    from softguard.cli.init_cmd import init
    from softguard.cli.ops_cmds import register as register_ops
    from softguard.cli.user_cmd import register as register_user

    app.command()(init)
    app.command()(demo)
    register_ops(app)
    purge_cmd.register(app)
    register_user(app)
    approval_cmds.register(app)
    grant_cmd.register(app)


_register_commands()


def main() -> None:
    app()
