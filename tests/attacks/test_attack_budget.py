"""Issue 11 item 7: the protected role tries to raise or remove its capture budget.

The arena's budget is 16 kB (`softguard init --config`, and a proxy serving the same
configuration); table `huge` is far over it. Whatever the attack (a setting, the settings
table, a DO block, a function, softguard's own setter), the budget stays and a DELETE or
TRUNCATE of `huge` is still refused with 54000, changing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from attacker import Arena, Template, fixtures
from support.proxy import ProxyFactory

arena_template, arena = fixtures()

BUDGET = 16 * 1024
HUGE = """
CREATE TABLE huge (id int PRIMARY KEY, payload text NOT NULL);
INSERT INTO huge SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 1000) g;
"""


@pytest.fixture(scope="module")
def budget_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("budget") / "budget.toml"
    config.write_text('max_capture_bytes = "16kB"\n')
    return config


@pytest.fixture
def arena_budget(
    arena_template: Template, proxy_factory: ProxyFactory, budget_config: Path
) -> Iterator[Arena]:
    proxy = proxy_factory("--config", str(budget_config))
    if proxy.is_direct:
        pytest.skip("the budget is kept by softguard's proxy")
    for a in arena_template.clone(proxy):
        with a.connect(via="direct", who="owner") as c:
            c.execute(HUGE)
        r = a.cli("init", "--config", str(budget_config))
        assert r.returncode == 0, r.stdout + r.stderr
        yield a


def _still_refused(a: Arena) -> None:
    assert a.direct("SELECT max_capture_bytes FROM softguard.settings") == [(BUDGET,)]
    for stmt in ("DELETE FROM huge", "TRUNCATE huge", "DO $$ BEGIN TRUNCATE huge; END $$"):
        out, _ = a.attempt([stmt])
        assert out.sqlstate == "54000", f"{stmt}: {out.describe()}"


RAISE = {
    "set": ["SET softguard.max_capture_bytes = '1000000000000'", "DELETE FROM huge"],
    "set_config_built_name": [
        "SELECT set_config(concat('softguard.', 'max_capture_bytes'), '1000000000000', false)",
        "DELETE FROM huge",
    ],
    "do_set_config_then_delete": [
        "DO $$ BEGIN PERFORM set_config('softguard.max_' || 'capture_bytes', '1000000000000',"
        " false); DELETE FROM huge; END $$"
    ],
    "update_settings": ["UPDATE softguard.settings SET max_capture_bytes = 1000000000000"],
    "do_update_settings": [
        "DO $$ BEGIN EXECUTE 'UPDATE softguard.' || 'settings SET max_capture_bytes = "
        "1000000000000'; END $$"
    ],
    "do_delete_settings": ["DO $$ BEGIN EXECUTE 'DELETE FROM softguard.' || 'settings'; END $$"],
    "do_truncate_settings": ["DO $$ BEGIN EXECUTE 'TRUNCATE softguard.' || 'settings'; END $$"],
    "do_settings_set": [
        "DO $$ BEGIN EXECUTE 'SELECT softguard.' || '_settings_set(1000000000000, 0, NULL,"
        " NULL)'; END $$"
    ],
    "function": [
        "CREATE FUNCTION lift() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE "
        "'UPDATE softguard.' || 'settings SET max_capture_bytes = 1000000000000'; END $$",
        "SELECT lift()",
    ],
    "security_definer_function": [
        "CREATE FUNCTION lift() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN "
        "EXECUTE 'SELECT softguard.' || '_settings_set(1000000000000, 0, NULL, NULL)'; END $$",
        "SELECT lift()",
    ],
}


@pytest.mark.parametrize("who", ["owner", "super"])
@pytest.mark.parametrize("name", sorted(RAISE))
def test_budget_cannot_be_raised(arena_budget: Arena, name: str, who: str) -> None:
    out, _ = arena_budget.attempt(RAISE[name], who=who)
    assert out.error is not None, out.describe()
    arena_budget.direct("DROP FUNCTION IF EXISTS lift()")
    _still_refused(arena_budget)


def test_startup_option_cannot_raise_it(arena_budget: Arena) -> None:
    out, _ = arena_budget.attempt(
        ["DELETE FROM huge"], options="-c softguard.max_capture_bytes=1000000000000"
    )
    assert out.sqlstate in {"54000", "08P01", "42501"}, out.describe()
    _still_refused(arena_budget)


def test_under_the_budget_still_captured(arena_budget: Arena) -> None:
    """Control: what fits is captured and undone exactly, nested TRUNCATE included."""
    out, ops = arena_budget.attempt(
        ["DELETE FROM huge WHERE id <= 5", "DO $$ BEGIN TRUNCATE nokey; END $$"]
    )
    assert out.error is None, out.describe()
    assert [o["kind"] for o in ops] == ["DELETE", "TRUNCATE"]


def test_refused_statement_keeps_nothing(arena_budget: Arena) -> None:
    before = arena_budget.capture_state()
    with arena_budget.connect() as c, pytest.raises(psycopg.errors.ProgramLimitExceeded):
        c.execute("DELETE FROM huge")
    assert arena_budget.capture_state() == before
