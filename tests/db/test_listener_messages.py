"""What the NOTIFY listeners log while they cannot connect: a server that is down or
restarting is reported as unreachable, with the retry and its attempt number; only a
refused login or an unknown database points at DATABASE_URL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest

from pgjobs.signals.events import PgEventListener
from pgjobs.signals.wakeup import Listener
from tests.conftest import ADMIN_URL
from tests.helpers import wait_until_async
from tests.webserver import free_port

pytestmark = pytest.mark.anyio


def listeners(url: str) -> dict[str, Callable[[], Listener | PgEventListener]]:
    return {
        "pgjobs.wakeup": lambda: Listener(
            url, "test", on_jobs=lambda _: None, on_cancel=lambda _: None, on_delayed=lambda: None
        ),
        "pgjobs.events": lambda: PgEventListener(url, lambda _: None),
    }


async def warnings_of(
    logger: str, make: Callable[[], Listener | PgEventListener], caplog: pytest.LogCaptureFixture
) -> list[str]:
    caplog.set_level(logging.WARNING, logger=logger)
    listener = make()
    listener.start()
    try:

        async def two() -> list[str]:
            lines = [r.getMessage() for r in caplog.records if r.name == logger]
            return lines if len(lines) >= 2 else []

        return await wait_until_async(two, message=f"two warnings from {logger}")
    finally:
        await listener.stop()


@pytest.mark.parametrize("logger", ["pgjobs.wakeup", "pgjobs.events"])
async def test_a_server_that_is_down_is_unreachable_and_retried(
    logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: refused, as during a restart
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    first, second = await warnings_of(logger, listeners(url)[logger], caplog)
    for attempt, line in ((1, first), (2, second)):
        assert f"PostgreSQL at 127.0.0.1:{port} is unreachable (connection refused)" in line
        assert f"(attempt {attempt})" in line
        assert "retrying in" in line
        assert "DATABASE_URL" not in line


@pytest.mark.parametrize("logger", ["pgjobs.wakeup", "pgjobs.events"])
async def test_an_unknown_database_points_at_the_setting(
    logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = f"/pgjobs_missing_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=missing))
    first, _ = await warnings_of(logger, listeners(url)[logger], caplog)
    assert "does not exist" in first
    assert "check DATABASE_URL" in first
    assert "(attempt 1)" in first
    assert "unreachable" not in first
