"""A background loop of the worker that meets an exception nobody planned for (a bug, a
value no code path expected) logs it and starts again: a worker that is alive and
heartbeating must never have stopped claiming, recording outcomes or heartbeating.

The fault is raised once, through the worker's documented `fault` test seam, in one
step of a real worker on a real database. (A fault of the database itself would not
do: each loop handles database and network errors on its own, so such a fault never
reaches the restart under test.)
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[dict[str, Any]]


class FailingOnce:
    """A fault hook: counts the steps named `step` and raises a RuntimeError in the
    one numbered `at` (from 0)."""

    def __init__(self, step: str, *, at: int = 0) -> None:
        self.step = step
        self.at = at
        self.calls = 0

    def __call__(self, step: str) -> None:
        if step != self.step:
            return
        self.calls += 1
        if self.calls - 1 == self.at:
            raise RuntimeError("a bug nobody planned for")


def register_noop(app: App) -> list[Any]:
    """Register the "noop" handler; returns the ids of the jobs it ran, one per run."""
    ran: list[Any] = []

    @app.handler("noop")
    async def noop(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        ran.append(ctx.id)
        return "ok"

    return ran


async def wait_completed(app: App, job_id: Any) -> None:
    async def done() -> bool:
        return (await app.get(job_id)).status == "completed"

    await wait_until_async(done, timeout=30, message=f"job {job_id} to complete")


async def test_claiming_loop_restarts_after_an_unexpected_error(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    register_noop(app)
    fault = FailingOnce("claim")
    worker = app.worker(queues=["default"], maintenance=False, fault=fault)
    with caplog.at_level(logging.ERROR, logger="pgjobs.worker"):
        async with worker:
            job = await app.create("noop")
            await wait_completed(app, job.id)
    assert fault.calls >= 2
    assert "claiming loop failed (RuntimeError: a bug nobody planned for)" in caplog.text


async def test_outcomes_are_recorded_after_an_unexpected_error(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    ran = register_noop(app)
    fault = FailingOnce("record")
    worker = app.worker(queues=["default"], maintenance=False, fault=fault)
    with caplog.at_level(logging.ERROR, logger="pgjobs.worker"):
        async with worker:
            job = await app.create("noop")
            await wait_completed(app, job.id)
            second = await app.create("noop")
            await wait_completed(app, second.id)
    assert fault.calls >= 2
    # The outcome that met the fault was kept and written: its job ran only once (a lost
    # outcome leaves the job active until the heartbeat gives it back to run again).
    assert ran == [job.id, second.id]
    assert "recording outcomes failed (RuntimeError" in caplog.text


async def test_heartbeat_goes_on_after_an_unexpected_error(settings: Settings, db: Conn) -> None:
    app = App(settings.replace(heartbeat_interval_ms=50))
    try:
        fault = FailingOnce("heartbeat")  # the loop's first beat
        worker = app.worker(queues=["default"], maintenance=False, fault=fault)
        async with worker:

            async def beats_after_the_fault() -> bool:
                return fault.calls >= 3

            await wait_until_async(beats_after_the_fault, timeout=30, message="heartbeats")

            def last_beat() -> Any:
                row = db.execute(
                    "SELECT last_heartbeat_at FROM job_workers WHERE id = %s", (worker.id,)
                ).fetchone()
                assert row is not None
                return row["last_heartbeat_at"]

            # Beats after the fault still reach the database.
            seen = last_beat()

            async def beat_again() -> bool:
                return bool(last_beat() > seen)

            await wait_until_async(beat_again, timeout=30, message="a heartbeat written")
    finally:
        await app.close()
