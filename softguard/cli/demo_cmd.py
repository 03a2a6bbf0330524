"""``softguard demo``: the whole story in under a minute, on a throwaway server.

Starts an embedded PostgreSQL and a ``softguard serve`` subprocess in front of it, loads
the car-rental database directly, checksums it, plays an agent's destructive session
through the proxy (DROP ... CASCADE, TRUNCATE, DELETE), shows the ledger, adds a row
after the accident, undoes every operation newest first, and proves with the checksums
that the data is back while the new row stayed. Then it stops both processes and removes
their directories, also on error, Ctrl-C or SIGTERM.

Output: rich tables and colour on a terminal; plain text (no escape codes, no box
drawing) when piped. Exit codes: 0 the data is back, 1 something differs or failed,
130 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer

from softguard.contract import parse_operation_notice
from softguard.demo import (
    AGENT_SESSION,
    DEMO_DATABASE,
    Checksum,
    Comparison,
    compare,
    rental_sql,
    take_checksums,
)
from softguard.embedded import EmbeddedError, EmbeddedPostgres, NoServerBinaries
from softguard.ledger.db import error_line
from softguard.ledger.operations import (
    Operation,
    UndoFailed,
    list_operations,
    undo_operations,
)

# rich is imported where the demo prints, not here: every other command would pay for it.
if TYPE_CHECKING:
    from rich.table import Table

AGENT_APPLICATION_NAME = "demo-agent"
_PROXY_START_TIMEOUT = 30.0
_NEW_CUSTOMER = (
    "INSERT INTO customers (email, full_name) "
    "VALUES ('new.customer@example.com', 'Booked after the accident') RETURNING id"
)


class DemoFailed(Exception):
    """A step of the demo went wrong; the message says which and why."""


# -- output ----------------------------------------------------------------------------


class _Output:
    """Rich on a terminal; plain lines when piped (no colour, no box drawing)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.fancy = sys.stdout.isatty()
        self.console = Console(file=sys.stdout, highlight=False, width=None if self.fancy else 160)
        self._step = 0

    def step(self, title: str) -> None:
        from rich.markup import escape

        self._step += 1
        heading = f"{self._step}. {title}"
        if self.fancy:
            self.console.print()
            self.console.rule(f"[bold]{escape(heading)}", align="left")
        else:
            self.console.print(f"\n== {escape(heading)}")

    def say(self, text: str, style: str = "") -> None:
        """One line of text (never interpreted as markup; the terminal wraps it)."""
        from rich.markup import escape

        markup = f"[{style}]{escape(text)}[/{style}]" if style else escape(text)
        self.console.print(markup, soft_wrap=True)

    def table(self, *columns: str, wide: str = "", keep: str = "") -> Table:
        """A table; the column named ``wide`` takes the room left, ``keep`` never wraps."""
        from rich import box
        from rich.table import Table

        table = Table(
            box=box.SIMPLE_HEAD if self.fancy else None,
            show_edge=False,
            pad_edge=False,
            header_style="bold" if self.fancy else "",
        )
        for name in columns:
            if name == wide:
                table.add_column(name, overflow="fold", ratio=1)
            elif name == keep:
                table.add_column(name, no_wrap=True)
            else:
                table.add_column(name, overflow="fold")
        return table

    def print(self, renderable: Any) -> None:
        if self.fancy:
            self.console.print(renderable)
            return
        with self.console.capture() as captured:  # plain: no padding at line ends
            self.console.print(renderable)
        for line in captured.get().splitlines():
            self.console.out(line.rstrip(), highlight=False)


