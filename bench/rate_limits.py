"""Benchmark: rate limits, Redis outages and wake-up latency, at full size.

Each scenario runs against a scratch database (created beside the server's, dropped
afterwards) with real `pgjobs worker` processes:

* rate     — a queue limited to 10 jobs/s, 3 worker processes of concurrency 20,
             200 jobs: elapsed time (>= 19 s expected) and the most starts in any 1 s
             window (<= 10), with Redis and with the Postgres store;
* keys     — two keys limited to 5/s each plus an unlimited key, interleaved in one
             queue: each limited key's busiest window and how fast the unlimited key
             drains, with Redis and with the Postgres store;
* outage   — Redis (a private redis-server) stopped for 10 s mid-run and restarted:
             jobs lost, the busiest window, starts during the outage (the Postgres
             store) and how soon jobs start after Redis returns; then, with no limit
             configured, jobs/s with Redis up and with Redis down;
* wakeups  — start latency (created_at -> started_at) with LISTEN disabled and Redis
             wake-ups (p50/p95), and with both disabled (bounded by the poll interval).

Prints a report and writes a JSON record to bench-results/. Usage:

    python bench/rate_limits.py [--only rate,keys,outage,wakeups] [--jobs 200]

The PostgreSQL server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else
DATABASE_URL; the shared Redis is PGJOBS_BENCH_REDIS_URL, else JOBS_REDIS_URL, else
redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from common import ROOT, WorkerProcesses, scratch, server_url
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.dev.services import redis_binaries

APP_MODULE = """
import pgjobs

app = pgjobs.App(builtin_types=False)


@app.handler("noop")
async def noop(ctx, payload):
    return None
