"""REST API handlers and the route table (`routes()`), all in one place.

Handlers are thin: parse and validate the request (pgjobs.web.requests), call one
operation (pgjobs.ops / App), serialise its `to_dict()`. Errors raise and are rendered
by pgjobs.web.errors.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs._version import __version__
from pgjobs.contract.jsonschema import reject_unknown_fields
from pgjobs.contract.shapes import BulkCreate
from pgjobs.errors import ValidationError
from pgjobs.install import redis_status
from pgjobs.ops import JobFilter, attempt_logs
from pgjobs.validation import DEFAULT_WINDOW_HOURS
from pgjobs.web import flows_api, live_api, schedules_api
from pgjobs.web import metrics as metrics_text
from pgjobs.web.auth import token_ok
from pgjobs.web.requests import (
    bool_param,
    float_param,
    job_id_param,
    object_body,
    query_param,
    read_json,
)
from pgjobs.web.shown import shown_job, shown_logs, shown_page
from pgjobs.web.state import openapi_of, ops_of

# A single job's body may carry a payload up to JOBS_MAX_PAYLOAD_BYTES plus its options;
# JSON escapes can make the body several times the stored size.
BODY_OVERHEAD = 64 * 1024
BULK_BODY_LIMIT = 32 * 1024 * 1024
HEALTH_TIMEOUT_S = 3.0
API_ACTOR = "api"
log = logging.getLogger("pgjobs.web")


def single_body_limit(request: Request) -> int:
    return int(ops_of(request).settings.max_payload_bytes) * 2 + BODY_OVERHEAD


# ------------------------------------------------------------------ service


async def health(request: Request) -> Response:
    """200 when PostgreSQL answers, 503 when it does not; Redis is reported, never fatal.

    /health is open to anyone, so why a service is down (error text naming hosts,
    users, databases) is only shown to callers with the API token, and logged; others
    read "down"."""
    ops = ops_of(request)
    database = "ok"
    try:
        await asyncio.wait_for(ops.ping(), HEALTH_TIMEOUT_S)
    except Exception as exc:  # any failure to answer means "down"
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "timed out"
        database = f"down: {reason[:200]}"
    try:
        redis = await asyncio.wait_for(
            asyncio.to_thread(redis_status, ops.settings.redis_url), HEALTH_TIMEOUT_S
        )
    except TimeoutError:
        redis = "down: timed out"
    for name, state in (("database", database), ("redis", redis)):
        if state.startswith("down"):
            log.warning("health: %s %s", name, state)
    ok = database == "ok"
    detailed = _has_token(request)
    body = {
        "status": "ok" if ok else "error",
        "database": database if detailed else _generic(database),
        "redis": redis[:300] if detailed else _generic(redis),
        "version": __version__,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _has_token(request: Request) -> bool:
    token = ops_of(request).settings.api_token
    return (
        token is not None and token != "" and token_ok(request.headers.get("authorization"), token)
    )


def _generic(state: str) -> str:
    return "down" if state.startswith("down") else state


async def metrics(request: Request) -> Response:
    snapshot = await ops_of(request).metrics_snapshot()
    return Response(
        metrics_text.render(snapshot),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


async def openapi(request: Request) -> Response:
    # The document describes this route table, so pgjobs.web.openapi imports this module;
    # pgjobs.web.app hands its builder to the handlers through the app's state.
    return JSONResponse(openapi_of(request))


# ------------------------------------------------------------------ jobs


async def create_job(request: Request) -> Response:
    body = object_body(await read_json(request, single_body_limit(request)))
    job = await ops_of(request).create_job(body)
    if isinstance(job, UUID):  # created; only reading it back failed
        return JSONResponse({"id": str(job)}, status_code=201)
    return JSONResponse(shown_job(job), status_code=201)


async def create_jobs(request: Request) -> Response:
    body = object_body(await read_json(request, BULK_BODY_LIMIT))
    reject_unknown_fields(body, BulkCreate)
    jobs = body.get("jobs")
    if not isinstance(jobs, list):
        raise ValidationError("jobs must be a list of job objects", field="jobs")
    ids = await ops_of(request).create_jobs(jobs)
    return JSONResponse({"ids": [str(i) for i in ids], "count": len(ids)}, status_code=201)


async def list_jobs(request: Request) -> Response:
    search = query_param(request, "q")
    if search is not None:
        return await _search_jobs(request, search)
    filters = JobFilter.build(
        queue=query_param(request, "queue"),
        status=query_param(request, "status"),
        type=query_param(request, "type"),
        created_after=query_param(request, "created_after"),
        created_before=query_param(request, "created_before"),
        id_prefix=query_param(request, "id"),
    )
    page = await ops_of(request).list_jobs(
        filters, limit=query_param(request, "limit"), cursor=query_param(request, "cursor")
    )
    return JSONResponse(shown_page(page))


# The listing's filters; a search (q) says all of them in its own words.
LIST_FILTERS = ("queue", "status", "type", "created_after", "created_before", "id")


async def _search_jobs(request: Request, search: str) -> Response:
    mixed = [name for name in LIST_FILTERS if query_param(request, name) is not None]
    if mixed:
        raise ValidationError(
            f"q cannot be combined with {', '.join(mixed)}: write them into q "
            "(queue:NAME status:S type:T id:PREFIX)",
            field="q",
        )
    page = await ops_of(request).search_jobs(
        search, limit=query_param(request, "limit"), cursor=query_param(request, "cursor")
    )
    return JSONResponse(shown_page(page))


async def get_job(request: Request) -> Response:
    ops = ops_of(request)
    job = await ops.get_job(job_id_param(request))
    body = shown_job(job)
    logs = await ops.job_logs(job.id)
    body["logs"] = shown_logs(attempt_logs(logs.lines))
    body["logs_attempts_omitted"] = logs.attempts_omitted
    return JSONResponse(body)


async def retry_job(request: Request) -> Response:
    job = await ops_of(request).retry_job(job_id_param(request), actor=API_ACTOR)
    return JSONResponse(shown_job(job))


async def cancel_job(request: Request) -> Response:
    job = await ops_of(request).cancel_job(job_id_param(request), actor=API_ACTOR)
    return JSONResponse(shown_job(job))


async def delete_job(request: Request) -> Response:
    await ops_of(request).delete_job(job_id_param(request), actor=API_ACTOR)
    return Response(status_code=204)


# ------------------------------------------------------------------ queues and stats


async def stats(request: Request) -> Response:
    hours = float_param(request, "hours", DEFAULT_WINDOW_HOURS)
    report = await ops_of(request).stats(
        queue=query_param(request, "queue"),
        hours=hours,
        performance=bool_param(request, "performance"),
    )
    return JSONResponse(report.to_dict())


async def list_queues(request: Request) -> Response:
    queues = await ops_of(request).queues()
    return JSONResponse({"queues": [q.to_dict() for q in queues]})


async def pause_queue(request: Request) -> Response:
    state = await ops_of(request).pause(str(request.path_params["queue"]), actor=API_ACTOR)
    return JSONResponse(state.to_dict())


async def resume_queue(request: Request) -> Response:
    state = await ops_of(request).resume(str(request.path_params["queue"]), actor=API_ACTOR)
    return JSONResponse(state.to_dict())


async def list_workers(request: Request) -> Response:
    workers = await ops_of(request).workers()
    return JSONResponse({"workers": [w.to_dict() for w in workers]})


def routes() -> list[BaseRoute]:
    """Every HTTP route except the dashboard's (see pgjobs.web.dashboard)."""
    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/stats", stats, methods=["GET"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/bulk", create_jobs, methods=["POST"]),
        Route("/api/jobs/{id}", get_job, methods=["GET"]),
        Route("/api/jobs/{id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{id}/retry", retry_job, methods=["POST"]),
        Route("/api/jobs/{id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/queues", list_queues, methods=["GET"]),
        Route("/api/queues/{queue}/pause", pause_queue, methods=["POST"]),
        Route("/api/queues/{queue}/resume", resume_queue, methods=["POST"]),
        Route("/api/workers", list_workers, methods=["GET"]),
        *schedules_api.routes(),
        *live_api.routes(),
        *flows_api.routes(),
    ]
