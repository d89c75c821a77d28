"""Fixtures of the fault-injection suite.

The scenarios run on a PostgreSQL cluster of their own (Debian's binaries, a free port,
a temporary folder) when one can be made: dozens of worker processes need more
connections than a shared server may spare, and a private cluster keeps other test
runs out of the figures. Without the binaries they use the shared test server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_URL
from tests.process.chaos.harness import Cluster, Redis, create_database, drop_database


@pytest.fixture(scope="session")
def chaos_server() -> Iterator[str]:
    """The admin URL of the server the scenarios use."""
    if not Cluster.available():
        yield ADMIN_URL
        return
    cluster = Cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def chaos_db(chaos_server: str) -> Iterator[str]:
    """A fresh database with the pgjobs schema and the ledger tables."""
    url = create_database(chaos_server)
    try:
        yield url
    finally:
        drop_database(chaos_server, url)


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster this test may restart at will."""
    if not Cluster.available():
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    if not Redis.available():
        pytest.skip("needs redis-server on PATH")
    server = Redis.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
