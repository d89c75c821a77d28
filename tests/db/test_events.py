"""Job events, app.events() and app.wait(), with Redis and with NOTIFY; wake-ups over
Redis when LISTEN is off, and the poll when both are off."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.errors import JobFailed, JobNotFound
from pgjobs.queries import query
from pgjobs.signals.events import JobEvent
from tests.conftest import make_settings
from tests.helpers import wait_until_async
from tests.redis_server import shared_redis_url

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["redis", "notify"])
def event_settings(request: pytest.FixtureRequest, db_url: str) -> Settings:
    if request.param == "redis":
        return make_settings(db_url, JOBS_REDIS_URL=shared_redis_url(), LOG_LEVEL="info")
    return make_settings(db_url, LOG_LEVEL="info")


def with_handlers(app: App) -> App:
    @app.handler("double")
    async def double(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> int:
        return int(payload["n"]) * 2

    @app.handler("steps")
    async def steps(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        for percent in (25, 50, 75):
            await ctx.progress(percent)
            await asyncio.sleep(0.3)  # progress writes are throttled to 4 per second
        return "done"

    @app.handler("flaky")
    async def flaky(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise ValueError(f"boom {ctx.attempt}")

    @app.handler("slow")
    async def slow(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        await asyncio.sleep(60)

    return app


@pytest.fixture
async def events_app(event_settings: Settings) -> AsyncIterator[App]:
    app = with_handlers(App(event_settings, builtin_types=False))
    try:
        yield app
    finally:
        await app.close()


# ------------------------------------------------------------------ wait()


async def test_wait_returns_results_for_1000_concurrent_waiters(events_app: App) -> None:
    app = events_app
    ids = await app.create_many(app.build("double", {"n": n}) for n in range(1000))
    waiters = [asyncio.ensure_future(app.wait(job_id, timeout=120)) for job_id in ids]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    async with app.worker(["default"], concurrency=50):
        results = await asyncio.wait_for(asyncio.gather(*waiters), 120)
    assert results == [n * 2 for n in range(1000)]


async def test_wait_raises_the_failure_cancellation_timeout_and_unknown(events_app: App) -> None:
    app = events_app
    failing = await app.create("flaky", {}, attempts=1)
    waiting = await app.create("slow", {}, queue="elsewhere")
    done = await app.create("double", {"n": 4})
    async with app.worker(["default"], concurrency=5):
        with pytest.raises(JobFailed) as caught:
            await app.wait(failing.id, timeout=30)
        assert str(caught.value) == "ValueError: boom 1"
        assert (caught.value.status, caught.value.job_id) == ("failed", failing.id)
        assert await app.wait(str(done.id), timeout=30) == 8  # already finished: at once
    with pytest.raises(TimeoutError):
        await app.wait(waiting.id, timeout=0.3)
    cancel = asyncio.ensure_future(app.wait(waiting.id, timeout=30))
    await asyncio.sleep(0.1)
    await app.cancel(waiting.id)  # a pending job: no worker, so no event; the poll sees it
    with pytest.raises(JobFailed) as cancelled:
        await cancel
    assert (str(cancelled.value), cancelled.value.status) == ("cancelled", "cancelled")
    with pytest.raises(JobNotFound):
        await app.wait(UUID(int=7), timeout=5)


# ------------------------------------------------------------------ events()


def assert_in_order(events: list[JobEvent]) -> None:
    """Per job: progress only rises, and nothing follows the terminal event."""
    by_job: dict[UUID, list[JobEvent]] = {}
    for event in events:
        by_job.setdefault(event.id, []).append(event)
    for job_events in by_job.values():
        progress = [e.progress for e in job_events if e.event == "progress"]
        assert progress == sorted(progress), job_events
        terminal = [i for i, e in enumerate(job_events) if e.event in ("completed", "failed")]
        assert terminal == [len(job_events) - 1], job_events


async def test_events_arrive_in_order_per_job(events_app: App) -> None:
    app = events_app
    seen: list[JobEvent] = []
    async with app.events() as stream:
        ids = [(await app.create("steps", {})).id for _ in range(4)]
        flaky = await app.create("flaky", {}, attempts=2, backoff=[0])
        async with app.worker(["default"], concurrency=10):

            async def collect() -> None:
                finished: set[UUID] = set()
                async for event in stream:
                    seen.append(event)
                    if event.event in ("completed", "failed"):
                        finished.add(event.id)
                    if finished >= {*ids, flaky.id}:
                        return

            await asyncio.wait_for(collect(), 30)
    assert_in_order(seen)
    for job_id in ids:
        mine = [(e.event, e.status, e.progress) for e in seen if e.id == job_id]
        assert mine[-1] == ("completed", "completed", None)
        assert [p for _, _, p in mine[:-1]] == sorted(p for _, _, p in mine[:-1])
        assert ("progress", "active", 25) in mine
    assert [(e.event, e.status) for e in seen if e.id == flaky.id] == [
        ("retrying", "pending"),
        ("failed", "failed"),
    ]
    sample = next(e for e in seen if e.event == "progress")
    assert set(sample.to_dict()) == {"event", "id", "queue", "type", "status", "progress"}
    assert (sample.queue, sample.type) == ("default", "steps")


async def test_events_can_be_filtered(events_app: App) -> None:
    app = events_app
    async with app.events(queues=["other"], events=["completed"]) as stream:
        await app.create("double", {"n": 1})
        wanted = await app.create("double", {"n": 2}, queue="other")
        async with app.worker(["default", "other"], concurrency=5):
            event = await asyncio.wait_for(stream.__anext__(), 15)
    assert (event.event, event.id, event.queue) == ("completed", wanted.id, "other")


async def test_events_from_a_handlers_own_transaction(events_app: App, db_url: str) -> None:
    app = events_app

    @app.handler("in-tx")
    async def in_tx(ctx: pgjobs.JobContext, payload: Any) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            await ctx.complete_in(conn, {"stored": True})

    async with app.events(events=["completed"]) as stream:
        job = await app.create("in-tx", {})
        async with app.worker(["default"], concurrency=2):
            event = await asyncio.wait_for(stream.__anext__(), 15)
    assert (event.id, event.status) == (job.id, "completed")


# ------------------------------------------------------------------ wake-ups


async def start_latencies(app: App, count: int) -> list[float]:
    """Seconds from commit to start for jobs created one at a time, once started."""
    latencies = []
    for n in range(count):
        job = await app.create("double", {"n": n})
        done = await app.wait(job.id, timeout=30)
        assert done == n * 2
        stored = await app.get(job.id)
        assert stored.started_at is not None
        latencies.append((stored.started_at - stored.created_at).total_seconds())
    return latencies


async def test_redis_wakes_workers_that_cannot_listen(db_url: str) -> None:
    """JOBS_LISTEN=false (PgBouncer in transaction pooling) with a 5 s poll: only the
    Redis wake-up explains a prompt start."""
    settings = make_settings(
        db_url,
        JOBS_REDIS_URL=shared_redis_url(),
        JOBS_LISTEN="false",
        JOBS_POLL_INTERVAL="5000",
        LOG_LEVEL="info",
    )
    app = with_handlers(App(settings, builtin_types=False))
    try:
        async with app.worker(["default"], concurrency=5, maintenance=False) as worker:
            await worker.wait_listening()
            latencies = await start_latencies(app, 20)
    finally:
        await app.close()
    assert statistics.median(latencies) < 0.2, latencies


async def test_an_idle_workers_first_statement_after_a_wake_up_is_the_claim(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker woken by a NOTIFY sends the claim first: no liveness ping, no
    suspect check, no read before it, so the wake-up costs one round trip. Defaults but a
    30 s poll, so that only the NOTIFY explains a prompt start."""
    settings = make_settings(db_url, JOBS_POLL_INTERVAL="30000")
    app = App(settings, builtin_types=False)
    ran = asyncio.Event()

    @app.handler("wake")
    async def wake(ctx: pgjobs.JobContext, payload: Any) -> None:
        ran.set()

    # What the claiming loop sends, in order, once each statement has been answered.
    claiming_loop: list[str] = []
    execute = psycopg.AsyncCursor.execute

    async def recorded(cur: psycopg.AsyncCursor[Any], statement: Any, *args: Any, **kw: Any) -> Any:
        answered = await execute(cur, statement, *args, **kw)
        task = asyncio.current_task()
        if task is not None and task.get_name() == "pgjobs-fetch":
            claiming_loop.append(str(statement))
        return answered

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", recorded)
    try:
        async with app.worker(["default"], concurrency=2) as worker:
            await worker.wait_listening()

            # The first claim (found nothing) is answered: the loop now waits for a wake-up.
            async def first_claim_answered() -> bool:
                return bool(claiming_loop)

            await wait_until_async(first_claim_answered, message="the first claim")
            assert set(claiming_loop) == {query("claim_jobs")}
            claiming_loop.clear()
            await app.create("wake", {})
            await asyncio.wait_for(ran.wait(), 5)
    finally:
        await app.close()
    assert claiming_loop[0] == query("claim_jobs")


