"""The worker in-process: outcomes, priority order, retries and backoff, delays,
timeouts, snoozes, cancellation and the run fence."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.backoff import retry_delay_ms
from pgjobs.db import make_pool
from pgjobs.engine.completer import Completer, Outcome
from pgjobs.ids import uuid7
from tests.conftest import make_settings
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio


def rows(db: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    return db.execute(sql, params).fetchall()


async def job_status(app: App, job_id: Any) -> str:
    return (await app.get(job_id)).status


async def record(app: App, *outcomes: Outcome) -> Completer:
    """Write `outcomes` in one batch with a completer of their own, as a worker would."""
    pool = make_pool(app.settings.require_database_url(), "test")
    await pool.open()
    try:
        completer = Completer(pool, app.clock, uuid7())
        for outcome in outcomes:
            completer.add(outcome)
        completer.start()
        await completer.close()
    finally:
        await pool.close()
    return completer


async def test_completed_job_records_result_and_duration(app: App, db: Any) -> None:
    @app.handler("add")
    async def add(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        assert ctx.attempt == 1 and ctx.queue == "default" and ctx.type == "add"
        return {"sum": payload["a"] + payload["b"]}

    job = await app.create("add", {"a": 2, "b": 3})
    assert await app.drain() == 1
    done = await app.get(job.id)
    assert done.status == "completed"
    assert done.progress == 100
    assert done.attempts == 1
    assert done.result == {"sum": 5}
    [result] = rows(db, "SELECT * FROM job_results WHERE job_id = %s", job.id)
    assert result["duration_ms"] >= 0 and result["attempt"] == 1
    assert done.completed_at is not None and done.started_at is not None


async def test_priority_order_with_one_slot(app: App) -> None:
    order: list[tuple[str, int]] = []

    @app.handler("ordered")
    async def ordered(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        order.append((payload["priority"], payload["n"]))

    names = ["low", "normal", "high", "critical"]
    expected: dict[str, list[int]] = {name: [] for name in names}
    for n in range(30):
        name = random.Random(n).choice(names)
        expected[name].append(n)
        await app.create("ordered", {"priority": name, "n": n}, priority=name)
    assert await app.drain(concurrency=1) == 30
    wanted = [(p, n) for p in ["critical", "high", "normal", "low"] for n in expected[p]]
    assert order == wanted


async def test_failures_then_success_keep_history(settings: pgjobs.Settings, db: Any) -> None:
    app = App(settings.replace(retry_delay_ms=0))
    calls: list[int] = []

    @app.handler("flaky")
    async def flaky(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError(f"boom {ctx.attempt}")
        return "ok"

    try:
        job = await app.create("flaky", {}, backoff={"type": "fixed", "delay": 0})
        assert await app.drain() == 3
        done = await app.get(job.id)
    finally:
        await app.close()
    assert calls == [1, 2, 3]
    assert done.status == "completed" and done.attempts == 3
    assert [f.attempt_number for f in done.failures] == [1, 2]
    assert [f.error_message for f in done.failures] == ["ValueError: boom 1", "ValueError: boom 2"]
    for failure in done.failures:
        assert failure.error_stack and "Traceback (most recent call last)" in failure.error_stack
        assert 'raise ValueError(f"boom {ctx.attempt}")' in failure.error_stack
    assert len(done.results) == 1 and done.result == "ok"


async def test_exhausted_attempts_fail_for_good(app: App) -> None:
    @app.handler("always-fails")
    async def always(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError("nope")

    job = await app.create("always-fails", {}, attempts=2, backoff=[0])
    await app.drain()
    done = await app.get(job.id)
    assert done.status == "failed" and done.attempts == 2
    assert done.last_error == "RuntimeError: nope"
    assert [f.kind for f in done.failures] == ["error", "error"]


async def test_jobs_retry_attempts_counts_every_try_first_run_included(db_url: str) -> None:
    """JOBS_RETRY_ATTEMPTS=3 means three runs in all (the spec's max_attempts), not
    three retries after the first run."""
    app = App(make_settings(db_url, JOBS_RETRY_ATTEMPTS="3", JOBS_RETRY_DELAY="0"))
    runs: list[int] = []

    @app.handler("always-fails")
    async def always(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        runs.append(ctx.attempt)
        raise RuntimeError("nope")

    try:
        job = await app.create("always-fails", {})
        assert job.max_attempts == 3
        assert await app.drain() == 3
        done = await app.get(job.id)
    finally:
        await app.close()
    assert runs == [1, 2, 3]
    assert (done.status, done.attempts) == ("failed", 3)
    assert [f.attempt_number for f in done.failures] == [1, 2, 3]


async def test_discard_fails_without_retry_and_retry_in_keeps_attempts(app: App) -> None:
    @app.handler("discard")
    async def discard(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise pgjobs.Discard("bad input: to")

    snoozes: list[int] = []

    @app.handler("snooze")
    async def snooze(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        snoozes.append(ctx.attempt)
        if len(snoozes) < 3:
            raise pgjobs.RetryIn(0)
        return "done"

    discarded = await app.create("discard", {}, attempts=5)
    snoozed = await app.create("snooze", {}, attempts=1)
    await app.drain()
    d = await app.get(discarded.id)
    assert (d.status, d.attempts, d.last_error) == ("failed", 1, "Discard: bad input: to")
    assert [f.kind for f in d.failures] == ["discarded"]
    s = await app.get(snoozed.id)
    # Three runs of a job allowed one attempt: snoozes are not failures. Each snooze
    # raises the limit instead of lowering the count, so every run has its own token.
    assert (s.status, s.failures, snoozes) == ("completed", (), [1, 2, 3])
    assert (s.attempts, s.max_attempts) == (3, 3)


async def test_a_retry_after_snoozes_grants_the_budget_the_job_was_created_with(
    app: App,
) -> None:
    runs: list[int] = []

    @app.handler("snooze-then-fail")
    async def snooze_then_fail(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            raise pgjobs.RetryIn(0)
        raise RuntimeError("broken")

    job = await app.create("snooze-then-fail", {}, attempts=1)
    await app.drain()
    failed = await app.get(job.id)
    assert (failed.status, failed.attempts, failed.max_attempts, runs) == ("failed", 2, 2, [1, 2])
    retried = await app.retry(job.id)
    # One more try, as created: not the two the snooze left in max_attempts.
    assert (retried.status, retried.attempts, retried.max_attempts) == ("pending", 2, 3)


async def test_missing_handler_is_a_retryable_failure(app: App) -> None:
    job = await app.create("nobody-handles-this", {}, attempts=2, backoff=[0])
    await app.drain()
    done = await app.get(job.id)
    assert done.status == "failed"
    assert done.failures[0].error_message == (
        "NoHandler: no handler registered for job type 'nobody-handles-this'"
    )
    assert len(done.failures) == 2  # retried: a newer worker might have had the handler


async def test_unserialisable_result_fails_the_attempt(app: App) -> None:
    @app.handler("bad-result")
    async def bad(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> object:
        return {"x": object()}

    job = await app.create("bad-result", {}, attempts=1)
    await app.drain()
    done = await app.get(job.id)
    assert done.status == "failed"
    assert (done.last_error or "").startswith("TypeError: result is not JSON-serializable")


async def test_text_postgresql_cannot_store_fails_the_job_not_the_worker(app: App) -> None:
    # PostgreSQL text and jsonb hold neither NUL characters nor lone surrogates.
    @app.handler("odd-text")
    async def odd_text(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> object:
        odd = {"nul": "a\x00b", "surrogate": "a\udc80b"}[payload["text"]]
        if payload["where"] == "error":
            raise ValueError(odd)
        return {"text": odd}

    cases = [(where, text) for where in ("error", "result") for text in ("nul", "surrogate")]
    jobs = [
        await app.create("odd-text", {"where": where, "text": text}, attempts=1)
        for where, text in cases
    ]
    assert await app.drain() == 4
    errors = [(await app.get(job.id)).last_error for job in jobs]
    assert errors == [
        "ValueError: a\ufffdb",
        "ValueError: a\ufffdb",
        "ValueError: result contains a NUL character (\\u0000), which PostgreSQL cannot store",
        "ValueError: result contains invalid Unicode (a lone surrogate)",
    ]
    assert [(await app.get(job.id)).status for job in jobs] == ["failed"] * 4


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_timeouts_fail_the_attempt_and_free_the_slot(app: App, kind: str) -> None:
    release = threading.Event()

    if kind == "async":

        @app.handler("hang")
        async def hang_async(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
            await asyncio.sleep(3600)

    else:

        @app.handler("hang")
        def hang_sync(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
            release.wait(30)

    @app.handler("quick")
    async def quick(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        return "ran"

    hung = await app.create("hang", {}, timeout=300, attempts=1)
    after = await app.create("quick", {})
    try:
        assert await app.drain(concurrency=1) == 2
    finally:
        release.set()
    failed = await app.get(hung.id)
    assert failed.status == "failed"
    assert failed.last_error == "TimeoutError: job exceeded 300 ms"
    assert failed.failures[0].kind == "timeout"
    assert (await app.get(after.id)).result == "ran"


async def test_progress_is_stored_and_fenced(app: App, db: Any) -> None:
    seen: list[int] = []

    @app.handler("progress")
    async def progress(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        await ctx.progress(40, "resizing")
        row = db.execute(
            "SELECT progress, progress_message FROM jobs WHERE id = %s", (ctx.id,)
        ).fetchone()
        seen.append(row["progress"])
        assert row["progress_message"] == "resizing"

    job = await app.create("progress", {})
    await app.drain()
    assert seen == [40]
    assert (await app.get(job.id)).progress == 100


async def test_complete_in_commits_effects_and_completion_together(
    app: App, db: Any, db_url: str
) -> None:
    db.execute("CREATE TABLE effects (job_id uuid PRIMARY KEY)")

    @app.handler("effect")
    async def effect(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            await conn.execute("INSERT INTO effects VALUES (%s)", (ctx.id,))
            await ctx.complete_in(conn, {"stored": True})

    job = await app.create("effect", {})
    await app.drain()
    done = await app.get(job.id)
    assert done.status == "completed" and done.result == {"stored": True}
    assert len(done.results) == 1
    assert rows(db, "SELECT count(*) AS n FROM effects")[0]["n"] == 1


async def test_late_completion_of_a_rescued_run_is_rejected(app: App, db: Any) -> None:
    """Simulates a run whose worker lost its lease: the job was claimed again, and the
    old run's outcome (and in-transaction completion) must not be recorded."""
    job = await app.create("fenced", {})
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = 2, worker_id = %s WHERE id = %s",
        (uuid7(), job.id),
    )
    stale = await record(app, Outcome(job.id, 1, "completed", result_json='"stale"'))
    assert stale.stale == 1 and stale.recorded == 0
    fresh = await record(app, Outcome(job.id, 2, "completed", result_json='"fresh"'))
    assert fresh.recorded == 1
    done = await app.get(job.id)
    assert done.status == "completed" and [r.result for r in done.results] == ["fresh"]


