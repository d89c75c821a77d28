"""Benchmark: flows, dependencies and unique keys.

Creates a scratch database, installs the schema, then measures:

* creating a flow of N jobs (groups of 99 fetches and a merge) with `app.flow`: time to
  validate it and assign ids (Python), time of the insert, statements sent, and network
  round trips counted by a TCP proxy between the client and PostgreSQL;
* creating a chain of N jobs (each depends on the previous one) the same way;
* running a chain of --chain jobs to the end with one in-process worker;
* running --diamonds diamonds (A -> B, A -> C, B + C -> D) with three workers;
* running a fan-in: one merge job waiting on --fan-in parents;
* settling cost on the worker's hot path: server time of `pgjobs_settle_blocked` for
  batches of 1, 10 and 500 finished jobs that nobody waits on;
* unique keys: --unique creates of one key from 20 threads (20 connections).

Prints the figures and writes a JSON record to bench-results/. Usage:

    python bench/flows.py [--count 10000] [--chain 1000] [--diamonds 100] [--out DIR]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, scratch, server_url, write
from psycopg import sql
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.db import connect_kwargs
from pgjobs.ids import uuid7
from pgjobs.producer.flows import create_flow_async, plan_flow

Result = dict[str, Any]


class RoundTripCounter:
    """A TCP proxy between a client and PostgreSQL that counts round trips: a client
    flight starts whenever the client sends after the server last spoke (or first)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.flights = 0
        self._last = "server"

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(
            self._pump(reader, up_writer, "client"),
            self._pump(up_reader, writer, "server"),
            return_exceptions=True,
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str
    ) -> None:
        while chunk := await reader.read(1 << 16):
            if side == "client" and self._last == "server":
                self.flights += 1
            self._last = side
            writer.write(chunk)
            await writer.drain()
        writer.close()


def flow_items(count: int) -> list[dict[str, Any]]:
    groups = max(1, count // 100)
    items: list[dict[str, Any]] = []
    for g in range(groups):
        fetches = [
            {"ref": f"{g}.{n}", "type": "fetch", "payload": {"g": g, "n": n}} for n in range(99)
        ]
        merge = {"type": "merge", "options": {"dependsOn": [f["ref"] for f in fetches]}}
        items += [*fetches, merge]
    return items[:count]


def chain_items(count: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"ref": "0", "type": "link"}]
    for n in range(1, count):
        items.append({"ref": str(n), "type": "link", "options": {"dependsOn": str(n - 1)}})
    return items


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        conn.execute("VACUUM ANALYZE jobs")


ALL_STATUSES = ["pending", "active", "completed", "failed", "delayed", "blocked", "cancelled"]
FINISHED = ["completed", "failed", "cancelled"]


def count_jobs(url: str, statuses: list[str] = ALL_STATUSES, key: str | None = None) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = ANY(%s)"
            " AND (%s::text IS NULL OR unique_key = %s::text)",
            (statuses, key, key),
        ).fetchone()
        assert row is not None
        return int(row[0])


def wait_finished(url: str, total: int) -> None:
    while count_jobs(url, FINISHED) < total:
        time.sleep(0.02)


