"""A background loop of the worker that meets an exception nobody planned for (a bug, a
value no code path expected) logs it and starts again: a worker that is alive and
heartbeating must never have stopped claiming, recording outcomes or heartbeating.

The fault is injected once into a real worker on a real database, where each loop
used to catch only database and network errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

T = TypeVar("T")
Conn = psycopg.Connection[dict[str, Any]]


def failing_once(
    real: Callable[..., Awaitable[T]], *, after: int = 0
) -> tuple[Callable[..., Awaitable[T]], list[int]]:
    """`real`, except that call number `after` (from 0) raises a RuntimeError."""
    calls: list[int] = []

    async def wrapper(*args: Any, **kwargs: Any) -> T:
        calls.append(len(calls))
        if len(calls) - 1 == after:
            raise RuntimeError("a bug nobody planned for")
        return await real(*args, **kwargs)

    return wrapper, calls


def register_noop(app: App) -> None:
    @app.handler("noop")
    async def noop(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        return "ok"


async def wait_completed(app: App, job_id: Any) -> None:
    async def done() -> bool:
        return (await app.get(job_id)).status == "completed"

    await wait_until_async(done, timeout=30, message=f"job {job_id} to complete")


async def test_claiming_loop_restarts_after_an_unexpected_error(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    register_noop(app)
    worker = app.worker(queues=["default"], maintenance=False)
    worker._claim, calls = failing_once(worker._claim)  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pgjobs.worker"):
        async with worker:
            job = await app.create("noop")
            await wait_completed(app, job.id)
    assert len(calls) >= 2
    assert "claiming loop failed (RuntimeError: a bug nobody planned for)" in caplog.text


async def test_outcomes_are_recorded_after_an_unexpected_error(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    register_noop(app)
    worker = app.worker(queues=["default"], maintenance=False)
    completer = worker._completer
    completer._write, calls = failing_once(completer._write)  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pgjobs.worker"):
        async with worker:
            job = await app.create("noop")
            await wait_completed(app, job.id)
            second = await app.create("noop")
            await wait_completed(app, second.id)
    assert len(calls) >= 2
    assert "recording outcomes failed (RuntimeError" in caplog.text


async def test_heartbeat_goes_on_after_an_unexpected_error(settings: Settings, db: Conn) -> None:
    app = App(settings.replace(heartbeat_interval_ms=50))
    try:
        worker = app.worker(queues=["default"], maintenance=False)
        # Call 0 registers the worker; call 1 is the loop's first beat.
        worker._heartbeat, calls = failing_once(worker._heartbeat, after=1)  # type: ignore[method-assign]
        async with worker:

            async def beats_after_the_fault() -> bool:
                return len(calls) >= 4

            await wait_until_async(beats_after_the_fault, timeout=30, message="heartbeats")
            row = db.execute(
                "SELECT clock_timestamp() - last_heartbeat_at AS age FROM job_workers "
                "WHERE id = %s",
                (worker.id,),
            ).fetchone()
            assert row is not None and row["age"].total_seconds() < 5
    finally:
        await app.close()
