"""pgjobs through a real PgBouncer in transaction pooling mode (JOBS_POOL_MODE=transaction):
init, producers (Python, SQL, REST), worker processes and in-process workers, cron,
wake-ups without LISTEN through the bouncer, the vacuum round, and the bouncer dropping
every connection in the middle of a drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.db import connect_async
from pgjobs.dev.pgbouncer import BINARY, PgBouncer, available
from pgjobs.engine.maintenance.tasks import VACUUM_DEAD_ROWS, Vacuumer, run_round
from tests.conftest import ADMIN_URL, make_settings
from tests.helpers import wait_until, wait_until_async
from tests.paths import APPS, ROOT
from tests.redis_server import shared_redis_url
from tests.web_client import api_client

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not available(),
        reason=f"pgbouncer is not installed ({BINARY}): run bin/ensure-pgbouncer "
        "(apt-get install pgbouncer)",
    ),
]

POOLED = {"JOBS_POOL_MODE": "transaction"}
# Long enough that a job started well within it was woken, not found by the poll.
SLOW_POLL = {"JOBS_POLL_INTERVAL": "10000"}


@pytest.fixture(scope="module")
def bouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    server = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), ADMIN_URL)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def via(bouncer: PgBouncer, db_url: str) -> str:
    """The test's database through the bouncer."""
    return bouncer.url(db_url)


def pooled(via: str, **overrides: str) -> Settings:
    return make_settings(via, **POOLED, **overrides)


