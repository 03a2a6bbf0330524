"""Issue 18 item 4: writes that leave through a foreign table.

A superuser has set up postgres_fdw pointing back at the same database (a common way to
reach "the other schema"); the application's role deletes and truncates through it. The
remote session connects directly, so softguard's session marking never reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from attacker import Arena, Template, template_fixture
from support.pg import TestServer
from support.proxy import Target

arena_template = template_fixture()


@pytest.fixture
def arena(arena_template: Template, proxy: Target, pg_server: TestServer) -> Iterator[Arena]:
    """An arena whose owner has a foreign table `ft` over its own table `big`."""
    for a in arena_template.clone(proxy):
        try:
            with psycopg.connect(a.direct_dsn(), autocommit=True) as c:
                c.execute("CREATE EXTENSION postgres_fdw")
                c.execute(
                    f"CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS "
                    f"(host '{pg_server.host}', port '{pg_server.port}', dbname '{a.db}')"
                )
                c.execute(
                    f"CREATE USER MAPPING FOR {a.owner} SERVER loop OPTIONS "
                    f"(user '{a.owner}', password_required 'false')"
                )
                c.execute(f"GRANT USAGE ON FOREIGN SERVER loop TO {a.owner}")
        except psycopg.errors.FeatureNotSupported as e:
            pytest.skip(f"postgres_fdw not available: {e}")
        except psycopg.errors.UndefinedFile as e:
            pytest.skip(f"postgres_fdw not available: {e}")
        a.attack(
            [
                "CREATE FOREIGN TABLE ft (id int, payload text) SERVER loop "
                "OPTIONS (schema_name 'public', table_name 'big')"
            ],
            via="direct",
        )
        yield a


@pytest.mark.parametrize("stmt", ["DELETE FROM ft WHERE id < 10", "DELETE FROM ft", "TRUNCATE ft"])
def test_foreign_table_write_is_captured_or_refused(arena: Arena, stmt: str) -> None:
    arena.attempt([stmt])


def test_foreign_table_read_still_works(arena: Arena) -> None:
    """Control: the loopback works and reading through it is untouched."""
    out = arena.attack(["SELECT count(*) FROM ft"])
    assert out.error is None and out.results == [[(50,)]], out.describe()
