"""What each route of the REST API takes and answers, keyed by (method, path).

The paths, methods and path parameter names themselves come from the Starlette route
table (pgjobs.web.api.routes); pgjobs.web.openapi pairs each route with its entry here
and refuses to build a document when either side has one the other lacks. Whether an
operation needs the bearer token comes from pgjobs.web.auth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pgjobs.contract import shapes
from pgjobs.contract.jsonschema import Field
from pgjobs.models import STATUS_ALIASES, STATUSES
from pgjobs.signals.events import EVENT_NAMES
from pgjobs.validation import (
    DEFAULT_LIMIT,
    DEFAULT_WINDOW_HOURS,
    MAX_LIMIT,
    MAX_SEARCH_CHARS,
    MAX_TYPE_LENGTH,
    MAX_WINDOW_HOURS,
    MIN_LIMIT,
    WAIT_DEFAULT_S,
    WAIT_MAX_S,
)

JSON = "application/json"

# The error answers an operation may give, each with the shapes.Error body.
ERRORS: dict[int, str] = {
    400: "Malformed request (bad JSON, bad query parameter)",
    401: "Missing or wrong bearer token",
    404: "No such job, queue or schedule",
    409: "The request conflicts with the current state",
    413: "Request body too large",
    415: "Request body is not Content-Type: application/json",
    422: "Invalid field or option",
    503: "PostgreSQL is unavailable",
}
# Every operation behind the token may answer 401, and every one may answer 503.
BODY_ERRORS = (400, 413, 415, 422)  # what reading and checking a JSON body can give


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter; `type` is annotated like a shape's field."""

    name: str
    type: Any
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer; `body` is a shape or type, None for no body."""

    status: int
    description: str
    body: Any = None
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    answers: tuple[Answer, ...]
    errors: tuple[int, ...] = ()
    body: type | None = None
    query: tuple[Param, ...] = ()
    description: str | None = None


# Path parameters by name, whatever the route.
PATH_PARAMS: dict[str, Param] = {
    "id": Param("id", UUID, "Job id (a UUID; anything else names no job)"),
    "queue": Param("queue", shapes.QueueName),
    "name": Param("name", str, "Schedule name"),
}

_QueueParam = shapes.QueueName
_STATUS_NAMES = ", ".join([*STATUSES, *STATUS_ALIASES])


def _job(status: int, description: str) -> Answer:
    return Answer(status, description, shapes.Job)


def _deleted() -> Answer:
    return Answer(204, "Deleted")


OPERATIONS: tuple[Operation, ...] = (
    # ---------------------------------------------------------------- service
    Operation(
        "GET",
        "/health",
        "health",
        "Service health (no authentication)",
        (
            Answer(200, "PostgreSQL answers", shapes.Health),
            Answer(503, "PostgreSQL is unreachable", shapes.Health),
        ),
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics, read from the database on each scrape",
        (Answer(200, "Prometheus text exposition format 0.0.4", str, "text/plain"),),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        (Answer(200, "OpenAPI 3 document", dict[str, Any]),),
    ),
    Operation(
        "GET",
        "/api/stats",
        "getStats",
        "Per-queue counts (waiting, active, completed, failed, delayed, paused), "
        "throughput, failure rate, health score",
        (Answer(200, "Statistics", shapes.Stats),),
        (400, 404, 422),
        query=(
            Param("queue", _QueueParam, "One queue"),
            Param(
                "hours",
                Annotated[
                    float,
                    Field(
                        exclusive_minimum=True,
                        minimum=0,
                        maximum=MAX_WINDOW_HOURS,
                        default=DEFAULT_WINDOW_HOURS,
                    ),
                ],
                "Window for throughput, failure rate and percentiles",
            ),
            Param("performance", bool, "Include p50/p95/p99 run durations"),
        ),
    ),
    # ---------------------------------------------------------------- jobs
    Operation(
        "GET",
        "/api/jobs",
        "listJobs",
        "List jobs, newest first, with keyset pagination",
        (Answer(200, "One page of jobs", shapes.JobPage),),
        (400, 422),
        query=(
            Param("queue", _QueueParam, "Queue"),
            Param("status", str, f"Status or comma-separated statuses: {_STATUS_NAMES}"),
            Param("type", Annotated[str, Field(max_length=MAX_TYPE_LENGTH)], "Job type"),
            Param("created_after", datetime, "Created at or after (ISO-8601 with offset)"),
            Param("created_before", datetime, "Created before (ISO-8601 with offset)"),
            Param("id", Annotated[str, Field(max_length=36)], "Start of a job id"),
            Param(
                "limit",
                int,
                f"Page size, clamped to {MIN_LIMIT}-{MAX_LIMIT} (default {DEFAULT_LIMIT})",
            ),
            Param("cursor", str, "next_cursor of the previous page"),
            Param(
                "q",
                Annotated[str, Field(max_length=MAX_SEARCH_CHARS)],
                "Search every queue (id:, type:, queue:, status:, error:, field=value, "
                "error words; see the dashboard's search syntax); not combined with the "
                "filters above",
            ),
        ),
    ),
    Operation(
        "POST",
        "/api/jobs",
        "createJob",
        "Create a job",
        (_job(201, "The job as stored"),),
        (*BODY_ERRORS, 409),
        body=shapes.JobCreate,
    ),
    Operation(
        "POST",
        "/api/jobs/bulk",
        "createJobs",
        "Create many jobs in one transaction (all or none)",
        (Answer(201, "Ids in request order", shapes.BulkCreated),),
        (*BODY_ERRORS, 409),
        body=shapes.BulkCreate,
    ),
    Operation(
        "GET",
        "/api/jobs/{id}",
        "getJob",
        "A job with status, progress, attempts, result, failure history and log lines",
        (_job(200, "The job"),),
        (404,),
    ),
    Operation(
        "DELETE",
        "/api/jobs/{id}",
        "deleteJob",
        "Delete a job that is not running (results and failures with it)",
        (_deleted(),),
        (404, 409),
    ),
    Operation(
        "POST",
        "/api/jobs/{id}/retry",
        "retryJob",
        "Queue a failed or cancelled job again with fresh attempts",
        (_job(200, "The job"),),
        (404, 409),
    ),
    Operation(
        "POST",
        "/api/jobs/{id}/cancel",
        "cancelJob",
        "Cancel a waiting job, or signal the worker running it",
        (_job(200, "The job"),),
        (404, 409),
    ),
    Operation(
        "GET",
        "/api/jobs/{id}/wait",
        "waitForJob",
        "Long-poll until the job completed, failed or was cancelled, or `timeout` seconds "
        "passed (`done` says which); returns the job",
        (Answer(200, "Whether the job finished, and the job", shapes.JobWait),),
        (400, 404, 422),
        query=(
            Param(
                "timeout",
                Annotated[float, Field(minimum=0, maximum=WAIT_MAX_S, default=WAIT_DEFAULT_S)],
                "Longest wait in seconds",
            ),
        ),
    ),
    Operation(
        "POST",
        "/api/flows",
        "createFlow",
        "Create a tree or DAG of jobs in one transaction (all or none)",
        (Answer(201, "The flow's job ids", shapes.FlowCreated),),
        (*BODY_ERRORS, 409),
        body=shapes.FlowCreate,
        description="Jobs wait (status blocked) until the jobs they depend on finished; "
        "`onDependencyFailure` says what happens when one fails. Ids are returned in "
        "request order and by ref; a job whose unique key was held is represented by the "
        "holder's id. A cycle is refused.",
    ),
    Operation(
        "GET",
        "/api/events",
        "streamEvents",
        "Job events as Server-Sent Events (event: progress, completed, failed, retrying, "
        "stalled or cancelled; data: {event, id, queue, type, status[, progress]}); never "
        "ends by itself",
        (Answer(200, "An endless text/event-stream", str, "text/event-stream"),),
        (400, 422),
        query=(
            Param("queue", _QueueParam, "Only this queue"),
            Param("job", UUID, "Only this job"),
            Param("event", Annotated[str, Field(enum=tuple(EVENT_NAMES))], "Only this event"),
        ),
    ),
    # ---------------------------------------------------------------- queues
    Operation(
        "GET",
        "/api/queues",
        "listQueues",
        "Every known queue with counts and health",
        (Answer(200, "Queues", shapes.QueueList),),
    ),
    Operation(
        "POST",
        "/api/queues/{queue}/pause",
        "pauseQueue",
        "Stop claiming jobs of the queue (running jobs finish)",
        (Answer(200, "Queue state", shapes.QueueState),),
        (404, 422),
    ),
    Operation(
        "POST",
        "/api/queues/{queue}/resume",
        "resumeQueue",
        "Resume a paused queue",
        (Answer(200, "Queue state", shapes.QueueState),),
        (404, 422),
    ),
    Operation(
        "PUT",
        "/api/queues/{queue}/limit",
        "setQueueLimit",
        "Limit the queue to at most `max` job starts per `duration` ms, across all workers "
        "(creates the queue if needed)",
        (Answer(200, "The queue's limit", shapes.QueueLimit),),
        BODY_ERRORS,
        body=shapes.QueueLimitSet,
    ),
    Operation(
        "DELETE",
        "/api/queues/{queue}/limit",
        "clearQueueLimit",
        "Remove the queue's rate limit",
        (Answer(200, "The queue without a limit", shapes.QueueLimit),),
        (404, 422),
    ),
    Operation(
        "GET",
        "/api/workers",
        "listWorkers",
        "Worker processes and their heartbeats",
        (Answer(200, "Workers", shapes.WorkerList),),
    ),
    # ---------------------------------------------------------------- schedules
    Operation(
        "GET",
        "/api/schedules",
        "listSchedules",
        "Every cron schedule",
        (Answer(200, "Schedules by name", shapes.ScheduleList),),
    ),
    Operation(
        "POST",
        "/api/schedules",
        "createSchedule",
        "Create a cron schedule",
        (Answer(201, "The schedule as stored", shapes.Schedule),),
        (*BODY_ERRORS, 409),
        body=shapes.ScheduleCreate,
    ),
    Operation(
        "GET",
        "/api/schedules/{name}",
        "getSchedule",
        "A schedule with its next five fire times",
        (Answer(200, "The schedule", shapes.Schedule),),
        (404,),
    ),
    Operation(
        "PATCH",
        "/api/schedules/{name}",
        "updateSchedule",
        "Change fields of a schedule (enable/disable with `enabled`)",
        (Answer(200, "The schedule as stored", shapes.Schedule),),
        (*BODY_ERRORS, 404, 409),
        body=shapes.ScheduleChange,
    ),
    Operation(
        "DELETE",
        "/api/schedules/{name}",
        "deleteSchedule",
        "Delete a schedule",
        (_deleted(),),
        (404,),
    ),
    Operation(
        "POST",
        "/api/schedules/{name}/run",
        "runSchedule",
        "Enqueue the schedule's job now, once (its next fire stays as it was)",
        (_job(201, "The job enqueued"),),
        (404,),
    ),
)
