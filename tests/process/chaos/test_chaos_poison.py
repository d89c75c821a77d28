"""Scenario 8: poison jobs (their handler kills the worker process) among ordinary 5-50
ms jobs, while a random worker is also SIGKILLed every 1.5 s. Every job in flight in a
dead worker is taken back as a suspect that runs alone, so the poison jobs are the ones
charged stalls and fail for good, and not one of their neighbours fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.process.chaos.harness import assert_invariants
from tests.process.chaos.scenarios import poison_among_kills


@pytest.mark.parametrize("max_stalled", [1, 2])
def test_poison_jobs_fail_alone_and_their_neighbours_complete(
    chaos_db: str, log_dir: Path, max_stalled: int
) -> None:
    report, figures = poison_among_kills(
        chaos_db, log_dir, jobs=600, poison=3, max_stalled=max_stalled, min_duration=6
    )
    assert_invariants(report)
    assert figures.innocent_failed == 0, report.notes
    assert report.failed == 3, report.notes
    assert report.faults["kill -9"] >= 4, report.faults
    # The poison jobs did kill workers with neighbours in flight.
    assert figures.crashes >= 3, report.notes
    assert figures.innocent_interrupted > 0, report.notes
    for poison in figures.poison:
        stalls = max_stalled + 1
        assert poison["status"] == "failed", poison
        assert poison["stalled_count"] == stalls, poison
        assert poison["last_error"].startswith(
            f"stalled {stalls} times, more than JOBS_MAX_STALLED_COUNT ({max_stalled})"
        ), poison
        # Each charge is a run alone that killed its worker; any earlier give-back, with
        # neighbours in flight, was not charged.
        assert poison["kinds"].count("stalled") == stalls, poison
        assert set(poison["kinds"]) <= {"stalled", "interrupted"}, poison
