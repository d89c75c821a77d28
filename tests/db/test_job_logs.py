"""What a handler logs through ctx.logger is kept with its job: per attempt, the first and
last lines of a long run with the count dropped between them, written with the outcome,
deleted with the job, and shown by GET /api/jobs/{id} and the job page, escaped."""

from __future__ import annotations

import logging
import tracemalloc
from typing import Any

import httpx
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.context import LOG_FIRST_LINES, LOG_LAST_LINES, LOG_LINE_CHARS
from pgjobs.ops.service import LOG_ATTEMPTS_SHOWN
from pgjobs.web import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def info_level(caplog: pytest.LogCaptureFixture) -> None:
    # Lines are kept at the logger's level (LOG_LEVEL=info for `pgjobs worker`).
    caplog.set_level(logging.INFO, logger="pgjobs.job")


def lines_of(db: Any, job_id: Any) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT attempt, seq, level, message FROM job_logs WHERE job_id = %s ORDER BY attempt, seq",
        (job_id,),
    ).fetchall()


async def test_lines_are_kept_per_attempt_with_the_outcome(settings: Any, db: Any) -> None:
    app = App(settings.replace(retry_delay_ms=0))

    @app.handler("flaky")
    async def flaky(ctx: pgjobs.JobContext, payload: Any) -> str:
        ctx.logger.info("starting attempt %d for %s", ctx.attempt, payload["user"])
        ctx.logger.debug("below the level: not kept")
        if ctx.attempt == 1:
            try:
                raise KeyError("missing")
            except KeyError:
                ctx.logger.exception("lookup failed")
            raise ValueError("boom")
        ctx.logger.warning("done")
        return "ok"

    @app.handler("sync-logger")
    def sync_handler(ctx: pgjobs.JobContext, payload: Any) -> None:
        ctx.logger.info("from a thread")

    @app.handler("quiet")
    async def quiet(ctx: pgjobs.JobContext, payload: Any) -> None:
        return None

    try:
        job = await app.create("flaky", {"user": "ann"}, backoff={"type": "fixed", "delay": 0})
        threaded = await app.create("sync-logger", {})
        silent = await app.create("quiet", {})
        assert await app.drain() == 4
    finally:
        await app.close()
    rows = lines_of(db, job.id)
    assert [(r["attempt"], r["seq"], r["level"]) for r in rows] == [
        (1, 1, "INFO"),
        (1, 2, "ERROR"),
        (2, 1, "INFO"),
        (2, 2, "WARNING"),
    ]
    assert rows[0]["message"] == "starting attempt 1 for ann"
    assert rows[1]["message"].startswith("lookup failed\nTraceback (most recent call last)")
    assert "KeyError: 'missing'" in rows[1]["message"]
    assert [r["message"] for r in lines_of(db, threaded.id)] == ["from a thread"]
    assert lines_of(db, silent.id) == []
    # Pruned with the job.
    db.execute("DELETE FROM jobs WHERE id = %s", (job.id,))
    assert lines_of(db, job.id) == []


async def test_a_million_lines_keep_the_first_and_last(settings: Any, db: Any) -> None:
    app = App(settings)
    total = 1_000_000
    traced = 100_000  # lines logged under tracemalloc (which slows each one down)
    growth: list[int] = []

    @app.handler("chatty")
    async def chatty(ctx: pgjobs.JobContext, payload: Any) -> None:
        for n in range(1, total - traced + 1):
            ctx.logger.info("line %d %s", n, "x" * (LOG_LINE_CHARS if n == 1 else 10))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(total - traced + 1, total + 1):
                ctx.logger.info("line %d %s", n, "x" * 10)
            growth.append(tracemalloc.get_traced_memory()[0] - before)
        finally:
            tracemalloc.stop()

    # Only the run's own lines are of interest here, not a million in the test's log.
    logging.getLogger("pgjobs.job.chatty").propagate = False
    try:
        job = await app.create("chatty", {}, timeout=600_000)
        assert await app.drain() == 1
    finally:
        logging.getLogger("pgjobs.job.chatty").propagate = True
        await app.close()
    rows = lines_of(db, job.id)
    seqs = [r["seq"] for r in rows]
    assert seqs == [
        *range(1, LOG_FIRST_LINES + 1),
        *range(total - LOG_LAST_LINES + 1, total + 1),
    ]
    assert len(rows[0]["message"]) == LOG_LINE_CHARS
    assert rows[-1]["message"] == f"line {total} xxxxxxxxxx"
    # What the run holds does not grow with the lines it logs: 100,000 more lines leave
    # it where it was (give or take the lines kept, which replace each other).
    assert growth and growth[0] < 256 * 1024

    web = create_app(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get(f"/api/jobs/{job.id}")).json()
            page = await client.get(f"/dashboard/jobs/{job.id}")
    [attempt] = body["logs"]
    assert attempt["attempt"] == 1
    assert attempt["dropped"] == total - LOG_FIRST_LINES - LOG_LAST_LINES
    assert len(attempt["lines"]) == LOG_FIRST_LINES + LOG_LAST_LINES
    assert attempt["lines"][-1]["seq"] == total and attempt["lines"][-1]["level"] == "INFO"
    assert page.status_code == 200
    assert "999,850 lines dropped" in page.text


