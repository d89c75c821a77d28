"""Test harness: a real PostgreSQL; every test gets its own database cloned from a
template that has the schema installed, so tests run in any order and in parallel
(pytest-xdist: `bin/test` runs them on every core).

The tests are in tiers, one folder each, and every test is marked with its tier:
tests/unit (no service at all), tests/db (PostgreSQL and Redis, in process),
tests/process (worker, server and CLI subprocesses; the fault-injection scenarios) and
tests/browser (the dashboard in chromium). `-m "unit or db"` picks tiers by marker."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.config import Settings, load_settings
from pgjobs.db import install_schema, migrations
from pgjobs.resources import read_text

ADMIN_URL = (
    os.environ.get("PGJOBS_TEST_DATABASE_URL")
    or os.environ.get("DATABASE_URL")
    or "postgresql://postgres@127.0.0.1:5432/postgres"
)

# Settings for tests: short intervals so leases, polls and heartbeats act quickly.
TEST_ENV = {
    "JOBS_POLL_INTERVAL": "200",
    "JOBS_HEARTBEAT_INTERVAL": "500",
    "JOBS_RETRY_DELAY": "100",
    "LOG_LEVEL": "debug",
    # In-process clients (httpx over ASGI) use http://test as their base URL.
    "JOBS_ALLOWED_HOSTS": "test,localhost,127.0.0.1,::1",
}


# "gw0", "gw1", ... under pytest-xdist, "main" in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "db", "process", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if parts[0] in TIERS:
            item.add_marker(parts[0])
        if "chaos" in parts[:-1]:
            # Under xdist (`--dist loadgroup`) the fault-injection scenarios run one after
            # another on one worker: each starts dozens of processes and measures recovery
            # times, and two at once starve each other on a small machine.
            item.add_marker(pytest.mark.xdist_group("chaos"))


def database_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(ADMIN_URL, autocommit=True)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def template_db() -> str:
    """A database with the current schema, built once per schema version and per xdist
    worker, so parallel workers never wait on each other's template (PostgreSQL refuses
    to clone a database while another session is connected to it)."""
    digest = hashlib.sha256((read_text("schema.sql") + read_text("views.sql")).encode())
    for migration in migrations():  # a fresh install records their names
        digest.update(f"{migration.version} {migration.name}".encode())
    name = f"pgjobs_tpl_{digest.hexdigest()[:16]}_{XDIST_WORKER}"
    with _admin() as admin:
        admin.execute("SELECT pg_advisory_lock(7423510099)")
        try:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                admin.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
                )
                try:
                    with psycopg.connect(database_url(name), autocommit=True) as conn:
                        install_schema(conn)
                except BaseException:
                    admin.execute(
                        psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                            psycopg.sql.Identifier(name)
                        )
                    )
                    raise
        finally:
            admin.execute("SELECT pg_advisory_unlock(7423510099)")
    return name


def create_database(template: str) -> str:
    name = f"pgjobs_t_{uuid.uuid4().hex[:16]}"
    with _admin() as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Identifier(template)
            )
        )
    return name


def drop_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)
            )
        )


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh database with the schema installed, dropped after the test."""
    name = create_database(template_db)
    try:
        yield database_url(name)
    finally:
        drop_database(name)


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A fresh database without the pgjobs schema."""
    name = f"pgjobs_t_{uuid.uuid4().hex[:16]}"
    with _admin() as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def make_settings(db_url: str, **overrides: str) -> Settings:
    return load_settings({"DATABASE_URL": db_url, **TEST_ENV, **overrides}, env_file=None)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    application = App(settings)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
def sync_app(settings: Settings) -> Iterator[App]:
    application = App(settings)
    try:
        yield application
    finally:
        application.close_sync()


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to the test's database (dict rows)."""
    from psycopg.rows import dict_row

    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn
