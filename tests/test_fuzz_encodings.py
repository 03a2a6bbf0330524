"""Issue 18's "Done when": generated statements in every client encoding, softguard's
reading compared with what the server executed.

Each case is a text built from seeded random pieces: literals of every kind (``''``,
``E''``, ``U&''``, ``$$``, ``$tag$``), comments (``--``, nested ``/* */``), quoted names,
multibyte characters of the client encoding (those with an ASCII trailing byte first),
bytes that lead such a character, backslashes and quotes, and a destructive statement
hidden among them (or after a closing that only one reading sees). Sometimes the session
has standard_conforming_strings off.

What the server executed is observed on the server: an event trigger (ddl_command_start)
and BEFORE ... FOR EACH STATEMENT triggers on the data set's tables raise a NOTICE
``fuzz-exec: <tag>`` for every destructive command that starts. For each case:

1. **truth**: the bytes sent straight to PostgreSQL as the arena's owner in that client
   encoding, inside a transaction rolled back: the commands the server runs.
2. **reading**: `classify_wire` with the encoding the proxy tracks, and with a stale
   belief (UTF8): every command the server ran must be one the reading names (or the
   reading has an opaque statement, or refuses the text).
3. **proxy**: the bytes sent through softguard in the same encoding, inside a
   transaction rolled back (fast tier) or in autocommit with every operation undone and
   the data compared (slow tier): a destructive command the server starts must have been
   refused or come with softguard's notice (rewritten or captured).

The cases of a run share their sessions (`Sessions`: one per target, encoding and
standard_conforming_strings setting, replaced whenever a case does not leave it idle):
opening two connections per case cost twice the cases' own work.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from attacks.attacker import REFUSAL_CODES, Arena, Outcome, fixtures

from softguard.sql.classify import Classification, Kind, Statement
from softguard.sql.encoding import ASCII_UNSAFE, python_codec
from softguard.sql.reading import classify_wire

TABLES = ("parent", "child", "typed", "big", "nokey", "animal")
OBSERVE = """
CREATE FUNCTION public.fuzz_exec_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF tg_tag LIKE 'DROP %' OR tg_tag IN ('ALTER TABLE', 'TRUNCATE TABLE') THEN
        RAISE NOTICE 'fuzz-exec: %', tg_tag;
    END IF;
END $f$;
CREATE EVENT TRIGGER aaa_fuzz_exec ON ddl_command_start EXECUTE FUNCTION public.fuzz_exec_ddl();
CREATE FUNCTION public.fuzz_exec_dml() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE NOTICE 'fuzz-exec: %', TG_OP;
    RETURN NULL;