async def test_lines_are_escaped_and_masked(settings: Any, db: Any) -> None:
    app = App(settings)

    @app.handler("hostile")
    async def hostile(ctx: pgjobs.JobContext, payload: Any) -> None:
        ctx.logger.info("<script>alert(1)</script> via https://bob:hunter2@db.example/x")

    try:
        job = await app.create("hostile", {})
        assert await app.drain() == 1
    finally:
        await app.close()
    web = create_app(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get(f"/api/jobs/{job.id}")).json()
            page = (await client.get(f"/dashboard/jobs/{job.id}")).text
    [line] = body["logs"][0]["lines"]
    assert "hunter2" not in line["message"] and "<script>alert(1)</script>" in line["message"]
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "hunter2" not in page


async def test_only_the_last_attempts_lines_are_shown(settings: Any, db: Any) -> None:
    app = App(settings.replace(retry_delay_ms=0))
    attempts = LOG_ATTEMPTS_SHOWN + 5

    @app.handler("stubborn")
    async def stubborn(ctx: pgjobs.JobContext, payload: Any) -> str:
        ctx.logger.info("attempt %d, line 1", ctx.attempt)
        ctx.logger.info("attempt %d, line 2", ctx.attempt)
        if ctx.attempt < attempts:
            raise ValueError("not yet")
        return "ok"

    try:
        job = await app.create(
            "stubborn", {}, attempts=attempts, backoff={"type": "fixed", "delay": 0}
        )
        assert await app.drain() == attempts
    finally:
        await app.close()
    assert len(lines_of(db, job.id)) == 2 * attempts  # all kept; only the answers are bounded
    web = create_app(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get(f"/api/jobs/{job.id}")).json()
            page = (await client.get(f"/dashboard/jobs/{job.id}")).text
    assert [a["attempt"] for a in body["logs"]] == list(range(6, attempts + 1))
    assert all(len(a["lines"]) == 2 for a in body["logs"])
    assert body["logs"][-1]["lines"][0]["message"] == f"attempt {attempts}, line 1"
    assert body["logs_attempts_omitted"] == 5
    assert "Lines of 5 earlier attempt(s) not shown" in page
    assert "attempt 6, line 2" in page and f"attempt {attempts}, line 2" in page
    assert "attempt 5, line 2" not in page


async def test_a_job_of_few_attempts_omits_none(settings: Any, db: Any) -> None:
    app = App(settings)

    @app.handler("once")
    async def once(ctx: pgjobs.JobContext, payload: Any) -> None:
        ctx.logger.info("hello")

    @app.handler("quiet-one")
    async def quiet_one(ctx: pgjobs.JobContext, payload: Any) -> None:
        return None

    try:
        job = await app.create("once", {})
        silent = await app.create("quiet-one", {})
        assert await app.drain() == 2
    finally:
        await app.close()
    web = create_app(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get(f"/api/jobs/{job.id}")).json()
            page = (await client.get(f"/dashboard/jobs/{job.id}")).text
            empty = (await client.get(f"/api/jobs/{silent.id}")).json()
    assert [a["attempt"] for a in body["logs"]] == [1]
    assert body["logs_attempts_omitted"] == 0
    assert "earlier attempt(s) not shown" not in page
    assert (empty["logs"], empty["logs_attempts_omitted"]) == ([], 0)


async def test_a_database_without_job_logs_still_records_outcomes(settings: Any, db: Any) -> None:
    """A worker newer than its schema (pgjobs init not yet run after an upgrade): the
    lines cannot be kept, the outcomes are recorded all the same."""
    db.execute("DROP TABLE job_logs")
    app = App(settings)

    @app.handler("chatty")
    async def chatty(ctx: pgjobs.JobContext, payload: Any) -> str:
        ctx.logger.info("hello")
        return "ok"

    try:
        jobs = [await app.create("chatty", {}) for _ in range(3)]
        assert await app.drain() == 3
        for job in jobs:
            assert (await app.get(job.id)).status == "completed"
    finally:
        await app.close()