async def test_outcomes_of_two_runs_of_a_job_in_one_batch_record_only_the_current_run(
    app: App, db: Any
) -> None:
    """A worker that lost its lease while the database was away keeps the outcomes it
    could not write, and may meanwhile claim the job again and run it: one batch then
    carries the stale run's outcome and the current one's. Only the current run is
    recorded, once, and only it counts as applied (its events go out once)."""
    job = await app.create("fenced", {})
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = 2, worker_id = %s WHERE id = %s",
        (uuid7(), job.id),
    )
    completer = await record(
        app,
        Outcome(job.id, 1, "completed", result_json='"stale"', duration_ms=1),
        Outcome(job.id, 2, "completed", result_json='"fresh"', duration_ms=1),
    )
    assert (completer.recorded, completer.stale) == (1, 1)
    done = await app.get(job.id)
    assert done.status == "completed"
    assert [(r.result, r.attempt) for r in done.results] == [("fresh", 2)]


async def test_a_give_back_and_the_outcome_of_the_same_run_record_the_outcome(
    app: App, db: Any
) -> None:
    """Two outcomes for one run in one batch (a give-back of a job the worker thought it
    never received, and the run's own end) must not record the run twice; the run did
    happen, so its outcome wins over the give-back."""
    jobs = [await app.create("fenced", {"n": n}) for n in range(2)]
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = 1, worker_id = %s WHERE id = ANY(%s)",
        (uuid7(), [job.id for job in jobs]),
    )
    first, second = jobs
    completer = await record(
        app,
        Outcome(first.id, 1, "release"),
        Outcome(first.id, 1, "completed", result_json='"ran"', duration_ms=1),
        Outcome(second.id, 1, "retry", message="boom", delay_ms=60_000),
        Outcome(second.id, 1, "release"),
    )
    assert completer.recorded == 2
    done, retried = [await app.get(job.id) for job in jobs]
    assert done.status == "completed" and [r.result for r in done.results] == ["ran"]
    assert retried.status == "delayed" and len(retried.failures) == 1


