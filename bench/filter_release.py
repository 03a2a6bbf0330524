"""The fast paths' share of a session's chunks after it had a statement rewritten.

A session that sends one DROP (rewritten into softguard's CALL) and then ordinary
statements: which share of its client and server chunks do the session core's fast paths
relay (``SessionCore.client_data`` / ``server_data`` returning before the framing path),
and which fall to the slow, filtered path? Sans-IO, deterministic (the counts do not
depend on the machine): the core is fed the bytes a client and a server would send.
Before issue 13's change the result filter stayed for the rest of the session, and every
chunk after the DROP took the slow path; now it goes once the DROP is answered.

    python bench/filter_release.py [--statements 1000]

Also prints the Python-level time per statement after the DROP (indicative only).
"""

from __future__ import annotations

import argparse
import struct
import time
from typing import Any

from softguard.policy import Policy
from softguard.proxy.core import CoreConfig, SessionCore, State
from softguard.proxy.statements import FixedLedger, PlanInputs
from softguard.sql import Classifier


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _complete(tag: str) -> bytes:
    return _msg(b"C", tag.encode() + b"\0")


def _notice(code: str, text: str) -> bytes:
    return _msg(b"N", b"SNOTICE\0VNOTICE\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


READY = _msg(b"Z", b"I")
_STARTUP_BODY = struct.pack("!I", 196608) + b"user\0app\0database\0shop\0\0"
STARTUP = struct.pack("!I", len(_STARTUP_BODY) + 4) + _STARTUP_BODY
HELLO = _msg(b"R", struct.pack("!I", 0)) + _msg(b"K", struct.pack("!I", 1) + b"\1\2\3\4") + READY
REGISTERED = (
    _complete("BEGIN")
    + _msg(b"D", b"\0\1\0\0\0\0")
    + _complete("SELECT 1")
    + _complete("COMMIT")
    + READY
)
QUERY = _msg(b"Q", b"SELECT id, name FROM t WHERE id = 42\0")
ROW = _msg(b"D", b"\0\2\0\0\0\x0242\0\0\0\x01x")
QUERY_ANSWER = _msg(b"T", b"\0\0") + ROW + _complete("SELECT 1") + READY
PREPARED = _msg(b"B", b"\0s1\0\0\0\0\1\0\0\0\x0242\0\0") + _msg(b"E", b"\0\0\0\0\0") + _msg(b"S")
PREPARED_ANSWER = _msg(b"2") + ROW + _complete("SELECT 1") + READY
DROP = _msg(b"Q", b"DROP TABLE t2\0")
DROP_ANSWER = _notice("SGBEG", "0") + _notice("SGEND", "DROP TABLE") + _complete("CALL") + READY


class _Counter:
    """A StatementCounter with the fields either version of the core writes."""

    def __init__(self) -> None:
        self.safe_statements = 0
        self.filtered_statements = 0
        self.filters_released = 0

    def count_statement(self, classification: str, action: str) -> None:
        pass


class Probe(SessionCore):
    """Counts the chunks that reach the slow (framing) paths."""

    slow_client = 0
    slow_server = 0

    def _relay_messages(self, *args: Any, **kwargs: Any) -> None:
        self.slow_client += 1
        super()._relay_messages(*args, **kwargs)

    def _server_messages(self, data: bytes) -> bool:
        self.slow_server += 1
        return super()._server_messages(data)


def _session() -> Probe:
    inputs = PlanInputs(Classifier(), Policy(None), FixedLedger())
    core = Probe(
        CoreConfig(), inputs, _Counter(), peer="10.0.0.7:5000", to_server=len, to_client=len
    )
    core.client_data(STARTUP)
    core.upstream_connected()
    core.server_data(HELLO)
    core.server_data(REGISTERED)
    assert core.state is State.READY
    core.client_data(_msg(b"P", b"s1\0SELECT id, name FROM t WHERE id = $1\0\0\0") + _msg(b"S"))
    core.server_data(_msg(b"1") + READY)
    return core


def measure(statements: int, drop: bool) -> tuple[float, float, float]:
    """(client share, server share, µs per statement) of the fast paths after the DROP."""
    core = _session()
    if drop:
        core.client_data(DROP)
        core.server_data(DROP_ANSWER)
    core.slow_client = core.slow_server = 0
    start = time.perf_counter()
    for i in range(statements):
        if i % 2:
            core.client_data(QUERY)
            core.server_data(QUERY_ANSWER)
        else:
            core.client_data(PREPARED)
            core.server_data(PREPARED_ANSWER)
    spent = time.perf_counter() - start
    # Bind/Execute/Sync chunks are not framed when the fast path takes them either.
    return (
        1 - core.slow_client / statements,
        1 - core.slow_server / statements,
        spent / statements * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--statements", type=int, default=1000)
    args = parser.parse_args()
    measure(200, True)  # warm-up: the classifier's and the fast path's memos
    print(f"{'session':<22}{'client fast':>12}{'server fast':>12}{'us/stmt':>10}")
    for label, drop in (("no rewrite", False), ("after one DROP", True)):
        client, server, micros = measure(args.statements, drop)
        print(f"{label:<22}{client:>12.1%}{server:>12.1%}{micros:>10.2f}")


if __name__ == "__main__":
    main()
