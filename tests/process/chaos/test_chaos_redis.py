"""Scenario 4: Redis (rate-limit tokens, wake-ups, job events) is stopped mid-run and
started again. Redis is a cache beside PostgreSQL: workers keep running jobs while it
is down, and nothing is lost or recorded twice."""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import Redis, assert_invariants
from tests.process.chaos.scenarios import redis_restart


def test_redis_stopped_and_restarted_mid_run(
    chaos_db: str, redis_server: Redis, log_dir: Path
) -> None:
    report, during = redis_restart(chaos_db, redis_server, log_dir, jobs=1200, down_s=3.0)
    print(report)
    assert_invariants(report)
    assert during > 0, "no job completed while Redis was down"
