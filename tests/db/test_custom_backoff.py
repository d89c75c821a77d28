"""A handler's own retry delays, `@app.handler(type, backoff=func)`, on a real database
and worker: the delays it returns are the ones stored, None falls back to the job's
backoff, and a broken function falls back too without stopping the worker."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.clock import FrozenClock
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

# The delays of the specification's custom strategy (milliseconds), then 600 s.
DELAYS_MS = [1000, 5000, 30000]


def spec_delays(attempt: int, error: BaseException) -> float:
    return DELAYS_MS[attempt - 1] / 1000 if attempt <= len(DELAYS_MS) else 600.0


def last_retry_gap(db: Any, job_id: Any) -> tuple[str, timedelta]:
    """The job's status and how far its run_at lies after its latest failure."""
    row = db.execute(
        """SELECT j.status, j.run_at - f.failed_at AS gap
           FROM jobs j JOIN job_failures f ON f.job_id = j.id
           WHERE j.id = %s ORDER BY f.attempt_number DESC LIMIT 1""",
        (job_id,),
    ).fetchone()
    return row["status"], row["gap"]


async def test_the_functions_delays_are_the_stored_retry_times(settings: Any, db: Any) -> None:
    clock = FrozenClock()
    app = App(settings, clock=clock)
    seen: list[tuple[int, str]] = []

    def delays(attempt: int, error: BaseException) -> float:
        seen.append((attempt, str(error)))
        return spec_delays(attempt, error)

    @app.handler("api-call", backoff=delays)
    async def api_call(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise ConnectionError(f"refused {ctx.attempt}")

    try:
        job = await app.create("api-call", {}, attempts=5)
        gaps = []
        for _ in range(4):
            assert await app.drain() == 1
            status, gap = last_retry_gap(db, job.id)
            assert status == "delayed"
            gaps.append(gap)
            # Due exactly then, not a moment before: one more drain would run nothing.
            clock.advance(gap - timedelta(milliseconds=1))
            assert await app.drain() == 0
            clock.advance(timedelta(milliseconds=1))
        assert await app.drain() == 1
        done = await app.get(job.id)
    finally:
        await app.close()
    assert gaps == [timedelta(seconds=s) for s in (1, 5, 30, 600)]
    assert seen == [(n, f"refused {n}") for n in (1, 2, 3, 4)]  # never after the last
    assert done.status == "failed" and done.attempts == 5
    assert [f.error_message for f in done.failures] == [
        f"ConnectionError: refused {n}" for n in range(1, 6)
    ]


async def test_none_and_a_timedelta(settings: Any, db: Any) -> None:
    """None means the job's own backoff (or the default); a timedelta is a delay too,
    and a delay above JOBS_BACKOFF_MAX is capped like every other."""
    clock = FrozenClock()
    app = App(settings.replace(retry_delay_ms=4000, backoff_max_ms=3_600_000), clock=clock)

    def choose(attempt: int, error: BaseException) -> timedelta | None:
        return timedelta(hours=5) if attempt == 2 else None

    @app.handler("mixed", backoff=choose)
    async def mixed(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError("no")

    try:
        own = await app.create("mixed", {}, attempts=3, backoff={"type": "fixed", "delay": 2000})
        default = await app.create("mixed", {}, attempts=3)
        assert await app.drain() == 2
        own_status, own_gap = last_retry_gap(db, own.id)
        default_status, default_gap = last_retry_gap(db, default.id)
        assert own_status == default_status == "delayed"
        assert 1.8 <= own_gap.total_seconds() <= 2.2  # its fixed 2 s, ±10 % jitter
        assert 3.6 <= default_gap.total_seconds() <= 4.4  # JOBS_RETRY_DELAY, ±10 %
        clock.advance(timedelta(seconds=5))
        assert await app.drain() == 2
        for job in (own, default):
            assert last_retry_gap(db, job.id) == ("delayed", timedelta(hours=1))
    finally:
        await app.close()


async def test_a_raising_function_falls_back_and_the_worker_keeps_claiming(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def broken(attempt: int, error: BaseException) -> float:
        calls.append(attempt)
        raise ZeroDivisionError("division by zero")

    @app.handler("fragile", backoff=broken)
    async def fragile(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise ValueError("handler failed")

    @app.handler("fine")
    async def fine(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> int:
        return int(payload["n"])

    caplog.set_level(logging.ERROR, logger="pgjobs.backoff")
    async with app.worker(["default"], concurrency=1):
        bad = [await app.create("fragile", {}, attempts=3, backoff=[50]) for _ in range(2)]

        async def both_failed() -> bool:
            return [(await app.get(job.id)).status for job in bad] == ["failed"] * 2

        await wait_until_async(both_failed, timeout=10, message="both fragile jobs failed")
        good = [await app.create("fine", {"n": n}) for n in range(3)]

        async def all_done() -> bool:
            return [(await app.get(job.id)).status for job in good] == ["completed"] * 3

        await wait_until_async(all_done, timeout=10, message="the later jobs completed")
    assert sorted(calls) == [1, 1, 2, 2]  # each job's two retries, none after its last
    for job in bad:
        failed = await app.get(job.id)
        assert failed.attempts == 3
        assert [f.error_message for f in failed.failures] == ["ValueError: handler failed"] * 3
        gaps = [
            (later.failed_at - earlier.failed_at).total_seconds()
            for earlier, later in zip(failed.failures, failed.failures[1:], strict=False)
        ]
        assert all(gap >= 0.045 for gap in gaps), gaps  # the job's own 50 ms backoff
    warnings = [r.getMessage() for r in caplog.records if r.name == "pgjobs.backoff"]
    assert warnings == [
        "backoff of job type 'fragile' raised ZeroDivisionError: division by zero; its jobs "
        "use their own backoff instead (logged once per process)"
    ]


async def test_the_backoff_must_be_a_plain_function(app: App) -> None:
    async def coroutine(attempt: int, error: BaseException) -> float:
        return 1.0

    with pytest.raises(TypeError, match="backoff of handler 'x' must be a plain function"):
        app.register("x", lambda ctx, payload: None, backoff=coroutine)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a plain function"):
        app.register("x", lambda ctx, payload: None, backoff=[1000])  # type: ignore[arg-type]
    assert "x" not in app.handlers
