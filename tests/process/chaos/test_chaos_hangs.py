"""Scenario 5: handlers that hang past their timeout (async, a sync thread, a CPU loop)
and a poison job that kills its worker process every time.

Semantics of the poison job (queries/maintenance.sql, rescue_stalled_jobs): the first
time its worker dies, the job was claimed like any other, so it is taken back uncharged
(an 'interrupted' row) as a suspect that runs alone from then on. Each later death, with
the job running alone, adds 1 to its stalled_count; it goes back to pending while the
count is at most JOBS_MAX_STALLED_COUNT and fails for good when it would exceed it. With
JOBS_MAX_STALLED_COUNT=2 it therefore runs 4 times, takes down 4 worker processes, and
ends `failed` with an 'interrupted' row and 3 'stalled' rows.
"""

from __future__ import annotations

from pathlib import Path

from tests.process.chaos.harness import assert_invariants
from tests.process.chaos.scenarios import hangs_and_poison


def test_hangs_time_out_and_poison_fails_after_max_stalls(chaos_db: str, log_dir: Path) -> None:
    report, figures = hangs_and_poison(chaos_db, log_dir, innocents=200, max_stalled=2)
    print(report, figures, sep="\n")
    assert_invariants(report)
    for kind in ("hang-async", "hang-sync"):
        assert figures.jobs[kind]["status"] == "failed", figures.jobs[kind]
        assert figures.failures[kind] == ["timeout", "timeout"], figures.failures[kind]
        assert figures.jobs[kind]["last_error"] == "TimeoutError: job exceeded 700 ms"
    assert figures.jobs["cpu-loop"]["status"] == "failed"
    assert figures.failures["cpu-loop"] == ["timeout"]
    # The spinning thread holds the GIL in turns, yet the event loop still fires the
    # timeout close to time: the job is recorded failed long before the loop ends.
    assert figures.cpu_loop_timeout_ms < 3000, figures.cpu_loop_timeout_ms
    poison = figures.jobs["poison"]
    assert poison["status"] == "failed" and poison["stalled_count"] == 3, poison
    assert figures.starts["poison"] == 4
    assert figures.failures["poison"] == ["interrupted"] + ["stalled"] * 3
    assert (poison["last_error"] or "").startswith(
        "stalled 3 times, more than JOBS_MAX_STALLED_COUNT (2)"
    ), poison
    assert figures.crashes == 4
    # The hung sync thread (it sleeps for an hour) does not keep the stopped worker alive.
    assert figures.stop_codes == {0: 0}, figures.stop_codes
    assert figures.stop_s < 15, figures.stop_s
