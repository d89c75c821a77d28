"""Plain data shapes shared by every layer: the job as stored, its results and failures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

PRIORITIES: dict[str, int] = {"critical": 1, "high": 5, "normal": 10, "low": 20}
STATUSES = ("pending", "active", "completed", "failed", "delayed", "blocked", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
# Operator names for statuses: BullMQ's `waiting` is our `pending`.
STATUS_ALIASES = {"waiting": "pending"}


def priority_name(priority: int) -> str | None:
    for name, value in PRIORITIES.items():
        if value == priority:
            return name
    return None


@dataclass(frozen=True, slots=True)
class JobResult:
    result: Any
    duration_ms: int | None
    completed_at: datetime
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class JobFailure:
    attempt_number: int
    error_message: str | None
    error_stack: str | None
    failed_at: datetime
    kind: str = "error"
    worker_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    type: str
    queue: str
    status: str
    priority: int
    payload: Any
    progress: int
    attempts: int
    max_attempts: int
    delay_ms: int
    timeout_ms: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    run_at: datetime
    backoff: Any = None
    worker_id: UUID | None = None
    stalled_count: int = 0
    suspect: bool = False
    progress_message: str | None = None
    last_error: str | None = None
    unique_key: str | None = None
    depends_on: list[UUID] | None = None
    dependency_policy: str = "fail"
    rate_limit_key: str | None = None
    cancel_requested_at: datetime | None = None
    schedule_id: UUID | None = None
    scheduled_for: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    results: tuple[JobResult, ...] = ()
    failures: tuple[JobFailure, ...] = ()

    @property
    def priority_name(self) -> str | None:
        return priority_name(self.priority)

    @property
    def result(self) -> Any:
        """The latest result, or None."""
        return self.results[-1].result if self.results else None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        values = {name: row[name] for name in _JOB_FIELDS if name in row}
        if row.get("results") is not None:
            values["results"] = tuple(_result(r) for r in row["results"])
        if row.get("failures") is not None:
            values["failures"] = tuple(_failure(f) for f in row["failures"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (ids and times as strings), as the API and CLI show it."""
        out: dict[str, Any] = {name: _jsonable(getattr(self, name)) for name in _JOB_FIELDS}
        out["priority_name"] = self.priority_name
        # Stalls (the worker died while the job ran alone) have their own budget,
        # JOBS_MAX_STALLED_COUNT, apart from the attempts; their rows are the failures of
        # kind 'stalled'.
        out["stalls"] = self.stalled_count
        out["result"] = _jsonable(self.result)
        out["results"] = [
            {k: _jsonable(getattr(r, k)) for k in JobResult.__slots__} for r in self.results
        ]
        out["failures"] = [
            {k: _jsonable(getattr(f, k)) for k in JobFailure.__slots__} for f in self.failures
        ]
        return out


_JOB_FIELDS = tuple(
    name for name in Job.__dataclass_fields__ if name not in ("results", "failures")
)


def _parse_time(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _result(raw: dict[str, Any]) -> JobResult:
    return JobResult(
        result=raw.get("result"),
        duration_ms=raw.get("duration_ms"),
        completed_at=_parse_time(raw["completed_at"]),
        attempt=raw.get("attempt"),
    )


def _failure(raw: dict[str, Any]) -> JobFailure:
    worker = raw.get("worker_id")
    return JobFailure(
        attempt_number=raw["attempt_number"],
        error_message=raw.get("error_message"),
        error_stack=raw.get("error_stack"),
        failed_at=_parse_time(raw["failed_at"]),
        kind=raw.get("kind") or "error",
        worker_id=UUID(worker) if isinstance(worker, str) else worker,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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
    """A report type's JSON-ready `to_dict()` (ops, stats and retention reports)."""

    def to_dict(self) -> dict[str, Any]:
        out = jsonable(self)
        assert isinstance(out, dict)
        return out
