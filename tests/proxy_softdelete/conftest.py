"""`twins` here takes copies of the soft-delete template (fixtures/fix_softdelete.py's
sd_pool) instead of fix_twins' drop template; every other fixture is the suite's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fixtures.fix_twins import DatabasePool, make_twins


@pytest.fixture
def twins(sd_pool: DatabasePool) -> Iterator[Callable[..., list[str]]]:
    yield from make_twins(sd_pool)
