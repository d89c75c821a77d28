"""Benchmark: throughput and table health over minutes of sustained load.

Creates a scratch database, starts `--processes` `pgjobs worker` processes (default
settings, maintenance on) whose handler sleeps `--handler-ms`, and keeps about
`--depth` jobs pending with a producer that tops the queue up through the public API
(`App.create_many` of `App.build` jobs). Every `--interval` seconds it samples the jobs
completed since the last sample, the size of the `jobs` table (with its indexes and
TOAST) and of its claim index, live and dead tuples and vacuum counts from
pg_stat_user_tables, the pending depth, the WAL written (pg_stat_wal: bytes and full-page
images, server-wide) and the blocks of `jobs` read from outside shared_buffers
(pg_statio_user_tables); at the end of every minute it also runs EXPLAIN (ANALYZE,
BUFFERS) of the claim statement (rolled back). Completed jobs stay in the table, as they
do by default for 24 hours.

Prints a line per sample, then a table per minute and the ratio of the last minute's
throughput to the first's, and writes a JSON record to bench-results/. Usage:

    python -m bench.sustained [--minutes 10] [--workers 32] [--processes 2] [--depth 2000]
                              [--handler-ms 1] [--payload-bytes 256] [--prefill N] [--quick]

`--prefill N` starts with N finished jobs in the table (and their results), to tell the
cost of a large table from the cost of time.

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL
(the scratch database is created beside it and dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.common import ROOT, WorkerProcesses, scratch, server_url, write
from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.queries import query

JOB_TYPE = "sustained"
APP_MODULE = """
import asyncio
import os

import pgjobs

app = pgjobs.App(builtin_types=False)
SECONDS = float(os.environ["SUSTAINED_HANDLER_MS"]) / 1000


@app.handler("sustained")
async def sustained(ctx, payload):
    await asyncio.sleep(SECONDS)
"""

PENDING = "SELECT count(*) AS n FROM job_ready WHERE queue = 'default' AND NOT suspect"
WORKERS_REGISTERED = "SELECT count(*) AS n FROM job_workers"
# The jobs completed in [since, until): a range of the partial index on completed_at.
COMPLETED_BETWEEN = (
    "SELECT count(*) AS n FROM jobs WHERE status = 'completed' "
    "AND completed_at >= %(since)s AND completed_at < %(until)s"
)
# Jobs finished a moment ago, as a day of history would leave them (with their results).
PREFILL = (
    "INSERT INTO jobs (type, status, payload, attempts, progress, started_at, completed_at) "
    "SELECT 'sustained', 'completed', jsonb_build_object('pad', repeat('x', %(pad)s)), 1, 100, "
    "now(), now() FROM generate_series(1, %(count)s)"
)
PREFILL_RESULTS = (
    "INSERT INTO job_results (job_id, duration_ms, completed_at, attempt) "
    "SELECT id, 1, completed_at, 1 FROM jobs"
)
TABLE_HEALTH = """
SELECT clock_timestamp() AS at,
       pg_total_relation_size('jobs') AS table_bytes,
       pg_relation_size('job_ready_claim_idx') AS claim_idx_bytes,
       s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.vacuum_count,
       s.last_autovacuum, s.last_vacuum,
       -- an old snapshot here keeps vacuum from removing anything
       (SELECT max(age(a.backend_xmin)) FROM pg_stat_activity a
        WHERE a.datname = current_database()) AS xmin_age,
       -- server-wide: the scratch database is the only busy one while this runs
       w.wal_bytes, w.wal_fpi,
       -- blocks of jobs (heap and indexes) read from outside shared_buffers
       io.heap_blks_read + coalesce(io.idx_blks_read, 0) AS blks_read
