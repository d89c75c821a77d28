"""`ctx.complete_in(conn)` when the handler's transaction does not commit: the job must
not be left active. The completion statement ran inside a transaction that rolled back
(the handler raised, or the connection died at COMMIT), so the run is an ordinary failed
attempt, recorded through the fence like any other."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.app import App

pytestmark = pytest.mark.anyio


async def test_handler_raising_after_complete_in_is_a_failed_attempt(
    app: App, db: Any, db_url: str
) -> None:
    db.execute("CREATE TABLE effects (job_id uuid, attempt int)")

    @app.handler("effect-then-boom")
    async def effect(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            await conn.execute("INSERT INTO effects VALUES (%s, %s)", (ctx.id, ctx.attempt))
            await ctx.complete_in(conn, {"stored": True})
            if ctx.attempt == 1:
                raise RuntimeError("the transaction rolls back")

    job = await app.create("effect-then-boom", {}, attempts=2, backoff=[0])
    assert await app.drain() == 2
    done = await app.get(job.id)
    assert done.status == "completed" and done.attempts == 2
    assert [f.error_message for f in done.failures] == ["RuntimeError: the transaction rolls back"]
    assert [r.attempt for r in done.results] == [2]
    assert db.execute("SELECT attempt FROM effects").fetchall() == [{"attempt": 2}]


async def test_handler_raising_after_its_commit_changes_nothing(
    app: App, db: Any, db_url: str
) -> None:
    @app.handler("commit-then-boom")
    async def effect(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            async with conn.transaction():
                await ctx.complete_in(conn, "done")
            raise RuntimeError("too late to matter")

    job = await app.create("commit-then-boom", {}, attempts=3)
    assert await app.drain() == 1
    done = await app.get(job.id)
    # The completion committed; the late failure is stale and discarded by the fence.
    assert (done.status, done.attempts, done.failures, done.result) == ("completed", 1, (), "done")
