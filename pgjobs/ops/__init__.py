"""Operator actions shared by the CLI, the REST API and the dashboard."""

from __future__ import annotations

from pgjobs.ops.durations import format_duration_ms, parse_duration_ms
from pgjobs.ops.filters import JobFilter, clamp_limit
from pgjobs.ops.models import (
    AttemptLog,
    AuditEntry,
    CleanReport,
    DatabaseHealth,
    DurationStats,
    FailureGroup,
    FinishedMinute,
    FinishedSeries,
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
    attempt_logs,
)
from pgjobs.ops.search import JobSearch, parse_search
from pgjobs.ops.service import DURATION_BUCKETS_S, BulkReport, Ops
from pgjobs.stats import health_score, window_hours

__all__ = [
    "DURATION_BUCKETS_S",
    "AttemptLog",
    "AuditEntry",
    "BulkReport",
    "CleanReport",
    "DatabaseHealth",
    "DurationStats",
    "FailureGroup",
    "FinishedMinute",
    "FinishedSeries",
    "JobFilter",
    "JobLink",
    "JobLogLine",
    "JobLogs",
    "JobPage",
    "JobSearch",
    "JobSummary",
    "MetricsSnapshot",
    "Ops",
    "QueueCounts",
    "QueueState",
    "QueueStats",
    "RetryCandidate",
    "RetryReport",
    "ScheduleRun",
    "StatsReport",
    "ThroughputPoint",
    "WorkerInfo",
    "attempt_logs",
    "clamp_limit",
    "format_duration_ms",
    "health_score",
    "parse_duration_ms",
    "parse_search",
    "window_hours",
]
