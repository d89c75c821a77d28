"""Benchmark: the dashboard's overview with a million jobs in the table.

Creates a scratch database and fills it with `--jobs` jobs over five queues: finished
ones (94 % completed, 5 % failed, 1 % cancelled) spread evenly over the last `--hours`
hours, which is the worst case for the throughput charts (a day of finished jobs to
count), plus 2,000 waiting, 50 active, 500 delayed and 100 blocked jobs and three
live workers. Then, with the web app in this process (httpx over ASGI, lifespan run):

* the first overview render, while the throughput history is still cold;
* how long the first fill of that history takes (it runs in the background);
* `--renders` overview renders once warm: min / median / p95 / max;
* the JSON counts of the auto-refresh, a queue page and the failures page.

Prints the figures and writes a JSON record to bench-results/. Usage:

    python bench/dashboard.py [--jobs 1000000] [--hours 24] [--renders 30] [--keep]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL
(the scratch database is created beside it and dropped afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from common import ROOT, scratch, server_url, summary, timed_get, web_client, write

QUEUES = ("default", "emails", "reports", "high-priority", "low-priority")
BATCH = 200_000

FILL_FINISHED = """
INSERT INTO jobs (type, queue, status, payload, attempts, max_attempts, created_at,
                  started_at, completed_at, run_at, last_error)
SELECT (ARRAY['send-email', 'http-request', 'resize-image', 'report'])[1 + i %% 4],
       (%(queues)s::text[])[1 + i %% 5],
       CASE WHEN i %% 100 = 0 THEN 'cancelled'
            WHEN i %% 20 = 7 THEN 'failed'
            ELSE 'completed' END,
       jsonb_build_object('n', i, 'to', 'user' || i || '@example.com', 'password', 'x'),
       1, 3,
       t - interval '250 ms', t - interval '200 ms', t, t - interval '250 ms',
       CASE WHEN i %% 20 = 7 THEN 'ValueError: bad input ' || (i %% 7) || E'\\nTraceback' END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i,
     LATERAL (SELECT now() - make_interval(secs => %(span_s)s * i / %(total)s::float8) AS t) x
"""
FILL_LIVE = """
INSERT INTO jobs (type, queue, status, run_at, attempts, started_at, worker_id)
SELECT 'send-email', (%(queues)s::text[])[1 + i %% 5], %(status)s::text,
       now() + CASE WHEN %(status)s::text = 'delayed' THEN interval '1 hour' ELSE '0' END,
       CASE WHEN %(status)s::text = 'active' THEN 1 ELSE 0 END,
       CASE WHEN %(status)s::text = 'active' THEN now() END,
       CASE WHEN %(status)s::text = 'active' THEN %(worker)s::uuid END
FROM generate_series(1, %(count)s) AS i
"""
FILL_BLOCKED = """
INSERT INTO jobs (type, queue, status, depends_on)
SELECT 'report', 'reports', 'blocked', ARRAY[(SELECT id FROM jobs WHERE status = 'pending'
                                              LIMIT 1)]
FROM generate_series(1, %(count)s)
"""
FILL_WORKER = """
INSERT INTO job_workers (id, hostname, pid, queues, concurrency, version, in_flight)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, 10, '0.1.0', 17)
"""


def fill(url: str, jobs: int, hours: float) -> dict[str, Any]:
    started = time.perf_counter()
    workers = [uuid.uuid4() for _ in range(3)]
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(1, jobs + 1, BATCH):
            last = min(jobs, first + BATCH - 1)
            params = {
                "queues": list(QUEUES),
                "first": first,
                "last": last,
                "total": jobs,
                "span_s": hours * 3600,
            }
            conn.execute(FILL_FINISHED, params)
            print(f"  {last:,} finished jobs", file=sys.stderr)
        for status, count in (("pending", 2000), ("active", 50), ("delayed", 500)):
            live = {"queues": list(QUEUES), "status": status, "count": count, "worker": workers[0]}
            conn.execute(FILL_LIVE, live)
        conn.execute(FILL_BLOCKED, {"count": 100})
        for n, worker in enumerate(workers):
            conn.execute(
                FILL_WORKER,
                {"id": worker, "host": f"worker-{n}", "pid": 1000 + n, "queues": list(QUEUES)},
            )
        print("  VACUUM ANALYZE jobs", file=sys.stderr)
        conn.execute("VACUUM (ANALYZE) jobs")
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('jobs'))").fetchone()
    return {
        "rows": row[0] if row else None,
        "size": size[0] if size else None,
        "fill_s": round(time.perf_counter() - started, 1),
    }


async def history_ready(client: httpx.AsyncClient, timeout_s: float = 600) -> None:
    """Poll the auto-refresh endpoint until the first history fill is done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await client.get("/dashboard/counts.json")).json()["history_ready"]:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the throughput history was not filled in time")


async def measure(url: str, renders: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with web_client(url) as client:
        ms, response = await timed_get(client, "/dashboard")
        cold_charts = "data-history-pending" not in response.text
        out["first_render"] = {"ms": round(ms, 1), "with_charts": cold_charts}
        print(f"first overview render: {ms:.0f} ms (charts: {cold_charts})", file=sys.stderr)
        started = time.perf_counter()
        await history_ready(client)
        out["history_fill_s"] = round(time.perf_counter() - started, 2)
        samples: list[float] = []
        for _ in range(renders):
            ms, response = await timed_get(client, "/dashboard")
            assert "data-history-pending" not in response.text
            samples.append(ms)
        out["overview"] = summary(samples)
        for name, path in (
            ("counts_json", "/dashboard/counts.json"),
            ("queue_page", "/dashboard/queues/default"),
            ("queue_failed_tab", "/dashboard/queues/default?status=failed"),
            ("failures_page", "/dashboard/failures"),
        ):
            runs = [(await timed_get(client, path))[0] for _ in range(5)]
            out[name] = summary(runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="finished jobs to create")
    parser.add_argument("--hours", type=float, default=24.0, help="spread of finished jobs")
    parser.add_argument("--renders", type=int, default=30, help="warm overview renders")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)

    with scratch(server_url(), keep=args.keep) as db:
        print(f"filling {db.name} with {args.jobs:,} jobs", file=sys.stderr)
        table = fill(db.url, args.jobs, args.hours)
        results = asyncio.run(measure(db.url, args.renders))

    record = {
        "jobs_table": table,
        "finished_spread_hours": args.hours,
        "results": results,
    }
    print(json.dumps(record, indent=2))
    overview = results["overview"]
    print(
        f"overview with {table['rows']:,} jobs: median {overview['median_ms']} ms, "
        f"p95 {overview['p95_ms']} ms, max {overview['max_ms']} ms "
        f"(first render {results['first_render']['ms']} ms, "
        f"history fill {results['history_fill_s']} s in the background)"
    )
    path = write(args.out, "dashboard", db.server_version, **record)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