async def test_a_job_claimed_again_while_its_old_run_goes_on_is_tracked_as_two_runs(
    app: App, db: Any
) -> None:
    """After a database outage longer than the lease, the rescuer gives back the jobs of
    every worker, and a worker may claim again a job whose old run it is still running.
    Both runs hold a slot until they end; the old run's end must not make the worker
    forget the new one (it would count a free slot too many, and later give the job
    back as never received while it runs)."""
    started = {1: asyncio.Event(), 2: asyncio.Event()}
    gates = {1: asyncio.Event(), 2: asyncio.Event()}

    @app.handler("twice")
    async def twice(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, int]:
        started[ctx.attempt].set()
        await gates[ctx.attempt].wait()
        return {"attempt": ctx.attempt}

    async with app.worker(["default"], concurrency=4) as worker:
        await worker.wait_listening()
        job = await app.create("twice", {})
        await asyncio.wait_for(started[1].wait(), 5)
        # What the rescuer does to a job whose worker stopped heartbeating.
        db.execute(
            "UPDATE jobs SET status = 'pending', worker_id = NULL, "
            "max_attempts = max_attempts + 1 WHERE id = %s",
            (job.id,),
        )
        db.execute("SELECT pgjobs_notify_queues(ARRAY['default'])")
        await asyncio.wait_for(started[2].wait(), 5)
        assert worker.snapshot().running == 2
        gates[1].set()

        async def old_run_recorded() -> bool:
            state = worker.snapshot()
            return state.processed == 1 and state.unrecorded == 0

        await wait_until_async(old_run_recorded, timeout=5)
        assert worker.snapshot().running == 1
        assert await job_status(app, job.id) == "active"
        gates[2].set()

        async def completed() -> bool:
            return await job_status(app, job.id) == "completed"

        await wait_until_async(completed, timeout=5)
    done = await app.get(job.id)
    assert [(r.result, r.attempt) for r in done.results] == [({"attempt": 2}, 2)]


