"""REST routes for rate limits, waiting for results and the event stream:

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
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pgjobs.contract.jsonschema import check_fields
from pgjobs.contract.shapes import QueueLimitSet
from pgjobs.errors import JobFailed, ValidationError
from pgjobs.producer.options import validate_queue
from pgjobs.signals.events import EVENT_NAMES, JobEvent
from pgjobs.validation import WAIT_DEFAULT_S, WAIT_MAX_S
from pgjobs.web.requests import job_id_param, object_body, query_param, read_json
from pgjobs.web.shown import shown_job
from pgjobs.web.state import ops_of

API_ACTOR = "api"
BODY_LIMIT = 4096
KEEPALIVE_S = 15.0


# ------------------------------------------------------------------ rate limits


async def set_queue_limit(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    check_fields(body, QueueLimitSet)
    result = await ops_of(request).set_queue_limit(
        str(request.path_params["queue"]), body["max"], body["duration"], actor=API_ACTOR
    )
    return JSONResponse(result.to_dict())


async def clear_queue_limit(request: Request) -> Response:
    result = await ops_of(request).clear_queue_limit(
        str(request.path_params["queue"]), actor=API_ACTOR
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
        await ops_of(request).app.wait(job_id, timeout=timeout)
    except JobFailed:
        pass
    except TimeoutError:
        done = False
    job = await ops_of(request).get_job(job_id)
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
    stream = ops_of(request).app.events(
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
