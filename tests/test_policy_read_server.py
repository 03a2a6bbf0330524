"""Policy decisions over what the server will run: ALTER subcommands in any order,
unparseable text, FunctionCall messages (issues 10 and 18)."""

from __future__ import annotations

import pytest

from softguard.policy import Action, Policy, SessionInfo
from softguard.sql import classify

SESSION = SessionInfo("app", "db", "psql", "127.0.0.1")


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE t ADD COLUMN x int, DROP COLUMN c",
        "ALTER TABLE t DROP CONSTRAINT k, DROP COLUMN c",
        "ALTER TABLE t DROP CONSTRAINT k, ALTER COLUMN c TYPE int USING c::int",
        "ALTER TABLE t ALTER COLUMN c SET DEFAULT 1, DROP CONSTRAINT k, DROP COLUMN c",
    ],
)
def test_an_alter_is_protected_whatever_subcommand_comes_first(sql: str) -> None:
    (decision,) = Policy().decide(classify(sql), SESSION, source="query", log_it=False)
    assert decision.action is Action.PROTECT
    assert decision.category == "alter"
