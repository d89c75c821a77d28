"""Scenario 6: a worker frozen with SIGSTOP past its lease loses its jobs to a rescuer;
continued with SIGCONT while the reruns are still going, its late completions (both
in-transaction and returned results) are rejected by the (id, attempt) fence: the
rescued runs win, and nothing is recorded twice."""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import assert_invariants
from tests.process.chaos.scenarios import sigstop


def test_frozen_worker_loses_to_the_rescued_runs(chaos_db: str, log_dir: Path) -> None:
    report, figures = sigstop(chaos_db, log_dir, jobs=8, job_ms=1500)
    print(report, figures, sep="\n")
    assert_invariants(report)
    assert figures.results_by_pid == {figures.rescuer_pid: 8}
    assert figures.effects_by_pid == {figures.rescuer_pid: 4}
    # The frozen worker's eight runs finished after their rescue: all were discarded.
    assert figures.stale_discarded == 8
    assert figures.frozen_failures_recorded == 0
    # Taken back uncharged: eight jobs in flight together, none of them ran alone.
    assert report.reasons == {"interrupted": 8}
