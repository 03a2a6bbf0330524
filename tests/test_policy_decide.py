"""Policy.decide, table-driven: classification + configuration + session -> decisions.

The cases are in tests/cases/policy_decide.txt (its header says how to read them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from softguard.policy import Policy, PolicyConfig, SessionInfo
from softguard.sql import classify

CASES = Path(__file__).parent / "cases" / "policy_decide.txt"


def _config(spec: str) -> PolicyConfig:
    if spec == "-":
        return PolicyConfig()
    values: dict[str, Any] = {"rules": []}
    for item in spec.split(";"):
        item = item.strip()
        if item.startswith("rule:"):
            rule = dict(pair.split("=", 1) for pair in item[5:].split(","))
            values["rules"].append(rule)
        else:
            key, value = item.split("=", 1)
            values[key] = value
    return PolicyConfig.model_validate(values)


def _cases() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in CASES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sql, config, session, expected = (part.strip() for part in line.split(" | "))
        rows.append((sql, config, session, expected))
    return rows


@pytest.mark.parametrize(("sql", "config", "session", "expected"), _cases())
def test_decide(sql: str, config: str, session: str, expected: str) -> None:
    role, database, application_name = session.split("/")
    info = SessionInfo(role, database, application_name, "10.0.0.7:50000")
    decisions = Policy(_config(config)).decide(classify(sql), info, source="query")
    got = "; ".join(f"{d.action.value} {d.category}" for d in decisions) or "-"
    assert got == expected


def test_denied_decisions_carry_the_reason_the_client_reads() -> None:
    info = SessionInfo("app", "shop", "psql", "10.0.0.7:50000")
    (decision,) = Policy().decide(classify("drop database d"), info, source="query")
    assert decision.reason == (
        "softguard: DROP DATABASE d is refused by policy (dangerous); decided by the default "
        "policy"
    )
    assert "cannot be undone" in decision.hint
    (unparseable,) = Policy(_config("unparseable=deny")).decide(
        classify("select 1 +"), info, source="parse"
    )
    assert unparseable.statement is None
    assert unparseable.reason.startswith("softguard could not parse this statement: ")


def test_protect_is_refused_where_nothing_can_be_protected() -> None:
    with pytest.raises(ValueError, match="dangerous = 'protect' is not available"):
        _config("dangerous=protect")
