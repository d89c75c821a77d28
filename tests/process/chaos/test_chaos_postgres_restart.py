"""Scenario 3: PostgreSQL restarted with `pg_ctl restart -m immediate` (a crash: no
checkpoint, WAL replay on the way up) twice while jobs are enqueued and run. The
workers and an API producer reconnect on their own; nothing is lost or recorded twice."""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import Cluster, assert_invariants, create_database
from tests.process.chaos.scenarios import postgres_restarts


def test_postgres_restarted_twice_mid_run(own_cluster: Cluster, log_dir: Path) -> None:
    db_url = create_database(own_cluster.url)
    report = postgres_restarts(
        own_cluster, db_url, log_dir, jobs=1200, restarts=2, every=4.0, workers=4
    )
    print(report)
    assert_invariants(report)
    assert report.faults["pg_ctl restart -m immediate"] == 2
    # The workers noticed by themselves: jobs completed again within seconds of the
    # server's return (a checkout stuck until its 30 s pool timeout would miss this).
    assert report.resumed_s is not None and report.resumed_s < 10, report.notes
    # So did an application creating jobs through the public API all along (the
    # one-second bound is tests/process/chaos/test_chaos_producer_recovery.py's, on a quiet run).
    assert len(report.producer_back_s) == 2, report.notes
    assert max(report.producer_back_s) < 5, report.notes
