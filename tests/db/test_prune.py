"""Pruning deletes finished jobs in bounded batches, each in its own short transaction,
and never waits on a row someone else holds."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgjobs.app import App
from pgjobs.engine.maintenance import tasks as maintenance
from pgjobs.engine.maintenance.tasks import Pruner, run_round
from pgjobs.ops import Ops
from pgjobs.retention import Skipped, clean_finished
from tests.db.test_schema import SPEC_AUDIT  # the spec's "Audit Logging" SQL, unchanged
from tests.roles import login_role, url_as

pytestmark = pytest.mark.anyio


async def test_pruning_deletes_in_bounded_batches_and_skips_locked_rows(
    app: App, db: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PRUNE_BATCH", 100)
    db.execute(
        "INSERT INTO jobs (type, status, payload, completed_at) "
        "SELECT 'old', 'completed', '{}', now() - interval '2 days' FROM generate_series(1, 250)"
    )
    pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
    # An operator's open transaction holds one of the old jobs.
    with psycopg.connect(db_url) as holder:
        held = holder.execute("SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE").fetchone()
        assert held is not None
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            waits = [await run_round(conn, pruner, app.clock) for _ in range(3)]
        left = [row["id"] for row in db.execute("SELECT id FROM jobs").fetchall()]
    # Two full batches of 100 (come back at once), then the last 49 (wait the interval);
    # the held job is skipped rather than waited on, and goes in a later round.
    assert waits == [0.0, 0.0, 60.0]
    assert left == [held[0]]


# ---------------------------------------------------------------- tables that reference jobs

CONSTRAINT = "job_audit_log_job_id_fkey"


def old_jobs(db: Any, count: int, type_: str) -> None:
    db.execute(
        "INSERT INTO jobs (type, status, payload, completed_at) "
        "SELECT %s, 'completed', '{}', now() - interval '2 days' FROM generate_series(1, %s)",
        (type_, count),
    )


def types_left(db: Any) -> dict[str, int]:
    rows = db.execute("SELECT type, count(*) AS n FROM jobs GROUP BY type").fetchall()
    return {row["type"]: row["n"] for row in rows}


async def test_pruning_skips_audited_jobs_and_reports_the_constraint_once(
    app: App,
    db: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(maintenance, "PRUNE_BATCH", 100)
    old_jobs(db, 130, "before-audit")
    db.execute(SPEC_AUDIT)
    old_jobs(db, 170, "audited")
    old_jobs(db, 20, "before-audit")
    db.execute(
        "DELETE FROM job_audit_log WHERE job_id IN (SELECT id FROM jobs "
        "WHERE type = 'before-audit')"
    )
    pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        waits = [await run_round(conn, pruner, app.clock) for _ in range(4)]
        # Two more passes: the blocked jobs are met again, but reported no more.
        waits += [await run_round(conn, pruner, app.clock) for _ in range(8)]
    # 320 old jobs: batches of 100, 100, 100 (come back at once), then 20 (the pass ends).
    assert waits[:4] == [0.0, 0.0, 0.0, 60.0]
    assert types_left(db) == {"audited": 170}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "pruning keeps finished jobs: table job_audit_log still references them through "
        f"foreign key {CONSTRAINT}; make it ON DELETE CASCADE or ON DELETE SET NULL to let "
        "them go (docs/operations.md)"
    ]


async def test_a_reference_behind_a_cascade_is_found_job_by_job(
    app: App, db: Any, db_url: str
) -> None:
    """A table referencing job_results: deleting the job cascades to its result, which
    that table forbids. The set-based check cannot see it; the batch falls back to one
    job at a time and keeps just that job."""
    old_jobs(db, 5, "plain")
    db.execute("INSERT INTO job_results (job_id, result) SELECT id, '{}' FROM jobs")
    db.execute("CREATE TABLE result_notes (result_id uuid REFERENCES job_results (id))")
    db.execute("INSERT INTO result_notes SELECT id FROM job_results LIMIT 1")
    pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        assert await run_round(conn, pruner, app.clock) == 60.0
    assert types_left(db) == {"plain": 1}


async def test_a_pass_over_many_blocked_jobs_stays_fast(app: App, db: Any, db_url: str) -> None:
    db.execute(SPEC_AUDIT)
    old_jobs(db, 20_000, "audited")
    pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        started = time.monotonic()
        waits = [await run_round(conn, pruner, app.clock) for _ in range(11)]
        elapsed = time.monotonic() - started
    assert waits == [0.0] * 10 + [60.0]
    assert types_left(db) == {"audited": 20_000}
    assert elapsed < 20, f"a pass over 20,000 blocked jobs took {elapsed:.1f}s"


async def test_clean_deletes_what_it_can_and_reports_what_it_skipped(app: App, db: Any) -> None:
    old_jobs(db, 7, "before-audit")
    db.execute(SPEC_AUDIT)
    old_jobs(db, 3, "audited")
    report = await clean_finished(
        app.connection,
        app.settings,
        app.clock,
        completed_older_than_ms=1000,
        batch_size=4,
        actor="test",
    )
    assert (report.completed, report.failed) == (7, 0)
    assert report.skipped == (Skipped(CONSTRAINT, "job_audit_log", 3),)
    assert report.to_dict()["skipped"] == [
        {"constraint": CONSTRAINT, "table": "job_audit_log", "jobs": 3}
    ]
    assert types_left(db) == {"audited": 3}


async def test_the_dashboards_queue_clean_skips_audited_jobs(app: App, db: Any) -> None:
    old_jobs(db, 5, "before-audit")
    db.execute(SPEC_AUDIT)
    old_jobs(db, 3, "audited")
    assert await Ops(app).clean_queue("default", batch_size=2, actor="test") == 5
    assert types_left(db) == {"audited": 3}


async def test_a_worker_role_that_cannot_read_the_referencing_table_still_prunes(
    app: App, db: Any, db_url: str
) -> None:
    """The workers' role may use pgjobs' tables without any right on an application's
    audit table; the foreign key is checked with its owner's rights all the same."""
    with login_role() as role:
        db.execute(
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
        )
        db.execute(SPEC_AUDIT)  # created after the grant: the role cannot read it
        old_jobs(db, 30, "audited")
        db.execute("DELETE FROM job_audit_log WHERE job_id IN (SELECT id FROM jobs LIMIT 10)")
        pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
        try:
            async with await psycopg.AsyncConnection.connect(url_as(db_url, role)) as conn:
                await run_round(conn, pruner, app.clock)
        finally:
            db.execute("DROP TABLE job_audit_log")  # so the role can be dropped
            db.execute(
                sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(
                    sql.Identifier(role)
                )
            )
    assert types_left(db) == {"audited": 20}