async def test_a_worker_keeps_nothing_per_job_once_outcomes_are_recorded(app: App, db: Any) -> None:
    """A long-running worker's memory must not grow with the jobs it has run: once an
    outcome is written, its job leaves every structure of the worker (a Counter that
    kept every job id at zero once made RSS grow by 140 MiB over a million jobs)."""

    @app.handler("tiny")
    async def tiny(ctx: pgjobs.JobContext, payload: Any) -> None:
        return None

    await app.create_many([app.build("tiny", {}) for _ in range(2_000)])

    def completed() -> int:
        row = db.execute("SELECT count(*) AS n FROM jobs WHERE status = 'completed'").fetchone()
        return int(row["n"])

    async with app.worker(["default"], concurrency=10) as worker:
        await wait_until_async(lambda: asyncio.sleep(0, completed() == 2_000), timeout=30)

        async def holds_nothing() -> bool:
            state = worker.snapshot()
            return (state.running, state.ready, state.unrecorded) == (0, 0, 0)

        await wait_until_async(holds_nothing, message="no job held once all are recorded")
        assert worker.snapshot().processed == 2_000


async def test_claiming_resumes_once_a_stuck_backlog_of_outcomes_is_written(
    app: App, db: Any, db_url: str
) -> None:
    """A worker stops claiming while too many outcomes wait to be written (say, the
    database is slow) and must start again once they are, with nothing running that
    could wake it."""

    @app.handler("tiny")
    async def tiny(ctx: pgjobs.JobContext, payload: Any) -> None:
        return None

    await app.create_many([app.build("tiny", {}) for _ in range(40)])

    def count(status: str) -> int:
        row = db.execute("SELECT count(*) AS n FROM jobs WHERE status = %s", (status,)).fetchone()
        return int(row["n"])

    # Results cannot be written while this transaction holds the table.
    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE job_results IN EXCLUSIVE MODE")
        async with app.worker(["default"], concurrency=1) as worker:

            async def stopped_claiming() -> bool:
                state = worker.snapshot()
                return state.unrecorded > 10 and state.running == 0

            await wait_until_async(stopped_claiming, message="a backlog of outcomes")
            assert count("completed") == 0
            blocker.rollback()

            async def all_done() -> bool:
                return count("completed") == 40

            await wait_until_async(all_done, timeout=20, message="every job completed")


