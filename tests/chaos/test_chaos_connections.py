"""Scenario 2: every pgjobs connection is terminated every few seconds while jobs flow;
separately, only the LISTEN connection is killed: wake-ups recover, and jobs still
start within the poll interval."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.harness import assert_invariants
from tests.chaos.scenarios import kill_listener, terminate_connections


def test_terminating_all_pgjobs_connections(chaos_db: str, log_dir: Path) -> None:
    report = terminate_connections(
        chaos_db, log_dir, duration=10, rate=80, workers=4, concurrency=8, every=3.0
    )
    print(report)
    assert_invariants(report)
    assert report.faults["pg_terminate_backend(all pgjobs)"] >= 3, report.faults


def test_killing_only_the_listen_connection(chaos_db: str, log_dir: Path) -> None:
    figures = kill_listener(chaos_db, log_dir, probes=4, poll_ms=5000)
    print(figures)
    assert figures.listener_kills >= 4
    # Whatever happened to the notification, the poll starts the job in time.
    assert max(figures.after_kill_ms) <= figures.poll_s * 1100 + 1000, figures
    # Once the listener is back, a NOTIFY wakes the worker: far sooner than the poll.
    assert max(figures.reconnected_ms) < figures.poll_s * 1000 / 4, figures
