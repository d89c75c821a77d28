"""Claiming ahead: while runs are shorter than a claim's round trip, the worker also
claims for its busy slots. It never runs more than `concurrency` jobs at once, never
holds jobs ahead while runs are long, and gives back or cancels a job claimed ahead
that has not started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.engine.worker import ClaimTimings, RunningAverage, Worker
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio


def count(db: Any, status: str) -> int:
    row = db.execute("SELECT count(*) AS n FROM jobs WHERE status = %s", (status,)).fetchone()
    return int(row["n"])


def runs_look_short(*, weight: float | None = None) -> ClaimTimings:
    """What the worker measures once handlers return faster than a claim's round trip.
    With `weight=0.0` the averages ignore new samples: the worker claims ahead whatever
    it measures."""
    timings = (
        ClaimTimings()
        if weight is None
        else ClaimTimings(RunningAverage(weight=weight), RunningAverage(weight=weight))
    )
    timings.run.add(0.0)
    timings.claim.add(1.0)
    return timings


async def test_short_runs_are_claimed_ahead_without_exceeding_concurrency(
    app: App, db: Any
) -> None:
    running = 0
    most = 0

    @app.handler("quick")
    async def quick(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        # Long enough that claims answered ahead find every slot still busy.
        await asyncio.sleep(0.002)
        running -= 1

    await app.create_many([app.build("quick", {}) for _ in range(600)])
    worker = app.worker(["default"], concurrency=5, timings=runs_look_short(weight=0.0))
    async with worker:

        async def all_done() -> bool:
            return count(db, "completed") == 600

        await wait_until_async(all_done, timeout=60, message="600 jobs completed")
        assert worker.snapshot().claims_ahead  # all along: the averages ignore samples
    assert 1 <= most <= 5


async def test_long_runs_are_never_claimed_ahead(app: App, db: Any) -> None:
    @app.handler("slow")
    async def slow(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.3)

    await app.create_many([app.build("slow", {}) for _ in range(8)])
    held: list[int] = []
    async with app.worker(["default"], concurrency=2) as worker:

        async def all_done() -> bool:
            # Jobs claimed and not yet run to the end. (The database may briefly show
            # more active jobs: a finished run stays active until its outcome is
            # written, a couple of milliseconds later.)
            state = worker.snapshot()
            held.append(state.running + state.ready)
            return count(db, "completed") == 8

        await wait_until_async(all_done, timeout=30, message="8 jobs completed")
        assert not worker.snapshot().claims_ahead
    assert max(held) == 2, held


class Holding:
    """Two jobs for one slot: the first runs until `release` is set, and the worker,
    seeing short runs, claims the second ahead while the first holds the slot."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.release = asyncio.Event()
        self.ran: list[int] = []

        @app.handler("hold")
        async def hold(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
            self.ran.append(payload["n"])
            await self.release.wait()

    async def start(self, **worker_options: Any) -> tuple[pgjobs.Job, pgjobs.Job, Worker]:
        first = await self.app.create("hold", {"n": 1})
        second = await self.app.create("hold", {"n": 2}, attempts=1)
        worker = self.app.worker(
            ["default"], concurrency=1, timings=runs_look_short(), **worker_options
        )
        return first, second, worker

    async def wait_claimed_ahead(self, second: pgjobs.Job) -> None:
        async def claimed() -> bool:
            return self.ran == [1] and (await self.app.get(second.id)).status == "active"

        await wait_until_async(claimed, message="the second job claimed ahead")


async def test_a_job_claimed_ahead_is_cancelled_before_it_starts(app: App) -> None:
    holding = Holding(app)
    first, second, worker = await holding.start()
    async with worker:
        await worker.wait_listening()
        await holding.wait_claimed_ahead(second)
        await app.cancel(second.id)

        async def second_cancelled() -> bool:
            return (await app.get(second.id)).status == "cancelled"

        await wait_until_async(second_cancelled, message="the second job cancelled")
        holding.release.set()

        async def first_completed() -> bool:
            return (await app.get(first.id)).status == "completed"

        await wait_until_async(first_completed, message="the first job completed")
    assert holding.ran == [1]


async def test_a_job_claimed_ahead_is_given_back_at_shutdown(app: App) -> None:
    holding = Holding(app)
    _, second, worker = await holding.start(grace=0.1)
    async with worker:
        await holding.wait_claimed_ahead(second)
    back = await app.get(second.id)
    assert (back.status, holding.ran) == ("pending", [1])
    holding.release.set()
    # The give-back did not use up its only attempt: it still runs and completes.
    assert await app.drain() == 2
    assert (await app.get(second.id)).status == "completed"
    assert sorted(holding.ran) == [1, 1, 2]
