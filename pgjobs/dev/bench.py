"""`pgjobs bench`: the figures a user gets, next to the limit PostgreSQL itself sets on
the same machine, all measured in one run on a scratch database.

The main figures are the user's (see pgjobs.dev.workloads): the public API with default
settings, timed by the client's wall clock, start-up and maintenance included. Figures
from the database's own timestamps follow each one as a secondary, labelled line; the
raw-SQL lines drive the worker's very statements with no worker around them.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.db import install_schema
from pgjobs.dev import limits, workloads
from pgjobs.ids import uuid7
from pgjobs.queries import query

NOOP = workloads.NOOP


def bench_app() -> App:
    """The handlers bench workers load (`--app pgjobs.dev.bench:bench_app`)."""
    app = App(builtin_types=False)

    @app.handler(NOOP)
    async def noop(ctx: Any, payload: Any) -> None:
        return None

    return app


@dataclass
class Sizes:
    bulk: int = 20_000
    single: int = 2_000
    drain: int = 20_000
    latency: int = 500
    latency_rate: float = 50.0
    raw: int = 20_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(bulk=2_000, single=200, drain=2_000, latency=40, latency_rate=50.0, raw=2_000)


@dataclass
class Report:
    started: str
    server: str
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        # Names are the record's keys: each must be unique within a run.
        assert name not in self.figures, name
        self.figures[name] = value
        shown = f"{value:.3f}" if name.startswith("ratio") else _fmt(value)
        print(f"  {name:<50} {shown}", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def scratch_database(admin_url: str, *, keep: bool = False) -> Iterator[str]:
    """A database with the pgjobs schema beside `admin_url`'s, dropped afterwards
    (unless `keep`)."""
    name = f"pgjobs_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    url = with_database(admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            install_schema(conn)
        yield url
    finally:
        if keep:
            print(f"kept database {url}", file=sys.stderr)
        else:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(
                    psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        psycopg.sql.Identifier(name)
                    )
                )


# ------------------------------------------------------------------ enqueue


async def bench_enqueue(url: str, sizes: Sizes, report: Report) -> None:
    bulk = await workloads.bulk(url, sizes.bulk)
    report.add("enqueue: create_many incl. build, jobs/s", bulk["jobs_per_s"])
    single = (await workloads.single(url, sizes.single))["jobs_per_s"]
    report.add("enqueue: single create, jobs/s", single)
    raw = await bench_raw_inserts(url, sizes.single)
    report.add("raw SQL: one-row insert loop, jobs/s", raw)
    report.add("ratio: single create / raw SQL insert", round(single / raw, 3))
    # The same loop on asyncio, where `create` runs: the driver's share of the gap.
    raw_async = await limits.insert_loop_async(url, sizes.single)
    report.add("raw SQL: the same loop on asyncio, jobs/s", raw_async["jobs_per_s"])
    report.add("ratio: asyncio loop / raw SQL insert", round(raw_async["jobs_per_s"] / raw, 3))
    report.add("ratio: single create / asyncio loop", round(single / raw_async["jobs_per_s"], 3))


async def bench_raw_inserts(url: str, count: int) -> float:
    """PostgreSQL's own one-row autocommit insert into the same table, in a tight loop
    on one connection (dev/limits.py): each commit waits for its WAL flush, as a
    `create` does, so the ratio shows what pgjobs adds whatever the disk's flush latency
    of the moment."""
    return float(limits.single(url, count)["jobs_per_s"])


# ------------------------------------------------------------------ drain


def worker_command(concurrency: int, processes: int) -> list[str]:
    """`pgjobs worker` as a user runs it: default settings, maintenance on."""
    return [
        sys.executable,
        "-m",
        "pgjobs",
        "worker",
        "--app",
        "pgjobs.dev.bench:bench_app",
        "--concurrency",
        str(concurrency),
        "--processes",
        str(processes),
    ]


def start_workers(url: str, concurrency: int, processes: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "warning"}
    return subprocess.Popen(
        worker_command(concurrency, processes), env=env, stdin=subprocess.DEVNULL
    )


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(poll)


async def wait_for_count(
    url: str, name: str, done: Callable[[int], bool], timeout: float, poll: float = 0.05
) -> None:
    """Poll the count query `name` every `poll` s until `done(count)`, on one connection:
    a connection per poll costs the server a process start at every poll, during the
    very drains being measured."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:

        def check() -> bool:
            row = conn.execute(query(name)).fetchone()
            return done(int(row["n"]) if row else 0)

        await wait_for(check, timeout, poll)


def drain_rate(url: str) -> float:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(query("bench_drain_window")).fetchone()
    assert row is not None
    return float(row["n"]) / max(float(row["s"] or 0), 1e-6)


