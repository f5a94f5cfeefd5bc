"""A throwaway PostgreSQL cluster per test (initdb in a temp dir, ~1 s), never skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.postgres import PgCluster, require_postgres


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    require_postgres()
    with PgCluster() as cluster:
        yield cluster
