"""`Ops`: the operator actions, executed against PostgreSQL.

One async implementation used by the CLI (through `asyncio.run`), the REST API and the
dashboard. Single-job create/get/cancel/retry go through `App`
(pgjobs.producer.statements), so their rules live in one place; bulk and read-model
statements live in queries/ops.sql. Every state change is recorded in `job_audit` with
the actor that asked for it, by pgjobs.audit (through `_audit_in`) and nowhere else:
the CLI, the REST API and the dashboard make their changes through these methods, the
file-cleanup type cleans through pgjobs.retention as `Ops.clean` does, and the modules
below (limits, schedules.store, sql_api) write no audit rows. A change and its row commit in one
transaction, so an action that fails writes none.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from pgjobs import audit, limits, sql_api
from pgjobs.app import App
from pgjobs.errors import Conflict, JobNotFound, NotFound, ValidationError
from pgjobs.limits import KeyLimit, Limits, QueueLimit
from pgjobs.models import FINISHED, Job
from pgjobs.ops.filters import JobFilter, clamp_limit, decode_cursor, encode_cursor
from pgjobs.ops.models import (
    AuditEntry,
    CleanReport,
    DatabaseHealth,
    FailureGroup,
    FinishedMinute,
    FinishedSeries,
    HistogramSeries,
    JobLink,
    JobLogLine,
    JobLogs,
    JobPage,
    JobSummary,
    MetricsSnapshot,
    QueueCounts,
    QueueState,
    QueueStats,
    RetryCandidate,
    RetryReport,
    ScheduleRun,
    StatsReport,
    ThroughputPoint,
    WorkerInfo,
)
from pgjobs.ops.search import JobSearch, parse_search
from pgjobs.producer.options import new_job_from_request, validate_queue
from pgjobs.producer.statements import (
    Statement,
    cancel_statement,
    decode_cancel,
    decode_retry,
    fetch_all_async,
    fetch_one_async,
    insert_async,
    parse_job_id,
    retry_statement,
)
from pgjobs.queries import query
from pgjobs.retention import CLEAN_BATCH, Deleted, clean_finished, delete_jobs
from pgjobs.schedules import store as schedule_store
from pgjobs.schedules.store import Schedule
from pgjobs.stats import (
    queue_stats,
    read_database_health,
    read_stats,
    read_workers,
    window_hours,
)
from pgjobs.validation import DEFAULT_LIMIT, MAX_BULK

Row = dict[str, Any]
AsyncConn = psycopg.AsyncConnection[Any]
T = TypeVar("T")

# Upper bounds of job_duration_seconds, the spec's prom-client buckets. The SQL statement
# ops_metrics_durations counts against the same bounds, in the same order.
DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
PAYLOAD_PREVIEW_CHARS = 200
# Dashboard counts: a finished status with more jobs than this in a queue is estimated
# from a sample of about SAMPLE_ROWS rows (see Ops.queue_counts).
EXACT_COUNT_LIMIT = 5000
SAMPLE_ROWS = 20_000
AUDIT_MAX_IDS = 1000
# A job's detail shows the log lines of this many attempts, its last ones: each attempt
# keeps up to 150 lines of 2,000 characters, and max_attempts has no small bound.
LOG_ATTEMPTS_SHOWN = 20
# The jobs one bulk action may list (the dashboard's selected rows).
MAX_BULK_IDS = 500
BULK_ACTIONS = {
    "retry": "ops_bulk_retry",
    "cancel": "ops_bulk_cancel",
    "delete": "ops_bulk_delete",
    "promote": "ops_bulk_promote",
}

log = logging.getLogger("pgjobs.ops")


class Ops:
    """Operator actions over one `App` (its settings, clock and connection pool)."""

    def __init__(self, app: App, *, acquire_timeout: float | None = None) -> None:
        """`acquire_timeout`: seconds to wait for a pooled connection before failing
        (the web server sets a short one so requests fail fast while PostgreSQL is down)."""
        self.app = app
        self.settings = app.settings
        self.clock = app.clock
        self.acquire_timeout = acquire_timeout

    # ------------------------------------------------------------ reading

    async def stats(
        self, *, queue: str | None = None, hours: float = 24.0, performance: bool = False
    ) -> StatsReport:
        """Counts per queue and status, the window's throughput and failure rate, health
        scores, live workers and database health; run-time percentiles on request."""
        return await read_stats(
            self._read,
            self._connection,
            self.settings,
            self.clock,
            queue=queue,
            hours=hours,
            performance=performance,
        )

    async def queues(self) -> tuple[QueueStats, ...]:
        return (await self.stats(hours=24)).queues

    async def list_jobs(
        self,
        filters: JobFilter | None = None,
        *,
        limit: Any = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> JobPage:
        """Newest first; pass `next_cursor` back to get the following page."""
        filters = filters or JobFilter()
        size = clamp_limit(limit)
        after_created, after_id = decode_cursor(cursor) if cursor else (None, None)
        params = {
            "queue": filters.queue,
            "statuses": list(filters.statuses) if filters.statuses else None,
            "type": filters.type,
            "created_after": filters.created_after,
            "created_before": filters.created_before,
            "id_prefix": filters.id_prefix,
            "after_created": after_created,
            "after_id": after_id,
            "limit": size + 1,
            "preview": PAYLOAD_PREVIEW_CHARS,
        }
        rows = await self._read(lambda conn: self._all(conn, "ops_list_jobs", params))
        jobs = tuple(JobSummary(**r) for r in rows[:size])
        more = len(rows) > size
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if more else None
        return JobPage(jobs=jobs, next_cursor=next_cursor, limit=size)

    async def get_job(self, job_id: UUID | str) -> Job:
        return await self.app.get(job_id)

    async def search_jobs(
        self, query_text: str | JobSearch, *, limit: Any = DEFAULT_LIMIT, cursor: str | None = None
    ) -> JobPage:
        """Jobs of every queue matching a search query (pgjobs.ops.search), newest first;
        pass `next_cursor` back to get the following page."""
        search = query_text if isinstance(query_text, JobSearch) else parse_search(query_text)
        if search.empty:
            raise ValidationError("the search is empty: give at least one term", field="q")
        size = clamp_limit(limit)
        after_created, after_id = decode_cursor(cursor) if cursor else (None, None)
        params = {
            **search.params(),
            "after_created": after_created,
            "after_id": after_id,
            "limit": size + 1,
            "preview": PAYLOAD_PREVIEW_CHARS,
        }
        async with self._connection() as conn, conn.transaction():
            await fetch_none(conn, Statement(query("ops_search_custom_plans"), {}))
            rows = await self._all(conn, "ops_search_jobs", params)
        jobs = tuple(JobSummary(**r) for r in rows[:size])
        more = len(rows) > size
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if more else None
        return JobPage(jobs=jobs, next_cursor=next_cursor, limit=size)

    async def job_logs(self, job_id: UUID) -> JobLogs:
        """The lines the job's handler logged (pgjobs.context), by attempt and line: those
        of its last LOG_ATTEMPTS_SHOWN attempts that logged any, with the number of
        earlier ones left out."""
        params = {"id": job_id, "attempts": LOG_ATTEMPTS_SHOWN}
        async with self._connection() as conn:
            rows = await self._all(conn, "ops_job_logs", params)
        omitted = int(rows[0]["attempts_omitted"]) if rows else 0
        lines = tuple(
            JobLogLine(**{k: v for k, v in r.items() if k != "attempts_omitted"}) for r in rows
        )
        return JobLogs(lines=lines, attempts_omitted=omitted)

    async def workers(self) -> tuple[WorkerInfo, ...]:
        return await self._read(self._workers)

    async def database_health(self) -> DatabaseHealth:
        async with self._connection() as conn:
            return await self._database(conn)

    async def ping(self) -> None:
        """Raise if PostgreSQL cannot answer a trivial query."""
        async with self._connection() as conn:
            await self._all(conn, "ops_database_ping", {})

    async def throughput(
        self, *, queue: str | None = None, hours: float = 24.0, buckets: int = 24
    ) -> tuple[ThroughputPoint, ...]:
        """Completed and failed jobs per time bucket over the last `hours` (for charts)."""
        if queue is not None:
            validate_queue(queue)
        hours = window_hours(hours)
        if not 1 <= buckets <= 1000:
            raise ValidationError("buckets must be between 1 and 1000", field="buckets")
        window_s = hours * 3600
        params = {
            "queue": queue,
            "now": self.clock.sql_now(),
            "window_s": window_s,
            "width_s": window_s / buckets,
            "buckets": buckets,
        }

        async def series(conn: AsyncConn) -> tuple[Row | None, list[Row]]:
            start = await self._one(conn, "ops_window_start", params)
            return start, await self._all(conn, "ops_throughput_series", params)

        start_row, series_rows = await self._read(series)
        rows = {r["bucket"]: r for r in series_rows}
        assert start_row is not None
        start: datetime = start_row["start"]
        width = timedelta(seconds=window_s / buckets)
        return tuple(
            ThroughputPoint(
                start=start + width * i,
                completed=int(rows[i]["completed"]) if i in rows else 0,
                failed=int(rows[i]["failed"]) if i in rows else 0,
            )
            for i in range(buckets)
        )

    async def failure_groups(
        self, *, queue: str | None = None, hours: float = 24.0, limit: int = 50
    ) -> tuple[FailureGroup, ...]:
        if queue is not None:
            validate_queue(queue)
        params = {
            "queue": queue,
            "now": self.clock.sql_now(),
            "window_s": window_hours(hours) * 3600,
            "limit": clamp_limit(limit),
        }
        rows = await self._read(lambda conn: self._all(conn, "ops_failure_groups", params))
        return tuple(
            FailureGroup(**{**r, "sample_ids": tuple(r["sample_ids"] or ())}) for r in rows
        )

    async def audit_log(self, limit: int = 100) -> tuple[AuditEntry, ...]:
        params = {"limit": clamp_limit(limit)}
        rows = await self._read(lambda conn: self._all(conn, "ops_recent_audit", params))
        return tuple(AuditEntry(**r) for r in rows)

    async def metrics_snapshot(self) -> MetricsSnapshot:
        params = {"queue": None, "now": self.clock.sql_now(), "window_s": 3600.0}

        async def model(conn: AsyncConn) -> tuple[Any, ...]:
            return (
                await self._all(conn, "ops_metrics_processed", {}),
                await self._all(conn, "ops_metrics_durations", {}),
                await self._all(conn, "ops_queue_counts", params),
                await self._all(conn, "ops_oldest_pending", params),
                await self._workers(conn),
            )

        processed, durations, counts, oldest, workers = await self._read(model)
        # Dead tuples and open transactions are the primary's own (not replicated).
        database = await self.database_health()
        return MetricsSnapshot(
            processed=tuple((r["queue"], r["type"], r["status"], int(r["n"])) for r in processed),
            durations=tuple(_histogram(r) for r in durations),
            queues=tuple(queue_stats(r, None, None, 1.0) for r in counts),
            workers=sum(1 for w in workers if w.alive),
            oldest_pending_s={r["queue"]: float(r["age_s"]) for r in oldest},
            database=database,
        )

    # ------------------------------------------------------------ jobs

    async def create_job(self, body: Mapping[str, Any]) -> Job | UUID:
        """Create one job from an API-shaped body {"type", "queue", "payload", "options"}."""
        # Validated here, not by create_many: its errors name the job's index in a batch
        # ("job 0: ..."), which means nothing to a request that sent one job.
        job = new_job_from_request(self.settings, body)
        (job_id,) = await self.app.create_many([job])
        return await self.read_back(job_id)

    async def read_back(self, job_id: UUID) -> Job | UUID:
        """The job just created, or only its id when reading it fails: it is committed,
        so the caller must still hear that it was created (an error would be retried,
        creating it twice)."""
        try:
            return await self.app.get(job_id)
        except Exception as exc:
            log.warning("job %s created, but reading it back failed (%s)", job_id, exc)
            return job_id

    async def create_jobs(self, bodies: Sequence[Any]) -> list[UUID]:
        """Create many API-shaped jobs in one transaction (all or none)."""
        if not 1 <= len(bodies) <= MAX_BULK:
            raise ValidationError(f"jobs must hold 1 to {MAX_BULK} jobs", field="jobs")
        return await self.app.create_many(bodies)

    # The change and its audit row commit together: an audit written afterwards could
    # fail after the change committed, and the request would be answered with an error
    # for something that happened.

    async def retry_job(self, job_id: UUID | str, *, actor: str) -> Job:
        jid = parse_job_id(job_id)
        async with self._connection() as conn, conn.transaction():
            row = await fetch_one_async(conn, retry_statement(jid, self.clock))
            job = decode_retry(jid, row)
            await self._audit_in(conn, actor, "retry", str(job.id), {"jobs": [str(job.id)]})
        if job.status != "blocked":
            return job
        # A job with dependencies was settled against them after the row was returned.
        fresh = await self.read_back(jid)
        return fresh if isinstance(fresh, Job) else job

    async def cancel_job(self, job_id: UUID | str, *, actor: str) -> Job:
        jid = parse_job_id(job_id)
        async with self._connection() as conn, conn.transaction():
            job = decode_cancel(jid, await fetch_one_async(conn, cancel_statement(jid, self.clock)))
            await self._audit_in(conn, actor, "cancel", str(job.id), {"status": job.status})
        return job

    async def delete_job(self, job_id: UUID | str, *, actor: str) -> None:
        jid = parse_job_id(job_id)
        async with self._connection() as conn, conn.transaction():
            try:
                async with conn.transaction():
                    row = await self._one(conn, "ops_delete_job", {"id": jid})
            except psycopg.errors.ForeignKeyViolation as exc:
                # A table of the application's own still points at it (no ON DELETE
                # CASCADE / SET NULL): keep the job, say which reference keeps it.
                raise Conflict(
                    f"job {jid} is still referenced by {exc.diag.table_name} "
                    f"(foreign key {exc.diag.constraint_name})"
                ) from None
            if row is None:
                raise JobNotFound(f"no job with id {jid}")
            if row["id"] is None:
                if row["previous_status"] == "active":
                    raise Conflict(f"job {jid} is running; cancel it before deleting it")
                raise Conflict(
                    f"job {jid} has {row['blocked_children']} blocked job(s) waiting on it"
                )
            detail = {"status": row["previous_status"]}
            await self._audit_in(conn, actor, "delete", str(jid), detail)

    async def retry(
        self,
        *,
        queue: str | None = None,
        type: str | None = None,
        ids: Sequence[UUID | str] | None = None,
        error_line: str | None = None,
        limit: int = 10,
        show: bool = False,
        actor: str,
    ) -> RetryReport:
        """Retry up to `limit` failed jobs (most recent failure first), or with `show`
        only list the ones that would be retried."""
        filters = JobFilter.build(queue=queue, type=type)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BULK:
            raise ValidationError(f"limit must be between 1 and {MAX_BULK}", field="limit")
        params = {
            "queue": filters.queue,
            "type": filters.type,
            "ids": [parse_job_id(i) for i in ids] if ids else None,
            "error_line": error_line,
            "limit": limit,
            "now": self.clock.sql_now(),
        }
        if show:
            async with self._connection() as conn:
                rows = await self._all(conn, "ops_retryable_jobs", params)
            return RetryReport(tuple(RetryCandidate(**r) for r in rows), retried=False)
        async with self._connection() as conn, conn.transaction():
            rows = await self._all(conn, "ops_retry_failed", params)
            if rows:
                detail = {"jobs": [str(r["id"]) for r in rows], "queue": queue, "type": type}
                await self._audit_in(conn, actor, "retry", queue or type, detail)
        return RetryReport(tuple(RetryCandidate(**r) for r in rows), retried=True)

    async def promote(
        self,
        *,
        queue: str | None = None,
        ids: Sequence[UUID | str] | None = None,
        limit: int = MAX_BULK,
        actor: str,
    ) -> list[UUID]:
        """Run delayed jobs now; returns the ids promoted."""
        params = {
            "queue": validate_queue(queue) if queue else None,
            "ids": [parse_job_id(i) for i in ids] if ids else None,
            "limit": max(1, min(MAX_BULK, limit)),
            "now": self.clock.sql_now(),
        }
        async with self._connection() as conn, conn.transaction():
            rows = await self._all(conn, "ops_promote_delayed", params)
            promoted = [r["id"] for r in rows]
            if promoted:
                detail = {"jobs": [str(i) for i in promoted]}
                await self._audit_in(conn, actor, "promote", queue, detail)
        return promoted

    async def bulk(self, action: str, ids: Sequence[UUID | str], *, actor: str) -> BulkReport:
        """Retry, cancel, delete or promote (run now) the listed jobs, each as the one-job
        action would; the ones whose state does not allow it are skipped and reported.
        One transaction and one audit row (the ids changed, the counts skipped)."""
        statement = BULK_ACTIONS.get(action)
        if statement is None:
            names = ", ".join(BULK_ACTIONS)
            raise ValidationError(
                f"unknown bulk action {action[:40]!r}: use {names}", field="action"
            )
        if not 1 <= len(ids) <= MAX_BULK_IDS:
            raise ValidationError(f"a bulk action takes 1 to {MAX_BULK_IDS} job ids", field="ids")
        wanted = list(dict.fromkeys(parse_job_id(i) for i in ids))
        params = {"ids": wanted, "now": self.clock.sql_now()}
        async with self._connection() as conn, conn.transaction():
            rows = await self._all(conn, statement, params)
            kept: dict[UUID, str] = {}
            if action == "delete":
                rows, kept = await _delete_listed(conn, rows)
            report = _bulk_report(action, wanted, rows, kept)
            if report.applied:
                detail: dict[str, Any] = {
                    "jobs": [str(i) for i in report.applied],
                    "skipped": dict(report.skipped),
                }
                if report.referenced_by:
                    detail["referenced_by"] = dict(report.referenced_by)
                await self._audit_in(conn, actor, action, None, detail)
        return report

    async def clean(
        self,
        *,
        completed_older_than_ms: int | None = None,
        failed_older_than_ms: int | None = None,
        dry_run: bool = False,
        batch_size: int = CLEAN_BATCH,
        actor: str,
    ) -> CleanReport:
        """Delete completed jobs older than one age and failed/cancelled jobs older than
        another, in batches of `batch_size`. With neither age given, the JOBS_CLEAN_*
        settings apply."""
        return await clean_finished(
            self._connection,
            self.settings,
            self.clock,
            completed_older_than_ms=completed_older_than_ms,
            failed_older_than_ms=failed_older_than_ms,
            dry_run=dry_run,
            batch_size=batch_size,
            actor=actor,
        )

    # ------------------------------------------------------------ queues

    async def pause(self, queue: str, *, actor: str) -> QueueState:
        """Stop workers from claiming jobs of `queue` (running jobs finish)."""
        return await self._set_paused(queue, True, actor)

    async def resume(self, queue: str, *, actor: str) -> QueueState:
        return await self._set_paused(queue, False, actor)

    async def _set_paused(self, queue: str, paused: bool, actor: str) -> QueueState:
        name = validate_queue(queue)
        params = {"queue": name, "paused": paused, "now": self.clock.sql_now()}
        async with self._connection() as conn, conn.transaction():
            row = await self._one(conn, "ops_set_queue_paused", params)
            if row is None:
                raise NotFound(f"no queue named {name!r}")
            await self._audit_in(conn, actor, "pause" if paused else "resume", name, {})
        return QueueState(**row)

    # ------------------------------------------------------------ rate limits
    # The limits and their rules live in pgjobs.limits; here each change is recorded.

    async def limits(self) -> Limits:
        async with self._connection() as conn:
            return await limits.list_limits(conn)

    async def set_queue_limit(
        self, queue: str, max_jobs: Any, duration_ms: Any, *, actor: str
    ) -> QueueLimit:
        """Limit `queue` to `max_jobs` starts per `duration_ms` (the queue may be new)."""
        async with self._connection() as conn, conn.transaction():
            result = await limits.set_queue_limit(conn, queue, max_jobs, duration_ms)
            assert result.limit is not None
            await self._audit_in(conn, actor, "rate_limit", result.queue, result.limit.to_dict())
        return result

    async def clear_queue_limit(self, queue: str, *, actor: str) -> QueueLimit:
        async with self._connection() as conn, conn.transaction():
            result = await limits.clear_queue_limit(conn, queue)
            await self._audit_in(conn, actor, "rate_limit_clear", result.queue, {})
        return result

    async def set_key_limit(
        self, pattern: str, max_jobs: Any, duration_ms: Any, *, actor: str
    ) -> KeyLimit:
        """Limit every rate-limit key matching `pattern`, each key on its own."""
        async with self._connection() as conn, conn.transaction():
            result = await limits.set_key_limit(conn, pattern, max_jobs, duration_ms)
            detail = result.limit.to_dict()
            await self._audit_in(conn, actor, "key_rate_limit", result.pattern, detail)
        return result

    async def clear_key_limit(self, pattern: str, *, actor: str) -> KeyLimit:
        async with self._connection() as conn, conn.transaction():
            result = await limits.clear_key_limit(conn, pattern)
            await self._audit_in(conn, actor, "key_rate_limit_clear", result.pattern, {})
        return result

    # ------------------------------------------------------------ SQL API allowlist

    async def set_producer_types(
        self, types: Sequence[str] | None, *, actor: str
    ) -> list[str] | None:
        """Replace the job types the SQL API may create (None = the default rule)."""
        async with self._connection() as conn, conn.transaction():
            chosen = await sql_api.set_producer_types(conn, types)
            await self._audit_in(conn, actor, "producer-types", None, {"types": chosen})
        return chosen

    # ------------------------------------------------------------ schedules
    # Definitions and their rules live in pgjobs.schedules.store; these wrappers give
    # the surfaces one entry point and record edits in the audit trail.

    async def schedules(self) -> list[Schedule]:
        return await self._read(schedule_store.list_schedules)

    async def schedule(self, name: str, *, upcoming: int = 5) -> Schedule:
        async with self._connection() as conn:
            return await schedule_store.get_schedule(conn, name, upcoming=upcoming)

    async def create_schedule(
        self, fields: Mapping[str, Any], *, replace: bool = False, actor: str
    ) -> Schedule:
        """Store a new schedule; with `replace`, redefine the one of that name if it
        exists (recorded as an update of every given field)."""
        async with self._connection() as conn, conn.transaction():
            try:
                created = await schedule_store.create_schedule(
                    conn, self.settings, self.clock, fields
                )
            except Conflict:
                if not replace:
                    raise
            else:
                await self._audit_in(conn, actor, "schedule.create", created.name, {})
                return created
            return await self._update_schedule_in(conn, str(fields["name"]), fields, actor)

    async def update_schedule(
        self, name: str, changes: Mapping[str, Any], *, actor: str
    ) -> Schedule:
        """Change fields of schedule `name`; {"enabled": false} pauses it, true resumes."""
        async with self._connection() as conn, conn.transaction():
            return await self._update_schedule_in(conn, name, changes, actor)

    async def _update_schedule_in(
        self, conn: AsyncConn, name: str, changes: Mapping[str, Any], actor: str
    ) -> Schedule:
        updated = await schedule_store.update_schedule(
            conn, self.settings, self.clock, name, changes
        )
        detail = {"fields": sorted(changes)}
        await self._audit_in(conn, actor, "schedule.update", updated.name, detail)
        return updated

    async def run_schedule_now(self, name: str, *, actor: str) -> Job:
        """Enqueue the job schedule `name` fires, now, once. Not a fire: the schedule's
        next_run_at and last_run_at stay as they are, so its next slot still fires, and
        a disabled schedule can be run too. The job's metadata names the schedule and
        marks the run manual."""
        async with self._connection() as conn, conn.transaction():
            schedule = await schedule_store.get_schedule(conn, name)
            metadata = {"schedule": schedule.name, "manual": True}
            new = schedule_store.job_for_fire(self.settings, schedule, schedule.payload, metadata)
            (job,) = await insert_async(conn, [new], self.clock)
            detail = {"jobs": [str(job.id)], "queue": job.queue, "type": job.type}
            await self._audit_in(conn, actor, "schedule.run", schedule.name, detail)
        return job

    async def delete_schedule(self, name: str, *, actor: str) -> Schedule:
        async with self._connection() as conn, conn.transaction():
            deleted = await schedule_store.delete_schedule(conn, name)
            await self._audit_in(conn, actor, "schedule.delete", deleted.name, {})
        return deleted

    # ------------------------------------------------------------ dashboard
    # Read models sized for the dashboard's overview, which refreshes every few seconds
    # on tables of millions of jobs (statements in queries/dashboard.sql).

    async def queue_counts(
        self, *, exact_limit: int = EXACT_COUNT_LIMIT, sample_rows: int = SAMPLE_ROWS
    ) -> tuple[QueueCounts, ...]:
        """Jobs per queue and status without reading every finished job: live statuses
        exactly, finished ones exactly up to `exact_limit` and estimated from a sample
        of about `sample_rows` rows above it."""

        async def model(conn: AsyncConn) -> tuple[list[Row], list[Row], dict[Any, int], bool]:
            rows = await self._all(conn, "dashboard_queue_status_counts", {"cap": exact_limit})
            known = await self._all(conn, "dashboard_known_queues", {})
            estimates: dict[tuple[str, str], int] = {}
            exact_sample = False
            if any(r["status"] in FINISHED and r["n"] > exact_limit for r in rows):
                size = await self._one(conn, "dashboard_jobs_reltuples", {})
                percent = sample_percent(size["reltuples"] if size else -1.0, sample_rows)
                exact_sample = percent >= 100
                sample = await self._all(conn, "dashboard_finished_sample", {"percent": percent})
                estimates = {
                    (r["queue"], r["status"]): round(int(r["n"]) * 100 / percent) for r in sample
                }
            return rows, known, estimates, exact_sample

        rows, known, estimates, exact_sample = await self._read(model)
        paused = {r["name"]: bool(r["paused"]) for r in known}
        counts: dict[str, dict[str, int]] = {name: {} for name in paused}
        estimated: dict[str, set[str]] = {}
        for r in rows:
            n = int(r["n"])
            if r["status"] in FINISHED and n > exact_limit:
                n = estimates.get((r["queue"], r["status"]), 0)
                if not exact_sample:
                    n = max(n, exact_limit + 1)
                    estimated.setdefault(r["queue"], set()).add(r["status"])
            counts.setdefault(r["queue"], {})[r["status"]] = n
        return tuple(
            _queue_counts(name, counts[name], paused.get(name, False), estimated.get(name))
            for name in sorted(counts)
        )

    async def finished_minutes(
        self, *, since: datetime | None = None, window_minutes: int = 24 * 60
    ) -> FinishedSeries:
        """Completed and failed jobs per queue and minute, from `since` (at most
        `window_minutes` back, the current minute included) up to now."""

        async def model(conn: AsyncConn) -> FinishedSeries:
            row = await self._one(conn, "dashboard_now", {"now": self.clock.sql_now()})
            assert row is not None
            now: datetime = row["now"]
            start = minute_floor(now) - timedelta(minutes=window_minutes - 1)
            first = start if since is None or since < start else since
            params = {"since": first, "until": now}
            async with conn.transaction():
                await fetch_none(conn, Statement(query("dashboard_serial_scan"), {}))
                rows = await self._all(conn, "dashboard_finished_minutes", params)
            minutes = tuple(FinishedMinute(**r) for r in rows)
            return FinishedSeries(now=now, since=first, minutes=minutes)

        return await self._read(model)

    async def job_links(
        self, job: Job, *, limit: int = 50
    ) -> tuple[tuple[JobLink, ...], tuple[JobLink, ...]]:
        """(the jobs `job` depends on, up to `limit` jobs that depend on it)."""
        params = {"id": job.id, "parents": list(job.depends_on or []), "limit": limit}
        async with self._connection() as conn:
            rows = await self._all(conn, "dashboard_job_links", params)
        links: dict[str, list[JobLink]] = {"parent": [], "child": []}
        for r in rows:
            links[r["relation"]].append(_job_link(r))
        return tuple(links["parent"]), tuple(links["child"])

    async def worker_jobs(
        self, workers: Sequence[UUID], *, limit: int = 1000
    ) -> dict[UUID, tuple[JobLink, ...]]:
        """The jobs each of `workers` is running now."""
        params = {"workers": list(workers), "limit": limit}
        rows = await self._read(lambda conn: self._all(conn, "dashboard_worker_jobs", params))
        running: dict[UUID, list[JobLink]] = {}
        for r in rows:
            running.setdefault(r["worker_id"], []).append(_job_link(r))
        return {worker: tuple(jobs) for worker, jobs in running.items()}

    async def schedule_last_runs(self, ids: Sequence[UUID]) -> dict[UUID, ScheduleRun]:
        """The latest fire of each schedule in `ids` that has fired, with its job."""
        params = {"ids": list(ids)}
        rows = await self._read(
            lambda conn: self._all(conn, "dashboard_schedule_last_runs", params)
        )
        return {
            r["schedule_id"]: ScheduleRun(
                schedule_id=r["schedule_id"],
                fire_time=r["fire_time"],
                job=_job_link({**r, "id": r["job_id"]}) if r["status"] is not None else None,
            )
            for r in rows
        }

    async def clean_queue(self, queue: str, *, batch_size: int | None = None, actor: str) -> int:
        """Delete every completed job of `queue` in batches of `batch_size` (default
        CLEAN_BATCH); returns how many. Each batch commits on its own with its own
        audit row, so a later batch that fails leaves no deletion unrecorded."""
        batch = max(1, batch_size or CLEAN_BATCH)
        params: dict[str, Any] = {
            "queue": validate_queue(queue),
            "batch": batch,
            "after_id": None,
        }
        total = 0
        async with self._connection() as conn:
            while True:
                async with conn.transaction():
                    rows = await self._all(conn, "dashboard_clean_queue_batch", params)
                    done = await delete_jobs(conn, [r["id"] for r in rows])
                    if done.jobs:
                        detail = _clean_detail(queue, done)
                        await self._audit_in(conn, actor, "clean", queue, detail)
                total += len(done.jobs)
                if len(rows) < batch:
                    break
                params["after_id"] = rows[-1]["id"]
        return total

    # ------------------------------------------------------------ internals

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConn]:
        pool = await self.app.pool()
        async with pool.connection(timeout=self.acquire_timeout) as conn:
            yield conn

    async def _read(self, read: Callable[[AsyncConn], Awaitable[T]]) -> T:
        """A read of the read models: on the read replica when one is configured and
        keeps up (pgjobs.replica), else on the primary. Reads that must see a change
        just made (a job's detail, a schedule, the outcome of an action) use
        `_connection` instead."""
        return await self.app.read(read, primary=self._connection)

    def _now(self) -> datetime:
        return self.clock.now()

    async def _workers(self, conn: AsyncConn) -> tuple[WorkerInfo, ...]:
        return await read_workers(conn, self.settings, self.clock)

    async def _database(self, conn: AsyncConn) -> DatabaseHealth:
        return await read_database_health(conn)

    async def _audit_in(
        self, conn: AsyncConn, actor: str, action: str, target: str | None, detail: Any
    ) -> None:
        await audit.record_in(conn, self.clock, actor, action, target, detail)

    @staticmethod
    async def _all(conn: AsyncConn, name: str, params: dict[str, Any]) -> list[Row]:
        return await fetch_all_async(conn, Statement(query(name), params))

    @staticmethod
    async def _one(conn: AsyncConn, name: str, params: dict[str, Any]) -> Row | None:
        return await fetch_one_async(conn, Statement(query(name), params))


async def fetch_none(conn: AsyncConn, statement: Statement) -> None:
    async with conn.cursor() as cur:
        await cur.execute(statement.sql, statement.params)


@dataclass(frozen=True, slots=True)
class BulkReport:
    """What a bulk action did: the jobs changed, and the ones skipped counted by why
    (the status that did not allow it, "missing", "waited_on" for a job that blocked
    jobs depend on, or "referenced" for a job a table of the user's own still points at
    with a foreign key that forbids deleting it; `referenced_by` counts those per
    constraint)."""

    action: str
    applied: tuple[UUID, ...]
    skipped: tuple[tuple[str, int], ...]
    results: tuple[tuple[UUID, str], ...]  # every listed id: "done" or why it was skipped
    referenced_by: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "applied": [str(i) for i in self.applied],
            "skipped": dict(self.skipped),
            "referenced_by": dict(self.referenced_by),
            "results": [{"id": str(i), "result": r} for i, r in self.results],
        }


async def _delete_listed(conn: AsyncConn, rows: list[Row]) -> tuple[list[Row], dict[UUID, str]]:
    """Delete the locked jobs ops_bulk_delete found deletable, through retention's
    delete_jobs: a job still referenced by another table is kept (with the constraint
    that keeps it) instead of its ForeignKeyViolation undoing the whole action."""
    done = await delete_jobs(conn, [r["id"] for r in rows if r["deletable"]])
    deleted = {job_id for job_id, _ in done.jobs}
    return [{**r, "applied": r["id"] in deleted} for r in rows], done.kept


def _bulk_report(
    action: str, wanted: list[UUID], rows: list[Row], kept: Mapping[UUID, str]
) -> BulkReport:
    by_id = {r["id"]: r for r in rows}
    results: list[tuple[UUID, str]] = []
    for job_id in wanted:
        row = by_id.get(job_id)
        if row is None:
            results.append((job_id, "missing"))
        elif row["applied"]:
            results.append((job_id, "done"))
        elif job_id in kept:
            results.append((job_id, "referenced"))
        elif row.get("waited_on") and row["previous_status"] != "active":
            results.append((job_id, "waited_on"))
        else:
            results.append((job_id, str(row["previous_status"])))
    skipped: dict[str, int] = {}
    for _, result in results:
        if result != "done":
            skipped[result] = skipped.get(result, 0) + 1
    referenced_by: dict[str, int] = {}
    for constraint in kept.values():
        referenced_by[constraint] = referenced_by.get(constraint, 0) + 1
    return BulkReport(
        action=action,
        applied=tuple(i for i, r in results if r == "done"),
        skipped=tuple(sorted(skipped.items())),
        results=tuple(results),
        referenced_by=tuple(sorted(referenced_by.items())),
    )


def _clean_detail(queue: str, done: Deleted) -> dict[str, Any]:
    """The audit row of one batch of the dashboard's clean: the jobs it deleted, and the
    ones a table of the user's own kept (see pgjobs.retention)."""
    deleted = [str(job_id) for job_id, _ in done.jobs]
    detail: dict[str, Any] = {
        "queue": queue,
        "status": "completed",
        "count": len(deleted),
        "jobs": deleted[:AUDIT_MAX_IDS],
        "jobs_truncated": len(deleted) > AUDIT_MAX_IDS,
    }
    if done.skipped:
        detail["skipped"] = [s.to_dict() for s in done.skipped_list()]
    return detail


def _histogram(row: Row) -> HistogramSeries:
    cumulative = tuple(zip(DURATION_BUCKETS_S, (int(n) for n in row["buckets"]), strict=True))
    return HistogramSeries(
        queue=row["queue"],
        type=row["type"],
        count=int(row["count"]),
        sum_s=float(row["sum_ms"]) / 1000,
        buckets=cumulative,
    )


def sample_percent(reltuples: float, sample_rows: int) -> float:
    """The share of the jobs table's pages (in percent) that holds about `sample_rows`
    rows; the whole table while its size is unknown (never analysed)."""
    if reltuples <= 0:
        return 100.0
    return min(100.0, max(0.01, 100.0 * sample_rows / reltuples))


def minute_floor(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _queue_counts(
    name: str, counts: Mapping[str, int], is_paused: bool, estimated: set[str] | None
) -> QueueCounts:
    pending = counts.get("pending", 0)
    return QueueCounts(
        name=name,
        is_paused=is_paused,
        waiting=0 if is_paused else pending,
        active=counts.get("active", 0),
        delayed=counts.get("delayed", 0),
        paused=pending if is_paused else 0,
        blocked=counts.get("blocked", 0),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        cancelled=counts.get("cancelled", 0),
        estimated=frozenset(estimated or ()),
    )


def _job_link(row: Row) -> JobLink:
    return JobLink(
        id=row["id"],
        type=row["type"],
        queue=row["queue"],
        status=row["status"],
        completed_at=row["completed_at"],
    )