async def bench_drain(url: str, sizes: Sizes, report: Report) -> float:
    """One in-process worker at concurrency 10, as a user's application runs one."""
    result = await workloads.drain(url, sizes.drain, concurrency=10)
    report.add("drain: 1 worker x concurrency 10, jobs/s", result["jobs_per_s"])
    report.add("  (secondary) same drain, database timestamps, jobs/s", result["db_jobs_per_s"])
    return float(result["jobs_per_s"])


async def bench_drain_processes(
    app: App, url: str, sizes: Sizes, report: Report, concurrency: int, processes: int
) -> float:
    """`pgjobs worker --processes N --concurrency C`, timed from the command's start
    (process start-up included) until every job is recorded done."""
    workloads.empty_tables(url)
    await workloads.prefill(app, url, sizes.drain)
    threshold = workloads.done_poll_prepare_threshold(app)
    with psycopg.connect(
        url, autocommit=True, row_factory=dict_row, prepare_threshold=threshold
    ) as conn:

        def all_done() -> bool:
            row = conn.execute(query("bench_any_unfinished")).fetchone()
            return not (row and row["unfinished"])

        began = time.perf_counter()
        proc = start_workers(url, concurrency, processes)
        try:
            # The in-process drain's question, as often (the clock rules in
            # docs/performance.md): a 50 ms poll added up to 50 ms to a 1 s drain.
            await wait_for(all_done, 600, poll=workloads.DONE_POLL)
            elapsed = time.perf_counter() - began
        finally:
            stop_workers(proc)
    rate = sizes.drain / elapsed
    name = f"drain: pgjobs worker --processes {processes} --concurrency {concurrency}"
    report.add(f"{name}, jobs/s", rate)
    report.add(
        f"  (secondary) {processes} x {concurrency} drain, database timestamps, jobs/s",
        drain_rate(url),
    )
    return rate


# ------------------------------------------------------------------ latency


async def bench_latency(url: str, sizes: Sizes, report: Report) -> None:
    """An idle in-process worker; client clock before create() to the handler's start."""
    result = await workloads.latency(url, sizes.latency, sizes.latency_rate)
    for pct in (50, 95, 99):
        report.add(f"latency: create -> handler start p{pct}, ms", result[f"p{pct}_ms"])
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(query("bench_latencies")).fetchall()
    values = sorted(float(r["ms"]) for r in rows)
    report.add("  (secondary) created_at -> started_at p50, ms", percentile(values, 50))
    report.add("  (secondary) created_at -> started_at p99, ms", percentile(values, 99))


percentile = workloads.percentile


# ------------------------------------------------------------------ raw SQL