def direct(db_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(db_url, autocommit=True, row_factory=dict_row)


def counts(db_url: str, sql: str, *params: Any) -> dict[str, Any]:
    with direct(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return dict(row)


def listen_connections(db_url: str) -> int:
    """Server sessions of this database that pgjobs opened to LISTEN on."""
    name = db_url.rsplit("/", 1)[1]
    return int(
        counts(
            db_url,
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'pgjobs:listen:%%'",
            name,
        )["n"]
    )


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgjobs", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------ init and producers


def test_init_creates_the_schema_through_the_bouncer(bouncer: PgBouncer, empty_db_url: str) -> None:
    env = {"DATABASE_URL": bouncer.url(empty_db_url), **POOLED}
    created = run_cli("init", env=env)
    assert created.returncode == 0, created.stderr
    assert "schema: created" in created.stdout
    again = run_cli("init", env=env)
    assert again.returncode == 0, again.stderr
    assert "schema: up to date" in again.stdout
    assert counts(empty_db_url, "SELECT count(*) AS n FROM pgjobs_schema_migrations")["n"] > 0

    # Without the setting the bouncer refuses the session options: one line says why.
    refused = run_cli("init", env={"DATABASE_URL": bouncer.url(empty_db_url)})
    assert refused.returncode != 0
    assert "set JOBS_POOL_MODE=transaction" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_producers_and_a_worker_process_through_the_bouncer(
    bouncer: PgBouncer, via: str, db_url: str, tmp_path: Path
) -> None:
    # More statements per connection than psycopg's prepare threshold (5): a prepared
    # statement would be unknown on the bouncer's next server connection.
    app = App(pooled(via), builtin_types=False)
    try:
        python_ids = [app.create_sync("noop", {"n": n}).id for n in range(12)]
    finally:
        app.close_sync()
    with psycopg.connect(via, autocommit=True, prepare_threshold=None) as conn:
        sql_ids = [
            conn.execute(
                "SELECT id FROM pgjobs_enqueue('noop', %s::jsonb)", (f'{{"s": {n}}}',)
            ).fetchall()[0][0]
            for n in range(12)
        ]
    ids = python_ids + sql_ids

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", "worker", "--app", "worker_app:app"],
            env={
                **os.environ,
                "DATABASE_URL": via,
                "PYTHONPATH": APPS,
                "LOG_LEVEL": "info",
                "JOBS_POLL_INTERVAL": "200",
                **POOLED,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(
            lambda: (
                counts(
                    db_url,
                    "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s) AND status = 'completed'",
                    ids,
                )["n"]
                == len(ids)
            ),
            timeout=20,
            message="the worker process to complete every job",
        )
        assert listen_connections(db_url) == 0  # no LISTEN through a transaction pooler
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(20)
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert "Traceback" not in output and "prepared statement" not in output, output


# ------------------------------------------------------------------ in-process workers


async def test_in_process_workers_run_jobs_and_cron_fires_once(via: str, db_url: str) -> None:
    app = App(pooled(via), builtin_types=False)
    runs: Counter[UUID] = Counter()

    @app.handler("count")
    async def count(ctx: Any, payload: Any) -> dict[str, int]:
        runs[ctx.id] += 1
        return {"n": payload["n"]}

    try:
        await app.schedule("every-second", "count", "* * * * * *", {"n": -1})
        jobs = await app.create_many([app.build("count", {"n": n}) for n in range(40)])
        # Two workers, so both compete for the cron leader lock on every round.
        async with (
            app.worker(queues=["default"], concurrency=5),
            app.worker(queues=["default"], concurrency=5),
        ):
            results = [await app.wait(job, timeout=20) for job in jobs[:3]]
            await wait_until_async(
                lambda: _fires(db_url), timeout=15, message="three cron fires completed"
            )
            await wait_until_async(lambda: _all_completed(db_url, jobs), timeout=20)
    finally:
        await app.close()
    assert results == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {runs[job] for job in jobs} == {1}
    per_fire = counts(
        db_url,
        "SELECT max(n) AS most, count(*) AS fires FROM (SELECT count(*) AS n FROM jobs "
        "WHERE type = 'count' AND scheduled_for IS NOT NULL GROUP BY scheduled_for) f",
    )
    assert per_fire["fires"] >= 3 and per_fire["most"] == 1


async def _fires(db_url: str) -> bool:
    row = counts(
        db_url,
        "SELECT count(*) AS n FROM jobs WHERE scheduled_for IS NOT NULL AND status = 'completed'",
    )
    return bool(row["n"] >= 3)


async def _all_completed(db_url: str, ids: list[UUID]) -> bool:
    row = counts(
        db_url,
        "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s) AND status = 'completed'",
        ids,
    )
    return bool(row["n"] == len(ids))


async def test_api_serves_stats_and_creates_jobs_through_the_bouncer(via: str, db_url: str) -> None:
    async with api_client(pooled(via)) as client:
        for _ in range(8):  # past the prepare threshold on the app's connections
            stats = await client.get("/api/stats")
            assert stats.status_code == 200, stats.text
        made = [
            (await client.post("/api/jobs", json={"type": "t", "payload": {"n": n}}))
            for n in range(8)
        ]
        assert [r.status_code for r in made] == [201] * 8, [r.text for r in made]
        shown = await client.get(f"/api/jobs/{made[0].json()['id']}")
        assert shown.status_code == 200 and shown.json()["payload"] == {"n": 0}
    assert counts(db_url, "SELECT count(*) AS n FROM jobs WHERE type = 't'")["n"] == 8


# ------------------------------------------------------------------ wake-ups


async def _wake_latencies(app: App, runs: int = 4) -> list[float]:
    """Seconds from create() to the handler, one job at a time, with an idle worker."""
    started: dict[int, float] = {}
    arrived = asyncio.Event()

    @app.handler("ping")
    async def ping(ctx: Any, payload: Any) -> None:
        started[payload["k"]] = time.perf_counter()
        arrived.set()

    latencies = []
    async with app.worker(queues=["default"], concurrency=2) as worker:
        await worker.wait_listening()
        for k in range(runs):
            arrived.clear()
            began = time.perf_counter()
            await app.create("ping", {"k": k})
            await asyncio.wait_for(arrived.wait(), 8)
            latencies.append(started[k] - began)
    return latencies


async def test_wakeups_arrive_over_redis_without_listen(via: str, db_url: str) -> None:
    redis_url = shared_redis_url().rsplit("/", 1)[0] + "/13"
    app = App(pooled(via, JOBS_REDIS_URL=redis_url, **SLOW_POLL), builtin_types=False)
    try:
        latencies = await _wake_latencies(app)
        assert listen_connections(db_url) == 0
    finally:
        await app.close()
    assert max(latencies) < 1.5, latencies  # the poll would take up to 10 s


async def test_wakeups_arrive_over_the_direct_listen_url(via: str, db_url: str) -> None:
    settings = pooled(via, JOBS_LISTEN_DATABASE_URL=db_url, **SLOW_POLL)
    app = App(settings, builtin_types=False)
    try:
        latencies = await _wake_latencies(app)
    finally:
        await app.close()
    assert max(latencies) < 1.5, latencies


async def test_a_worker_without_a_way_to_listen_still_polls(via: str, db_url: str) -> None:
    app = App(pooled(via, JOBS_POLL_INTERVAL="300"), builtin_types=False)
    try:
        latencies = await _wake_latencies(app, runs=2)
        assert listen_connections(db_url) == 0
    finally:
        await app.close()
    assert max(latencies) < 3.0, latencies


# ------------------------------------------------------------------ maintenance


async def test_vacuum_round_takes_no_session_lock(via: str, db_url: str, app: App) -> None:
    with direct(db_url) as conn:
        count = VACUUM_DEAD_ROWS // 2 + 1000
        conn.execute(
            "INSERT INTO jobs (type, payload) SELECT 'noop', '{}' FROM generate_series(1, %s)",
            (count,),
        )
        conn.execute("UPDATE jobs SET status = 'active'")
        conn.execute("UPDATE jobs SET status = 'completed', completed_at = now()")
        conn.execute("SELECT pg_stat_force_next_flush()")
    stats = "SELECT vacuum_count AS vacuums, n_dead_tup AS dead FROM pg_stat_user_tables "
    stats += "WHERE relname = 'jobs'"
    wait_until(lambda: counts(db_url, stats)["dead"] >= VACUUM_DEAD_ROWS, timeout=15)
    conn_b = await connect_async(via, "test", pooled=True)
    try:
        await run_round(conn_b, Vacuumer(pooled=True), app.clock, pooled=True)
    finally:
        await conn_b.close()
    wait_until(lambda: counts(db_url, stats)["vacuums"] == 1, timeout=15)
    advisory = (
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert counts(db_url, advisory)["n"] == 0


# ------------------------------------------------------------------ chaos


async def test_no_job_lost_or_run_twice_when_the_bouncer_drops_connections(
    bouncer: PgBouncer, via: str, db_url: str
) -> None:
    total = 400
    app = App(pooled(via), builtin_types=False)
    runs: Counter[UUID] = Counter()

    @app.handler("count")
    async def count(ctx: Any, payload: Any) -> None:
        runs[ctx.id] += 1
        await asyncio.sleep(0.01)

    database = db_url.rsplit("/", 1)[1]

    def done() -> int:
        return int(counts(db_url, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'")["n"])

    try:
        jobs = await app.create_many([app.build("count", {"n": n}) for n in range(total)])
        async with app.worker(queues=["default"], concurrency=10):
            await wait_until_async(lambda: _at_least(done, total // 4), timeout=20)
            bouncer.admin(f"RECONNECT {database}")
            await wait_until_async(lambda: _at_least(done, total // 2), timeout=20)
            # Every client and server connection of the database, dropped mid-statement;
            # new ones wait at the bouncer until RESUME.
            bouncer.admin(f"KILL {database}")
            killed_at = done()
            bouncer.admin(f"RESUME {database}")
            await wait_until_async(
                lambda: _at_least(done, total), timeout=30, message="every job completed"
            )
    finally:
        await app.close()
    assert killed_at < total, "the drain was over before the connections were dropped"
    ids = set(jobs)
    assert set(runs) == ids  # none lost
    assert set(runs.values()) == {1}, [i for i, n in runs.items() if n > 1]  # none twice


async def _at_least(done: Any, n: int) -> bool:
    return bool(done() >= n)


# ------------------------------------------------------------------ the benchmark


def test_bouncer_benchmark_runs(tmp_path: Path) -> None:
    """bin/bench --bouncer still runs (tiny counts; no timing is asserted)."""
    small = ["--count", "300", "--rounds", "1", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.bouncer", *small],
        cwd=ROOT,
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "through PgBouncer" in result.stdout
    [written] = list(tmp_path.glob("bouncer-*.json"))
    record = json.loads(written.read_text())
    assert set(record["medians"]) == {"direct", "unprepared", "bouncer"}
    assert all(rate > 0 for rate in record["medians"].values())
