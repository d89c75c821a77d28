"""How a run ends, with the worker's lighter run machinery (one timer per run instead
of asyncio.timeout, claims of up to 100): returning before or after a wait, raising
before or after one, timing out, cancelled while it waits — each gives its outcome;
handlers can use task-bound asyncio APIs; nothing a handler does leaks into the
worker; and the worker holds a bounded number of jobs."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.engine.worker import MAX_AHEAD, MAX_CLAIM
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="worker")


async def test_every_way_a_handler_ends_gives_its_outcome(app: App, db: Any) -> None:
    seen_markers: list[str] = []

    @app.handler("returns")
    async def returns(ctx: pgjobs.JobContext, payload: Any) -> dict[str, int]:
        seen_markers.append(marker.get())
        marker.set("handler")  # must not leak into the worker or the next job
        return {"n": payload["n"]}

    @app.handler("waits-then-returns")
    async def waits_then_returns(ctx: pgjobs.JobContext, payload: Any) -> dict[str, int]:
        marker.set("handler")
        await asyncio.sleep(0.01)
        assert marker.get() == "handler"  # the same context after the wait
        return {"n": payload["n"] * 10}

    @app.handler("uses-task-apis")
    async def uses_task_apis(ctx: pgjobs.JobContext, payload: Any) -> str:
        # asyncio.timeout and TaskGroup need a current task, even in the first step.
        async with asyncio.timeout(5), asyncio.TaskGroup() as group:
            child = group.create_task(asyncio.sleep(0, result="inner"))
        assert asyncio.current_task() is not None
        return child.result()

    @app.handler("raises")
    async def raises(ctx: pgjobs.JobContext, payload: Any) -> None:
        raise ValueError("at once")

    @app.handler("waits-then-raises")
    async def waits_then_raises(ctx: pgjobs.JobContext, payload: Any) -> None:
        await asyncio.sleep(0)
        raise ValueError("after a wait")

    jobs = {
        "returns": await app.create("returns", {"n": 1}),
        "waits": await app.create("waits-then-returns", {"n": 2}),
        "raises": await app.create("raises", {}, attempts=1),
        "waits-raises": await app.create("waits-then-raises", {}, attempts=1),
        "no-handler": await app.create("nobody-handles-this", {}, attempts=1),
        "task-apis": await app.create("uses-task-apis", {}),
    }
    assert await app.drain() == 6
    assert marker.get() == "worker"
    assert seen_markers == ["worker"]
    got = {name: await app.get(job.id) for name, job in jobs.items()}
    assert got["returns"].status == "completed" and got["returns"].result == {"n": 1}
    assert got["waits"].status == "completed" and got["waits"].result == {"n": 20}
    assert got["raises"].status == "failed"
    assert got["raises"].last_error == "ValueError: at once"
    assert got["waits-raises"].status == "failed"
    assert got["waits-raises"].last_error == "ValueError: after a wait"
    assert got["no-handler"].status == "failed"
    assert got["task-apis"].status == "completed" and got["task-apis"].result == "inner"
    failures = db.execute(
        "SELECT kind, error_stack FROM job_failures WHERE job_id = %s", (jobs["raises"].id,)
    ).fetchall()
    assert failures[0]["kind"] == "error"
    assert "at once" in failures[0]["error_stack"]


async def test_the_timeout_counts_from_the_start_of_a_run_that_waits(app: App) -> None:
    @app.handler("slow")
    async def slow(ctx: pgjobs.JobContext, payload: Any) -> None:
        await asyncio.sleep(5)

    job = await app.create("slow", {}, timeout=200, attempts=1)
    began = asyncio.get_running_loop().time()
    assert await app.drain() == 1
    elapsed = asyncio.get_running_loop().time() - began
    done = await app.get(job.id)
    assert done.status == "failed"
    assert done.last_error == "TimeoutError: job exceeded 200 ms"
    assert elapsed < 4


async def test_a_handler_cancelled_while_it_waits_is_recorded_cancelled(app: App) -> None:
    started = asyncio.Event()

    @app.handler("waiting")
    async def waiting(ctx: pgjobs.JobContext, payload: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    job = await app.create("waiting", {})
    async with app.worker(["default"], concurrency=2) as worker:
        await worker.wait_listening()
        await asyncio.wait_for(started.wait(), 10)
        await app.cancel(job.id)

        async def cancelled() -> bool:
            return (await app.get(job.id)).status == "cancelled"

        await wait_until_async(cancelled, message="the waiting job cancelled")


async def test_quick_runs_hold_a_bounded_number_of_jobs(app: App, db: Any) -> None:
    """However quick the runs, the worker holds at most concurrency + MAX_AHEAD jobs
    (at most MAX_CLAIM per claim); every job runs once."""
    ran: list[int] = []

    @app.handler("quick")
    async def quick(ctx: pgjobs.JobContext, payload: Any) -> None:
        ran.append(payload["n"])

    total = 3 * (MAX_CLAIM + MAX_AHEAD)
    await app.create_many([app.build("quick", {"n": n}) for n in range(total)])
    held: list[int] = []
    async with app.worker(["default"], concurrency=4) as worker:

        async def all_done() -> bool:
            state = worker.snapshot()
            held.append(state.running + state.ready)
            row = db.execute("SELECT count(*) AS n FROM jobs WHERE status = 'completed'")
            return int(row.fetchone()["n"]) == total

        await wait_until_async(all_done, timeout=60, message="every quick job completed")
    assert sorted(ran) == list(range(total))
    assert max(held) <= 4 + MAX_AHEAD
