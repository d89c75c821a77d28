"""What the operator actions return: plain frozen data with a JSON-ready `to_dict()`.

The CLI formats these as tables, the API serialises `to_dict()`, and the dashboard
renders them; none of them reads SQL rows directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pgjobs.ops.health import health_score


def jsonable(value: Any) -> Any:
    """`value` with ids and times as strings, dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


class Jsonable:
    def to_dict(self) -> dict[str, Any]:
        out = jsonable(self)
        assert isinstance(out, dict)
        return out


@dataclass(frozen=True, slots=True)
class WindowStats(Jsonable):
    """Jobs that finished inside the stats window."""

    hours: float
    completed: int
    failed: int

    @property
    def processed(self) -> int:
        return self.completed + self.failed

    @property
    def throughput_per_min(self) -> float:
        return self.processed / (self.hours * 60) if self.hours > 0 else 0.0

    @property
    def failure_rate(self) -> float:
        """Share of finished jobs that failed for good, 0..1."""
        return self.failed / self.processed if self.processed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "hours": self.hours,
            "completed": self.completed,
            "failed": self.failed,
            "processed": self.processed,
            "throughput_per_min": round(self.throughput_per_min, 4),
            "failure_rate": round(self.failure_rate, 4),
        }


@dataclass(frozen=True, slots=True)
class QueueStats(Jsonable):
    name: str
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int
    paused: int
    blocked: int
    cancelled: int
    is_paused: bool
    paused_at: datetime | None
    rate_limit_max: int | None
    rate_limit_duration_ms: int | None
    health_score: int
    oldest_waiting_s: float | None
    window: WindowStats

    @property
    def total(self) -> int:
        return (
            self.waiting
            + self.active
            + self.completed
            + self.failed
            + self.delayed
            + self.paused
            + self.blocked
            + self.cancelled
        )

    def to_dict(self) -> dict[str, Any]:
        out = jsonable(self)
        out["total"] = self.total
        out["window"] = self.window.to_dict()
        return dict(out)


@dataclass(frozen=True, slots=True)
class DurationStats(Jsonable):
    """Run durations of completed runs in the window; type None = the whole queue."""

    queue: str
    type: str | None
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class DatabaseHealth(Jsonable):
    dead_tuples: int
    live_tuples: int
    jobs_total_bytes: int
    oldest_transaction_s: float | None
    last_autovacuum: datetime | None
    last_vacuum: datetime | None


@dataclass(frozen=True, slots=True)
class StatsReport(Jsonable):
    generated_at: datetime
    window_hours: float
    queues: tuple[QueueStats, ...]
    workers: int
    database: DatabaseHealth
    performance: tuple[DurationStats, ...] | None = None

    def totals(self) -> dict[str, int]:
        keys = ("waiting", "active", "completed", "failed", "delayed", "paused", "blocked")
        out = {k: sum(int(getattr(q, k)) for q in self.queues) for k in keys}
        out["cancelled"] = sum(q.cancelled for q in self.queues)
        return out

    def to_dict(self) -> dict[str, Any]:
        window = WindowStats(
            self.window_hours,
            sum(q.window.completed for q in self.queues),
            sum(q.window.failed for q in self.queues),
        )
        return {
            "generated_at": self.generated_at.isoformat(),
            "window_hours": self.window_hours,
            "queues": [q.to_dict() for q in self.queues],
            "totals": {**self.totals(), "window": window.to_dict()},
            "workers": self.workers,
            "database": self.database.to_dict(),
            "performance": (
                None if self.performance is None else [p.to_dict() for p in self.performance]
            ),
        }


@dataclass(frozen=True, slots=True)
class JobSummary(Jsonable):
    """A job as listed: no full payload (see payload_preview / payload_bytes)."""

    id: UUID
    type: str
    queue: str
    status: str
    priority: int
    progress: int
    progress_message: str | None
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    run_at: datetime
    last_error: str | None
    worker_id: UUID | None
    payload_preview: str
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class JobPage(Jsonable):
    jobs: tuple[JobSummary, ...]
    next_cursor: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class RetryCandidate(Jsonable):
    id: UUID
    type: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    failed_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RetryReport(Jsonable):
    jobs: tuple[RetryCandidate, ...]
    retried: bool

    @property
    def count(self) -> int:
        return len(self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retried": self.retried,
            "count": self.count,
            "jobs": [j.to_dict() for j in self.jobs],
        }


@dataclass(frozen=True, slots=True)
class CleanReport(Jsonable):
    completed: int
    failed: int
    dry_run: bool
    batches: int
    completed_older_than_ms: int | None
    failed_older_than_ms: int | None

    @property
    def total(self) -> int:
        return self.completed + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**jsonable(self), "total": self.total}


@dataclass(frozen=True, slots=True)
class QueueState(Jsonable):
    name: str
    paused: bool
    paused_at: datetime | None


@dataclass(frozen=True, slots=True)
class WorkerInfo(Jsonable):
    id: UUID
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    processed: int
    version: str
    stopping: bool
    alive: bool
    last_heartbeat_at: datetime
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ThroughputPoint(Jsonable):
    start: datetime
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class FailureGroup(Jsonable):
    type: str
    error_line: str
    jobs: int
    last_failed_at: datetime | None
    sample_ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class AuditEntry(Jsonable):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HistogramSeries:
    queue: str
    type: str
    count: int
    sum_s: float
    buckets: tuple[tuple[float, int], ...]  # (upper bound in s, cumulative count)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything /metrics exposes, read from the database in one scrape."""

    processed: tuple[tuple[str, str, str, int], ...]  # (queue, type, status, count)
    durations: tuple[HistogramSeries, ...]
    queues: tuple[QueueStats, ...]
    workers: int
    oldest_pending_s: dict[str, float]
    database: DatabaseHealth


@dataclass(frozen=True, slots=True)
class QueueCounts(Jsonable):
    """Jobs per status in one queue, cheap enough to read on every dashboard refresh.

    Live statuses are always exact. A finished status (completed, failed, cancelled) with
    more jobs than the exact limit is estimated from a sample of the table; its name is
    then in `estimated`."""

    name: str
    is_paused: bool
    waiting: int
    active: int
    delayed: int
    paused: int
    blocked: int
    completed: int
    failed: int
    cancelled: int
    estimated: frozenset[str]

    @property
    def health_score(self) -> int:
        return health_score(waiting=self.waiting, active=self.active, failed=self.failed)

    def to_dict(self) -> dict[str, Any]:
        out = jsonable(self)
        out["estimated"] = sorted(self.estimated)
        out["health_score"] = self.health_score
        return dict(out)


@dataclass(frozen=True, slots=True)
class FinishedMinute(Jsonable):
    """Jobs of one queue that finished (completed or failed for good) in one minute."""

    queue: str
    minute: datetime
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class FinishedSeries(Jsonable):
    """Finished jobs per queue and minute from `since` up to the database's `now`."""

    now: datetime
    since: datetime
    minutes: tuple[FinishedMinute, ...]


@dataclass(frozen=True, slots=True)
class JobLink(Jsonable):
    """A job related to another one (a dependency or a dependent, a schedule's run)."""

    id: UUID
    type: str
    queue: str
    status: str
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScheduleRun(Jsonable):
    """The latest fire of a schedule and the job it enqueued (None when pruned)."""

    schedule_id: UUID
    fire_time: datetime
    job: JobLink | None
