"""Scenario 7: an idle REPEATABLE READ transaction is held open while jobs flow at full
speed. Vacuum cannot remove the dead row versions the queue leaves behind while it is
open; nothing is lost, and pgjobs' health output (`pgjobs stats`, /metrics) flags it.
The slowdown is measured here and documented in docs/reliability.md (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from pgjobs.ops.health import LONG_TRANSACTION_S, long_transaction_warning
from tests.process.chaos.harness import assert_invariants
from tests.process.chaos.scenarios import long_transaction


def test_long_transaction_warning_threshold() -> None:
    assert long_transaction_warning(None) is None
    assert long_transaction_warning(LONG_TRANSACTION_S - 1) is None
    line = long_transaction_warning(125.4)
    assert line is not None and line.startswith("warning: a transaction has been open for 125s")


def test_idle_repeatable_read_transaction(chaos_db: str, log_dir: Path) -> None:
    report, figures = long_transaction(
        chaos_db,
        log_dir,
        baseline_s=6,
        hold_s=LONG_TRANSACTION_S + 6,
        recovery_s=8,
        workers=4,
        backlog=800,
    )
    print(report, {k: v for k, v in vars(figures).items() if k != "timeline"}, sep="\n")
    assert_invariants(report)
    assert figures.health_oldest_s >= LONG_TRANSACTION_S
    assert figures.stats_flag.startswith("warning: a transaction has been open for")
    gauge = float(figures.metrics_line.split()[-1])
    assert gauge >= LONG_TRANSACTION_S, figures.metrics_line
    # The held snapshot kept every dead version of the hold.
    assert figures.dead_tuples_peak > figures.dead_tuples_before
