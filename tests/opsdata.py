"""A factory for jobs in any state, written straight to the table, for the ops tests."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg

from pgjobs.ids import uuid7


def insert_job(
    db: psycopg.Connection[Any],
    *,
    type: str = "task",
    queue: str = "default",
    status: str = "pending",
    payload: dict[str, Any] | None = None,
    attempts: int = 0,
    max_attempts: int = 3,
    created_ago: timedelta = timedelta(0),
    finished_ago: timedelta | None = None,
    last_error: str | None = None,
    duration_ms: int | None = None,
    depends_on: list[uuid.UUID] | None = None,
) -> uuid.UUID:
    """One job row; finished states get completed_at = now - finished_ago (default now),
    completed ones a job_results row, failed ones a job_failures row."""
    job_id = uuid7()
    finished = status in ("completed", "failed", "cancelled")
    ago = finished_ago if finished_ago is not None else timedelta(0)
    db.execute(
        """
        INSERT INTO jobs (id, type, queue, status, payload, attempts, max_attempts, created_at,
                          run_at, completed_at, last_error, depends_on, started_at)
        VALUES (%(id)s, %(type)s, %(queue)s, %(status)s::text, %(payload)s, %(attempts)s,
                %(max_attempts)s, now() - %(created_ago)s, now() - %(created_ago)s,
                CASE WHEN %(finished)s THEN now() - %(ago)s END, %(last_error)s,
                %(depends_on)s, CASE WHEN %(status)s::text IN ('active', 'completed', 'failed')
                                     THEN now() - %(ago)s END)
        """,
        {
            "id": job_id,
            "type": type,
            "queue": queue,
            "status": status,
            "payload": json.dumps(payload or {}),
            "attempts": attempts,
            "max_attempts": max_attempts,
            "created_ago": created_ago,
            "finished": finished,
            "ago": ago,
            "last_error": last_error,
            "depends_on": depends_on,
        },
    )
    if status == "completed":
        db.execute(
            "INSERT INTO job_results (job_id, result, duration_ms, completed_at, attempt)"
            " VALUES (%s, '{}'::jsonb, %s, now() - %s, %s)",
            (job_id, duration_ms, ago, max(attempts, 1)),
        )
    if status == "failed":
        db.execute(
            "INSERT INTO job_failures (job_id, attempt_number, error_message, error_stack,"
            " failed_at) VALUES (%s, %s, %s, 'Traceback: boom', now() - %s)",
            (job_id, max(attempts, 1), last_error or "boom", ago),
        )
    return job_id


def status_of(db: psycopg.Connection[Any], job_id: uuid.UUID) -> str | None:
    row = db.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row["status"])


def snapshot(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every job row plus the queue, schedule, rate-limit and audit tables, to assert
    that nothing changed."""
    return [
        *db.execute("SELECT * FROM jobs ORDER BY id").fetchall(),
        *db.execute("SELECT * FROM job_queues ORDER BY name").fetchall(),
        *db.execute("SELECT * FROM job_schedules ORDER BY name").fetchall(),
        *db.execute("SELECT * FROM job_rate_limits ORDER BY pattern").fetchall(),
        *audit_rows(db),
    ]


def audit_rows(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The audit trail, oldest first: actor, action, target, detail."""
    rows = db.execute("SELECT actor, action, target, detail FROM job_audit ORDER BY id")
    return list(rows.fetchall())


def when(ago: timedelta) -> datetime:
    from datetime import UTC

    return datetime.now(UTC) - ago
