"""The server's answer around an operation's NOTICE, relayed without the per-chunk writes
the server's flush at every NOTICE would cost (decision 0024, "Since then"): the client
gets the same bytes, in fewer writes, whatever the chunks."""

from __future__ import annotations

import random

from test_core import READY_IDLE, READY_TX, Core, complete, drain, msg, ready_core

from softguard.proxy import commands as cmd
from softguard.wire.results import _without_context

BIND = msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S")
BIND_COMPLETE = msg(b"2")


def op_notice(op: int, *, context: bool = True) -> bytes:
    """softguard's operation NOTICE as the capture trigger raises it (with the PL/pgSQL
    fields the proxy removes) or as ``_notice`` does."""
    body = (
        b"SNOTICE\0VNOTICE\0C00000\0Msoftguard: DELETE public.t is reversible as operation "
        + str(op).encode()
        + b" until 2026-12-14\0"
    )
    if context:
        body += b"WPL/pgSQL function softguard._capture_rows() line 80 at RAISE\0Fpl_exec.c\0"
    return msg(b"N", body + b"\0")


def plain_notice(text: str) -> bytes:
    return msg(b"N", b"SNOTICE\0VNOTICE\0C00000\0M" + text.encode() + b"\0\0")


def expected(stream: list[bytes]) -> bytes:
    """What the client must get: every message as the server sent it, an operation
    NOTICE without its context fields."""
    out = []
    for m in stream:
        replaced = _without_context(m[0], m[5:]) if m[:1] == b"N" else None
        out.append(m if replaced is None else replaced)
    return b"".join(out)


def test_a_captured_delete_reaches_the_client_in_one_write() -> None:
    core, _ = ready_core()
    core.client_data(BIND)
    drain(core)
    # The server flushes at the NOTICE: its answer comes in two chunks.
    core.server_data(BIND_COMPLETE + op_notice(1))
    out = drain(core)
    assert out.to_client == b"" and core.sent_client == []
    assert [type(c) for c in out.controls] == [cmd.OperationNotice]
    core.server_data(complete("DELETE 1") + READY_IDLE)
    writes = list(core.sent_client)
    assert writes == [expected([BIND_COMPLETE, op_notice(1), complete("DELETE 1"), READY_IDLE])]
    assert core.pending == 0


def test_a_notice_that_is_not_an_operation_is_not_held() -> None:
    core, _ = ready_core()
    core.client_data(BIND)
    drain(core)
    core.server_data(BIND_COMPLETE + plain_notice("progress 10%"))
    assert drain(core).to_client == BIND_COMPLETE + plain_notice("progress 10%")


def test_nothing_is_held_when_no_answer_is_owed() -> None:
    core, _ = ready_core()
    # No Query or Sync sent: nothing tells that more will come.
    core.server_data(op_notice(2))
    assert drain(core).to_client == expected([op_notice(2)])


def test_held_bytes_go_before_the_farewell_when_the_server_is_lost() -> None:
    core, _ = ready_core()
    core.client_data(BIND)
    drain(core)
    core.server_data(BIND_COMPLETE + op_notice(3))
    core.server_lost()
    out = drain(core)
    assert out.to_client == expected([BIND_COMPLETE, op_notice(3)])
    closes = [c for c in out.controls if isinstance(c, cmd.Close)]
    assert len(closes) == 1 and closes[0].farewell[:1] == b"E"


def test_held_bytes_go_before_a_shutdown() -> None:
    core, _ = ready_core()
    core.client_data(BIND)
    drain(core)
    core.server_data(BIND_COMPLETE + op_notice(4))
    core.terminate("57P01", "softguard: shutting down")
    out = drain(core)
    assert out.to_client == expected([BIND_COMPLETE, op_notice(4)])


def _stream(rng: random.Random) -> list[bytes]:
    """A server's answers to a few statements: rows, notices, operation notices."""
    stream: list[bytes] = []
    for _ in range(rng.randrange(1, 6)):  # bounded
        stream.append(BIND_COMPLETE)
        for _ in range(rng.randrange(3)):  # bounded
            stream.append(msg(b"D", b"\0\1\0\0\0\3abc"))
        choice = rng.randrange(4)
        if choice == 0:
            stream.append(op_notice(rng.randrange(1000)))
        elif choice == 1:
            stream.append(op_notice(rng.randrange(1000), context=False))
        elif choice == 2:
            stream.append(plain_notice("hello"))
        stream.append(complete("DELETE 1"))
        stream.append(rng.choice([READY_IDLE, READY_TX]))
    return stream


def _relay(core: Core, data: bytes, cuts: list[int]) -> list[bytes]:
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            core.server_data(data[start:cut])
            start = cut
    return list(core.sent_client)


def test_any_chunking_gives_the_client_the_same_bytes() -> None:
    rng = random.Random(23)
    for _ in range(400):  # bounded
        stream = _stream(rng)
        data = b"".join(stream)
        # Cut after some whole messages (where the server flushes) or anywhere.
        ends = [sum(map(len, stream[: i + 1])) for i in range(len(stream))]
        cuts = sorted(
            rng.sample(ends, rng.randrange(len(ends)))
            + [rng.randrange(len(data)) for _ in range(rng.randrange(3))]
        )
        core, _ = ready_core()
        syncs = sum(1 for m in stream if m[:1] == b"Z")
        core.client_data(BIND * syncs)
        drain(core)
        writes = _relay(core, data, cuts)
        assert b"".join(writes) == expected(stream), (stream, cuts)
        assert core.pending == 0
        # Nothing was held back past the answer's end; no write ended with an operation
        # NOTICE while an answer was still owed.
        assert core._held_out == b""
        assert core._answers_plain is (core._filter is None)
