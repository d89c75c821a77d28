"""The benchmark scripts still run (with tiny counts; no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.dev import bench, workloads
from pgjobs.queries import query
from tests.bench_scripts import run_bench_script


def test_create_many_benchmark_runs(tmp_path: Path) -> None:
    _, record = run_bench_script("create_many", ["--count", "300", "--singles", "10"], tmp_path)
    assert [(r["name"], r["jobs"]) for r in record["results"]] == [
        ("create_many, run now (one call)", 300),
        ("create_many, delayed (one call)", 300),
        ("create, one call per job", 10),
    ]
    assert all(r["jobs_per_s"] > 0 for r in record["results"])


def test_rate_limits_benchmark_runs(tmp_path: Path) -> None:
    """Only its quickest scenario: the others measure rates over tens of seconds."""
    _, record = run_bench_script("rate_limits", ["--only", "wakeups", "--wakeups", "3"], tmp_path)
    assert [r["scenario"] for r in record["results"]] == [
        "start latency: LISTEN off, Redis wake-ups, poll 5 s",
        "start latency: LISTEN on, no Redis, poll 5 s",
        "start latency: LISTEN off, no Redis, poll 1 s",
    ]


@pytest.mark.anyio
async def test_raw_sql_limit_leaves_no_worker_registered(settings: Settings) -> None:
    """The raw-SQL loops (and the 4-client limit) register workers as the worker does;
    left behind, one counted as the latency phase's worker, which then enqueued before
    its real worker had started (enqueue->start figures of a second instead of ms)."""
    url = settings.require_database_url()
    app = App(settings, builtin_types=False)
    app.register(bench.NOOP, bench.bench_app().handlers[bench.NOOP].func)
    report = bench.Report(started="now", server="test")
    try:
        rate = await bench.bench_raw(app, url, bench.Sizes.quick(), report, batch=10)
        limit = await bench.bench_raw_clients(app, url, bench.Sizes.quick(), report, batch=10)
    finally:
        await app.close()
    assert rate > 0 and limit > 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM job_workers").fetchone() == (0,)


@pytest.mark.anyio
async def test_latency_workload_times_every_job_but_an_untimed_first(settings: Settings) -> None:
    """The client's first connection and the worker's first run are not the figure: one
    job goes through before the clock, and neither figure counts it."""
    url = settings.require_database_url()
    result = await workloads.latency(url, 5, rate=200.0)
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    with psycopg.connect(url) as conn:
        keys = conn.execute(
            "SELECT (payload->>'k')::int FROM jobs WHERE type = %s AND status = 'completed'",
            (workloads.LATENCY,),
        ).fetchall()
        timed = conn.execute(query("bench_latencies")).fetchall()
    assert sorted(k for (k,) in keys) == [-1, 0, 1, 2, 3, 4]
    assert len(timed) == 5