# -- the proxy subprocess --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Proxy:
    """`python -m softguard serve --upstream ...` in its own session, logging to a file."""

    def __init__(self, upstream: str, log_path: Path) -> None:
        self.upstream = upstream
        self.log_path = log_path
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # SOFTGUARD_* settings of the caller's environment would change the demo.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTGUARD_")}
        env["PYTHONUNBUFFERED"] = "1"
        for _attempt in range(3):
            self.port = _free_port()
            cmd = [
                sys.executable,
                "-m",
                "softguard",
                "serve",
                "--listen",
                f"{self.host}:{self.port}",
                "--upstream",
                self.upstream,
                "--log-level",
                "warning",
            ]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops it
                )
            deadline = time.monotonic() + _PROXY_START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise DemoFailed(
                    f"softguard did not accept connections within {_PROXY_START_TIMEOUT:.0f} s:"
                    f"\n{self.tail()}"
                )
            if "Address already in use" not in self.tail():
                raise DemoFailed(
                    f"softguard exited with code {self.proc.returncode} at start:\n{self.tail()}"
                )
        raise DemoFailed(f"softguard found no free port:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log empty)"

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# -- what gets cleaned up --------------------------------------------------------------


class _Resources:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="softguard-demo-"))
        self.pg: EmbeddedPostgres | None = None
        self.proxy: _Proxy | None = None

    def close(self) -> None:
        """Stop softguard, then PostgreSQL; remove both directories. Never raises."""
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop("immediate")  # a throwaway server: no shutdown checkpoint
            with contextlib.suppress(Exception):
                self.pg.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (so the cleanup runs) while the demo runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not abandon the cleanup half-way."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the command -----------------------------------------------------------------------


def demo(
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="at the end, leave PostgreSQL and softguard running to explore (Ctrl-C stops)",
        ),
    ] = False,
) -> None:
    """Play an AI agent's destructive session through softguard, then undo it all."""
    out = _Output()
    started = time.monotonic()
    resources = _Resources()
    kept_for = 0.0  # seconds spent running on with --keep: not the demo's time
    try:
        with _sigterm_interrupts():
            results, new_id = _scenario(out, resources)
            if keep:
                waiting = time.monotonic()
                _wait_while_kept(out, resources)
                kept_for = time.monotonic() - waiting
    except KeyboardInterrupt:
        _close(resources)
        out.say("\nsoftguard demo: interrupted; stopped PostgreSQL and softguard, cleaned up.")
        raise typer.Exit(130) from None
    except NoServerBinaries as exc:
        _close(resources)
        typer.echo(f"softguard demo: {exc}", err=True)
        raise typer.Exit(2) from None
    except (DemoFailed, EmbeddedError, UndoFailed, psycopg.Error) as exc:
        _close(resources)
        out.say(f"\nsoftguard demo failed: {_message(exc)}", "bold red")
        raise typer.Exit(1) from None
    finally:
        _close(resources)  # also after any other error
    elapsed = time.monotonic() - started - kept_for
    out.say(
        f"\nStopped PostgreSQL and softguard, removed their directories. Total: {elapsed:.1f} s."
    )
    bad = [c for c in results if not c.ok]
    if bad:
        names = ", ".join(c.relation for c in bad)
        out.say(f"softguard demo: {len(bad)} relation(s) differ after undo: {names}", "bold red")
        raise typer.Exit(1)
    out.say(
        f"The data is back: all {len(results)} tables, views and sequences match their "
        f"checksums from before the accident, and customer {new_id}, booked since, is kept.",
        "bold green",
    )


def _close(resources: _Resources) -> None:
    with _signals_ignored():
        resources.close()


def _message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return error_line(exc)
    if isinstance(exc, UndoFailed):
        return f"undo of operation {exc.op} failed: {exc.message}" + (
            f" ({exc.detail})" if exc.detail else ""
        )
    return str(exc).strip() or type(exc).__name__  # the demo's own: may carry a log's tail