async def test_without_listen_or_redis_the_poll_runs_jobs(db_url: str) -> None:
    settings = make_settings(db_url, JOBS_LISTEN="false", JOBS_POLL_INTERVAL="300")
    app = with_handlers(App(settings, builtin_types=False))
    try:
        async with app.worker(["default"], concurrency=5, maintenance=False):
            latencies = await start_latencies(app, 6)
    finally:
        await app.close()
    # Within the (jittered, +10 %) poll interval, plus the claim itself.
    assert max(latencies) < 0.33 + 0.15, latencies


async def test_notify_committed_wakes_for_a_callers_transaction(db_url: str) -> None:
    settings = make_settings(
        db_url,
        JOBS_REDIS_URL=shared_redis_url(),
        JOBS_LISTEN="false",
        JOBS_POLL_INTERVAL="5000",
    )
    app = with_handlers(App(settings, builtin_types=False))
    try:
        async with app.worker(["default"], concurrency=2, maintenance=False) as worker:
            await worker.wait_listening()
            # Make the worker sit in its 5 s poll, then enqueue in our own transaction.
            await asyncio.sleep(0.3)
            async with await psycopg.AsyncConnection.connect(db_url) as conn:
                async with conn.transaction():
                    job = await app.create("double", {"n": 21}, conn=conn)
                await app.notify_committed([job.queue])
            began = asyncio.get_running_loop().time()
            assert await app.wait(job.id, timeout=10) == 42
            assert asyncio.get_running_loop().time() - began < 1.0
    finally:
        await app.close()