async def test_delayed_job_waits_for_its_time(app: App) -> None:
    @app.handler("later")
    async def later(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        return None

    async with app.worker(["default"]):
        job = await app.create("later", {}, delay=700)

        async def done() -> bool:
            return await job_status(app, job.id) == "completed"

        await wait_until_async(done, timeout=5)
    stored = await app.get(job.id)
    assert stored.started_at is not None
    waited = (stored.started_at - stored.created_at).total_seconds()
    assert 0.7 <= waited < 1.5


async def test_retry_delays_follow_exponential_backoff(app: App) -> None:
    starts: list[float] = []
    failures: list[float] = []

    @app.handler("backoff")
    async def backoff(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        starts.append(time.monotonic())
        if ctx.attempt < 3:
            failures.append(time.monotonic())
            raise ValueError("again")
        return "ok"

    async with app.worker(["default"]):
        job = await app.create(
            "backoff", {}, attempts=3, backoff={"type": "exponential", "delay": 500}
        )

        async def done() -> bool:
            return await job_status(app, job.id) == "completed"

        await wait_until_async(done, timeout=10)
    gaps = [start - fail for fail, start in zip(failures, starts[1:], strict=True)]
    # 500 ms then 1000 ms, each ±10 % of jitter, plus staging and the claim: up to
    # 0.13 s were seen with the rest of the suite running on both cores.
    assert 0.45 <= gaps[0] <= 0.75, gaps
    assert 0.9 <= gaps[1] <= 1.3, gaps


def test_backoff_shapes() -> None:
    rng = random.Random(7)
    samples = [
        retry_delay_ms(None, 1, default_delay_ms=1000, cap_ms=3_600_000, rng=rng)
        for _ in range(500)
    ]
    assert min(samples) >= 900 and max(samples) <= 1100
    assert retry_delay_ms(
        {"type": "exponential", "delay": 1000}, 2, default_delay_ms=0, cap_ms=10**9, rng=rng
    ) in range(1800, 2201)
    assert (
        retry_delay_ms(
            {"type": "exponential", "delay": 1000}, 30, default_delay_ms=0, cap_ms=60_000, rng=rng
        )
        <= 60_000
    )
    assert retry_delay_ms(
        {"type": "fixed", "delay": 5000}, 9, default_delay_ms=0, cap_ms=10**9, rng=rng
    ) in range(4500, 5501)
    listed = {"type": "list", "delays": [10, 20_000]}
    assert retry_delay_ms(listed, 1, default_delay_ms=0, cap_ms=10**9, rng=rng) in range(9, 12)
    assert retry_delay_ms(listed, 5, default_delay_ms=0, cap_ms=10**9, rng=rng) >= 18_000


async def test_cancel_running_async_job_stops_its_handler(app: App) -> None:
    started = asyncio.Event()
    stopped: list[bool] = []

    @app.handler("long")
    async def long(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    async with app.worker(["default"]) as worker:
        await worker.wait_listening()
        job = await app.create("long", {})
        await asyncio.wait_for(started.wait(), 5)
        begin = time.monotonic()
        await app.cancel(job.id)

        async def cancelled() -> bool:
            return await job_status(app, job.id) == "cancelled"

        await wait_until_async(cancelled, timeout=5)
        assert time.monotonic() - begin < 1.0
    assert stopped == [True]
    done = await app.get(job.id)
    assert done.results == () and done.failures == ()


async def test_cancel_running_sync_job_discards_its_result(app: App) -> None:
    started = threading.Event()
    release = threading.Event()
    flags: list[bool] = []

    @app.handler("sync-long")
    def sync_long(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        started.set()
        release.wait(10)
        flags.append(ctx.cancelled)
        return "too late"

    async with app.worker(["default"]) as worker:
        await worker.wait_listening()
        job = await app.create("sync-long", {})
        await asyncio.to_thread(started.wait, 5)
        await app.cancel(job.id)

        async def cancelled() -> bool:
            return await job_status(app, job.id) == "cancelled"

        await wait_until_async(cancelled, timeout=5)
        release.set()
        await wait_until_async(lambda: asyncio.sleep(0, bool(flags)), timeout=5)
    assert flags == [True]
    assert (await app.get(job.id)).results == ()


async def test_paused_queue_is_not_claimed(app: App, db: Any) -> None:
    @app.handler("p")
    async def handler(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        return None

    db.execute("UPDATE job_queues SET paused = true WHERE name = 'default'")
    job = await app.create("p", {})
    assert await app.drain() == 0
    db.execute("UPDATE job_queues SET paused = false WHERE name = 'default'")
    assert await app.drain() == 1
    assert await job_status(app, job.id) == "completed"


async def test_worker_serves_several_queues_and_registers(app: App, db: Any) -> None:
    @app.handler("where")
    async def where(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        return ctx.queue

    async with app.worker(["high-priority", "default"], concurrency=3) as worker:
        [row] = rows(db, "SELECT * FROM job_workers WHERE id = %s", worker.id)
        assert row["queues"] == ["high-priority", "default"] and row["concurrency"] == 3
        a = await app.create("where", {}, queue="high-priority")
        b = await app.create("where", {})
        c = await app.create("where", {}, queue="low-priority")

        async def both_done() -> bool:
            return {await job_status(app, a.id), await job_status(app, b.id)} == {"completed"}

        await wait_until_async(both_done, timeout=5)
        assert await job_status(app, c.id) == "pending"
    assert rows(db, "SELECT count(*) AS n FROM job_workers")[0]["n"] == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_start_cut_short_leaves_no_task_behind() -> None:
    """A worker told to stop while it is still starting (here: PostgreSQL unreachable,
    so it keeps retrying its registration) closes what it opened. psycopg_pool's
    workers ignore cancellation, so a pool left open would keep the event loop from
    ever closing: the process, or the test run, would hang."""
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/nowhere?connect_timeout=1"
    app = App(make_settings(url), builtin_types=False)
    before = asyncio.all_tasks()
    worker = app.worker(["default"], concurrency=2, maintenance=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(worker.__aenter__(), 1.0)
    await app.close()

    async def only_ours_left() -> bool:
        return not [task for task in asyncio.all_tasks() - before if not task.done()]

    await wait_until_async(only_ours_left, timeout=10)
