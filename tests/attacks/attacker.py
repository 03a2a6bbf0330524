"""The deliberate client's toolkit: an arena to attack, and the one verdict every attack gets.

An attack module builds one `Arena` template per module (`arena_template`): a database with
the softguard ledger installed by `softguard init` (direct, as the superuser), an
application role that owns its tables and holds no other privilege, and a small data set
(a parent/child ON DELETE CASCADE pair, a table of format-sensitive types, an inheritance
parent with a child carrying an extra column, a sequence). Each test gets its own copy of
that database (`arena`): many attacks switch softguard's machinery off, and a test must
never inherit the wreck another one left. Cloning a template costs a fraction of a second.

The verdict (`Arena.verdict`): the attack was refused (an error with a refusal SQLSTATE) and
the data is as before, or it was recorded and `softguard undo` (CLI, direct, superuser)
brings the data back exactly; either way the ledger holds only operations that really
happened. "Exactly" is judged on a snapshot taken in a fresh direct session with default
formats: every user table's columns and rows (jsonb, so DateStyle and friends cannot hide
a difference), sequences, views, functions, types, large objects.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.cli import run_cli
from support.pg import TestServer, build_dsn
from support.proxy import ProxyFactory, Target

# What a refusal looks like: softguard's own (42501 policy / machinery, 0A000 not supported,
# 55000 not in the right state, 54000 too large) or the server's own permission check.
REFUSAL_CODES = frozenset({"42501", "0A000", "55000", "55006", "54000", "08P01"})

DATASET = """
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (id int PRIMARY KEY,
                    parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE,
                    note text);
CREATE TABLE typed (id int PRIMARY KEY, d date, ts timestamptz, iv interval, f float8,
                    b bytea, n numeric, tm time);
CREATE TABLE animal (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE dog (breed text NOT NULL) INHERITS (animal);
CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL);
CREATE TABLE nokey (a int, b text);
CREATE SEQUENCE counter START 100;
INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, 5) g;
INSERT INTO child SELECT g, 1 + g % 5, 'note ' || g FROM generate_series(1, 15) g;
INSERT INTO typed VALUES
  (1, '2024-03-04', '2024-03-04 05:06:07.123456+00', '1 year 2 mons 3 days 04:05:06.789',
   0.1 + 0.2, '\\x00ff105c27', 12345.678900, '23:59:59.999999'),
  (2, '1999-12-31', '1999-12-31 23:59:59.5-08', '-1 days +02:03:04', 1e-300,
   '\\x', 0.000001, '00:00:00'),
  (3, '2000-02-29', '2000-02-29 12:00:00+05:30', '7 mons -3 days 00:00:00.000001',
   2.718281828459045, '\\xdeadbeef', -1e20, '12:34:56.5');
