"""REST routes for rate limits, waiting for results and the event stream, and their part
of the OpenAPI document:

- `PUT|DELETE /api/queues/{queue}/limit` — a queue's rate limit `{max, duration}`;
- `GET /api/jobs/{id}/wait?timeout=S` — long-poll until the job finishes (at most S s);
- `GET /api/events?queue=&job=&event=` — job events as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pgjobs import limits
from pgjobs.app import App
from pgjobs.errors import JobFailed, ValidationError
from pgjobs.ops import Ops
from pgjobs.producer.options import validate_queue
from pgjobs.signals.events import EVENT_NAMES, JobEvent
from pgjobs.web.api import shown_job
from pgjobs.web.openapi import QUEUE_PATTERN
from pgjobs.web.requests import job_id_param, object_body, query_param, read_json

API_ACTOR = "api"
BODY_LIMIT = 4096
WAIT_DEFAULT_S = 30.0
WAIT_MAX_S = 300.0
KEEPALIVE_S = 15.0


def _app(request: Request) -> App:
    jobs: App = request.app.state.pgjobs
    return jobs


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


# ------------------------------------------------------------------ rate limits


async def set_queue_limit(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    unknown = sorted(set(body) - {"max", "duration"})
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=unknown[0])
    for name in ("max", "duration"):
        if name not in body:
            raise ValidationError(f"{name} is required", field=name)
    async with _app(request).connection() as conn:
        result = await limits.set_queue_limit(
            conn,
            str(request.path_params["queue"]),
            body["max"],
            body["duration"],
            actor=API_ACTOR,
        )
    return JSONResponse(result.to_dict())


async def clear_queue_limit(request: Request) -> Response:
    async with _app(request).connection() as conn:
        result = await limits.clear_queue_limit(
            conn, str(request.path_params["queue"]), actor=API_ACTOR
        )
    return JSONResponse(result.to_dict())


# ------------------------------------------------------------------ waiting


def _timeout(request: Request) -> float:
    raw = query_param(request, "timeout")
    if raw is None:
        return WAIT_DEFAULT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= WAIT_MAX_S:
        raise ValidationError(
            f"timeout must be a number of seconds from 0 to {WAIT_MAX_S:g} (got {raw[:40]!r})",
            field="timeout",
        )
    return value


async def wait_job(request: Request) -> Response:
    """Long-poll: answers once the job finished, or after `timeout` seconds with
    `done: false`; either way with the job as GET /api/jobs/{id} shows it."""
    job_id = job_id_param(request)
    timeout = _timeout(request)
    done = True
    try:
        await _app(request).wait(job_id, timeout=timeout)
    except JobFailed:
        pass
    except TimeoutError:
        done = False
    job = await _ops(request).get_job(job_id)
    return JSONResponse({"done": done, "job": shown_job(job)})


# ------------------------------------------------------------------ events


def _sse(seq: int, event: JobEvent) -> str:
    data = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {seq}\nevent: {event.event}\ndata: {data}\n\n"


async def stream_events(request: Request) -> Response:
    """Server-Sent Events: one `event:` per job event, in the order they arrive (which
    is commit order for each job); a comment line every 15 s keeps proxies from
    closing an idle stream. There is no replay: a client that reconnects gets the
    events from then on (use /wait for a job's outcome)."""
    queue = query_param(request, "queue")
    if queue is not None:
        # Refused here, before the response starts: a stream for a queue that cannot
        # exist would otherwise answer 200 and stay open forever.
        validate_queue(queue)
    job = query_param(request, "job")
    event = query_param(request, "event")
    job_ids = [job_id_param_value(job)] if job else None
    if event is not None and event not in EVENT_NAMES:
        raise ValidationError(f"event must be one of {', '.join(EVENT_NAMES)}", field="event")
    stream = _app(request).events(
        queues=[queue] if queue else None,
        job_ids=job_ids,
        events=[event] if event else None,
    )
    await stream.__aenter__()  # subscribed before the client sees the response start

    async def body() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            seq = 0
            while True:
                try:
                    item = await asyncio.wait_for(stream.__anext__(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                except StopAsyncIteration:
                    return
                seq += 1
                yield _sse(seq, item)
        finally:
            await stream.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def job_id_param_value(raw: str) -> Any:
    from uuid import UUID

    try:
        return UUID(raw)
    except ValueError:
        raise ValidationError(
            f"job must be a job id (UUID), got {raw[:80]!r}", field="job"
        ) from None


def routes() -> list[BaseRoute]:
    return [
        Route("/api/queues/{queue}/limit", set_queue_limit, methods=["PUT"]),
        Route("/api/queues/{queue}/limit", clear_queue_limit, methods=["DELETE"]),
        Route("/api/jobs/{id}/wait", wait_job, methods=["GET"]),
        Route("/api/events", stream_events, methods=["GET"]),
    ]


# ------------------------------------------------------------------ OpenAPI


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_schemas() -> dict[str, Any]:
    limit_value = {"type": "integer", "minimum": 1}
    return {
        "QueueLimit": {
            "type": "object",
            "required": ["queue", "max", "duration"],
            "properties": {
                "queue": {"type": "string"},
                "max": {**limit_value, "nullable": True},
                "duration": {**limit_value, "nullable": True},
            },
        },
        "QueueLimitSet": {
            "type": "object",
            "required": ["max", "duration"],
            "additionalProperties": False,
            "properties": {
                "max": {"type": "integer", "minimum": 1, "maximum": limits.MAX_JOBS},
                "duration": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": limits.MAX_DURATION_MS,
                    "description": "Window length in milliseconds",
                },
            },
        },
        "JobWait": {
            "type": "object",
            "required": ["done", "job"],
            "properties": {"done": {"type": "boolean"}, "job": _ref("Job")},
        },
    }


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    def responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
        return {**ok, **{c: errors[c] for c in ("401", "503", *codes)}}

    def json_body(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }

    queue_param = {
        "name": "queue",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": QUEUE_PATTERN},
    }
    job_param = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
        "description": "Job id",
    }

    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": description,
        }

    return {
        "/api/queues/{queue}/limit": {
            "parameters": [queue_param],
            "put": {
                "operationId": "setQueueLimit",
                "summary": "Limit the queue to at most `max` job starts per `duration` ms, "
                "across all workers (creates the queue if needed)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("QueueLimitSet")}},
                },
                "responses": responses(
                    {"200": json_body("The queue's limit", "QueueLimit")},
                    "400",
                    "413",
                    "415",
                    "422",
                ),
            },
            "delete": {
                "operationId": "clearQueueLimit",
                "summary": "Remove the queue's rate limit",
                "responses": responses(
                    {"200": json_body("The queue without a limit", "QueueLimit")}, "404", "422"
                ),
            },
        },
        "/api/jobs/{id}/wait": {
            "parameters": [job_param],
            "get": {
                "operationId": "waitForJob",
                "summary": "Long-poll until the job completed, failed or was cancelled, or "
                "`timeout` seconds passed (`done` says which); returns the job",
                "parameters": [
                    query(
                        "timeout",
                        {
                            "type": "number",
                            "minimum": 0,
                            "maximum": WAIT_MAX_S,
                            "default": WAIT_DEFAULT_S,
                        },
                        "Longest wait in seconds",
                    )
                ],
                "responses": responses(
                    {"200": json_body("Whether the job finished, and the job", "JobWait")},
                    "400",
                    "404",
                    "422",
                ),
            },
        },
        "/api/events": {
            "get": {
                "operationId": "streamEvents",
                "summary": "Job events as Server-Sent Events (event: progress, completed, "
                "failed, retrying, stalled or cancelled; data: {event, id, queue, type, "
                "status[, progress]}); never ends by itself",
                "parameters": [
                    query("queue", {"type": "string", "pattern": QUEUE_PATTERN}, "Only this queue"),
                    query("job", {"type": "string", "format": "uuid"}, "Only this job"),
                    query(
                        "event", {"type": "string", "enum": list(EVENT_NAMES)}, "Only this event"
                    ),
                ],
                "responses": responses(
                    {
                        "200": {
                            "description": "An endless text/event-stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        }
                    },
                    "400",
                    "422",
                ),
            }
        },
    }
