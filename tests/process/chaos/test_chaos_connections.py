"""Scenario 2: every pgjobs connection is terminated every few seconds while jobs flow;
separately, only the LISTEN connection is killed: wake-ups recover, and jobs still
start within the poll interval."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from pgjobs.db import connect_kwargs
from tests.helpers import wait_until
from tests.process.chaos.harness import Fleet, Ledger, assert_invariants, connect
from tests.process.chaos.scenarios import kill_listener, terminate_connections


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


def test_a_claim_whose_answer_was_lost_is_given_back(chaos_db: str, log_dir: Path) -> None:
    """A claim can commit while its answer never reaches the worker (the connection dies
    between the two). The job is then active, owned by a worker that is alive and keeps
    heartbeating, so the rescuer never takes it back; the worker itself must notice that
    it holds a job it is not running, and give it back."""
    fleet = Fleet(chaos_db, 1, concurrency=2, log_dir=log_dir).start()
    ledger = Ledger(chaos_db)
    try:
        with connect(chaos_db) as db:
            wait_until(lambda: db.execute("SELECT id FROM job_workers").fetchone(), timeout=30)
            [worker] = db.execute("SELECT id FROM job_workers").fetchall()
            [job] = ledger.enqueue(
                1, attempts=3, payload=lambda: ({"ms": 1}, "in_tx"), delay=60_000
            )
            # What the lost claim left behind: the job active under the live worker.
            db.execute(
                "UPDATE jobs SET status = 'active', attempts = attempts + 1, worker_id = %s, "
                "started_at = now() - interval '10 seconds' WHERE id = %s",
                (worker["id"], job),
            )
            assert ledger.wait_finished(30), ledger.counts()
            row = db.execute(
                "SELECT status, attempts, max_attempts, stalled_count FROM jobs WHERE id = %s",
                (job,),
            ).fetchone()
        # Given back without using up an attempt (the limit grows, the token moves on),
        # then run once.
        assert row == {"status": "completed", "attempts": 2, "max_attempts": 4, "stalled_count": 0}
    finally:
        fleet.stop()
        ledger.close()


def test_pgjobs_sessions_are_named_by_role_and_bounded(chaos_db: str, log_dir: Path) -> None:
    """The scenarios find pgjobs' connections by application_name
    `pgjobs:<role>:<owner>`; each session bounds its statements and idle transactions."""
    fleet = Fleet(chaos_db, 1, concurrency=2, log_dir=log_dir).start()
    try:
        with connect(chaos_db) as db:

            def names() -> list[str]:
                return [
                    r["application_name"]
                    for r in db.execute(
                        "SELECT application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name LIKE 'pgjobs:%'"
                    )
                ]

            wait_until(
                lambda: {n.split(":")[1] for n in names()} >= {"claim", "listen"}, timeout=30
            )
            assert all(re.fullmatch(r"pgjobs:(claim|listen|maint|api):\S+", n) for n in names())
    finally:
        fleet.stop()
    for role in ("claim", "listen", "maint", "api"):
        with psycopg.connect(chaos_db, autocommit=True, **connect_kwargs(role)) as conn:
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("statement_timeout", "idle_in_transaction_session_timeout")
            }
            assert settings == {
                "statement_timeout": "1min",
                "idle_in_transaction_session_timeout": "1min",
            }, role