async def bench_raw(app: App, url: str, sizes: Sizes, report: Report, batch: int) -> float:
    """The worker's claim and finish statements in two tight loops with no worker
    machinery, on two connections: one claims `batch` jobs at a time (holding at most
    twice that, as a worker claiming ahead does), the other records them as completed,
    at least `batch` per statement (all that were claimed since its last write)."""
    workloads.empty_tables(url)
    await app.create_many([app.build(NOOP, {}) for _ in range(sizes.raw)])
    worker = uuid7()
    claim = {"now": None, "queues": ["default"], "limit": batch, "worker": worker}
    claimed: list[dict[str, Any]] = []
    changed = asyncio.Event()
    done = 0
    exhausted = False

    async def claimer(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal exhausted
        while True:
            while len(claimed) > batch:
                changed.clear()
                await changed.wait()
            rows = await (await conn.execute(query("claim_jobs"), claim)).fetchall()
            claimed.extend(rows)
            changed.set()
            if not rows:
                exhausted = True
                return

    async def finisher(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal done
        while claimed or not exhausted:
            if len(claimed) < batch and not exhausted:
                changed.clear()
                await changed.wait()
                continue
            rows = claimed[:]
            await (
                await conn.execute(query("finish_runs"), {**claim, **limits.completed(rows)})
            ).fetchall()
            del claimed[: len(rows)]
            done += len(rows)
            changed.set()

    async with await limits.worker_session(url) as one, await limits.worker_session(url) as two:
        await limits.register_bench_worker(one, worker, batch)
        began = time.perf_counter()
        await asyncio.gather(claimer(one), finisher(two))
        elapsed = time.perf_counter() - began
        # Left registered, it would count as a started worker for the next phase,
        # which would then enqueue before its real worker is up.
        await one.execute(query("deregister_worker"), {"id": worker})
    rate = done / elapsed
    report.add(f"raw SQL: claim+finish loops, batch {batch}, jobs/s", rate)
    return rate


async def bench_raw_clients(
    app: App, url: str, sizes: Sizes, report: Report, batch: int, clients: int = 4
) -> float:
    """The machine's limit for the same two statements, pgbench-style: `clients`
    connections, each claiming `batch` jobs and recording them completed, in a loop,
    with nothing else in between (dev/limits.py)."""
    workloads.empty_tables(url)
    await app.create_many([app.build(NOOP, {}) for _ in range(sizes.raw)])
    rate = await limits.claim_finish_clients(url, batch, clients)
    report.add(f"raw SQL: {clients} clients claim+finish, batch {batch}, jobs/s", rate)
    return rate


# ------------------------------------------------------------------ table size, memory


LARGE_TABLE_ROUNDS = 3


async def bench_large_table(
    admin_url: str, url: str, sizes: Sizes, report: Report, finished: int
) -> None:
    """The drain with `finished` completed jobs kept in the table, against the same drain
    on an empty table: claims read job_ready and find jobs by key, so the history should
    barely move the rate. The two alternate, LARGE_TABLE_ROUNDS times each, in databases
    of their own (the large one is filled once), so that drift of the machine falls on
    both; the ratio is that of the medians."""
    empty_rates: list[float] = []
    large_rates: list[float] = []
    with scratch_database(admin_url) as large_url:
        with psycopg.connect(large_url, autocommit=True) as conn:
            conn.execute(query("bench_fill_finished"), {"count": finished})
            conn.execute(query("bench_vacuum"))
        for _ in range(LARGE_TABLE_ROUNDS):
            empty = await workloads.drain(url, sizes.drain, concurrency=10)
            empty_rates.append(float(empty["jobs_per_s"]))
            # The drained jobs stay: each round adds its jobs to the history.
            large = await workloads.drain(large_url, sizes.drain, concurrency=10, keep_table=True)
            large_rates.append(float(large["jobs_per_s"]))
    empty_rate, large_rate = statistics.median(empty_rates), statistics.median(large_rates)
    report.add("drain on an empty table, median of the interleaved rounds, jobs/s", empty_rate)
    report.add(f"drain with {finished:,} finished jobs in the table, jobs/s", large_rate)
    report.add("ratio: large table / empty table", round(large_rate / empty_rate, 3))
    pairs = [large / empty for large, empty in zip(large_rates, empty_rates, strict=True)]
    report.add("  (range) large / empty, per round", [round(min(pairs), 3), round(max(pairs), 3)])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def bench_memory(app: App, url: str, report: Report, total: int) -> None:
    """A worker's RSS across `total` processed jobs, fed in chunks."""
    workloads.empty_tables(url)
    chunk = 50_000
    proc = start_workers(url, 10, 1)
    samples: list[int] = []
    try:
        await wait_for_count(url, "bench_worker_count", lambda n: n >= 1, 30)
        processed = 0
        while processed < total:
            n = min(chunk, total - processed)
            await app.create_many([app.build(NOOP, {}) for _ in range(n)])
            await wait_for_count(url, "bench_completed_count", partial(operator.le, n), 600)
            processed += n
            samples.append(rss_kib(proc.pid))
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(query("bench_truncate"))
    finally:
        stop_workers(proc)
    # The first chunk warms caches and prepared statements: compare from there.
    first, last = samples[0], samples[-1]
    report.add(f"memory: worker RSS after first {chunk:,} jobs, MiB", round(first / 1024, 1))
    report.add(f"memory: worker RSS after {processed:,} jobs, MiB", round(last / 1024, 1))
    report.add("memory: RSS growth after warm-up, %", round((last - first) / first * 100, 1))


# ------------------------------------------------------------------ main


async def run(
    settings: Settings, quick: bool, large_table: int = 0, memory_jobs: int = 0
) -> Report:
    sizes = Sizes.quick() if quick else Sizes()
    admin_url = settings.require_database_url()
    with psycopg.connect(admin_url, autocommit=True, row_factory=dict_row) as conn:
        info = conn.execute(query("server_info")).fetchone()
    report = Report(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        server=f"PostgreSQL {info['server_version'] if info else '?'}",
    )
    print(f"pgjobs bench ({'quick' if quick else 'full'}) on {report.server}", flush=True)
    with scratch_database(admin_url) as url:
        app = App(settings.replace(database_url=url), clock=Clock(), builtin_types=False)
        app.register(NOOP, bench_app().handlers[NOOP].func)
        try:
            await bench_enqueue(url, sizes, report)
            drain = await bench_drain(url, sizes, report)
            raw = await bench_raw(app, url, sizes, report, batch=10)
            limit = await bench_raw_clients(app, url, sizes, report, batch=10)
            report.add("ratio: drain / raw SQL loops (batch 10)", round(drain / raw, 3))
            report.add("ratio: drain / 4-client limit (batch 10)", round(drain / limit, 3))
            await bench_drain_processes(app, url, sizes, report, concurrency=50, processes=2)
            await bench_raw(app, url, sizes, report, batch=100)
            await bench_raw_clients(app, url, sizes, report, batch=100)
            await bench_latency(url, sizes, report)
            if large_table:
                await bench_large_table(admin_url, url, sizes, report, large_table)
            if memory_jobs:
                await bench_memory(app, url, report, memory_jobs)
        finally:
            await app.close()
    return report


def save(report: Report, output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"bench-{report.started.replace(':', '')}.json"
    path.write_text(json.dumps(asdict(report), indent=2))
    return path