async def test_dead_redis_costs_producers_nothing(db_url: str) -> None:
    settings = make_settings(db_url, JOBS_REDIS_URL="redis://127.0.0.1:1/0")
    app = with_handlers(App(settings, builtin_types=False))
    try:
        for n in range(20):
            await app.create("double", {"n": n})  # wake-up publish fails, then is skipped
        async with app.worker(["default"], concurrency=5):

            async def all_done() -> bool:
                async with app.connection() as conn:
                    cur = await conn.execute(
                        "SELECT count(*) AS n FROM jobs WHERE status = 'completed'"
                    )
                    row = await cur.fetchone()
                return bool(row and row["n"] == 20)

            await wait_until_async(all_done, timeout=20)
    finally:
        await app.close()


async def test_rescued_jobs_send_a_stalled_event(event_settings: Settings, db: Any) -> None:
    """A job whose worker vanished is rescued by the maintenance leader: `stalled`,
    then it runs again. (Sent over NOTIFY in both modes: see the rescue statement.)"""
    app = with_handlers(
        App(
            event_settings.replace(lock_duration_ms=300, stalled_interval_ms=200),
            builtin_types=False,
        )
    )
    try:
        job = await app.create("double", {"n": 5})
        db.execute(
            "UPDATE jobs SET status = 'active', attempts = 1, worker_id = gen_random_uuid(), "
            "started_at = now() - interval '1 minute' WHERE id = %s",
            (job.id,),
        )
        async with app.events(job_ids=[job.id]) as stream, app.worker(["default"], concurrency=2):
            stalled = await asyncio.wait_for(stream.__anext__(), 15)
            assert await app.wait(job.id, timeout=15) == 10
    finally:
        await app.close()
    assert (stalled.event, stalled.status, stalled.type) == ("stalled", "pending", "double")