FROM pg_stat_user_tables s, pg_stat_wal w, pg_statio_user_tables io
WHERE s.relid = 'jobs'::regclass AND io.relid = s.relid
"""


@dataclass(frozen=True)
class Load:
    seconds: float
    interval: float
    window: float
    processes: int
    concurrency: int
    depth: int
    handler_ms: float
    payload_bytes: int
    prefill: int


@dataclass
class Sample:
    t: float
    completed: int
    jobs_per_s: float
    table_bytes: int
    claim_idx_bytes: int
    n_live_tup: int
    n_dead_tup: int
    autovacuum_count: int
    vacuum_count: int
    last_autovacuum: str | None
    last_vacuum: str | None
    pending: int
    xmin_age: int | None
    loadavg_1m: float
    wal_bytes: int  # WAL written since the previous sample, server-wide
    wal_fpi: int  # full-page images among it
    blks_read: int  # blocks of jobs read from outside shared_buffers


def parse_args(argv: list[str] | None) -> tuple[Load, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=32, help="handler slots in all")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--depth", type=int, default=2000, help="pending jobs to keep")
    parser.add_argument("--handler-ms", type=float, default=1.0)
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--prefill", type=int, default=0, metavar="N", help="start with N finished jobs stored"
    )
    parser.add_argument("--quick", action="store_true", help="about 20 s, tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.workers, args.processes, args.depth, args.interval = (
            1 / 3,
            8,
            2,
            200,
            2.0,
        )
    for name in ("minutes", "workers", "processes", "depth", "interval"):
        if getattr(args, name) <= 0:
            parser.exit(2, f"--{name} must be positive\n")
    if args.workers % args.processes:
        parser.exit(2, "--workers must be a multiple of --processes\n")
    if args.handler_ms < 0 or args.payload_bytes < 16 or args.prefill < 0:
        parser.exit(2, "--handler-ms must be >= 0 and --payload-bytes >= 16\n")
    seconds = args.minutes * 60
    load = Load(
        seconds=seconds,
        interval=args.interval,
        window=10.0 if args.quick else 60.0,
        processes=args.processes,
        concurrency=args.workers // args.processes,
        depth=args.depth,
        handler_ms=args.handler_ms,
        payload_bytes=args.payload_bytes,
        prefill=args.prefill,
    )
    return load, args.out


# ------------------------------------------------------------------ workers


class Workers(WorkerProcesses):
    """`pgjobs worker` processes with default settings over the sleeping handler."""

    def __init__(self, url: str, app_dir: str, load: Load) -> None:
        super().__init__()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBS_")}
        env.update(
            {
                "DATABASE_URL": url,
                "PYTHONPATH": os.pathsep.join([app_dir, str(ROOT)]),
                "LOG_LEVEL": "warning",
                "SUSTAINED_HANDLER_MS": str(load.handler_ms),
            }
        )
        self.command = [
            *(sys.executable, "-m", "pgjobs", "worker", "--app", "sustained_app:app"),
            *("--concurrency", str(load.concurrency)),
        ]
        self.env = env


# ------------------------------------------------------------------ producer


class Producer:
    """Keeps about `depth` jobs pending: reads the depth from job_ready (a few thousand
    rows) and tops it up in one `create_many` when a chunk is missing."""

    def __init__(self, app: App, conn: psycopg.AsyncConnection[Any], load: Load) -> None:
        self.app = app
        self.conn = conn
        self.depth = load.depth
        self.payload = {"pad": "x" * (load.payload_bytes - len('{"pad": ""}'))}
        self.chunk = max(1, load.depth // 20)
        self.created = 0

    async def pending(self) -> int:
        row = await (await self.conn.execute(PENDING)).fetchone()
        assert row is not None
        return int(row["n"])

    async def top_up(self) -> bool:
        missing = self.depth - await self.pending()
        if missing < self.chunk:
            return False
        await self.app.create_many([self.app.build(JOB_TYPE, self.payload) for _ in range(missing)])
        self.created += missing
        return True

    async def run(self) -> None:
        while True:
            if not await self.top_up():
                await asyncio.sleep(0.01)


# ------------------------------------------------------------------ sampling


async def health(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    row = await (await conn.execute(TABLE_HEALTH)).fetchone()
    assert row is not None
    return row


async def completed_between(
    conn: psycopg.AsyncConnection[Any], since: datetime, until: datetime
) -> int:
    row = await (await conn.execute(COMPLETED_BETWEEN, {"since": since, "until": until})).fetchone()
    assert row is not None
    return int(row["n"])


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


async def explain_claim(conn: psycopg.AsyncConnection[Any], limit: int) -> dict[str, Any]:
    """The claim statement as a worker sends it, run under EXPLAIN ANALYZE and rolled
    back: its time and the buffers it touched (dead index entries show up as buffers)."""
    params = {"now": None, "queues": ["default"], "limit": limit, "worker": uuid.uuid4()}
    async with conn.transaction(force_rollback=True):
        cur = await conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query("claim_jobs"), params
        )
        row = await cur.fetchone()
    assert row is not None
    [plan] = row["QUERY PLAN"]
    top = plan["Plan"]
    return {
        "execution_ms": round(plan["Execution Time"], 3),
        "shared_hit": top.get("Shared Hit Blocks", 0),
        "shared_read": top.get("Shared Read Blocks", 0),
        "claim_idx_scan": index_scan_buffers(top, "job_ready_claim_idx"),
    }


def index_scan_buffers(node: dict[str, Any], index: str) -> dict[str, Any] | None:
    if node.get("Index Name") == index:
        return {
            "loops": node.get("Actual Loops"),
            "rows": node.get("Actual Rows"),
            "shared_hit": node.get("Shared Hit Blocks", 0),
            "ms": node.get("Actual Total Time"),
        }
    for child in node.get("Plans", []):
        found = index_scan_buffers(child, index)
        if found is not None:
            return found
    return None


async def wait_for_workers(conn: psycopg.AsyncConnection[Any], workers: Workers) -> None:
    deadline = time.monotonic() + 60
    while True:
        row = await (await conn.execute(WORKERS_REGISTERED)).fetchone()
        if row is not None and row["n"] >= len(workers.procs):
            return
        workers.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit("worker processes did not register within 60 s")
        await asyncio.sleep(0.1)


async def sample(
    conn: psycopg.AsyncConnection[Any], producer: Producer, workers: Workers, load: Load
) -> tuple[list[Sample], list[dict[str, Any]]]:
    samples: list[Sample] = []
    plans: list[dict[str, Any]] = []
    previous_health = await health(conn)
    began = previous_health["at"]
    previous = began
    next_plan = 0.0
    while True:
        elapsed = (previous - began).total_seconds()
        if elapsed >= next_plan:
            plan = await explain_claim(conn, load.concurrency)
            plans.append({"t": round(elapsed, 1), **plan})
            next_plan += load.window
        if elapsed >= load.seconds:
            return samples, plans
        await asyncio.sleep(max(0.0, load.interval - (time.time() - previous.timestamp())))
        workers.check_alive()
        now = await health(conn)
        done = await completed_between(conn, previous, now["at"])
        span = (now["at"] - previous).total_seconds()
        samples.append(
            Sample(
                t=round((now["at"] - began).total_seconds(), 1),
                completed=done,
                jobs_per_s=round(done / span, 1),
                table_bytes=now["table_bytes"],
                claim_idx_bytes=now["claim_idx_bytes"],
                n_live_tup=now["n_live_tup"],
                n_dead_tup=now["n_dead_tup"],
                autovacuum_count=now["autovacuum_count"],
                vacuum_count=now["vacuum_count"],
                last_autovacuum=iso(now["last_autovacuum"]),
                last_vacuum=iso(now["last_vacuum"]),
                pending=await producer.pending(),
                xmin_age=now["xmin_age"],
                loadavg_1m=round(os.getloadavg()[0], 2),
                wal_bytes=int(now["wal_bytes"] - previous_health["wal_bytes"]),
                wal_fpi=int(now["wal_fpi"] - previous_health["wal_fpi"]),
                blks_read=int(now["blks_read"] - previous_health["blks_read"]),
            )
        )
        print_sample(samples[-1])
        previous, previous_health = now["at"], now


def print_sample(s: Sample) -> None:
    print(
        f"{s.t:7.1f} s {s.jobs_per_s:9,.0f} jobs/s  table {s.table_bytes / 2**20:7.1f} MB  "
        f"claim idx {s.claim_idx_bytes / 2**20:6.2f} MB  live {s.n_live_tup:>9,} "
        f"dead {s.n_dead_tup:>8,}  autovac {s.autovacuum_count} vac {s.vacuum_count}  "
        f"pending {s.pending:>6,}  xmin age {s.xmin_age or 0:>6,}  load {s.loadavg_1m:.2f}",
        flush=True,
    )


# ------------------------------------------------------------------ the run


async def measure(url: str, load: Load, app_dir: str) -> dict[str, Any]:
    settings = load_settings({"DATABASE_URL": url, "LOG_LEVEL": "warning"}, env_file=None)
    workers = Workers(url, app_dir, load)
    async with (
        App(settings, builtin_types=False) as app,
        await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row) as pc,
        await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row) as sc,
    ):
        producer = Producer(app, pc, load)
        await producer.top_up()
        workers.start(load.processes)
        feeding = asyncio.create_task(producer.run())
        try:
            await wait_for_workers(sc, workers)
            samples, plans = await sample(sc, producer, workers, load)
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            workers.stop()
    return {"samples": samples, "plans": plans, "created": producer.created}


def windows(samples: list[Sample], width: float) -> list[dict[str, Any]]:
    """Per window of `width` seconds: throughput and the table's state at its end."""
    out: list[dict[str, Any]] = []
    start = 0.0
    while True:
        inside = [s for s in samples if start < s.t <= start + width + 0.5]
        if not inside or inside[-1].t < start + width - 0.5:
            return out
        span = inside[-1].t - start
        last = inside[-1]
        jobs = max(1, sum(s.completed for s in inside))
        out.append(
            {
                "until_s": round(last.t),
                "jobs_per_s": round(sum(s.completed for s in inside) / span, 1),
                "table_mb": round(last.table_bytes / 2**20, 1),
                "claim_idx_mb": round(last.claim_idx_bytes / 2**20, 2),
                "n_dead_tup": last.n_dead_tup,
                "n_live_tup": last.n_live_tup,
                # Finished jobs stay for a day, so the table grows with the work done:
                # bloat shows as bytes per live row.
                "bytes_per_live_row": last.table_bytes // max(1, last.n_live_tup),
                "autovacuum_count": last.autovacuum_count,
                "vacuum_count": last.vacuum_count,
                # What each job cost the server in writes and reads, over the window.
                "wal_bytes_per_job": round(sum(s.wal_bytes for s in inside) / jobs),
                "fpi_per_job": round(sum(s.wal_fpi for s in inside) / jobs, 3),
                "blks_read_per_job": round(sum(s.blks_read for s in inside) / jobs, 3),
            }
        )
        start = last.t


