"""Scenario 1: `kill -9` a random worker every 2 s (and respawn it) while 8 worker
processes drain mixed 5-50 ms jobs. Nothing is lost or recorded twice."""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import assert_invariants
from tests.process.chaos.scenarios import kill9


def test_kill9_a_random_worker_every_2s(chaos_db: str, log_dir: Path) -> None:
    report = kill9(
        chaos_db, log_dir, jobs=4000, workers=8, concurrency=8, kill_every=2.0, min_duration=10
    )
    assert_invariants(report)
    assert report.faults["kill -9"] >= 4, report.faults
    # Killed workers held jobs: they were taken back (uncharged, as they ran beside
    # others), and each rerun is explained.
    assert report.reasons.get("interrupted", 0) > 0, report.reasons
