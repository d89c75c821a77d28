"""Handlers run by the fault-injection suite's worker processes.

`chaos` is the ledger handler: it records a start row (committed at once, so a run that
dies later still leaves its trace), works for `ms` milliseconds, then records its effect
and completes the job in ONE transaction through `ctx.complete_in(conn)` — or, with
`"complete": "return"`, returns its result for the worker's batched completer. When the
fence rejects the in-transaction completion (the run lost its job), it records a
`chaos_fenced` row instead. Every row carries the host label CHAOS_HOST (the
many-hosts scenario sets it per network namespace). The ledger tables live in the
scenario's database (see tests/process/chaos/harness.py). `tick` is what a cron
schedule runs and `noop` what a throughput run drains: they only name their host.

The others misbehave on purpose: hang past their timeout (async, sync thread, CPU loop)
or kill their own worker process every time (`poison`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

import pgjobs

app = pgjobs.App(builtin_types=False)

_pool: AsyncConnectionPool | None = None
HOST = os.environ.get("CHAOS_HOST")


async def ledger_pool(ctx: pgjobs.JobContext) -> AsyncConnectionPool:
    """One pool per worker process, opened lazily in the worker's event loop. Its
    connections are named `chaos:handler:<pid>`, not `pgjobs:*`: they are the user's,
    so the scenarios that kill pgjobs' connections leave them alone."""
    global _pool
    if _pool is None:
        pool = AsyncConnectionPool(
            ctx.app.settings.require_database_url(),
            min_size=1,
            max_size=int(os.environ.get("CHAOS_HANDLER_POOL", "12")),
            open=False,
            kwargs={"autocommit": True, "application_name": f"chaos:handler:{os.getpid()}"},
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=0,
            timeout=3,
        )
        await pool.open(wait=False)
        _pool = pool
    return _pool


@app.handler("chaos")
async def chaos(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    pool = await ledger_pool(ctx)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO chaos_starts (job_id, attempt, pid, host) VALUES (%s, %s, %s, %s)",
            (ctx.id, ctx.attempt, os.getpid(), HOST),
        )
    await asyncio.sleep(payload.get("ms", 10) / 1000)
    result = {"pid": os.getpid(), "attempt": ctx.attempt, "host": HOST}
    if payload.get("complete") == "return":
        return result
    try:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO chaos_effects (job_id, attempt, pid, host) VALUES (%s, %s, %s, %s)",
                (ctx.id, ctx.attempt, os.getpid(), HOST),
            )
            # Raises StaleRun when this run lost the job: the effect rolls back with it.
            await ctx.complete_in(conn, result)
    except pgjobs.StaleRun:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO chaos_fenced (job_id, attempt, pid, host) VALUES (%s, %s, %s, %s)",
                (ctx.id, ctx.attempt, os.getpid(), HOST),
            )
        raise
    return result


@app.handler("noop")
async def noop(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"host": HOST}


@app.handler("tick")
async def tick(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"host": HOST, "attempt": ctx.attempt}


@app.handler("hang-async")
async def hang_async(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    await _record_start(ctx)
    await asyncio.sleep(3600)


@app.handler("hang-sync")
def hang_sync(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    # Ignores ctx.cancelled on purpose: the worker can only abandon the thread.
    _record_start_sync(ctx)
    time.sleep(payload.get("hang_s", 3600))


@app.handler("cpu-loop")
def cpu_loop(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> int:
    """Spins without ever yielding or checking ctx.cancelled, for `spin_s` seconds (so
    the suite's machine gets its core back), then returns a result nobody records."""
    _record_start_sync(ctx)
    deadline = time.monotonic() + payload.get("spin_s", 5)
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@app.handler("poison")
async def poison(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    await _record_start(ctx)
    os._exit(17)


async def _record_start(ctx: pgjobs.JobContext) -> None:
    pool = await ledger_pool(ctx)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO chaos_starts (job_id, attempt, pid) VALUES (%s, %s, %s)",
            (ctx.id, ctx.attempt, os.getpid()),
        )


def _record_start_sync(ctx: pgjobs.JobContext) -> None:
    import psycopg

    with psycopg.connect(
        ctx.app.settings.require_database_url(),
        autocommit=True,
        application_name=f"chaos:handler:{os.getpid()}",
    ) as conn:
        conn.execute(
            "INSERT INTO chaos_starts (job_id, attempt, pid) VALUES (%s, %s, %s)",
            (ctx.id, ctx.attempt, os.getpid()),
        )