async def create_timed(app: App, url: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Create `items` as one flow: validation and id assignment (Python) timed apart
    from the insert; statements counted by the cursor, network round trips by a proxy."""
    statements: list[str] = []

    class Counting(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query)[:60])
            return await super().execute(query, *args, **kwargs)

    out: dict[str, Any] = {"jobs": len(items)}
    start = time.perf_counter()
    plan = plan_flow(app.settings, items)
    out["plan_seconds"] = time.perf_counter() - start
    options = {"autocommit": True, **connect_kwargs("api")}  # as the App's own pool
    async with await psycopg.AsyncConnection.connect(
        url, cursor_factory=Counting, **options
    ) as conn:
        start = time.perf_counter()
        await create_flow_async(conn, plan, app.clock)
        out["insert_seconds"] = time.perf_counter() - start
    out["statements"] = len(statements)
    if count_jobs(url) != len(items):
        raise SystemExit("the flow was not stored completely")
    truncate(url)
    info = psycopg.conninfo.conninfo_to_dict(url)
    counter = RoundTripCounter(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    proxied = psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=await counter.start())
    try:
        async with await psycopg.AsyncConnection.connect(proxied, **options) as conn:
            await conn.execute("SELECT 1")  # connection set-up is not part of the create
            counter.flights = 0
            await create_flow_async(conn, plan, app.clock)
            out["round_trips"] = counter.flights
    finally:
        await counter.stop()
    truncate(url)
    return out


async def run_until(app: App, url: str, total: int, workers: int, concurrency: int) -> float:
    running = [app.worker(concurrency=concurrency, maintenance=False) for _ in range(workers)]
    start = time.perf_counter()
    for worker in running:
        await worker.start()
    try:
        await asyncio.to_thread(wait_finished, url, total)
    finally:
        elapsed = time.perf_counter() - start
        for worker in running:
            await worker.stop()
    return elapsed


def settle_overhead(url: str) -> dict[str, float]:
    """Server time (µs, best of 50, minus a trivial statement's) of the settle step for
    batches of finished jobs that nobody waits on."""

    def execution_ms(conn: psycopg.Connection[Any], statement: Any, ids: list[Any]) -> float:
        rows = conn.execute(statement, (ids,)).fetchall()
        line = next(r[0] for r in rows if r[0].startswith("Execution Time"))
        return float(line.split()[2])

    out: dict[str, float] = {}
    settle = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF) SELECT pgjobs_settle_blocked(%s, NULL)")
    base = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF) SELECT cardinality(%s::uuid[])")
    with psycopg.connect(url, autocommit=True) as conn:
        for size in (1, 10, 500):
            ids = [uuid7() for _ in range(size)]
            spent = min(execution_ms(conn, settle, ids) for _ in range(50))
            floor = min(execution_ms(conn, base, ids) for _ in range(50))
            out[f"us_for_{size}"] = round((spent - floor) * 1000, 1)
    return out


def unique_creates(app: App, url: str, total: int) -> float:
    conns = [psycopg.connect(url, autocommit=True, row_factory=dict_row) for _ in range(20)]
    per = max(1, total // len(conns))
    barrier = threading.Barrier(len(conns))

    def produce(conn: psycopg.Connection[Any]) -> None:
        barrier.wait()
        for _ in range(per):
            app.create_sync("bench", unique_key="the-key", conn=conn)

    threads = [threading.Thread(target=produce, args=(c,)) for c in conns]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    if count_jobs(url, key="the-key") != 1:
        raise SystemExit("more than one job holds the key")
    return elapsed


async def measure(url: str, args: argparse.Namespace) -> list[Result]:
    settings = load_settings({"DATABASE_URL": url, "LOG_LEVEL": "warning"}, env_file=None)
    results: list[Result] = []

    def record(name: str, **figures: Any) -> None:
        results.append({"name": name, **figures})
        shown = ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
        print(f"{name:<44} {shown}")

    async with App(settings, builtin_types=False) as app:

        @app.handler("link")
        async def link(ctx: pgjobs.JobContext, payload: Any) -> int:
            return len(await ctx.parent_results())

        @app.handler("step")
        async def step(ctx: pgjobs.JobContext, payload: Any) -> dict[str, Any]:
            return await ctx.parent_results()

        await app.pool()
        record(
            "flow create (groups of 99 + merge)",
            **await create_timed(app, url, flow_items(args.count)),
        )
        record(
            "flow create (one chain)",
            **await create_timed(app, url, chain_items(args.count)),
        )

        await app.flow(chain_items(args.chain))
        seconds = await run_until(app, url, args.chain, workers=1, concurrency=10)
        record(
            "run a chain to the end",
            jobs=args.chain,
            seconds=seconds,
            ms_per_link=seconds / args.chain * 1000,
        )
        truncate(url)

        items: list[Any] = []
        for _ in range(args.diamonds):
            a = app.build("step")
            b = app.build("step", depends_on=a)
            c = app.build("step", depends_on=a)
            items += [a, b, c, app.build("step", depends_on=[b, c])]
        await app.flow(items)
        seconds = await run_until(app, url, len(items), workers=3, concurrency=4)
        record(
            "run diamonds, 3 workers x 4 slots",
            jobs=len(items),
            seconds=seconds,
            jobs_per_s=len(items) / seconds,
        )
        truncate(url)

        parents = [app.build("step") for _ in range(args.fan_in)]
        await app.flow([*parents, app.build("step", depends_on=parents)])
        seconds = await run_until(app, url, args.fan_in + 1, workers=1, concurrency=10)
        record(
            "run a fan-in (one merge waits on all)",
            parents=args.fan_in,
            seconds=seconds,
            jobs_per_s=(args.fan_in + 1) / seconds,
        )
        truncate(url)

        record("settle step, finished jobs without dependents", **settle_overhead(url))

        seconds = await asyncio.to_thread(unique_creates, app, url, args.unique)
        record(
            "unique creates of one key, 20 connections",
            creates=args.unique,
            seconds=seconds,
            ms_per_create=seconds / args.unique * 1000,
        )
        app.close_sync()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="jobs per created flow")
    parser.add_argument("--chain", type=int, default=1_000, help="length of the chain run")
    parser.add_argument("--diamonds", type=int, default=100)
    parser.add_argument("--fan-in", type=int, default=1_000, dest="fan_in")
    parser.add_argument("--unique", type=int, default=1_000, help="creates of one unique key")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)

    with scratch(server_url()) as db:
        results = asyncio.run(measure(db.url, args))
    path = write(args.out, "flows", db.server_version, results=results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