def _scenario(out: _Output, res: _Resources) -> tuple[list[Comparison], int]:
    """Run the story; the comparisons and the id of the customer added after the accident."""
    out.say(
        "An AI agent with a production DSN runs DROP, TRUNCATE and DELETE. Through "
        "softguard, each of them can be taken back."
    )

    # 1. the servers ------------------------------------------------------------------
    out.step("Start a throwaway PostgreSQL and softguard in front of it")
    res.pg = pg = EmbeddedPostgres()
    pg.start()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        version = conn.info.parameter_status("server_version") or "?"
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    out.say(f"PostgreSQL {version} on {pg.host}:{pg.port} (data in {pg.data_dir})")
    res.proxy = proxy = _Proxy(
        f"postgresql://{pg.host}:{pg.port}?sslmode=disable", res.workdir / "softguard.log"
    )
    proxy.start()
    agent_dsn = _agent_dsn(pg, proxy)
    direct_dsn = pg.dsn(DEMO_DATABASE)
    out.say(f"softguard on {proxy.host}:{proxy.port}, upstream {pg.host}:{pg.port}")

    with psycopg.connect(direct_dsn, autocommit=True) as direct:
        # 2. the data -----------------------------------------------------------------
        out.step("Load the car-rental database (directly, not through softguard)")
        direct.execute(rental_sql())
        before = take_checksums(direct)
        rows = sum(c.rows or 0 for c in before.values())
        relations = sum(1 for c in before.values() if c.kind != "seq")
        sequences = len(before) - relations
        out.say(
            f"{relations} tables and views, {sequences} sequences, {rows:,} rows: "
            "counted and checksummed"
        )

        # 3. the accident -------------------------------------------------------------
        out.step(f"The agent's session through softguard ({AGENT_APPLICATION_NAME})")
        ops = _agent_session(out, agent_dsn)
        out.say("What the live database looks like now:", "bold")
        out.say("  " + _damage(direct))

        # 4. the ledger ---------------------------------------------------------------
        out.step("The ledger: what softguard kept (softguard ops)")
        _print_ledger(out, list_operations(direct, limit=10))

        # 5. life goes on -------------------------------------------------------------
        out.step("Work done after the accident, which undo keeps")
        new_id = _new_customer(out, agent_dsn)

        # 6. undo ---------------------------------------------------------------------
        order = sorted(ops, reverse=True)
        out.step(f"Undo everything, newest first (softguard undo {' '.join(map(str, order))})")
        result = undo_operations(direct, order)
        for step in result.steps:
            out.say(f"  {step.line()}")
        out.say(f"undone: {', '.join(map(str, result.undone))}, in one transaction")

        # 7. proof --------------------------------------------------------------------
        out.step("Checksums before the accident and after undo")
        after = take_checksums(direct, exclude={"customers": f"id <> {new_id}"})
        row = direct.execute("SELECT count(*) FROM customers WHERE id = %s", [new_id]).fetchone()
        kept = int(row[0]) if row else 0
        results = compare(before, after, expected={"customers_id_seq": f"{new_id}/t"})
        if kept != 1:
            results.append(
                Comparison("customers (new row)", "row", None, None, False, "lost by undo")
            )
        _print_comparison(out, results, new_id, kept)

    return results, new_id


def _agent_session(out: _Output, dsn: str) -> list[int]:
    """Run AGENT_SESSION through the proxy, psql-style; the operation ids of the NOTICEs."""
    ops: list[int] = []
    notices: list[tuple[str, str, str]] = []  # severity, message, detail

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        # Read it now: the Diagnostic is only valid inside the handler.
        notices.append(
            (diag.severity or "NOTICE", diag.message_primary or "", diag.message_detail or "")
        )

    with psycopg.connect(dsn, autocommit=True) as agent:
        agent.add_notice_handler(on_notice)
        for statement, what in AGENT_SESSION:
            notices.clear()
            out.say(f"# the agent {what}", "dim")
            out.say(f"agent=> {statement};", "bold")
            try:
                cur = agent.execute(statement)
            except psycopg.Error as exc:
                raise DemoFailed(f"{statement}: {_message(exc)}") from exc
            found = None
            for severity, primary, detail in notices:
                is_ours = primary.startswith("softguard:")
                out.say(f"{severity}:  {primary}", "yellow" if is_ours else "")
                for line in detail.splitlines():
                    out.say(f"    {line}", "dim")
                announced = parse_operation_notice(primary)
                if announced is not None:
                    found = announced.op
            out.say(cur.statusmessage or "", "cyan")
            if found is None:
                raise DemoFailed(f"no softguard NOTICE for {statement}: it was not protected")
            ops.append(found)
    return ops


def _damage(direct: psycopg.Connection[Any]) -> str:
    row = direct.execute(
        "SELECT to_regclass('public.reservations') IS NULL,"
        " to_regclass('public.active_reservations') IS NULL,"
        " (SELECT count(*) FROM billing.refunds), (SELECT count(*) FROM customers)"
    ).fetchone()
    assert row is not None
    gone = "gone" if row[0] else "still there?"
    view = "gone" if row[1] else "still there?"
    return (
        f"reservations: {gone}; view active_reservations: {view}; "
        f"billing.refunds: {row[2]} rows; customers: {row[3]:,} rows"
    )


