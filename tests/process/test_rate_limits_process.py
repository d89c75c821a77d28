"""Rate limits across worker processes, with Redis and with the Postgres store, and
through a Redis outage (a private redis-server that the test stops and restarts).

These run for several seconds each by nature (a rate is a count over time), so they
are marked slow; sizes are cut down from the acceptance runs (e.g. 60 jobs at 10/s
instead of 200), which bench/rate_limits.py performs in full."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import wait_until
from tests.paths import APPS
from tests.redis_server import RedisServer, shared_redis_url

pytestmark = pytest.mark.slow

Spawn = Callable[..., list[subprocess.Popen[bytes]]]


@pytest.fixture
def spawn(db_url: str) -> Iterator[Spawn]:
    """Start `count` processes of `pgjobs worker --app worker_app:app`; kill leftovers."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        count: int, *args: str, redis_url: str | None = None
    ) -> list[subprocess.Popen[bytes]]:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith("JOBS_") and k != "LOG_LEVEL"
        }
        environ.update(
            {
                "DATABASE_URL": db_url,
                "PYTHONPATH": APPS,
                "LOG_LEVEL": "warning",
                "JOBS_POLL_INTERVAL": "500",
                "JOBS_HEARTBEAT_INTERVAL": "500",
            }
        )
        if redis_url is not None:
            environ["JOBS_REDIS_URL"] = redis_url
        command = [sys.executable, "-m", "pgjobs", "worker", "--app", "worker_app:app", *args]
        procs = [
            subprocess.Popen(command, env=environ, stdin=subprocess.DEVNULL) for _ in range(count)
        ]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def rows(db: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    return list(db.execute(sql, params).fetchall())


def enqueue(
    db: Any, count: int, queue: str = "default", keys: list[str | None] | None = None
) -> None:
    """`count` noop jobs, their rate-limit keys taken round-robin from `keys`."""
    cycle = keys or [None]
    db.execute(
        "INSERT INTO jobs (type, queue, rate_limit_key) "
        "SELECT 'noop', %s, (%s::text[])[1 + (n %% %s)] FROM generate_series(0, %s - 1) n",
        (queue, cycle, len(cycle), count),
    )


def completed(db: Any, where: str = "true", *params: Any) -> int:
    return int(
        rows(db, f"SELECT count(*) AS n FROM jobs WHERE status = 'completed' AND {where}", *params)[
            0
        ]["n"]
    )


def starts(db: Any, where: str = "true", *params: Any) -> list[float]:
    found = rows(db, f"SELECT started_at FROM jobs WHERE {where} ORDER BY started_at", *params)
    return [r["started_at"].timestamp() for r in found]


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most starts inside any half-open window [t, t + window)."""
    best = 0
    for i, first in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < first + window))
    return best


def assert_each_ran_once(db: Any, total: int) -> None:
    counts = rows(
        db,
        "SELECT j.attempts, (SELECT count(*) FROM job_results r WHERE r.job_id = j.id) AS results "
        "FROM jobs j",
    )
    assert len(counts) == total
    assert all(c["attempts"] == 1 and c["results"] == 1 for c in counts), counts


def redis_for(store: str) -> str | None:
    return shared_redis_url() if store == "redis" else None


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_queue_limit_across_three_worker_processes(db: Any, spawn: Spawn, store: str) -> None:
    db.execute(
        "UPDATE job_queues SET rate_limit_max = 10, rate_limit_duration_ms = 1000 "
        "WHERE name = 'default'"
    )
    enqueue(db, 60)
    spawn(3, "--concurrency", "20", redis_url=redis_for(store))
    wait_until(lambda: completed(db) == 60, timeout=60, interval=0.1, message="60 jobs done")
    times = starts(db)
    assert max_in_window(times) <= 10
    # 60 starts at 10 per second: the sixth window opens 5 s after the first start.
    assert times[-1] - times[0] >= 5.0
    assert_each_ran_once(db, 60)


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_key_limits_do_not_slow_other_keys(db: Any, spawn: Spawn, store: str) -> None:
    db.execute(
        "INSERT INTO job_rate_limits (pattern, max_jobs, duration_ms) VALUES ('tenant:*', 5, 1000)"
    )
    # Interleaved: a, b, bulk, bulk, a, b, bulk, bulk, ...
    enqueue(db, 120, keys=["tenant:a", "tenant:b", "bulk", "bulk"])
    spawn(3, "--concurrency", "20", redis_url=redis_for(store))
    wait_until(lambda: completed(db) == 120, timeout=60, interval=0.1, message="120 jobs done")
    first = starts(db)[0]
    for tenant in ("tenant:a", "tenant:b"):
        times = starts(db, "rate_limit_key = %s", tenant)
        assert len(times) == 30 and max_in_window(times) <= 5, tenant
        assert times[-1] - times[0] >= 5.0  # 30 starts at 5 per second
    bulk = starts(db, "rate_limit_key = 'bulk'")
    # The unlimited key drains at full speed: 60 slots take all 60 at once.
    assert len(bulk) == 60 and bulk[-1] - first < 2.0, bulk[-1] - first
    assert_each_ran_once(db, 120)


def db_now(db: Any) -> float:
    value: datetime = rows(db, "SELECT pgjobs_now() AS now")[0]["now"]
    return value.timestamp()


def test_redis_outage_mid_run(db: Any, spawn: Spawn, tmp_path: Path) -> None:
    """Redis dies for 10 s under a 10/s limit: no job lost or run twice, the limit never
    exceeded (the Postgres store takes over after one closed window), unlimited jobs keep
    flowing, and Redis holds the tokens again within 2 s of coming back."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        db.execute(
            "INSERT INTO job_queues (name, rate_limit_max, rate_limit_duration_ms) "
            "VALUES ('limited', 10, 1000)"
        )
        enqueue(db, 200, queue="limited")
        spawn(3, "limited", "default", "--concurrency", "20", redis_url=server.url)
        wait_until(lambda: completed(db) >= 30, timeout=30, interval=0.05, message="30 done")
        server.stop()
        down_at = db_now(db)
        time.sleep(2.0)
        enqueue(db, 300, queue="default")  # no limit: Redis is not needed to run these
        wait_until(
            lambda: completed(db, "queue = 'default'") == 300,
            timeout=7,
            interval=0.05,
            message="unlimited jobs done during the outage",
        )
        assert db_now(db) - down_at < 9.5  # all of them ran while Redis was down
        time.sleep(max(0.0, 10.0 - (db_now(db) - down_at)))
        server.start()
        up_at = db_now(db)
        wait_until(
            lambda: rows(db, "SELECT store FROM job_rate_state")[0]["store"] == "redis",
            timeout=2.5,
            interval=0.05,
            message="Redis holds the tokens again",
        )
        client = redis.Redis.from_url(server.url)
        try:
            assert client.keys("pgjobs:*:rl:since")  # adopted: the state marker is back
        finally:
            client.close()
        wait_until(lambda: completed(db) == 500, timeout=60, interval=0.1, message="all done")
    finally:
        server.stop()
    times = starts(db, "queue = 'limited'")
    assert max_in_window(times) <= 10
    assert [t for t in times if up_at <= t <= up_at + 2.0], "limited jobs resumed within 2 s"
    assert [t for t in times if down_at + 1.5 <= t <= up_at], "the Postgres store took over"
    assert_each_ran_once(db, 500)
