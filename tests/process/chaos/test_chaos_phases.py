"""Scenario 9 at CI size: the phased run with 2 s windows, on a subset of its phases
(`bin/soak --only 9` runs them all). After every fault the queue must recover: nothing
lost or completed twice, no job left active, and jobs completing again once it ended."""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import Cluster, assert_invariants, create_database
from tests.process.chaos.phases import phased_run

CI_PHASES = ("backend-kills", "restart", "worker-kills")


def test_every_phase_recovers(own_cluster: Cluster, log_dir: Path) -> None:
    db_url = create_database(own_cluster.url)
    report, phases = phased_run(
        own_cluster, db_url, log_dir, window_s=1.5, rate=60, workers=3, only=CI_PHASES
    )
    assert_invariants(report)
    assert [phase.name for phase in phases] == list(CI_PHASES)
    for phase in phases:
        assert_invariants(phase.report)
        assert phase.report.jobs > 0, phase
        assert phase.left_active == 0, phase
        assert phase.after.completed_per_s > 0, phase
    assert report.faults["pg_ctl restart -m immediate"] == 1
    assert report.faults["kill -9"] >= 1
    assert report.faults["pg_terminate_backend"] >= 2
    assert len(report.producer_back_s) == 1 and len(report.worker_back_s) == 1
