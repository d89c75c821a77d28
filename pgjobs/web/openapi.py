"""The OpenAPI 3 document of the REST API, written as data.

It describes every route of pgjobs.web.api with the exact request and response shapes;
tests run schemathesis against it, so a handler and its description cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pgjobs._version import __version__
from pgjobs.config import Settings
from pgjobs.models import PRIORITIES, STATUSES
from pgjobs.ops.filters import MAX_LIMIT, STATUS_ALIASES
from pgjobs.ops.service import MAX_BULK, MAX_WINDOW_HOURS
from pgjobs.producer.options import (
    MAX_ATTEMPTS,
    MAX_DELAY_MS,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_TIMEOUT_MS,
    QUEUE_NAME,
)

Schema = dict[str, Any]

QUEUE_PATTERN = QUEUE_NAME.pattern  # options.validate_queue's rule


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


UUID: Schema = {"type": "string", "format": "uuid"}
TIME: Schema = {"type": "string", "format": "date-time"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
ANY: Schema = {}


def _error(description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS: dict[str, Schema] = {
    "400": _error("Malformed request (bad JSON, bad query parameter)"),
    "401": _error("Missing or wrong bearer token"),
    "404": _error("No such job, queue or schedule"),
    "409": _error("The request conflicts with the current state"),
    "413": _error("Request body too large"),
    "415": _error("Request body is not Content-Type: application/json"),
    "422": _error("Invalid field or option"),
    "503": _error("PostgreSQL is unavailable"),
}


def _responses(ok: dict[str, Schema], *errors: str) -> dict[str, Schema]:
    return {**ok, **{code: ERRORS[code] for code in ("401", "503", *errors)}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


JOB_ID_PARAM: Schema = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": UUID,
    "description": "Job id (a UUID; anything else names no job)",
}
QUEUE_PARAM: Schema = {
    "name": "queue",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": QUEUE_PATTERN},
}


def _schemas() -> dict[str, Schema]:
    statuses = list(STATUSES)
    backoff: Schema = {
        "oneOf": [
            _obj(
                {
                    "type": {"type": "string", "enum": ["exponential", "fixed"]},
                    "delay": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_MS},
                },
                ["type"],
                additionalProperties=False,
            ),
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_MS},
            },
        ]
    }
    options = _obj(
        {
            "priority": {
                "oneOf": [
                    {"type": "string", "enum": list(PRIORITIES)},
                    {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
                ],
                "description": "critical=1, high=5, normal=10, low=20, or an integer; "
                "lower runs first",
            },
            "attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS},
            "maxRetries": {"type": "integer", "minimum": 0, "maximum": MAX_ATTEMPTS - 1},
            "delay": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_MS},
            "runAt": TIME,
            "backoff": backoff,
            "timeout": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
            "uniqueKey": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
            "uniqueFor": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_DELAY_MS,
                "description": "ms: the key also counts for a job created this recently",
            },
            "uniqueStates": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": statuses},
                "description": "statuses in which a job holds its key "
                "(default pending, delayed, active, blocked)",
            },
            "onConflict": {
                "type": "string",
                "enum": ["return", "raise"],
                "description": "a held key returns the holder (201) or is a 409",
            },
            "dependsOn": {"oneOf": [UUID, {"type": "array", "items": UUID, "maxItems": 100}]},
            "onDependencyFailure": {
                "type": "string",
                "enum": ["fail", "ignore", "cancel"],
                "description": "when a dependency fails for good: fail this job (default), "
                "run it anyway once all finished, or cancel it; a cancelled dependency "
                "cancels it unless ignore",
            },
            "rateLimitKey": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
            "metadata": {"type": "object"},
        },
        additionalProperties=False,
        description="Job options. `attempts` counts every try; `maxRetries` counts tries "
        "after the first. `delay` and `timeout` are milliseconds. Give at most one of "
        "`attempts`/`maxRetries` and of `delay`/`runAt`.",
    )
    job_create = _obj(
        {
            "type": {"type": "string", "minLength": 1, "maxLength": 100},
            "queue": {"type": "string", "pattern": QUEUE_PATTERN, "default": "default"},
            "payload": {"type": "object"},
            "options": _ref("JobOptions"),
        },
        ["type"],
        additionalProperties=False,
    )
    result = _obj(
        {
            "result": ANY,
            "duration_ms": _nullable(INT),
            "completed_at": TIME,
            "attempt": _nullable(INT),
        },
        ["result", "duration_ms", "completed_at"],
    )
    failure = _obj(
        {
            "attempt_number": INT,
            "error_message": _nullable(STR),
            "error_stack": _nullable(STR),
            "failed_at": TIME,
            "kind": STR,
            "worker_id": _nullable(UUID),
        },
        ["attempt_number", "error_message", "error_stack", "failed_at", "kind"],
    )
    job = _obj(
        {
            "id": UUID,
            "type": STR,
            "queue": STR,
            "status": {"type": "string", "enum": statuses},
            "priority": INT,
            "priority_name": _nullable(STR),
            "payload": ANY,
            "progress": INT,
            "progress_message": _nullable(STR),
            "attempts": INT,
            "max_attempts": INT,
            "delay_ms": INT,
            "timeout_ms": INT,
            "created_at": TIME,
            "started_at": _nullable(TIME),
            "completed_at": _nullable(TIME),
            "run_at": TIME,
            "backoff": ANY,
            "worker_id": _nullable(UUID),
            "stalled_count": INT,
            "stalls": INT,
            "suspect": BOOL,
            "last_error": _nullable(STR),
            "unique_key": _nullable(STR),
            "depends_on": _nullable({"type": "array", "items": UUID}),
            "dependency_policy": STR,
            "rate_limit_key": _nullable(STR),
            "cancel_requested_at": _nullable(TIME),
            "schedule_id": _nullable(UUID),
            "scheduled_for": _nullable(TIME),
            "metadata": {"type": "object"},
            "result": ANY,
            "results": {"type": "array", "items": _ref("JobResult")},
            "failures": {"type": "array", "items": _ref("JobFailure")},
        },
        [
            "id",
            "type",
            "queue",
            "status",
            "priority",
            "payload",
            "progress",
            "attempts",
            "max_attempts",
            "created_at",
            "run_at",
            "results",
            "failures",
        ],
    )
    summary = _obj(
        {
            "id": UUID,
            "type": STR,
            "queue": STR,
            "status": {"type": "string", "enum": statuses},
            "priority": INT,
            "progress": INT,
            "progress_message": _nullable(STR),
            "attempts": INT,
            "max_attempts": INT,
            "created_at": TIME,
            "started_at": _nullable(TIME),
            "completed_at": _nullable(TIME),
            "run_at": TIME,
            "last_error": _nullable(STR),
            "worker_id": _nullable(UUID),
            "payload_preview": {"type": "string", "description": "First 200 characters"},
            "payload_bytes": INT,
        },
        ["id", "type", "queue", "status", "priority", "attempts", "created_at"],
    )
    window = _obj(
        {
            "hours": NUM,
            "completed": INT,
            "failed": INT,
            "processed": INT,
            "throughput_per_min": NUM,
            "failure_rate": {"type": "number", "minimum": 0, "maximum": 1},
        },
        ["hours", "completed", "failed", "processed", "throughput_per_min", "failure_rate"],
    )
    counts = {
        name: {"type": "integer", "minimum": 0}
        for name in (
            "waiting",
            "active",
            "completed",
            "failed",
            "delayed",
            "paused",
            "blocked",
            "cancelled",
        )
    }
    queue_stats = _obj(
        {
            "name": STR,
            **counts,
            "total": INT,
            "is_paused": BOOL,
            "paused_at": _nullable(TIME),
            "rate_limit_max": _nullable(INT),
            "rate_limit_duration_ms": _nullable(INT),
            "health_score": {"type": "integer", "minimum": 0, "maximum": 100},
            "oldest_waiting_s": _nullable(NUM),
            "window": _ref("WindowStats"),
        },
        ["name", *counts, "is_paused", "health_score", "window"],
    )
    durations = _obj(
        {
            "queue": STR,
            "type": _nullable(STR),
            "runs": INT,
            **{k: _nullable(NUM) for k in ("p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms")},
        },
        ["queue", "type", "runs", "p50_ms", "p95_ms", "p99_ms"],
    )
    database = _obj(
        {
            "dead_tuples": INT,
            "live_tuples": INT,
            "jobs_total_bytes": INT,
            "oldest_transaction_s": _nullable(NUM),
            "last_autovacuum": _nullable(TIME),
            "last_vacuum": _nullable(TIME),
        },
        ["dead_tuples", "live_tuples", "oldest_transaction_s"],
    )
    stats = _obj(
        {
            "generated_at": TIME,
            "window_hours": NUM,
            "queues": {"type": "array", "items": _ref("QueueStats")},
            "totals": _obj({**counts, "window": _ref("WindowStats")}, [*counts, "window"]),
            "workers": INT,
            "database": _ref("DatabaseHealth"),
            "performance": _nullable({"type": "array", "items": _ref("DurationStats")}),
        },
        ["generated_at", "window_hours", "queues", "totals", "workers", "database"],
    )
    worker = _obj(
        {
            "id": UUID,
            "hostname": STR,
            "pid": INT,
            "queues": {"type": "array", "items": STR},
            "concurrency": INT,
            "in_flight": INT,
            "processed": INT,
            "version": STR,
            "stopping": BOOL,
            "alive": BOOL,
            "last_heartbeat_at": TIME,
            "started_at": TIME,
        },
        ["id", "hostname", "pid", "queues", "concurrency", "in_flight", "alive"],
    )
    return {
        "Error": _obj(
            {"error": _obj({"code": STR, "message": STR}, ["code", "message"])}, ["error"]
        ),
        "Health": _obj(
            {
                "status": {"type": "string", "enum": ["ok", "error"]},
                "database": {
                    "type": "string",
                    "description": "ok or down (down: <reason> with the API token)",
                },
                "redis": {
                    "type": "string",
                    "description": "ok, disabled or down (down: <reason> with the API token)",
                },
                "version": STR,
            },
            ["status", "database", "redis", "version"],
        ),
        "JobOptions": options,
        "JobCreate": job_create,
        "JobResult": result,
        "JobFailure": failure,
        "Job": job,
        "JobSummary": summary,
        "JobPage": _obj(
            {
                "jobs": {"type": "array", "items": _ref("JobSummary")},
                "next_cursor": _nullable(STR),
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            },
            ["jobs", "next_cursor", "limit"],
        ),
        "BulkCreate": _obj(
            {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BULK,
                    "items": _ref("JobCreate"),
                }
            },
            ["jobs"],
            additionalProperties=False,
        ),
        "BulkCreated": _obj(
            {"ids": {"type": "array", "items": UUID}, "count": INT}, ["ids", "count"]
        ),
        "WindowStats": window,
        "QueueStats": queue_stats,
        "DurationStats": durations,
        "DatabaseHealth": database,
        "Stats": stats,
        "QueueState": _obj(
            {"name": STR, "paused": BOOL, "paused_at": _nullable(TIME)},
            ["name", "paused", "paused_at"],
        ),
        "Worker": worker,
    }


def _paths() -> dict[str, Schema]:
    status_names = ", ".join([*STATUSES, *STATUS_ALIASES])
    job_ok = _json("The job", _ref("Job"))
    paths: dict[str, Schema] = {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Service health (no authentication)",
                "security": [],
                "responses": {
                    "200": _json("PostgreSQL answers", _ref("Health")),
                    "503": _json("PostgreSQL is unreachable", _ref("Health")),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, read from the database on each scrape",
                "responses": _responses(
                    {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": STR}},
                        }
                    }
                ),
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": _responses({"200": _json("OpenAPI 3 document", {"type": "object"})}),
            }
        },
        "/api/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Per-queue counts (waiting, active, completed, failed, delayed, "
                "paused), throughput, failure rate, health score",
                "parameters": [
                    _query("queue", {"type": "string", "pattern": QUEUE_PATTERN}, "One queue"),
                    _query(
                        "hours",
                        {
                            "type": "number",
                            "exclusiveMinimum": True,
                            "minimum": 0,
                            "maximum": MAX_WINDOW_HOURS,
                            "default": 24,
                        },
                        "Window for throughput, failure rate and percentiles",
                    ),
                    _query("performance", BOOL, "Include p50/p95/p99 run durations"),
                ],
                "responses": _responses(
                    {"200": _json("Statistics", _ref("Stats"))}, "400", "404", "422"
                ),
            }
        },
        "/api/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first, with keyset pagination",
                "parameters": [
                    _query("queue", {"type": "string", "pattern": QUEUE_PATTERN}, "Queue"),
                    _query("status", STR, f"Status or comma-separated statuses: {status_names}"),
                    _query("type", {"type": "string", "maxLength": 100}, "Job type"),
                    _query("created_after", TIME, "Created at or after (ISO-8601 with offset)"),
                    _query("created_before", TIME, "Created before (ISO-8601 with offset)"),
                    _query("id", {"type": "string", "maxLength": 36}, "Start of a job id"),
                    _query("limit", INT, f"Page size, clamped to 1-{MAX_LIMIT} (default 50)"),
                    _query("cursor", STR, "next_cursor of the previous page"),
                ],
                "responses": _responses(
                    {"200": _json("One page of jobs", _ref("JobPage"))}, "400", "422"
                ),
            },
            "post": {
                "operationId": "createJob",
                "summary": "Create a job",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobCreate")}},
                },
                "responses": _responses(
                    {"201": _json("The job as stored", _ref("Job"))},
                    "400",
                    "409",
                    "413",
                    "415",
                    "422",
                ),
            },
        },
        "/api/jobs/bulk": {
            "post": {
                "operationId": "createJobs",
                "summary": "Create many jobs in one transaction (all or none)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BulkCreate")}},
                },
                "responses": _responses(
                    {"201": _json("Ids in request order", _ref("BulkCreated"))},
                    "400",
                    "409",
                    "413",
                    "415",
                    "422",
                ),
            }
        },
        "/api/jobs/{id}": {
            "parameters": [JOB_ID_PARAM],
            "get": {
                "operationId": "getJob",
                "summary": "A job with status, progress, attempts, result and failure history",
                "responses": _responses({"200": job_ok}, "404"),
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Delete a job that is not running (results and failures with it)",
                "responses": _responses({"204": {"description": "Deleted"}}, "404", "409"),
            },
        },
        "/api/jobs/{id}/retry": {
            "parameters": [JOB_ID_PARAM],
            "post": {
                "operationId": "retryJob",
                "summary": "Queue a failed or cancelled job again with fresh attempts",
                "responses": _responses({"200": job_ok}, "404", "409"),
            },
        },
        "/api/jobs/{id}/cancel": {
            "parameters": [JOB_ID_PARAM],
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a waiting job, or signal the worker running it",
                "responses": _responses({"200": job_ok}, "404", "409"),
            },
        },
        "/api/queues": {
            "get": {
                "operationId": "listQueues",
                "summary": "Every known queue with counts and health",
                "responses": _responses(
                    {
                        "200": _json(
                            "Queues",
                            _obj(
                                {"queues": {"type": "array", "items": _ref("QueueStats")}},
                                ["queues"],
                            ),
                        )
                    }
                ),
            }
        },
        "/api/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Worker processes and their heartbeats",
                "responses": _responses(
                    {
                        "200": _json(
                            "Workers",
                            _obj(
                                {"workers": {"type": "array", "items": _ref("Worker")}},
                                ["workers"],
                            ),
                        )
                    }
                ),
            }
        },
    }
    for action, summary in (
        ("pause", "Stop claiming jobs of the queue (running jobs finish)"),
        ("resume", "Resume a paused queue"),
    ):
        paths[f"/api/queues/{{queue}}/{action}"] = {
            "parameters": [QUEUE_PARAM],
            "post": {
                "operationId": f"{action}Queue",
                "summary": summary,
                "responses": _responses(
                    {"200": _json("Queue state", _ref("QueueState"))}, "404", "422"
                ),
            },
        }
    return paths


def openapi_document(settings: Settings) -> dict[str, Any]:
    from pgjobs.web import flows_api, live_api
    from pgjobs.web.schedules_api import openapi_paths, openapi_schemas

    schemas = _schemas()

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pgjobs",
            "version": __version__,
            "description": "Background jobs whose queue is a PostgreSQL table. Every error "
            'is `{"error": {"code", "message"}}`. /api/*, /metrics and this document '
            "need `Authorization: Bearer $JOBS_API_TOKEN` when a token is configured.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            **_paths(),
            **openapi_paths(ERRORS),
            **live_api.openapi_paths(ERRORS),
            **flows_api.openapi_paths(ERRORS),
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **schemas,
                **openapi_schemas(),
                **live_api.openapi_schemas(),
                **flows_api.openapi_schemas(schemas["JobOptions"]),
            },
        },
    }
