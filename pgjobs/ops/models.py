"""What the operator actions return: plain frozen data with a JSON-ready `to_dict()`.

The CLI formats these as tables, the API serialises `to_dict()`, and the dashboard
renders them; none of them reads SQL rows directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pgjobs.models import Jsonable, jsonable
from pgjobs.retention import CleanReport
from pgjobs.stats import (
    DatabaseHealth,
    DurationStats,
    QueueStats,
    StatsReport,
    WindowStats,
    WorkerInfo,
    health_score,
)

# The stats and clean-up reports (and health_score) are defined below the App facade (the
# App reports stats, the file-cleanup type cleans); they are operator reports all the same.
__all__ = [
    "AttemptLog",
    "AuditEntry",
    "CleanReport",
    "DatabaseHealth",
    "DurationStats",
    "FailureGroup",
    "FinishedMinute",
    "FinishedSeries",
    "HistogramSeries",
    "JobLink",
    "JobLogLine",
    "JobLogs",
    "JobPage",
    "JobSummary",
    "Jsonable",
    "MetricsSnapshot",
    "QueueCounts",
    "QueueState",
    "QueueStats",
    "RetryCandidate",
    "RetryReport",
    "ScheduleRun",
    "StatsReport",
    "ThroughputPoint",
    "WindowStats",
    "WorkerInfo",
    "attempt_logs",
    "health_score",
    "jsonable",
]


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
class QueueState(Jsonable):
    name: str
    paused: bool
    paused_at: datetime | None


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
class JobLogLine(Jsonable):
    """One line a handler logged through ctx.logger; `seq` is its number in the attempt."""

    attempt: int
    seq: int
    at: datetime
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class JobLogs:
    """The lines of a job's latest attempts that logged any, and how many earlier
    attempts' lines were left out (see pgjobs.ops.service.LOG_ATTEMPTS_SHOWN)."""

    lines: tuple[JobLogLine, ...]
    attempts_omitted: int


@dataclass(frozen=True, slots=True)
class AttemptLog(Jsonable):
    """The lines kept of one attempt, and how many were dropped between the first and the
    last ones (see pgjobs.context.LOG_FIRST_LINES)."""

    attempt: int
    lines: tuple[JobLogLine, ...]
    dropped: int

    @property
    def gap_after(self) -> int:
        """The line after which the dropped ones were (0 when none were)."""
        if not self.dropped:
            return 0
        for before, after in zip(self.lines, self.lines[1:], strict=False):
            if after.seq != before.seq + 1:
                return before.seq
        return 0


def attempt_logs(lines: tuple[JobLogLine, ...]) -> tuple[AttemptLog, ...]:
    """Lines (ordered by attempt and seq) grouped per attempt."""
    groups: dict[int, list[JobLogLine]] = {}
    for line in lines:
        groups.setdefault(line.attempt, []).append(line)
    return tuple(
        AttemptLog(attempt=a, lines=tuple(kept), dropped=kept[-1].seq - len(kept))
        for a, kept in groups.items()
    )


@dataclass(frozen=True, slots=True)
class ScheduleRun(Jsonable):
    """The latest fire of a schedule and the job it enqueued (None when pruned)."""

    schedule_id: UUID
    fire_time: datetime
    job: JobLink | None
