"""The session key the registration hands back (decision 0028): kept per session, and per
backend behind a session-mode pooler."""

from __future__ import annotations

import re
import struct

from softguard.policy import Policy, PolicyConfig, SessionInfo
from softguard.proxy.statements import (
    FixedLedger,
    PlanInputs,
    Planned,
    SoftSession,
    plan_message,
    take_call_key,
)
from softguard.sql import Classifier
from softguard.sql.rewrite import call_mark
from softguard.wire import Framer, parse_query_text

KEY = "ab" * 32


def inputs() -> PlanInputs:
    return PlanInputs(Classifier(0), Policy(PolicyConfig()), FixedLedger())


def test_key_of_the_session() -> None:
    soft = SoftSession()
    take_call_key(inputs(), soft, "shop", f"42.1700000000000000:{KEY}", pooled=False)
    assert soft.call_key == bytes.fromhex(KEY)
    for answer in ("42.17:", "42.17:zz", ""):
        other = SoftSession()
        take_call_key(inputs(), other, "shop", answer, pooled=False)
        assert other.call_key is None


def test_backend_handed_on_by_a_session_pooler_keeps_its_key() -> None:
    shared = inputs()
    first, second, elsewhere = SoftSession(), SoftSession(), SoftSession()
    take_call_key(shared, first, "shop", f"42.17:{KEY}", pooled=True)
    take_call_key(shared, second, "shop", "42.17:", pooled=True)
    take_call_key(shared, elsewhere, "other", "42.17:", pooled=True)
    assert first.call_key == second.call_key == bytes.fromhex(KEY)
    assert elsewhere.call_key is None


def test_alter_op_call_carries_the_mark_of_its_text() -> None:
    """With the session's key, the ALTER TABLE's alter_op call carries
    hmac(key, statement NUL ctx) over the very text sent (decision 0028); without, none."""
    body = b"ALTER TABLE t ALTER COLUMN c TYPE text USING 'x'\0"
    _, msgs, _ = Framer(want=None).feed(b"Q" + struct.pack("!I", len(body) + 4) + body)
    session = SessionInfo("alice", "shop", "psql", "10.0.0.7:50000")
    soft = SoftSession()
    soft.call_key = bytes.fromhex(KEY)
    sent = {}
    for key in (soft, SoftSession()):
        planned = plan_message(inputs(), session, msgs[0], soft=key)
        assert isinstance(planned, Planned) and planned.raw is not None
        sent[key is soft] = parse_query_text(planned.raw[0], planned.raw[5:]).decode()
    found = re.fullmatch(
        r"CALL softguard\.alter_op\((\$sg\w+\$)(.*)\1, (\$sg\w+\$)(.*)\3::jsonb, "
        r"'([0-9a-f]{64})'\)",
        sent[True],
        re.S,
    )
    assert found is not None, sent[True]
    assert found.group(2) == body[:-1].decode()
    assert '"columns": [{' in found.group(4)  # jsonb's own spacing
    assert found.group(5) == call_mark(soft.call_key, found.group(2), found.group(4))
    assert "::jsonb)" in sent[False] and not re.search(r"'[0-9a-f]{64}'\)$", sent[False])