"""


def shared_redis() -> str:
    return (
        os.environ.get("PGJOBS_BENCH_REDIS_URL")
        or os.environ.get("JOBS_REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    with scratch(server_url()) as db:
        yield db.url


class PrivateRedis:
    """An in-memory redis-server on a free port that can be stopped and started again."""

    def __init__(self, directory: str) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = str(redis_binaries()[0])
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.directory,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Workers(WorkerProcesses):
    """`count` `pgjobs worker` processes over a throw-away app with a `noop` handler."""

    def __init__(self, db_url: str, app_dir: str, redis_url: str | None, *args: str) -> None:
        super().__init__()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBS_")}
        env.update(
            {
                "DATABASE_URL": db_url,
                "PYTHONPATH": app_dir,
                "LOG_LEVEL": "warning",
                "JOBS_POLL_INTERVAL": "500",
            }
        )
        if redis_url:
            env["JOBS_REDIS_URL"] = redis_url
        self.command = [sys.executable, "-m", "pgjobs", "worker", "--app", "bench_app:app", *args]
        self.env = env


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def enqueue(
    conn: Any, count: int, queue: str = "default", keys: list[str | None] | None = None
) -> None:
    cycle = keys or [None]
    conn.execute(
        "INSERT INTO jobs (type, queue, rate_limit_key) "
        "SELECT 'noop', %s, (%s::text[])[1 + (n %% %s)] FROM generate_series(0, %s - 1) n",
        (queue, cycle, len(cycle), count),
    )


def count_done(conn: Any, queue: str | None = None, key: str | None = None) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM jobs WHERE status = 'completed' "
        "AND (%(queue)s::text IS NULL OR queue = %(queue)s::text) "
        "AND (%(key)s::text IS NULL OR rate_limit_key = %(key)s::text)",
        {"queue": queue, "key": key},
    ).fetchone()
    return int(row["n"])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_times(conn: Any, queue: str | None = None, key: str | None = None) -> list[float]:
    found = conn.execute(
        "SELECT started_at FROM jobs WHERE started_at IS NOT NULL "
        "AND (%(queue)s::text IS NULL OR queue = %(queue)s::text) "
        "AND (%(key)s::text IS NULL OR rate_limit_key = %(key)s::text) "
        "ORDER BY started_at",
        {"queue": queue, "key": key},
    ).fetchall()
    return [r["started_at"].timestamp() for r in found]


def busiest_window(times: list[float], window: float = 1.0) -> int:
    best, j = 0, 0
    for i, first in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < first + window:
            j += 1
        best = max(best, j - i)
    return best


def db_now(conn: Any) -> float:
    value: datetime = conn.execute("SELECT pgjobs_now() AS now").fetchone()["now"]
    return value.timestamp()


def limit_queue(conn: Any, queue: str, max_jobs: int, duration_ms: int) -> None:
    conn.execute(
        "INSERT INTO job_queues (name, rate_limit_max, rate_limit_duration_ms) "
        "VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET rate_limit_max = "
        "excluded.rate_limit_max, rate_limit_duration_ms = excluded.rate_limit_duration_ms",
        (queue, max_jobs, duration_ms),
    )


# ------------------------------------------------------------------ scenarios


def bench_rate(app_dir: str, jobs: int, store: str) -> dict[str, Any]:
    with scratch_database() as url, connect(url) as conn:
        limit_queue(conn, "default", 10, 1000)
        enqueue(conn, jobs)
        workers = Workers(url, app_dir, shared_redis() if store == "redis" else None, "-c", "20")
        workers.start(3)
        try:
            wait_for(lambda: count_done(conn) == jobs, jobs / 10 + 60, f"{jobs} jobs")
        finally:
            workers.stop()
        times = start_times(conn)
        return {
            "scenario": f"queue limit 10/s, 3 x 20 slots, {jobs} jobs ({store})",
            "elapsed_s": round(times[-1] - times[0], 3),
            "busiest_1s_window": busiest_window(times),
        }


def bench_keys(app_dir: str, store: str) -> dict[str, Any]:
    with scratch_database() as url, connect(url) as conn:
        conn.execute(
            "INSERT INTO job_rate_limits (pattern, max_jobs, duration_ms) "
            "VALUES ('tenant:*', 5, 1000)"
        )
        enqueue(conn, 400, keys=["tenant:a", "tenant:b", "bulk", "bulk"])
        workers = Workers(url, app_dir, shared_redis() if store == "redis" else None, "-c", "20")
        workers.start(3)
        try:
            wait_for(lambda: count_done(conn) == 400, 120, "400 jobs")
        finally:
            workers.stop()
        first = start_times(conn)[0]
        out: dict[str, Any] = {"scenario": f"keys 5/s x 2 + unlimited, 400 jobs ({store})"}
        for key in ("tenant:a", "tenant:b"):
            times = start_times(conn, key=key)
            out[f"{key} busiest_1s_window"] = busiest_window(times)
            out[f"{key} elapsed_s"] = round(times[-1] - times[0], 3)
        bulk = start_times(conn, key="bulk")
        out["unlimited (200 jobs) drained_in_s"] = round(bulk[-1] - first, 3)
        return out


def unlimited_rate(conn: Any, count: int, queue: str) -> float:
    before = count_done(conn, queue)
    began = time.monotonic()
    enqueue(conn, count, queue=queue)
    wait_for(lambda: count_done(conn, queue) == before + count, 120, "unlimited")
    return count / (time.monotonic() - began)


@contextlib.contextmanager
def outage_setup() -> Iterator[tuple[str, Any, PrivateRedis]]:
    """A scratch database, a connection to it and a private Redis (started) that the
    outage scenarios stop and start."""
    with (
        tempfile.TemporaryDirectory() as redis_dir,
        scratch_database() as url,
        connect(url) as conn,
    ):
        server = PrivateRedis(redis_dir)
        server.start()
        yield url, conn, server


def bench_outage(app_dir: str, jobs: int) -> dict[str, Any]:
    with outage_setup() as (url, conn, server):
        limit_queue(conn, "limited", 10, 1000)
        enqueue(conn, jobs, queue="limited")
        workers = Workers(url, app_dir, server.url, "limited", "-c", "20")
        workers.start(3)
        try:
            wait_for(lambda: count_done(conn, "limited") >= 40, 60, "40 limited")
            server.stop()
            down_at = db_now(conn)
            time.sleep(10.0)
            server.start()
            up_at = db_now(conn)
            wait_for(lambda: count_done(conn, "limited") == jobs, jobs / 10 + 60, "all")
        finally:
            workers.stop()
            server.stop()
        times = start_times(conn, "limited")
        after = [t for t in times if t >= up_at]
        during = [t for t in times if down_at <= t < up_at]
        lost = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE status <> 'completed' OR attempts <> 1"
        ).fetchone()["n"]
        return {
            "scenario": f"Redis down 10 s mid-run, limit 10/s, {jobs} jobs, 3 x 20 slots",
            "jobs_lost_or_rerun": lost,
            "busiest_1s_window": busiest_window(times),
            "starts_while_redis_was_down": len(during),
            "first_start_after_redis_returned_s": round(after[0] - up_at, 3) if after else None,
        }


def bench_outage_throughput(app_dir: str, count: int) -> dict[str, Any]:
    """No limit configured: jobs/s with Redis up, then with Redis down."""
    with outage_setup() as (url, conn, server):
        workers = Workers(url, app_dir, server.url, "-c", "20")
        workers.start(3)
        try:
            unlimited_rate(conn, count // 4, "default")  # warm up
            up = statistics.median(unlimited_rate(conn, count, "default") for _ in range(3))
            server.stop()
            time.sleep(1.0)
            down = statistics.median(unlimited_rate(conn, count, "default") for _ in range(3))
        finally:
            workers.stop()
            server.stop()
        return {
            "scenario": f"no limit, 3 x 20 slots, {count} noop jobs per run",
            "jobs_per_s_redis_up": round(up, 1),
            "jobs_per_s_redis_down": round(down, 1),
            "redis_down_pct_of_up": round(100 * down / up, 1),
        }


async def start_latencies(url: str, env: dict[str, str], count: int) -> list[float]:
    settings = load_settings({"DATABASE_URL": url, "LOG_LEVEL": "warning", **env}, env_file=None)
    app = App(settings, builtin_types=False)

    @app.handler("noop")
    async def noop(ctx: Any, payload: Any) -> None:
        return None

    latencies = []
    try:
        async with app.worker(["default"], concurrency=5, maintenance=False) as worker:
            await worker.wait_listening()
            await asyncio.sleep(0.5)
            for _ in range(count):
                job = await app.create("noop", {})
                await app.wait(job.id, timeout=30)
                stored = await app.get(job.id)
                assert stored.started_at is not None
                latencies.append((stored.started_at - stored.created_at).total_seconds())
                await asyncio.sleep(0.02)
    finally:
        await app.close()
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_wakeups(count: int) -> list[dict[str, Any]]:
    out = []
    for name, env in (
        (
            "LISTEN off, Redis wake-ups, poll 5 s",
            {
                "JOBS_LISTEN": "false",
                "JOBS_REDIS_URL": shared_redis(),
                "JOBS_POLL_INTERVAL": "5000",
            },
        ),
        ("LISTEN on, no Redis, poll 5 s", {"JOBS_POLL_INTERVAL": "5000"}),
        ("LISTEN off, no Redis, poll 1 s", {"JOBS_LISTEN": "false", "JOBS_POLL_INTERVAL": "1000"}),
    ):
        with scratch_database() as url:
            lat = asyncio.run(start_latencies(url, env, count))
        out.append(
            {
                "scenario": f"start latency: {name}",
                "p50_ms": round(1000 * statistics.median(lat), 1),
                "p95_ms": round(1000 * percentile(lat, 95), 1),
                "max_ms": round(1000 * max(lat), 1),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="rate,keys,outage,wakeups")
    parser.add_argument("--jobs", type=int, default=200, help="jobs of the 10/s runs")
    parser.add_argument("--wakeups", type=int, default=200, help="jobs timed per wake-up mode")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as app_dir:
        Path(app_dir, "bench_app.py").write_text(APP_MODULE)
        for store in ("redis", "postgres"):
            if "rate" in wanted:
                results.append(bench_rate(app_dir, args.jobs, store))
                print(json.dumps(results[-1]), flush=True)
            if "keys" in wanted:
                results.append(bench_keys(app_dir, store))
                print(json.dumps(results[-1]), flush=True)
        if "outage" in wanted:
            results.append(bench_outage(app_dir, args.jobs))
            print(json.dumps(results[-1]), flush=True)
            results.append(bench_outage_throughput(app_dir, 3000))
            print(json.dumps(results[-1]), flush=True)
    if "wakeups" in wanted:
        for record in bench_wakeups(args.wakeups):
            results.append(record)
            print(json.dumps(record), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"rate_limits-{stamp}.json"
    path.write_text(
        json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "results": results}, indent=2
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
