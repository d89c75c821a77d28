"""Benchmark: how fast producers store jobs.

Creates a scratch database, installs the schema, then times (async API):

* `create_many` of N jobs that run now, in one call (the COPY path);
* `create_many` of N delayed jobs, in one call (the INSERT ... unnest path);
* `create` of M jobs, one call each (one round trip per job).

Prints jobs/s and writes a JSON record to bench-results/. Usage:

    python bench/create_many.py [--count 50000] [--singles 2000] [--out bench-results]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL
(any database on it; the scratch database is created beside it and dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, scratch, server_url, write

from pgjobs.app import App
from pgjobs.config import load_settings


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


def stored_jobs(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        assert row is not None
        return int(row[0])


def truncate(url: str) -> None:
    # Each measurement starts from an empty table, so one does not slow the next.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        conn.execute("VACUUM ANALYZE jobs")


async def measure(url: str, count: int, singles: int) -> list[dict[str, Any]]:
    settings = load_settings({"DATABASE_URL": url, "LOG_LEVEL": "warning"}, env_file=None)
    results: list[dict[str, Any]] = []

    def record(name: str, jobs: int, seconds: float) -> None:
        if stored_jobs(url) != jobs:
            raise SystemExit(f"{name}: expected {jobs} stored jobs, found {stored_jobs(url)}")
        rate = jobs / seconds
        results.append({"name": name, "jobs": jobs, "seconds": seconds, "jobs_per_s": rate})
        print(f"{name:<42} {jobs:>7} jobs {seconds:8.3f} s {rate:>10,.0f} jobs/s")

    async with App(settings) as app:
        await app.pool()  # open connections before timing
        now_jobs = [{"type": "bench", "payload": {"i": i, "user": f"u{i}"}} for i in range(count)]
        seconds = await timed(lambda: app.create_many(now_jobs))
        record("create_many, run now (one call)", count, seconds)
        truncate(url)

        delayed = [
            {"type": "bench", "payload": {"i": i}, "options": {"delay": 3_600_000}}
            for i in range(count)
        ]
        seconds = await timed(lambda: app.create_many(delayed))
        record("create_many, delayed (one call)", count, seconds)
        truncate(url)

        async def one_by_one() -> None:
            for i in range(singles):
                await app.create("bench", {"i": i})

        seconds = await timed(one_by_one)
        record("create, one call per job", singles, seconds)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000, help="jobs per create_many call")
    parser.add_argument("--singles", type=int, default=2_000, help="jobs created one by one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)

    with scratch(server_url()) as db:
        results = asyncio.run(measure(db.url, args.count, args.singles))
    path = write(args.out, "create_many", db.server_version, results=results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