INSERT INTO animal VALUES (1, 'cat'), (2, 'cow');
INSERT INTO dog VALUES (10, 'rex', 'collie'), (11, 'fido', 'poodle');
INSERT INTO big SELECT g, repeat('x', 20) || g FROM generate_series(1, 50) g;
INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, 'b');
SELECT setval('counter', 150);
SELECT lo_from_bytea(4242, 'precious large object: do not lose');
"""

USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'softguard', "
    "'softguard_quarantine', 'softguard_rows', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%' "
    "AND n.nspname NOT LIKE 'pg_toast_temp%'"
)


@dataclass
class Outcome:
    """What the attacking session saw."""

    error: psycopg.Error | None = None
    failed_step: int | None = None
    notices: list[str] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def sqlstate(self) -> str | None:
        return None if self.error is None else self.error.sqlstate

    def describe(self) -> str:
        if self.error is None:
            return f"ran to the end; notices={self.notices}"
        return (
            f"step {self.failed_step} failed: {self.sqlstate} {self.error}; notices={self.notices}"
        )


Step = str | bytes | Callable[[psycopg.Connection[Any]], Any]


@dataclass
class Arena:
    server: TestServer
    proxy: Target
    db: str
    owner: str
    other: str  # a second ordinary role, granted DML on the owner's tables
    captured_output: list[str] = field(default_factory=list)

    # -- connections ---------------------------------------------------------------------

    def role(self, who: str) -> str:
        return {"owner": self.owner, "other": self.other, "super": self.server.superuser}[who]

    def proxied_dsn(self, who: str = "owner", **params: str) -> str:
        return self.proxy.dsn(self.db, self.role(who), None, **params)

    def direct_dsn(self, who: str = "super", **params: str) -> str:
        return build_dsn(self.server.host, self.server.port, self.db, self.role(who), None, params)

    def connect(
        self, who: str = "owner", via: str = "proxy", **params: str
    ) -> psycopg.Connection[Any]:
        dsn = self.proxied_dsn(who, **params) if via == "proxy" else self.direct_dsn(who, **params)
        return psycopg.connect(dsn, autocommit=True)

    def direct(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement directly as the superuser (the defender's view)."""
        with psycopg.connect(self.direct_dsn(), autocommit=True) as c:
            cur = c.execute(query, params) if params else c.execute(query.encode())
            return cur.fetchall() if cur.description else []

    # -- the defender's view ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything an attack could destroy, as plain values, read with default formats."""
        snap: dict[str, Any] = {}
        with psycopg.connect(self.direct_dsn(), autocommit=True) as c:
            rels = c.execute(
                "SELECT c.oid::regclass::text, c.relkind FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind IN ('r', 'p', 'm', 'S', 'v', 'f') AND {USER_SCHEMAS} "
                "ORDER BY 1"
            ).fetchall()
            for name, kind in rels:
                if kind == "S":
                    snap[f"seq {name}"] = c.execute(
                        sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(name))
                    ).fetchone()
                    continue
                if kind == "v":
                    snap[f"view {name}"] = c.execute(
                        "SELECT pg_get_viewdef(%s::regclass)", [name]
                    ).fetchone()
                    continue
                cols = c.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                    "ORDER BY attname",
                    [name],
                ).fetchall()
                snap[f"cols {name}"] = cols
                if kind == "f":
                    continue  # a foreign table's rows are the remote table's
                rows = c.execute(
                    sql.SQL("SELECT to_jsonb(t)::text FROM ONLY {} t").format(sql.SQL(name))
                ).fetchall()
                snap[f"rows {name}"] = sorted(r[0] for r in rows)
            snap["functions"] = c.execute(
                "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
                f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS} "
                "AND p.prokind IN ('f', 'p') ORDER BY 1"
            ).fetchall()
            snap["types"] = c.execute(
                "SELECT format_type(t.oid, NULL), t.typtype FROM pg_type t "
                f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_SCHEMAS} "
                "AND t.typtype IN ('c', 'd', 'e', 'r', 'm') AND NOT EXISTS (SELECT 1 FROM "
                "pg_class r WHERE r.reltype = t.oid AND r.relkind <> 'c') ORDER BY 1"
            ).fetchall()
            snap["large objects"] = c.execute(
                "SELECT m.oid::bigint, (SELECT md5(coalesce(string_agg(data, '' ORDER BY pageno), "
                "''))  FROM pg_largeobject l WHERE l.loid = m.oid) "
                "FROM pg_largeobject_metadata m ORDER BY 1"
            ).fetchall()
            snap["extensions"] = c.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
        return snap

    def last_op(self) -> int:
        return int(self.direct("SELECT coalesce(max(id), 0) FROM softguard.operations")[0][0])

    def ops_since(self, last: int) -> list[dict[str, Any]]:
        rows = self.direct(
            "SELECT to_jsonb(o) - 'restore' FROM softguard.operations o WHERE id > %s ORDER BY id",
            [last],
        )
        return [r[0] for r in rows]

    def ledger_view(self, last: int) -> list[dict[str, Any]]:
        """New operations with their retention in days (expires_at - created_at)."""
        rows = self.direct(
            "SELECT jsonb_build_object('id', id, 'kind', kind, 'state', state, 'client_addr', "
            "client_addr, 'statement', statement, 'retention_days', "
            "extract(epoch FROM expires_at - created_at) / 86400) "
            "FROM softguard.operations WHERE id > %s ORDER BY id",
            [last],
        )
        return [r[0] for r in rows]

    def capture_state(self) -> dict[str, Any]:
        """The ledger's capture tables as counts: what a forger would change."""
        return {
            "captures": self.direct("SELECT count(*) FROM softguard.captures")[0][0],
            "captured_rows": self.direct("SELECT count(*) FROM softguard.captured_rows")[0][0],
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # in this process: what the command does is under attack here, not its start
        return run_cli(*args, "--dsn", self.direct_dsn())

    def undo(self, ids: Sequence[int]) -> subprocess.CompletedProcess[str]:
        return self.cli("undo", *(str(i) for i in sorted(ids, reverse=True)), "--yes")

    def machinery(self) -> dict[str, Any]:
        """softguard's triggers and event triggers as the server has them now."""
        return {
            "triggers": self.direct(
                "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
                "WHERE tgname LIKE 'zz_softguard%' OR tgname = 'guard_ledger' ORDER BY 1, 2"
            ),
            "event triggers": self.direct(
                "SELECT evtname, evtenabled FROM pg_event_trigger ORDER BY 1"
            ),
        }

    # -- the attacker's moves --------------------------------------------------------------

    def raw(self, who: str = "owner", **params: str) -> RawSession:
        """A raw protocol session through the proxy."""
        return RawSession(self.proxy.host, self.proxy.port, self.role(who), self.db, **params)

    def attack(
        self, steps: Sequence[Step], who: str = "owner", via: str = "proxy", **params: str
    ) -> Outcome:
        """Run each step in autocommit on one session; stop at the first error."""
        out = Outcome()
        with self.connect(who, via, **params) as c:
            c.add_notice_handler(lambda d: out.notices.append(str(d.message_primary)))
            for i, step in enumerate(steps):
                try:
                    if callable(step):
                        out.results.append(step(c))
                    else:
                        cur = c.execute(step.encode() if isinstance(step, str) else step)
                        out.results.append(cur.fetchall() if cur.description else None)
                except psycopg.Error as e:
                    out.error, out.failed_step = e, i
                    break
        return out

    def attempt(
        self, steps: Sequence[Step], who: str = "owner", via: str = "proxy", **params: str
    ) -> tuple[Outcome, list[dict[str, Any]]]:
        """Snapshot, attack, verdict: the whole round for an attack of one session."""
        before, last = self.snapshot(), self.last_op()
        out = self.attack(steps, who, via, **params)
        return out, self.verdict(before, last, out)

    def verdict(
        self, before: dict[str, Any], last: int, outcome: Outcome, sqlstate_class: str | None = None
    ) -> list[dict[str, Any]]:
        """Refused with the data intact, or recorded and undone exactly. Returns the new
        operations (already undone)."""
        ops = self.ops_since(last)
        print(f"attack outcome: {outcome.describe()}")
        print(f"operations recorded: {[(o['id'], o['kind'], o['state']) for o in ops]}")
        if outcome.error is not None:
            refused_by_softguard = "softguard" in str(outcome.error).lower()
            assert outcome.sqlstate in REFUSAL_CODES or refused_by_softguard, (
                f"the attack failed with {outcome.sqlstate} (not a refusal): {outcome.error}"
            )
            if sqlstate_class is not None:
                assert (outcome.sqlstate or "").startswith(sqlstate_class), outcome.describe()
        active = [o["id"] for o in ops if o["state"] == "active" and o.get("undo_of") is None]
        if active:
            r = self.undo(active)
            print(f"undo {active}: rc={r.returncode}\n{r.stdout}{r.stderr}")
            assert r.returncode == 0, f"undo of {active} failed:\n{r.stdout}{r.stderr}"
        after = self.snapshot()
        diff = describe_diff(before, after)
        assert not diff, (
            f"data not as before the attack: {'; '.join(diff)} -- {outcome.describe()}; "
            f"operations {[(o['id'], o['kind']) for o in ops]}"
        )
        return ops


def describe_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One short line per snapshot entry that differs."""
    out = []
    for k in sorted(before.keys() | after.keys()):
        b, a = before.get(k), after.get(k)
        if b == a:
            continue
        if isinstance(b, list) and isinstance(a, list):
            missing = [x for x in b if x not in a]
            extra = [x for x in a if x not in b]
            out.append(
                f"{k}: missing {missing[:3]}{'...' if len(missing) > 3 else ''} "
                f"({len(missing)}), extra {extra[:3]}{'...' if len(extra) > 3 else ''} "
                f"({len(extra)})"
            )
        else:
            out.append(f"{k}: {str(b)[:200]} -> {str(a)[:200]}")
    return out


# -- fixtures --------------------------------------------------------------------------------


def make_template(server: TestServer, extra_sql: str = "") -> tuple[str, str, str]:
    """A database holding the data set and the ledger, plus its two roles."""
    tag = uuid.uuid4().hex[:8]
    owner, other = f"atk_owner_{tag}", f"atk_other_{tag}"
    db = server.create_database()
    with psycopg.connect(server.superuser_dsn(db), autocommit=True) as c:
        for role in (owner, other):
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # The application owns its schema (as with a database created for it), nothing else.
        c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
    with psycopg.connect(
        build_dsn(server.host, server.port, db, owner, None), autocommit=True
    ) as c:
        c.execute(DATASET.encode())
        c.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(sql.Identifier(other))
        )
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(other)))
    if extra_sql:
        with psycopg.connect(server.superuser_dsn(db), autocommit=True) as c:
            c.execute(extra_sql.encode())
    server.install_ledger(db)
    return db, owner, other


def drop_template(server: TestServer, db: str, roles: Sequence[str]) -> None:
    server.drop_database(db)
    with psycopg.connect(server.superuser_dsn(), autocommit=True) as c:
        for role in roles:
            try:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            except psycopg.Error:
                pass  # still owns objects in a clone another module holds: harmless


@dataclass
class Template:
    server: TestServer
    db: str
    owner: str
    other: str

    def clone(self, proxy: Target) -> Iterator[Arena]:
        name = "sg_atk_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.server.superuser_dsn(), autocommit=True) as c:
            c.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(self.db)
                )
            )
        try:
            yield Arena(self.server, proxy, name, self.owner, self.other)
        finally:
            self.server.drop_database(name)


def template_fixture(extra_sql: str = "") -> Any:
    """A module-scoped fixture `arena_template` for a module (optionally with more setup)."""

    @pytest.fixture(scope="module")
    def arena_template(pg_server: TestServer) -> Iterator[Template]:
        db, owner, other = make_template(pg_server, extra_sql)
        try:
            yield Template(pg_server, db, owner, other)
        finally:
            drop_template(pg_server, db, (owner, other))

    return arena_template


def deny_arena_fixture(policy_toml: str, *, fresh: bool = False) -> Any:
    """A fixture `arena_deny`: an arena behind a proxy running with this `[policy]` body.

    The proxy is the session's one for that policy (a proxy start costs about a second of
    CPU: Python, pglast, pydantic), like the default `proxy` every other arena uses; the
    arena itself is a fresh copy per test, as always. fresh=True starts a proxy per test,
    for attacks on the classification cache, which must meet it empty."""

    @pytest.fixture
    def arena_deny(
        arena_template: Template,
        proxy_factory: ProxyFactory,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[Arena]:
        body = "[policy]\n" + policy_toml
        # one file per policy body: the factory shares proxies by their argument list
        name = hashlib.sha256(body.encode()).hexdigest()[:16]
        config = tmp_path_factory.getbasetemp() / f"policy-{name}.toml"
        if not config.exists():
            config.write_text(body)
        yield from arena_template.clone(proxy_factory("--config", str(config), fresh=fresh))

    return arena_deny


def fixtures(extra_sql: str = "") -> tuple[Any, Any]:
    """`arena_template, arena = fixtures()` in a test module: the module's template and a
    clone of it per test behind the session's default proxy."""

    @pytest.fixture
    def arena(arena_template: Template, proxy: Target) -> Iterator[Arena]:
        yield from arena_template.clone(proxy)

    return template_fixture(extra_sql), arena