END $f$;
""" + "".join(
    f"CREATE TRIGGER aaa_fuzz_exec BEFORE DELETE OR TRUNCATE ON {t} "
    "FOR EACH STATEMENT EXECUTE FUNCTION public.fuzz_exec_dml();\n"
    for t in TABLES
)
arena_template, arena = fixtures(OBSERVE)

# The client encodings generated in: the ASCII-unsafe ones, then ASCII-safe ones.
ENCODINGS = (*ASCII_UNSAFE, "LATIN1", "WIN1252", "KOI8R", "EUC_JP", "UTF8")

HIDDEN = (
    "DROP TABLE big",
    "DROP TABLE nokey",
    "TRUNCATE nokey",
    "TRUNCATE typed",
    "DELETE FROM parent",
    "DELETE FROM big",
    "ALTER TABLE typed DROP COLUMN tm",
    "DROP TABLE animal CASCADE",
    "DO $d$ BEGIN EXECUTE 'TRUNCATE big'; END $d$",
)


def _characters(codec: str) -> tuple[list[bytes], list[bytes]]:
    """(characters of the encoding whose last byte is ASCII, other multibyte ones),
    encoded; a bounded scan of the BMP."""
    ascii_trail: list[bytes] = []
    other: list[bytes] = []
    for cp in range(0xA0, 0xA000, 7):
        try:
            b = chr(cp).encode(codec)
        except UnicodeEncodeError:
            continue
        if len(b) > 1 and b[-1] < 0x80:
            if b[-1] in b"\\'$*-/\"" or len(ascii_trail) < 40:
                ascii_trail.append(b)
        elif len(other) < 40:
            other.append(b)
    return ascii_trail, other or [b"\xe9"]


@dataclass
class Generator:
    """Seeded statements for one client encoding."""

    encoding: str
    rng: random.Random
    tricky: list[bytes] = field(default_factory=list)
    native: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        codec = python_codec(self.encoding)
        assert codec is not None
        self.tricky, self.native = _characters(codec)

    def atom(self) -> bytes:
        r = self.rng.random()
        if r < 0.25 and self.tricky:
            return self.rng.choice(self.tricky)
        if r < 0.40:
            return self.rng.choice(self.native)
        if r < 0.50:
            return bytes([self.rng.randrange(0x80, 0x100)])  # a lone lead byte
        return self.rng.choice(
            [b"\\", b"\\\\", b"'", b"''", b"\\'", b" ", b"x", b"$", b"$$", b"*/", b"/*", b";",
             b"--", b"\n", b'"', b"ab", b"\\x41", b"\\u0041"]
        )  # fmt: skip

    def body(self) -> bytes:
        parts = [self.atom() for _ in range(self.rng.randint(0, 4))]
        if self.rng.random() < 0.5:
            # the classic: a character (or backslash) that may swallow the closing quote
            parts.append(self.rng.choice([*self.tricky[:8], b"\\", b"\\\\"]))
        if self.rng.random() < 0.2:
            parts.insert(0, b"'; " + self.hidden() + b"; --")
        return b"".join(parts)

    def hidden(self) -> bytes:
        return self.rng.choice(HIDDEN).encode()

    def piece(self) -> bytes:
        """A literal, comment or quoted name, as one reading closes it."""
        kind = self.rng.choice(["std", "esc", "uni", "dollar", "tag", "block", "line", "name"])
        body = self.body()
        return {
            "std": b"'" + body + b"'",
            "esc": b"E'" + body + b"'",
            "uni": b"U&'" + body + b"'",
            "dollar": b"$$" + body + b"$$",
            "tag": b"$q$" + body + b"$q$",
            "block": b"/* " + body + b" /* " + self.atom() + b" */ */ ''",
            "line": b"-- " + body + b"\n''",
            "name": b'1 AS "' + body + b'"',
        }[kind]

    def statement(self) -> bytes:
        parts = [b"SELECT ", self.piece()]
        for _ in range(self.rng.randint(0, 2)):
            parts += [self.rng.choice([b", ", b" || ", b"\n"]), self.piece()]
        parts += [b"; ", self.hidden(), b"; "]
        # What is still open to a reading that missed a closing: ends here.
        parts.append(self.rng.choice([b"--'", b"-- $$", b"SELECT 1 --*/", b'--"', b""]))
        if self.rng.random() < 0.3:
            parts.append(b"\n" + self.rng.choice([b"'", b"*/", b"$$", b"$q$"]))
        return b"".join(parts)


@dataclass
class Run:
    executed: list[str]
    softguard: list[str]
    error: psycopg.Error | None


def _run(conn: psycopg.Connection[Any], text: bytes, *, rollback: bool) -> Run:
    notices: list[str] = []

    def on_notice(d: psycopg.errors.Diagnostic) -> None:
        notices.append(str(d.message_primary))

    conn.add_notice_handler(on_notice)
    error = None
    try:
        if rollback:
            conn.execute(b"BEGIN")
        conn.execute(text)
    except psycopg.Error as exc:
        error = exc
    if rollback and not conn.closed:
        try:
            conn.execute(b"ROLLBACK")
        except psycopg.OperationalError:
            pass  # softguard closed the connection
    # the session is reused by the next case: this case's notices stay this case's
    conn.remove_notice_handler(on_notice)
    executed = [n.removeprefix("fuzz-exec: ") for n in notices if n.startswith("fuzz-exec: ")]
    return Run(executed, [n for n in notices if n.startswith("softguard")], error)


class Sessions:
    """One open session per (target, client encoding, standard_conforming_strings) for
    the cases of a run: a connection costs twice a case's own work (through softguard:
    its login, the upstream login, the registration), so a case opens none. Every case
    still starts in an idle session with nothing of the previous case left: a case runs
    in a transaction rolled back (or, in autocommit, as one implicit transaction whose
    operations are undone), and a session that ends otherwise (closed by softguard,
    broken, left in a transaction) is closed and replaced. Automatic preparation is off,
    so the wire carries what a fresh session would send (psycopg would otherwise switch
    the repeated BEGIN / ROLLBACK to Parse/Bind/Execute after five runs). What softguard
    keeps per session (the tracked client_encoding, the answer filter it switches on
    after a rewritten statement) carries over from case to case, as in an application's
    long session; the first statement of a fresh session is what every arena attack
    sends."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.open: dict[tuple[str, str, bool], psycopg.Connection[Any]] = {}

    def get(self, via: str, encoding: str, scs_off: bool) -> psycopg.Connection[Any]:
        key = (via, encoding, scs_off)
        conn = self.open.get(key)
        if conn is None or conn.closed or conn.broken or not _idle(conn):
            if conn is not None:
                conn.close()
            conn = self.arena.connect("owner", via=via, **_params(encoding, scs_off))
            conn.prepare_threshold = None
            self.open[key] = conn
        return conn

    def close(self) -> None:
        for conn in self.open.values():
            conn.close()
        self.open.clear()