def _kept_label(op: Operation) -> str:
    """The named objects with the rows kept, then what went along (one per line)."""
    counts = op.columns.get("row_counts")
    counts = counts if isinstance(counts, dict) else {}
    tables = counts.get("tables")
    rows: dict[str, Any] = dict(tables) if isinstance(tables, dict) else {}
    approx = "~" if counts.get("estimate") else ""  # DROP records an estimate
    lines = []
    for obj in op.objects:
        if not obj.get("original"):
            continue
        ident = str(obj.get("identity", "?"))
        n = rows.pop(ident, None)
        kept = f" ({approx}{int(n):,} rows)" if n is not None else ""
        lines.append(f"{obj.get('type', '?')} {ident}{kept}")
    lines += [f"+ {ident} ({approx}{int(n):,} rows)" for ident, n in rows.items()]
    lines += [f"+ {label} (cascade)" for label in op.cascaded()]
    return "\n".join(lines) or "-"


def _print_ledger(out: _Output, found: list[Operation]) -> None:
    from rich.markup import escape

    table = out.table("op", "statement, who", "kept", "state", wide="kept")
    for op in sorted(found, key=lambda o: o.id):
        who = f"{op.db_role} via {op.application_name or '-'}"
        table.add_row(
            str(op.id),
            f"{escape(op.statement)}\n[dim]{escape(who)}[/dim]",
            escape(_kept_label(op)),
            f"{op.state}\nuntil {op.expires_at:%Y-%m-%d}",
        )
    out.print(table)


def _new_customer(out: _Output, dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as agent:
        out.say(f"agent=> {_NEW_CUSTOMER};", "bold")
        cur = agent.execute(_NEW_CUSTOMER)
        row = cur.fetchone()
        out.say(cur.statusmessage or "", "cyan")
    if row is None:
        raise DemoFailed("the new customer was not inserted")
    new_id = int(row[0])
    out.say(f"customer {new_id} is booked while the operations are still in the ledger")
    return new_id


def _print_comparison(out: _Output, results: list[Comparison], new_id: int, kept: int) -> None:
    from rich.markup import escape

    table = out.table(
        "relation",
        "kind",
        "rows",
        "md5 before",
        "md5 after",
        "result",
        wide="result",
        keep="relation",
    )
    for c in results:
        b, a = c.before, c.after
        rows = "-" if b is None or b.rows is None else f"{b.rows:,}"
        if a is not None and a.rows is not None and (b is None or a.rows != b.rows):
            rows += f" -> {a.rows:,}"
        note = c.note
        if c.relation == "customers" and c.ok and kept:
            note = f"same + new row {new_id} kept"
        style = "green" if c.ok else "bold red"
        table.add_row(
            c.relation,
            c.kind,
            rows,
            _short_digest(b),
            _short_digest(a),
            f"[{style}]{escape(note)}[/{style}]",
        )
    out.print(table)
    out.say("md5: of every row as text, in order (first 8 hex digits); a sequence: its value")


def _short_digest(c: Checksum | None) -> str:
    if c is None:
        return "-"
    return c.digest if c.kind == "seq" else c.digest[:8]


def _wait_while_kept(out: _Output, res: _Resources) -> None:
    pg, proxy = res.pg, res.proxy
    assert pg is not None and proxy is not None
    out.step("Kept running (--keep): explore, then press Ctrl-C to stop and clean up")
    out.say(f"through softguard:  psql '{_agent_dsn(pg, proxy)}'")
    out.say(f"directly:           psql '{pg.dsn(DEMO_DATABASE)}'")
    out.say(f"the ledger:         softguard ops --dsn '{pg.dsn(DEMO_DATABASE)}'")
    try:
        while pg.running and proxy.proc is not None and proxy.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        out.say("")
        return
    raise DemoFailed("PostgreSQL or softguard stopped while kept running")


def _agent_dsn(pg: EmbeddedPostgres, proxy: _Proxy) -> str:
    return (
        f"postgresql://{pg.superuser}@{proxy.host}:{proxy.port}/{DEMO_DATABASE}"
        f"?sslmode=disable&application_name={AGENT_APPLICATION_NAME}"
    )
