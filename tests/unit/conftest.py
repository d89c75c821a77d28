"""The unit tier uses no service: a test here that asks for a database fails at once
instead of quietly making the tier slow (move it to tests/db)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def template_db() -> str:
    pytest.fail("tests/unit uses no database: this test belongs in tests/db")


@pytest.fixture
def empty_db_url() -> str:
    pytest.fail("tests/unit uses no database: this test belongs in tests/db")
