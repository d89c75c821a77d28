"""PostgreSQL's own limits for the workloads (pgjobs/dev/workloads.py), measured with the
same clock rules on the same table, so that a queue's figures can be read against what
the server, its disk and the driver allow at that moment.

- single: one-row autocommit inserts into `jobs`, one after the other on one connection;
  each commit waits for its WAL flush, as every durable enqueue does.
- single-async: the same loop through psycopg's asyncio connection on the default event
  loop, which is what an `App.create` runs on: the driver's own cost per statement
  there, before any queue adds to it.
- latency: the two durable commits no PostgreSQL queue can start a job without — the
  enqueue's insert and the claim's update of that row — back to back on one connection,
  paced like the latency workload (the machine is idle between jobs), client clock from
  before the insert to the update's return. A queue adds to it at least the wake-up of
  its worker.
- drain: pgjobs' own claim and finish statements with no worker between them,
  pgbench-style: four connections, each claiming 100 jobs and recording them completed,
  in a loop. It is not PostgreSQL alone but the queue's SQL alone: what the statements
  cost the server bounds any worker that runs them.

Run one as a command (prints one JSON object), as the peers harness does:
`python -m pgjobs.dev.limits latency --database-url URL --count 300`.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgjobs.db import connect_kwargs
from pgjobs.dev import workloads
from pgjobs.dev.workloads import LATENCY_RATE, command_arguments, percentile
from pgjobs.engine.completer import Outcome, encode_outcomes
from pgjobs.ids import uuid7
from pgjobs.queries import query

Result = dict[str, Any]


def single(database_url: str, count: int) -> Result:
    """`count` one-row inserts into `jobs`, each its own commit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
        began = time.perf_counter()
        insert_rows(conn, count)
        elapsed = time.perf_counter() - began
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


def insert_rows(conn: psycopg.Connection[Any], count: int) -> None:
    """The loop PostgreSQL alone runs: `count` bare one-row inserts, autocommit."""
    for n in range(count):
        conn.execute(query("bench_insert_one"), {"id": uuid7(), "n": n})


async def insert_rows_async(conn: psycopg.AsyncConnection[Any], count: int) -> None:
    """`insert_rows` through psycopg's asyncio connection."""
    for n in range(count):
        await conn.execute(query("bench_insert_one"), {"id": uuid7(), "n": n})


def single_async(database_url: str, count: int) -> Result:
    """`single` through psycopg's asyncio connection."""
    return asyncio.run(insert_loop_async(database_url, count))


async def insert_loop_async(database_url: str, count: int) -> Result:
    """`single` on asyncio, for callers already in an event loop."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(query("bench_truncate"))
        began = time.perf_counter()
        await insert_rows_async(conn, count)
        elapsed = time.perf_counter() - began
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


def latency(database_url: str, count: int, rate: float = LATENCY_RATE) -> Result:
    """An insert and an update of the same row, each its own commit, `count` times at
    `rate` per second; milliseconds from before the insert to the update's return."""
    values = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
        interval = 1 / rate
        for n in range(count):
            next_at = time.perf_counter() + interval
            job = uuid7()
            began = time.perf_counter()
            conn.execute(query("bench_insert_one"), {"id": job, "n": n})
            conn.execute(query("bench_start_one"), {"id": job})
            values.append((time.perf_counter() - began) * 1000)
            time.sleep(max(0.0, next_at - time.perf_counter()))
    values.sort()
    return {f"p{pct}_ms": percentile(values, pct) for pct in (50, 95, 99)}


# ------------------------------------------------------------------ the queue's SQL alone

STATEMENTS_BATCH = 100
STATEMENTS_CLIENTS = 4


def statements(database_url: str, count: int) -> Result:
    """`count` queued no-op jobs (analyzed, as the drain's), then pgjobs' claim and finish
    statements alone until none is left; jobs per second from the first claim."""
    return asyncio.run(_statements(database_url, count))


async def _statements(database_url: str, count: int) -> Result:
    workloads.empty_tables(database_url)
    app = workloads.user_app(database_url)
    try:
        await workloads.prefill(app, database_url, count)
    finally:
        await app.close()
    rate = await claim_finish_clients(database_url, STATEMENTS_BATCH, STATEMENTS_CLIENTS)
    return {"jobs_per_s": rate, "batch": STATEMENTS_BATCH, "clients": STATEMENTS_CLIENTS}


async def claim_finish_clients(url: str, batch: int, clients: int) -> float:
    """Jobs per second of `clients` connections, each claiming up to `batch` pending jobs
    with the worker's claim statement and recording them completed with its finish
    statement, in a loop with nothing else in between, until no job is left. The
    sessions are the worker's (`worker_session`)."""
    done = 0

    async def client(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal done
        worker = uuid7()
        await register_bench_worker(conn, worker, batch)
        claim = {"now": None, "queues": ["default"], "limit": batch, "worker": worker}
        try:
            while rows := await (await conn.execute(query("claim_jobs"), claim)).fetchall():
                finish = {**claim, **completed(rows)}
                await (await conn.execute(query("finish_runs"), finish)).fetchall()
                done += len(rows)
        finally:
            # Left registered, it would count as a started worker for what runs next.
            await conn.execute(query("deregister_worker"), {"id": worker})

    conns = [await worker_session(url) for _ in range(clients)]
    try:
        began = time.perf_counter()
        await asyncio.gather(*(client(conn) for conn in conns))
        elapsed = time.perf_counter() - began
    finally:
        for conn in conns:
            await conn.close()
    return done / elapsed


async def worker_session(url: str) -> psycopg.AsyncConnection[Any]:
    """A connection like those a worker claims and finishes on: same options, same
    generic plans, dict rows."""
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, **connect_kwargs("claim", generic_plans=True)
    )


def completed(claimed: list[dict[str, Any]]) -> dict[str, Any]:
    """Parameters of finish_runs recording every claimed run as completed."""
    outcomes = [Outcome(r["id"], r["attempts"], "completed", "null", 0) for r in claimed]
    # notify_events off, as a worker does while no one consumes events
    return {"outcomes": encode_outcomes(outcomes), "notify_events": False}


async def register_bench_worker(
    conn: psycopg.AsyncConnection[Any], worker: uuid.UUID, concurrency: int
) -> None:
    await conn.execute(
        query("heartbeat_worker"),
        {
            "now": None,
            "id": worker,
            "hostname": "bench",
            "pid": os.getpid(),
            "queues": ["default"],
            "concurrency": concurrency,
            "version": "bench",
            "in_flight": 0,
            "processed": 0,
            "stopping": False,
            "grace_ms": 60_000,
        },
    )


LIMITS: dict[str, Callable[[str, int], Result]] = {
    "single": single,
    "single-async": single_async,
    "latency": latency,
    "drain": statements,
}


def main(argv: list[str] | None = None) -> None:
    prog = "python -m pgjobs.dev.limits"
    args = command_arguments(prog, LIMITS, argv)
    workloads.emit(prog, lambda: LIMITS[args.workload](args.database_url, args.count))


if __name__ == "__main__":
    main()
