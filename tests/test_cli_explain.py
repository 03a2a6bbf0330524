"""softguard explain: classification, policy decision and what would be sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from softguard.cli.main import app


def explain(*args: str) -> str:
    result = CliRunner().invoke(app, ["explain", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_drop_is_rewritten_into_drop_op() -> None:
    out = explain("select 1; drop table t cascade")
    assert "destructive  DROP TABLE               t CASCADE" in out
    assert "policy: protect (drop) DROP TABLE t" in out
    assert "select 1; CALL softguard.drop_op(" in out


def test_delete_is_sent_as_is_and_captured() -> None:
    out = explain("delete from x where id = 1")
    assert "policy: protect (delete) DELETE FROM x" in out
    assert "sent as is; the database captures the rows it changes" in out


def test_dangerous_is_refused_and_rules_apply(tmp_path: Path) -> None:
    assert "policy: deny (dangerous) DROP DATABASE d" in explain("drop database d")
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[policy.rules]]\nrole = "agent*"\ndrop = "deny"\n')
    out = explain("drop table t", "--config", str(cfg), "--role", "agent7")
    assert "policy: deny (drop) DROP TABLE t" in out
    # Behind the approval gate (decision 0020): refused unless a person approved it, and
    # then run reversibly.
    assert "softguard._approval_gate(E'" in out and "E'42501'" in out
    assert "CALL softguard.drop_op(" in out
    assert "policy: protect (drop)" in explain("drop table t", "--config", str(cfg))


def test_safe_text() -> None:
    out = explain("select 42")
    assert out.startswith("kind: safe") and out.rstrip().endswith("sent as is")


def test_drop_column_goes_to_alter_op_but_other_alters_pass() -> None:
    out = explain("alter table vehicles drop column specs")
    assert "policy: protect (alter)" in out and "CALL softguard.alter_op(" in out
    out = explain("alter table t alter column c type text")
    assert "policy: protect (alter)" in out and "CALL softguard.alter_op(" in out
    assert '"columns":[{"schema":null,"table":"t","column":"c"}],"drop_column":false' in out
    out = explain("alter table t drop constraint k")
    assert "policy: allow (alter)" in out and out.rstrip().endswith("sent as is")


def test_delete_on_a_soft_delete_table(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[soft_delete]]\ntable = "public.orders"\nmode = "quarantine"\n'
        '[[soft_delete]]\ntable = "public.*"\ncolumn = "deleted_at"\n'
    )
    out = explain("delete from customers where id = 1", "--config", str(cfg))
    assert "soft delete: on customers (entry 'public.*', column deleted_at, mark timestamp)" in out
    out = explain("delete from public.orders where id = 1", "--config", str(cfg))
    assert "sent as is; the database captures the rows it changes" in out
    out = explain("delete from app.orders where id = 1", "--config", str(cfg))
    assert "sent as is; the database captures the rows it changes" in out


def test_dsn_shows_the_soft_delete_rewrite(tmp_path: Path, pg_server: Any) -> None:
    import psycopg

    cfg = tmp_path / "s.toml"
    cfg.write_text('[[soft_delete]]\ntable = "public.*"\ncolumn = "deleted_at"\n')
    with pg_server.scratch_database() as db:
        dsn = pg_server.superuser_dsn(db)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE orders (id int PRIMARY KEY, deleted_at timestamptz)")
            c.execute("CREATE TABLE notes (id int PRIMARY KEY)")
        out = explain("delete from orders where id = $1", "--config", str(cfg), "--dsn", dsn)
        assert "sent instead:\n   UPDATE orders SET deleted_at = (SELECT softguard." in out
        assert out.rstrip().endswith("WHERE id = $1 AND orders.deleted_at IS NULL")
        out = explain("delete from notes where id = 1", "--config", str(cfg), "--dsn", dsn)
        assert "sent as is; the database captures the rows it changes" in out
    result = CliRunner().invoke(
        app, ["explain", "delete from orders", "--config", str(cfg), "--dsn", dsn]
    )
    assert result.exit_code == 2 and "cannot read the catalog through --dsn" in result.output