# -- raw protocol (what no driver sends) ---------------------------------------------------------


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


@dataclass
class ServerError:
    fields: dict[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")


class RawSession:
    """A protocol 3.0 client speaking bytes: for FunctionCall and other messages drivers
    hide. Trust authentication only (the test server's hba)."""

    def __init__(self, host: str, port: int, user: str, db: str, **params: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""
        body = struct.pack("!I", 196608)
        for k, v in {"user": user, "database": db, **params}.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.params: dict[str, str] = {}
        msgs = self.until_ready()
        errors = [m for m in msgs if isinstance(m, ServerError)]
        assert not errors, errors

    def _read(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                (n,) = struct.unpack("!I", self.buf[1:5])
                if len(self.buf) >= n + 1:
                    kind, payload = self.buf[:1], self.buf[5 : n + 1]
                    self.buf = self.buf[n + 1 :]
                    return kind, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk

    def until_ready(self) -> list[Any]:
        """Messages up to ReadyForQuery: ServerError for 'E', (kind, payload) otherwise."""
        out: list[Any] = []
        for _ in range(100_000):
            kind, payload = self._read()
            if kind == b"E":
                fields = {}
                for part in payload.split(b"\0"):
                    if part:
                        fields[chr(part[0])] = part[1:].decode(errors="replace")
                out.append(ServerError(fields))
            elif kind == b"S":
                k, v, _ = payload.split(b"\0")
                self.params[k.decode()] = v.decode()
            else:
                out.append((kind, payload))
            if kind == b"Z":
                return out
        raise AssertionError("no ReadyForQuery")

    def query(self, text: bytes) -> list[Any]:
        self.sock.sendall(_msg(b"Q", text + b"\0"))
        return self.until_ready()

    def function_call(self, oid: int, args: Sequence[bytes | None]) -> list[Any]:
        payload = struct.pack("!I", oid) + struct.pack("!hh", 1, 0)  # all arguments as text
        payload += struct.pack("!h", len(args))
        for a in args:
            payload += struct.pack("!i", -1) if a is None else struct.pack("!i", len(a)) + a
        payload += struct.pack("!h", 0)  # result as text
        self.sock.sendall(_msg(b"F", payload))
        return self.until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(_msg(b"X", b""))
        finally:
            self.sock.close()


def errors_of(msgs: Sequence[Any]) -> list[ServerError]:
    return [m for m in msgs if isinstance(m, ServerError)]


def here() -> Path:
    return Path(__file__).parent


def uident(name: str) -> str:
    """`name` as a U&"..." identifier with every character escaped: no byte of the
    plain name appears in the text."""
    return 'U&"' + "".join(f"\\{ord(ch):04x}" for ch in name) + '"'


def chr_built(name: str) -> str:
    """A SQL expression building `name` from chr() calls."""
    return "concat(" + ", ".join(f"chr({ord(ch)})" for ch in name) + ")"
