"""The queue statistics read model: what `App.stats()` reports, and through it
`pgjobs stats`, `GET /stats` and the dashboard's overview (`Ops.stats`).

It sits below the App facade so the App can report without importing the operator
service above it; `Ops` reads workers and database health with the same functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import NotFound, ValidationError
from pgjobs.models import Jsonable, jsonable
from pgjobs.producer.options import validate_queue
from pgjobs.queries import query
from pgjobs.replica import Connect, Reader
from pgjobs.validation import MAX_WINDOW_HOURS

Row = dict[str, Any]
AsyncConn = psycopg.AsyncConnection[Any]

DEFAULT_CAPACITY = 1000


def health_score(
    *, waiting: int, active: int, failed: int, capacity: int = DEFAULT_CAPACITY
) -> int:
    """100 = healthy, 0 = critical.

    The spec's `calculateHealthScore`, rule for rule: a long waiting list costs 15 or 30,
    waiting jobs with none running (stalled processing) cost 40, and a failure share of
    the retained jobs above 10 % costs 20 plus another 30 above 25 %.
    """
    score = 100
    if waiting > capacity * 0.8:
        score -= 30
    elif waiting > capacity * 0.5:
        score -= 15
    if active == 0 and waiting > 0:
        score -= 40
    total = waiting + active + failed
    if total > 0:
        failure_rate = failed / total
        if failure_rate > 0.1:
            score -= 20
        if failure_rate > 0.25:
            score -= 30
    return max(0, score)


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


def window_hours(value: Any) -> float:
    """A stats window in hours (0 < h <= one year)."""
    try:
        hours = float(value)
    except (TypeError, ValueError):
        shown = str(value)[:40]
        raise ValidationError(f"hours must be a number (got {shown!r})", field="hours") from None
    if not math.isfinite(hours) or not 0 < hours <= MAX_WINDOW_HOURS:
        raise ValidationError(
            f"hours must be above 0 and at most {MAX_WINDOW_HOURS}", field="hours"
        )
    return hours


async def read_stats(
    read: Reader,
    primary: Connect,
    settings: Settings,
    clock: Clock,
    *,
    queue: str | None = None,
    hours: float = 24.0,
    performance: bool = False,
) -> StatsReport:
    """Counts per queue and status, the window's throughput and failure rate, health
    scores, live workers and database health; run-time percentiles on request.

    `read` runs the job and worker statements (the operator surfaces pass one that may
    use a replica); database health always comes from `primary`, because dead tuples,
    vacuum times and open transactions are the primary's own, not replicated."""
    if queue is not None:
        validate_queue(queue)
    hours = window_hours(hours)
    params = {"queue": queue, "now": clock.sql_now(), "window_s": hours * 3600}

    async def model(conn: AsyncConn) -> tuple[Any, ...]:
        counts = await _all(conn, "ops_queue_counts", params)
        if queue is not None and not counts:
            return counts, {}, {}, (), None
        windows = {r["queue"]: r for r in await _all(conn, "ops_queue_window", params)}
        oldest_rows = await _all(conn, "ops_oldest_pending", params)
        oldest = {r["queue"]: r["age_s"] for r in oldest_rows}
        workers = await read_workers(conn, settings, clock)
        durations = None
        if performance:
            rows = await _all(conn, "ops_duration_percentiles", params)
            durations = tuple(DurationStats(**r) for r in rows)
        return counts, windows, oldest, workers, durations

    counts, windows, oldest, workers, durations = await read(model)
    if queue is not None and not counts:
        raise NotFound(f"no queue named {queue!r}")
    async with primary() as conn:
        database = await read_database_health(conn)
    queues = tuple(
        queue_stats(row, windows.get(row["queue"]), oldest.get(row["queue"]), hours)
        for row in counts
    )
    return StatsReport(
        generated_at=clock.now(),
        window_hours=hours,
        queues=queues,
        workers=sum(1 for w in workers if w.alive),
        database=database,
        performance=durations,
    )


async def read_workers(conn: AsyncConn, settings: Settings, clock: Clock) -> tuple[WorkerInfo, ...]:
    """Every registered worker, alive or not (a lease of JOBS_LOCK_DURATION)."""
    params = {"now": clock.sql_now(), "lease_s": settings.lock_duration_ms / 1000}
    rows = await _all(conn, "ops_workers", params)
    return tuple(WorkerInfo(**{**r, "queues": tuple(r["queues"])}) for r in rows)


async def read_database_health(conn: AsyncConn) -> DatabaseHealth:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("ops_db_health"), {})
        row = await cur.fetchone()
    assert row is not None
    return DatabaseHealth(**row)


async def _all(conn: AsyncConn, name: str, params: Row) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()


def queue_stats(row: Row, window: Row | None, oldest: float | None, hours: float) -> QueueStats:
    """One queue's stats from its `ops_queue_counts` row and its window and oldest rows."""
    counts = {k: int(row[k]) for k in ("waiting", "active", "completed", "failed", "delayed")}
    return QueueStats(
        name=row["queue"],
        **counts,
        paused=int(row["paused"]),
        blocked=int(row["blocked"]),
        cancelled=int(row["cancelled"]),
        is_paused=bool(row["is_paused"]),
        paused_at=row["paused_at"],
        rate_limit_max=row["rate_limit_max"],
        rate_limit_duration_ms=row["rate_limit_duration_ms"],
        health_score=health_score(
            waiting=counts["waiting"], active=counts["active"], failed=counts["failed"]
        ),
        oldest_waiting_s=None if oldest is None else float(oldest),
        window=WindowStats(
            hours=hours,
            completed=int(window["completed"]) if window else 0,
            failed=int(window["failed"]) if window else 0,
        ),
    )