def _idle(conn: psycopg.Connection[Any]) -> bool:
    return conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE


def _refused(error: psycopg.Error) -> bool:
    return error.sqlstate in REFUSAL_CODES or "softguard" in str(error)


def _params(encoding: str, scs_off: bool) -> dict[str, str]:
    params = {"client_encoding": encoding}
    if scs_off:
        params["options"] = "-c standard_conforming_strings=off"
    return params


def _actions(statements: Sequence[Statement]) -> set[str]:
    found: set[str] = set()
    for s in statements:
        if s.kind is not Kind.SAFE:
            found.add(s.action)
        found |= _actions(s.nested)
    return found


def _reading_misses(result: Classification, executed: Sequence[str]) -> list[str]:
    """The commands the server ran that the reading *result* does not name."""
    if result.kind is Kind.UNPARSEABLE and (result.ambiguous or not result.inert):
        return []  # refused (unparseable is denied by default)
    if any(s.kind is Kind.OPAQUE for s in result.statements):
        return []  # a DO block: policy and the database's backstop decide
    actions = _actions(result.statements)
    # "ALTER TABLE" (the event trigger's tag) is named by "ALTER TABLE DROP COLUMN"
    return [t for t in executed if not any(a == t or a.startswith(t + " ") for a in actions)]


@dataclass
class Tally:
    cases: int = 0
    server_destroyed: int = 0
    refused: int = 0
    mismatches: list[str] = field(default_factory=list)


def _fuzz(arena: Arena, seed: int, per_encoding: int, *, rollback: bool) -> Tally:
    sessions = Sessions(arena)
    try:
        return _fuzz_in(arena, sessions, seed, per_encoding, rollback=rollback)
    finally:
        sessions.close()


def _fuzz_in(
    arena: Arena, sessions: Sessions, seed: int, per_encoding: int, *, rollback: bool
) -> Tally:
    tally = Tally()
    # Autocommit: every case's verdict asserts the data is back exactly as this snapshot
    # (a case that leaves it otherwise fails the test), so it is every case's "before".
    before = None if rollback else arena.snapshot()
    for n, encoding in enumerate(ENCODINGS):
        gen = Generator(encoding, random.Random(seed * 1000 + n))
        for _ in range(per_encoding):
            text = gen.statement()
            scs_off = gen.rng.random() < 0.2
            tally.cases += 1
            truth = _run(sessions.get("direct", encoding, scs_off), text, rollback=True)
            what = f"{encoding}{' scs=off' if scs_off else ''} {text!r}"
            if truth.executed:
                tally.server_destroyed += 1
                for belief in dict.fromkeys((encoding, "UTF8")):
                    missed = _reading_misses(classify_wire(text, belief)[0], truth.executed)
                    if missed:
                        tally.mismatches.append(f"reading as {belief} misses {missed}: {what}")
            proxied = sessions.get("proxy", encoding, scs_off)
            if rollback:
                seen = _run(proxied, text, rollback=True)
            else:
                assert before is not None
                last = arena.last_op()
                seen = _run(proxied, text, rollback=False)
                # refused, or recorded and undone exactly (the server's own error: nothing ran)
                refusal = seen.error if seen.error is not None and _refused(seen.error) else None
                arena.verdict(before, last, Outcome(error=refusal, notices=seen.softguard))
            if seen.error is not None and _refused(seen.error):
                tally.refused += 1
            elif seen.executed and not seen.softguard:
                tally.mismatches.append(
                    f"through softguard the server ran {seen.executed}, unrefused and "
                    f"uncaptured: {what}"
                )
    return tally


def _report(tally: Tally) -> None:
    print(
        f"{tally.cases} cases, {tally.server_destroyed} destructive on the server, "
        f"{tally.refused} refused by softguard, {len(tally.mismatches)} mismatches"
    )
    assert not tally.mismatches, "\n".join(tally.mismatches[:20])
    # The generator must reach the server's destructive paths, or the test proves nothing.
    assert tally.server_destroyed >= tally.cases // 10, tally


def test_fuzz_encodings_fast(arena: Arena) -> None:
    _report(_fuzz(arena, seed=18, per_encoding=25, rollback=True))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_encodings_slow(arena: Arena, seed: int) -> None:
    _report(_fuzz(arena, seed=seed, per_encoding=60, rollback=True))


@pytest.mark.slow
def test_fuzz_encodings_autocommit(arena: Arena) -> None:
    """Autocommit: what softguard lets through is recorded and undone exactly."""
    _report(_fuzz(arena, seed=7, per_encoding=15, rollback=False))