def print_windows(rows: list[dict[str, Any]], width: float) -> None:
    print(
        f"\nper {width:g} s: until   jobs/s   table MB  B/live row  claim idx MB   dead tuples"
        "  vacuums (auto + other)  WAL B/job  FPI/job  reads/job"
    )
    for w in rows:
        print(
            f"           {w['until_s']:>5} {w['jobs_per_s']:>8,.0f} {w['table_mb']:>10,.1f} "
            f"{w['bytes_per_live_row']:>11,} {w['claim_idx_mb']:>13,.2f} {w['n_dead_tup']:>13,} "
            f"{w['autovacuum_count']:>6} + {w['vacuum_count']:<6} {w['wal_bytes_per_job']:>10,} "
            f"{w['fpi_per_job']:>8.3f} {w['blks_read_per_job']:>10.3f}"
        )


def prefill(url: str, load: Load) -> None:
    if not load.prefill:
        return
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        pad = load.payload_bytes - len('{"pad": ""}')
        conn.execute(PREFILL, {"pad": pad, "count": load.prefill})
        conn.execute(PREFILL_RESULTS)
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE job_results")
    print(f"stored {load.prefill:,} finished jobs in {time.monotonic() - began:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    load, out = parse_args(argv)
    print(
        f"{load.processes} processes x {load.concurrency} slots, depth {load.depth}, "
        f"handler {load.handler_ms:g} ms, payload {load.payload_bytes} B, {load.seconds:g} s, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as app_dir, scratch(server_url()) as db:
        Path(app_dir, "sustained_app.py").write_text(APP_MODULE)
        prefill(db.url, load)
        result = asyncio.run(measure(db.url, load, app_dir))
    samples: list[Sample] = result["samples"]
    rows = windows(samples, load.window)
    print_windows(rows, load.window)
    ratio = round(rows[-1]["jobs_per_s"] / rows[0]["jobs_per_s"], 3) if rows else None
    print(f"last / first window throughput: {ratio}")
    path = write(
        out,
        "sustained",
        db.server_version,
        load=asdict(load),
        loadavg_at_end=[round(x, 2) for x in os.getloadavg()],
        created=result["created"],
        completed=sum(s.completed for s in samples),
        last_over_first=ratio,
        max_table_mb=round(max((s.table_bytes for s in samples), default=0) / 2**20, 1),
        max_n_dead_tup=max((s.n_dead_tup for s in samples), default=0),
        windows=rows,
        samples=[asdict(s) for s in samples],
        claim_plans=result["plans"],
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
