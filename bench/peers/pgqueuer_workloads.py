"""pgqueuer through the four workloads (see pgjobs/dev/workloads.py for the clock rules).

Runs in pgqueuer's own virtualenv (bench/peers/run.py makes it), never in the project's:

    python pgqueuer_workloads.py <drain|latency|bulk|single> --database-url URL --count N

Connections are asyncpg's (its psycopg driver holds the shared connection while it waits
up to 1 s for notifications, which put 1 s into a tail of every figure). Concurrency 10 is
`QueueManager.run(batch_size=10)`, its default: ten jobs picked per dequeue. It is not a
hard cap (`max_concurrent_tasks` would be, at twice the batch size, and an entrypoint
`concurrency_limit` of 10 halved its drain rate here), so the setting favours pgqueuer.
Completion goes through its buffered status log (its default), so "recorded done" is the
job's row gone from the queue table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

NOOP = "bench_noop"
LATENCY = "bench_latency"
DONE_POLL = 0.005
LATENCY_RATE = 50.0
EMPTY = b"{}"

Result = dict[str, Any]


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def prepare(url: str) -> None:
    """Its schema through its own installer (first use), then an empty, vacuumed table."""
    async with connection(url) as conn:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
        await conn.execute("VACUUM ANALYZE pgqueuer")


def noop_manager(conn: asyncpg.Connection, concurrency: int) -> QueueManager:
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(NOOP)
    async def noop(job: Job) -> None:
        return None

    return qm


async def drain(url: str, count: int, concurrency: int) -> Result:
    async with connection(url) as producer, connection(url) as watcher:
        await Queries(AsyncpgDriver(producer)).enqueue([NOOP] * count, [EMPTY] * count, [0] * count)
        # Planner statistics for the backlog, as autovacuum keeps them on a table in use
        # (a new database's table has never been analyzed).
        await producer.execute("ANALYZE pgqueuer")
        began = time.perf_counter()
        qm = noop_manager(await connect(url), concurrency)
        running = asyncio.create_task(qm.run(batch_size=concurrency))
        while not await all_done(watcher):  # noqa: ASYNC110 - the database decides
            await asyncio.sleep(DONE_POLL)
        elapsed = time.perf_counter() - began
        qm.shutdown.set()
        await running
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


async def all_done(conn: asyncpg.Connection) -> bool:
    """A finished job's row leaves the queue table. "Any row left?" stops at the first
    live row, where count(*) read the whole table (dead rows too) every 5 ms."""
    return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM pgqueuer)"))


async def latency(url: str, count: int, concurrency: int) -> Result:
    ran: dict[int, float] = {}
    arrived = asyncio.Event()
    qm = noop_manager(await connect(url), concurrency)

    @qm.entrypoint(LATENCY)
    async def record(job: Job) -> None:
        ran[json.loads(job.payload or b"{}")["k"]] = time.perf_counter()
        arrived.set()

    running = asyncio.create_task(qm.run(batch_size=concurrency))
    millis: list[float] = []
    try:
        async with connection(url) as producer:
            queries = Queries(AsyncpgDriver(producer))
            # Its worker says nothing when it listens: one job through it shows it does.
            await queries.enqueue(LATENCY, b'{"k": -1}')
            await wait_until(lambda: -1 in ran, arrived)
            interval = 1 / LATENCY_RATE
            for k in range(count):
                next_at = time.perf_counter() + interval
                began = time.perf_counter()
                await queries.enqueue(LATENCY, json.dumps({"k": k}).encode())
                await wait_until(lambda k=k: k in ran, arrived)
                millis.append((ran[k] - began) * 1000)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    finally:
        qm.shutdown.set()
        await running
    values = sorted(millis)
    return {"p50_ms": pct(values, 50), "p95_ms": pct(values, 95), "p99_ms": pct(values, 99)}


async def wait_until(done: Callable[[], bool], changed: asyncio.Event) -> None:
    deadline = time.perf_counter() + 10.0
    while not done():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError("a latency job did not start within 10 s")
        changed.clear()
        await asyncio.wait_for(changed.wait(), remaining)


async def bulk(url: str, count: int, concurrency: int) -> Result:
    async with connection(url) as conn:
        queries = Queries(AsyncpgDriver(conn))
        await queries.enqueue(NOOP, EMPTY)
        began = time.perf_counter()
        payloads: list[bytes | None] = [json.dumps({"n": n}).encode() for n in range(count)]
        await queries.enqueue([NOOP] * count, payloads, [0] * count)
        elapsed = time.perf_counter() - began
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


async def single(url: str, count: int, concurrency: int) -> Result:
    async with connection(url) as conn:
        queries = Queries(AsyncpgDriver(conn))
        await queries.enqueue(NOOP, EMPTY)
        began = time.perf_counter()
        for n in range(count):
            await queries.enqueue(NOOP, json.dumps({"n": n}).encode())
        elapsed = time.perf_counter() - began
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


WORKLOADS: dict[str, Callable[[str, int, int], Coroutine[Any, Any, Result]]] = {
    "drain": drain,
    "latency": latency,
    "bulk": bulk,
    "single": single,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="pgqueuer_workloads.py")
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(prepare(args.database_url))
    result = asyncio.run(WORKLOADS[args.workload](args.database_url, args.count, args.concurrency))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
