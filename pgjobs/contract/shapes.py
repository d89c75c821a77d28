"""Every request and response body of the REST API, declared once.

The handlers check field names against these (`jsonschema.check_fields`) and the OpenAPI
document is generated from them; values are validated by pgjobs.producer.options and the
services, with the limits both sides import from pgjobs.validation. Field names are the
wire names (the job options' camelCase included).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict
from uuid import UUID

from pgjobs.contract.jsonschema import Field
from pgjobs.models import PRIORITIES, STATUSES
from pgjobs.validation import (
    MAX_ATTEMPTS,
    MAX_BACKOFF_STEPS,
    MAX_BULK,
    MAX_CATCH_UP,
    MAX_DELAY_MS,
    MAX_DEPENDENCIES,
    MAX_DESCRIPTION,
    MAX_FLOW_JOBS,
    MAX_KEY_LENGTH,
    MAX_LIMIT,
    MAX_PRIORITY,
    MAX_RATE_DURATION_MS,
    MAX_RATE_JOBS,
    MAX_TIMEOUT_MS,
    MAX_TYPE_LENGTH,
    QUEUE_NAME_PATTERN,
    SCHEDULE_NAME_PATTERN,
)

# ------------------------------------------------------------------ field types

QueueName = Annotated[str, Field(pattern=QUEUE_NAME_PATTERN)]
JobType = Annotated[str, Field(min_length=1, max_length=MAX_TYPE_LENGTH)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)]
Status = Annotated[str, Field(enum=tuple(STATUSES))]
Delay = Annotated[int, Field(minimum=0, maximum=MAX_DELAY_MS)]
Count = Annotated[int, Field(minimum=0)]
JsonObject = dict[str, Any]
PriorityName = Annotated[str, Field(enum=tuple(PRIORITIES))]
Priority = PriorityName | Annotated[int, Field(minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY)]

# ------------------------------------------------------------------ errors


class ErrorDetail(TypedDict):
    code: str
    message: str


class Error(TypedDict):
    """Every error answer: a machine code and one line for a human."""

    error: ErrorDetail


# ------------------------------------------------------------------ service


class Health(TypedDict):
    status: Literal["ok", "error"]
    database: Annotated[str, Field(description="ok or down (down: <reason> with the API token)")]
    redis: Annotated[
        str, Field(description="ok, disabled or down (down: <reason> with the API token)")
    ]
    version: str


# ------------------------------------------------------------------ creating jobs


class BackoffCurve(TypedDict):
    type: Required[Literal["exponential", "fixed"]]
    delay: NotRequired[Delay]


Backoff = BackoffCurve | Annotated[list[Delay], Field(min_items=1, max_items=MAX_BACKOFF_STEPS)]


class _JobOptionsBase(TypedDict, total=False):
    priority: Annotated[
        Priority,
        Field(description="critical=1, high=5, normal=10, low=20, or an integer; lower runs first"),
    ]
    attempts: Annotated[int, Field(minimum=1, maximum=MAX_ATTEMPTS)]
    maxRetries: Annotated[int, Field(minimum=0, maximum=MAX_ATTEMPTS - 1)]
    delay: Delay
    runAt: datetime
    backoff: Backoff
    timeout: Annotated[int, Field(minimum=1, maximum=MAX_TIMEOUT_MS)]
    uniqueKey: Key
    uniqueFor: Annotated[
        Delay, Field(description="ms: the key also counts for a job created this recently")
    ]
    uniqueStates: Annotated[
        list[Status],
        Field(
            min_items=1,
            description="statuses in which a job holds its key "
            "(default pending, delayed, active, blocked)",
        ),
    ]
    onConflict: Annotated[
        Literal["return", "raise"],
        Field(description="a held key returns the holder (201) or is a 409"),
    ]
    onDependencyFailure: Annotated[
        Literal["fail", "ignore", "cancel"],
        Field(
            description="when a dependency fails for good: fail this job (default), run it "
            "anyway once all finished, or cancel it; a cancelled dependency cancels it "
            "unless ignore"
        ),
    ]
    rateLimitKey: Key
    metadata: JsonObject


class JobOptions(_JobOptionsBase, total=False):
    """Job options. `attempts` counts every try; `maxRetries` counts tries after the
    first. `delay` and `timeout` are milliseconds. Give at most one of
    `attempts`/`maxRetries` and of `delay`/`runAt`."""

    dependsOn: UUID | Annotated[list[UUID], Field(max_items=MAX_DEPENDENCIES)]


class JobCreate(TypedDict, total=False):
    type: Required[JobType]
    queue: Annotated[QueueName, Field(default="default")]
    payload: JsonObject
    options: JobOptions


class BulkCreate(TypedDict):
    jobs: Annotated[list[JobCreate], Field(min_items=1, max_items=MAX_BULK)]


class BulkCreated(TypedDict):
    ids: list[UUID]
    count: int


# ------------------------------------------------------------------ flows

FlowRef = Annotated[
    Key, Field(description="The ref of a job in this flow, or the id of an existing job")
]


class FlowJobOptions(_JobOptionsBase, total=False):
    """Job options, whose dependsOn also takes the refs of jobs in the same flow."""

    dependsOn: FlowRef | Annotated[list[FlowRef], Field(max_items=MAX_FLOW_JOBS)]


class FlowJob(TypedDict, total=False):
    ref: Annotated[Key, Field(description="A name for this job that other jobs' dependsOn can use")]
    type: Required[JobType]
    queue: QueueName
    payload: JsonObject
    options: FlowJobOptions


class FlowCreate(TypedDict):
    jobs: Annotated[list[FlowJob], Field(min_items=1, max_items=MAX_FLOW_JOBS)]


class FlowCreated(TypedDict):
    ids: list[UUID]
    refs: dict[str, UUID]
    count: int


# ------------------------------------------------------------------ reading jobs


class JobResult(TypedDict, total=False):
    result: Required[Any]
    duration_ms: Required[int | None]
    completed_at: Required[datetime]
    attempt: int | None


class JobFailure(TypedDict, total=False):
    attempt_number: Required[int]
    error_message: Required[str | None]
    error_stack: Required[str | None]
    failed_at: Required[datetime]
    kind: Required[str]
    worker_id: UUID | None


class JobLogLine(TypedDict):
    attempt: int
    seq: Annotated[int, Field(description="The line's number in its attempt")]
    at: datetime
    level: str
    message: str


class AttemptLog(TypedDict):
    attempt: int
    dropped: Annotated[
        int,
        Field(description="Lines logged between the first 100 and the last 50, not kept"),
    ]
    lines: list[JobLogLine]


class Job(TypedDict, total=False):
    id: Required[UUID]
    type: Required[str]
    queue: Required[str]
    status: Required[Status]
    priority: Required[int]
    priority_name: str | None
    payload: Required[Any]
    progress: Required[int]
    progress_message: str | None
    attempts: Required[int]
    max_attempts: Required[int]
    delay_ms: int
    timeout_ms: int
    created_at: Required[datetime]
    started_at: datetime | None
    completed_at: datetime | None
    run_at: Required[datetime]
    backoff: Any
    worker_id: UUID | None
    stalled_count: int
    stalls: int
    suspect: bool
    last_error: str | None
    unique_key: str | None
    depends_on: list[UUID] | None
    dependency_policy: str
    rate_limit_key: str | None
    cancel_requested_at: datetime | None
    schedule_id: UUID | None
    scheduled_for: datetime | None
    metadata: JsonObject
    result: Any
    results: Required[list[JobResult]]
    failures: Required[list[JobFailure]]
    logs: Annotated[
        list[AttemptLog],
        Field(
            description="What the handler logged through ctx.logger, per attempt: its last "
            "20 attempts that logged any (GET only)"
        ),
    ]
    logs_attempts_omitted: Annotated[
        int,
        Field(description="Earlier attempts whose log lines are left out of logs (GET only)"),
    ]


class JobSummary(TypedDict, total=False):
    id: Required[UUID]
    type: Required[str]
    queue: Required[str]
    status: Required[Status]
    priority: Required[int]
    progress: int
    progress_message: str | None
    attempts: Required[int]
    max_attempts: int
    created_at: Required[datetime]
    started_at: datetime | None
    completed_at: datetime | None
    run_at: datetime
    last_error: str | None
    worker_id: UUID | None
    payload_preview: Annotated[str, Field(description="First 200 characters")]
    payload_bytes: int


class JobPage(TypedDict):
    jobs: list[JobSummary]
    next_cursor: str | None
    limit: Annotated[int, Field(minimum=1, maximum=MAX_LIMIT)]


class JobWait(TypedDict):
    done: bool
    job: Job


# ------------------------------------------------------------------ queues and stats


class WindowStats(TypedDict):
    hours: float
    completed: int
    failed: int
    processed: int
    throughput_per_min: float
    failure_rate: Annotated[float, Field(minimum=0, maximum=1)]


class QueueCounts(TypedDict):
    waiting: Count
    active: Count
    completed: Count
    failed: Count
    delayed: Count
    paused: Count
    blocked: Count
    cancelled: Count


class StatsTotals(QueueCounts):
    window: WindowStats


class QueueStats(QueueCounts, total=False):
    name: Required[str]
    total: int
    is_paused: Required[bool]
    paused_at: datetime | None
    rate_limit_max: int | None
    rate_limit_duration_ms: int | None
    health_score: Required[Annotated[int, Field(minimum=0, maximum=100)]]
    oldest_waiting_s: float | None
    window: Required[WindowStats]


class QueueList(TypedDict):
    queues: list[QueueStats]


class DurationStats(TypedDict, total=False):
    queue: Required[str]
    type: Required[str | None]
    runs: Required[int]
    p50_ms: Required[float | None]
    p95_ms: Required[float | None]
    p99_ms: Required[float | None]
    avg_ms: float | None
    max_ms: float | None


class DatabaseHealth(TypedDict, total=False):
    dead_tuples: Required[int]
    live_tuples: Required[int]
    jobs_total_bytes: int
    oldest_transaction_s: Required[float | None]
    last_autovacuum: datetime | None
    last_vacuum: datetime | None


class Stats(TypedDict, total=False):
    generated_at: Required[datetime]
    window_hours: Required[float]
    queues: Required[list[QueueStats]]
    totals: Required[StatsTotals]
    workers: Required[int]
    database: Required[DatabaseHealth]
    performance: list[DurationStats] | None


class QueueState(TypedDict):
    name: str
    paused: bool
    paused_at: datetime | None


LimitValue = Annotated[int, Field(minimum=1)]


class QueueLimit(TypedDict):
    queue: str
    max: LimitValue | None
    duration: LimitValue | None


class QueueLimitSet(TypedDict):
    max: Annotated[int, Field(minimum=1, maximum=MAX_RATE_JOBS)]
    duration: Annotated[
        int,
        Field(minimum=1, maximum=MAX_RATE_DURATION_MS, description="Window length in milliseconds"),
    ]


class Worker(TypedDict, total=False):
    id: Required[UUID]
    hostname: Required[str]
    pid: Required[int]
    queues: Required[list[str]]
    concurrency: Required[int]
    in_flight: Required[int]
    processed: int
    version: str
    stopping: bool
    alive: Required[bool]
    last_heartbeat_at: datetime
    started_at: datetime


class WorkerList(TypedDict):
    workers: list[Worker]


# ------------------------------------------------------------------ schedules


class ScheduleJobOptions(TypedDict, total=False):
    attempts: Annotated[int, Field(minimum=1, maximum=MAX_ATTEMPTS)]
    maxRetries: Annotated[int, Field(minimum=0, maximum=MAX_ATTEMPTS - 1)]
    backoff: Any
    timeout: Annotated[int, Field(minimum=1)]
    rateLimitKey: Key
    metadata: JsonObject


ScheduleName = Annotated[str, Field(pattern=SCHEDULE_NAME_PATTERN)]
Cron = Annotated[str, Field(description="5 fields (or 6 with seconds last), or @hourly/@daily/...")]


class _ScheduleFields(TypedDict, total=False):
    payload: JsonObject
    queue: QueueName
    timezone: Annotated[str, Field(description="IANA name, default UTC")]
    description: Annotated[str | None, Field(max_length=MAX_DESCRIPTION)]
    misfire: Literal["skip", "run_once", "catch_up"]
    max_catch_up: Annotated[int, Field(minimum=0, maximum=MAX_CATCH_UP)]
    priority: Priority
    enabled: bool
    options: ScheduleJobOptions


class ScheduleCreate(_ScheduleFields, total=False):
    name: Required[ScheduleName]
    type: Required[JobType]
    cron: Required[Cron]


class ScheduleChange(_ScheduleFields, total=False):
    name: ScheduleName
    type: JobType
    cron: Cron


class Schedule(TypedDict, total=False):
    id: Required[UUID]
    name: Required[str]
    type: Required[str]
    queue: Required[str]
    cron_expression: Required[str]
    timezone: Required[str]
    payload: Required[Any]
    description: str | None
    enabled: Required[bool]
    misfire_policy: Required[str]
    max_catch_up: int
    priority: int
    priority_name: str | None
    options: JsonObject
    last_run_at: Required[datetime | None]
    next_run_at: Required[datetime | None]
    created_at: datetime
    updated_at: datetime
    upcoming: list[datetime]


class ScheduleList(TypedDict):
    schedules: list[Schedule]
