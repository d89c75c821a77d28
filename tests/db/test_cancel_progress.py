"""Cancelling running jobs (and what waits on them) and throttled progress writes,
counted by a trigger in the test database."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.engine.worker import PROGRESS_MIN_INTERVAL
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


def count_progress_writes(db: Conn) -> None:
    """Record every UPDATE that keeps a job active: progress writes (claims, finishes
    and cancellations change or clear the status)."""
    db.execute(
        """
        CREATE TABLE progress_writes (job_id uuid, progress int, at timestamptz);
        CREATE FUNCTION record_progress_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO progress_writes VALUES (NEW.id, NEW.progress, clock_timestamp());
            RETURN NULL;
        END $$;
        CREATE TRIGGER progress_writes AFTER UPDATE ON jobs FOR EACH ROW
            WHEN (OLD.status = 'active' AND NEW.status = 'active')
            EXECUTE FUNCTION record_progress_write();
        """
    )


def writes(db: Conn) -> list[dict[str, Any]]:
    return db.execute("SELECT progress, at FROM progress_writes ORDER BY at").fetchall()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_progress_writes_are_throttled_and_the_last_value_lands(
    app: App, db: Conn, kind: str
) -> None:
    count_progress_writes(db)
    reports = 300
    spans: list[float] = []
    seen_last: list[Any] = []

    def check_last(job_id: Any) -> None:
        # The trailing value is written when the throttle interval is over.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with psycopg.connect(app.settings.require_database_url()) as conn:
                row = conn.execute(
                    "SELECT progress, progress_message FROM jobs WHERE id = %s", (job_id,)
                ).fetchone()
            if row == (99, f"step {reports - 1}"):
                seen_last.append(row)
                return
            time.sleep(0.05)

    if kind == "async":

        @app.handler("busy")
        async def busy_async(ctx: pgjobs.JobContext, payload: Any) -> None:
            begin = time.monotonic()
            for n in range(reports):
                await ctx.progress(n * 99 / (reports - 1), f"step {n}")
                await asyncio.sleep(0.005)
            spans.append(time.monotonic() - begin)
            await asyncio.to_thread(check_last, ctx.id)

    else:

        @app.handler("busy")
        def busy_sync(ctx: pgjobs.JobContext, payload: Any) -> None:
            begin = time.monotonic()
            for n in range(reports):
                ctx.progress_sync(n * 99 / (reports - 1), f"step {n}")
                time.sleep(0.005)
            spans.append(time.monotonic() - begin)
            check_last(ctx.id)

    job = await app.create("busy", {}, timeout=30_000)
    assert await app.drain() == 1
    assert seen_last, "the last progress value was never written"
    written = writes(db)
    # One write per interval at most (plus the trailing one), ~4 per second.
    allowed = int((spans[0] + 2.0) / PROGRESS_MIN_INTERVAL) + 2
    assert 2 <= len(written) <= allowed, (len(written), spans[0])
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(written)]
    assert min(gaps) >= PROGRESS_MIN_INTERVAL * 0.8, gaps
    assert (await app.get(job.id)).progress == 100


async def test_cancelling_a_running_parent_settles_its_waiting_children(app: App, db: Conn) -> None:
    started = asyncio.Event()

    @app.handler("long")
    async def long(ctx: pgjobs.JobContext, payload: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    @app.handler("after")
    async def after(ctx: pgjobs.JobContext, payload: Any) -> Any:
        return await ctx.parent_results()

    async with app.worker(["default"], concurrency=2) as worker:
        await worker.wait_listening()
        parent = await app.create("long", {})
        kids = {
            policy: await app.create("after", depends_on=parent.id, dependency_policy=policy)
            for policy in ("fail", "cancel", "ignore")
        }
        await asyncio.wait_for(started.wait(), 5)
        begin = time.monotonic()
        await app.cancel(parent.id)

        async def settled() -> bool:
            return (await app.get(kids["ignore"].id)).status == "completed"

        await wait_until_async(settled, timeout=5)
        assert time.monotonic() - begin < 1.0
    assert (await app.get(parent.id)).status == "cancelled"
    assert (await app.get(kids["fail"].id)).status == "cancelled"
    assert (await app.get(kids["cancel"].id)).status == "cancelled"
    assert (await app.get(kids["ignore"].id)).result == {}


async def test_a_cooperative_sync_handler_stops_when_cancelled(app: App) -> None:
    polls: list[bool] = []
    started = threading.Event()

    @app.handler("chunks")
    def chunks(ctx: pgjobs.JobContext, payload: Any) -> str:
        started.set()
        for _ in range(1000):
            if ctx.cancelled:
                polls.append(True)
                return "partial"
            time.sleep(0.01)
        return "all"

    async with app.worker(["default"]) as worker:
        await worker.wait_listening()
        job = await app.create("chunks", {})
        await asyncio.to_thread(started.wait, 5)
        await app.cancel(job.id)

        async def stopped() -> bool:
            return bool(polls) and (await app.get(job.id)).status == "cancelled"

        await wait_until_async(stopped, timeout=5)
    done = await app.get(job.id)
    assert (done.status, done.results, done.failures) == ("cancelled", (), ())


@pytest.mark.parametrize("kind", ["async", "sync", "complete_in"])
async def test_the_last_progress_report_lands_with_the_completion(
    app: App, db_url: str, kind: str
) -> None:
    """Reports quicker than the throttle, then return at once: the completed job says
    what the handler last said, not an earlier step."""
    steps = ((30, "a"), (60, "b"), (90, "storing"))
    if kind == "async":

        @app.handler("quick")
        async def quick_async(ctx: pgjobs.JobContext, payload: Any) -> None:
            for percent, message in steps:
                await ctx.progress(percent, message)

    elif kind == "sync":

        @app.handler("quick")
        def quick_sync(ctx: pgjobs.JobContext, payload: Any) -> None:
            for percent, message in steps:
                ctx.progress_sync(percent, message)

    else:

        @app.handler("quick")
        async def quick_in_transaction(ctx: pgjobs.JobContext, payload: Any) -> None:
            for percent, message in steps:
                await ctx.progress(percent, message)
            async with (
                await psycopg.AsyncConnection.connect(db_url) as conn,
                conn.transaction(),
            ):
                await ctx.complete_in(conn, {"stored": True})

    jobs = [await app.create("quick", {}) for _ in range(5)]
    assert await app.drain() == len(jobs)
    for job in jobs:
        done = await app.get(job.id)
        assert (done.status, done.progress, done.progress_message) == (
            "completed",
            100,
            "storing",
        )


async def test_a_failed_run_keeps_its_last_progress_report(app: App) -> None:
    @app.handler("fails-late")
    async def fails_late(ctx: pgjobs.JobContext, payload: Any) -> None:
        await ctx.progress(10, "downloading")
        await ctx.progress(70, "uploading")
        raise RuntimeError("the upload was refused")

    job = await app.create("fails-late", {}, attempts=1)
    assert await app.drain() == 1
    done = await app.get(job.id)
    assert (done.status, done.progress, done.progress_message) == ("failed", 70, "uploading")


async def test_progress_messages_that_are_not_text_are_stored_as_json(app: App) -> None:
    """Handlers ported from BullMQ report objects as progress. Before, such a message
    made every later batch of outcomes of that worker fail to encode: nothing more was
    recorded. Every run here completes, and later jobs too."""

    @app.handler("object-progress")
    async def object_progress(ctx: pgjobs.JobContext, payload: Any) -> None:
        await ctx.progress(40, 3)  # type: ignore[arg-type]
        await ctx.progress(50, {"step": 2, "of": 4})  # type: ignore[arg-type]

    @app.handler("plain")
    async def plain(ctx: pgjobs.JobContext, payload: Any) -> None:
        await ctx.progress(10, "ok")

    odd = [await app.create("object-progress", {}) for _ in range(3)]
    after = [await app.create("plain", {}) for _ in range(3)]
    assert await app.drain() == len(odd) + len(after)
    for job in odd:
        done = await app.get(job.id)
        assert (done.status, done.progress_message) == ("completed", '{"step": 2, "of": 4}')
    for job in after:
        assert (await app.get(job.id)).status == "completed"
