"""CPU cost of the session relay, without sockets: a repeatable number on a busy machine.

Feeds a ``ClientSession`` (the asyncio glue and its core) pgbench TPC-B transactions as
the client and the server would send them, one chunk per message group, to transports
that only count bytes. Run under callgrind and compare instruction counts, which do not
depend on what else the machine is doing::

    for n in 300 1300; do
      valgrind --tool=callgrind --callgrind-out-file=/tmp/relay.$n \
        python bench/relay_cpu.py $n simple
    done
    # (Ir at 1300 - Ir at 300) / 1000 = instructions per transaction, imports excluded

``simple``: 7 Query messages per transaction (pgbench -M simple); ``extended``:
Parse/Bind/Describe/Execute/Sync each (-M extended); ``prepared``: Bind/Execute/Sync
(-M prepared); ``select`` and ``select-prepared``: pgbench -S's one SELECT per transaction,
simple and prepared. Without valgrind it prints the CPU time per transaction and per
statement.
"""

from __future__ import annotations

import struct
import sys
import time
from typing import Any

from softguard.config import Settings
from softguard.policy import Policy, SessionInfo
from softguard.proxy.metrics import Metrics
from softguard.proxy.session import ClientSession
from softguard.sql import Classifier


def _msg(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


_Z_IDLE, _Z_TX = _msg(b"Z", b"I"), _msg(b"Z", b"T")


def transaction(i: int) -> list[tuple[str, str, bool]]:
    """(SQL, command tag, returns a row) of pgbench's TPC-B transaction number ``i``."""
    aid, bid, tid, delta = i % 100000 + 1, i % 1 + 1, i % 10 + 1, i % 9999 - 5000
    return [
        ("BEGIN;", "BEGIN", False),
        (
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
            "UPDATE 1",
            False,
        ),
        (f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};", "SELECT 1", True),
        (
            f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
            "UPDATE 1",
            False,
        ),
        (
            f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};",
            "UPDATE 1",
            False,
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES "
            f"({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);",
            "INSERT 0 1",
            False,
        ),
        ("END;", "COMMIT", False),
    ]


def select_only(i: int) -> list[tuple[str, str, bool]]:
    """pgbench -S's transaction number ``i``."""
    sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {i % 100000 + 1};"
    return [(sql, "SELECT 1", True)]


def exchanges(n: int, mode: str) -> list[tuple[bytes, bytes]]:
    """(client chunk, server chunk) pairs for ``n`` transactions."""
    row = _msg(
        b"T", struct.pack("!H", 1) + _cstr("abalance") + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0)
    )
    script = transaction
    if mode.startswith("select"):
        script = select_only
        mode = mode.removeprefix("select").lstrip("-") or "simple"
    out = []
    for i in range(n):
        for sql, tag, returns_row in script(i):
            answer = b""
            if returns_row:
                answer += row + _msg(b"D", struct.pack("!HI", 1, 4) + b"1234")
            idle = tag == "COMMIT" or script is select_only
            answer += _msg(b"C", _cstr(tag)) + (_Z_IDLE if idle else _Z_TX)
            if mode == "simple":
                out.append((_msg(b"Q", _cstr(sql)), answer))
                continue
            bind = _msg(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
            execute = _msg(b"E", b"\0" + struct.pack("!I", 0)) + _msg(b"S", b"")
            if mode == "extended":
                parse = _msg(b"P", b"\0" + _cstr(sql) + struct.pack("!H", 0))
                client = parse + bind + _msg(b"D", b"P\0") + execute
                answer = (
                    _msg(b"1", b"")
                    + _msg(b"2", b"")
                    + (row if returns_row else _msg(b"n", b""))
                    + answer
                )
            else:
                client = bind + execute
                answer = _msg(b"2", b"") + answer
            out.append((client, answer))
    return out


class _Sink:
    """A transport that counts what it is given."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5000) if name == "peername" else None


class _Ledger:
    soft_delete_rules: tuple[object, ...] = ()

    def state(self, database: str) -> bool:
        return True

    def soft_delete_tables(self, database: str) -> None:
        return None

    def forget_soft_delete_tables(self, database: str) -> None:
        pass

    def lacks_event_triggers(self, database: str) -> bool:
        return False  # an install with event triggers: the deployed case


class _NoOffload:
    threshold = 0  # never classify off the loop


class _Server:
    """What a session reads from ProxyServer, nothing that runs."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.offload = _NoOffload()
        self.classifier = Classifier(self.settings.classify_cache_size)
        self.policy = Policy(self.settings.policy)
        self.ledger = _Ledger()
        self.metrics = Metrics()
        self.client_ssl = None
        self.credentials = None  # no users file: the client's own login goes upstream
        self.loop = None
        try:
            from softguard.proxy.statements import PlanInputs

            self.inputs = PlanInputs(self.classifier, self.policy, self.ledger)  # type: ignore[arg-type]
        except ImportError:  # before the sans-IO core
            pass

    def register(self, session: object) -> None:
        pass

    def unregister(self, session: object) -> None:
        pass

    def over_capacity(self) -> bool:
        return False


def ready_session() -> tuple[ClientSession, _Sink, _Sink]:
    """A session in the READY state, past startup (set directly: no event loop here)."""
    server: Any = _Server()
    session = ClientSession(server)
    client, up = _Sink(), _Sink()
    session.transport = client  # type: ignore[assignment]
    session.up_transport = up  # type: ignore[assignment]
    info = SessionInfo("bench", "bench", "pgbench", "127.0.0.1:5000")
    # Works on the session before the sans-IO core too (its state was the session's own),
    # so that the same script measures before and after.
    from softguard.proxy import session as module

    core: Any = getattr(session, "core", session)
    core.state = module.State.READY
    core.info = info
    if core is not session:  # the sans-IO core writes through sinks
        core.to_server, core.to_client = up.write, client.write
    core._sframer.set_want(frozenset(b"ZEN"))
    return session, client, up


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    mode = sys.argv[2] if len(sys.argv) > 2 else "simple"
    session, client, up = ready_session()
    traffic = exchanges(n, mode)
    from softguard.proxy.session import UpstreamProtocol

    server_side = UpstreamProtocol(session).data_received  # as the event loop calls it
    start = time.process_time()
    for to_server, to_client in traffic:
        session.data_received(to_server)
        server_side(to_client)
    spent = time.process_time() - start
    assert up.written == sum(len(c) for c, _ in traffic), "client bytes changed on the way"
    assert client.written == sum(len(s) for _, s in traffic), "server bytes changed on the way"
    per_txn = spent / max(n, 1) * 1e6
    per_stmt = spent / max(len(traffic), 1) * 1e6
    print(
        f"{mode}: {n} transactions, {per_txn:.1f} us CPU per transaction, "
        f"{per_stmt:.2f} us per statement"
    )


if __name__ == "__main__":
    main()
