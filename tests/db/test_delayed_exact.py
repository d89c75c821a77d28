"""`delay` and `runAt` are exact: a delayed job becomes runnable at its run_at, not at
the next poll — the stager asks to be woken exactly then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.clock import FrozenClock
from pgjobs.engine.maintenance.tasks import Stager
from tests.conftest import make_settings
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

START = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


async def stage(conn: psycopg.AsyncConnection[Any], clock: FrozenClock) -> float:
    async with conn.transaction():
        return await Stager(idle=1.0).run(conn, clock)


@pytest.mark.parametrize(
    "options",
    [
        {"delay": 90_000},
        {"run_at": "2024-06-01T17:31:30+05:30"},  # 12:01:30 UTC, given in India time
        {"run_at": "2024-06-01T12:01:30Z"},
        {"run_at": datetime(2024, 6, 1, 8, 1, 30, tzinfo=timezone(timedelta(hours=-4)))},
    ],
)
async def test_delayed_jobs_stage_exactly_at_run_at(db_url: str, options: dict[str, Any]) -> None:
    clock = FrozenClock(START)
    app = App(make_settings(db_url), clock=clock)
    due = START + timedelta(seconds=90)
    try:
        job = await app.create("custom", {}, **options)
        assert job.status == "delayed" and job.run_at == due
        async with await psycopg.AsyncConnection.connect(
            db_url, autocommit=True, row_factory=dict_row
        ) as conn:
            # The stager wants to run again exactly when the job is due (its loop caps
            # the sleep at the poll interval)...
            assert await stage(conn, clock) == pytest.approx(90.0)
            clock.set(due - timedelta(seconds=0.25))
            assert await stage(conn, clock) == pytest.approx(0.25)
            clock.set(due - timedelta(microseconds=1))
            await stage(conn, clock)
            assert (await app.get(job.id)).status == "delayed"
            # ...and at that instant the job is runnable.
            clock.set(due)
            await stage(conn, clock)
            assert (await app.get(job.id)).status == "pending"
    finally:
        await app.close()


async def test_run_at_with_an_offset_starts_on_time_under_a_real_worker(app: App) -> None:
    @app.handler("at")
    async def at(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        return None

    async with app.worker(["default"]):
        async with app.connection() as conn:
            now = (await (await conn.execute("SELECT pgjobs_now() AS now")).fetchone())["now"]
        run_at = (now + timedelta(milliseconds=800)).astimezone(timezone(timedelta(hours=9)))
        job = await app.create("at", {}, run_at=run_at.isoformat())

        async def done() -> bool:
            return (await app.get(job.id)).status == "completed"

        await wait_until_async(done, timeout=10)
    stored = await app.get(job.id)
    assert stored.run_at == run_at and stored.started_at is not None
    late = (stored.started_at - run_at).total_seconds()
    # Never early; late only by the wake-up and claim, well under a poll interval
    # of the stager's old "check every second" style.
    assert 0 <= late < 0.9, late
