"""REST routes for cron schedules: `GET|POST /api/schedules`,
`GET|PATCH|DELETE /api/schedules/{name}`, `POST /api/schedules/{name}/run` (shapes:
pgjobs.contract.shapes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs.replica import primary_reads
from pgjobs.web.requests import object_body, read_json, schedule_name_param
from pgjobs.web.shown import shown_job
from pgjobs.web.state import ops_of

BODY_LIMIT = 4 * 1024 * 1024
UPCOMING = 5
API_ACTOR = "api"


async def list_schedules(request: Request) -> Response:
    # A client that has just created or changed a schedule lists what it did.
    with primary_reads():
        schedules = await ops_of(request).schedules()
    return JSONResponse({"schedules": [s.to_dict() for s in schedules]})


async def create_schedule(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    created = await ops_of(request).create_schedule(body, actor=API_ACTOR)
    return JSONResponse(created.to_dict(), status_code=201)


async def get_schedule(request: Request) -> Response:
    schedule = await ops_of(request).schedule(schedule_name_param(request), upcoming=UPCOMING)
    return JSONResponse(schedule.to_dict())


async def update_schedule(request: Request) -> Response:
    name = schedule_name_param(request)
    body = object_body(await read_json(request, BODY_LIMIT))
    updated = await ops_of(request).update_schedule(name, body, actor=API_ACTOR)
    return JSONResponse(updated.to_dict())


async def delete_schedule(request: Request) -> Response:
    await ops_of(request).delete_schedule(schedule_name_param(request), actor=API_ACTOR)
    return Response(status_code=204)


async def run_schedule(request: Request) -> Response:
    """Enqueue the schedule's job now, without moving its next fire."""
    job = await ops_of(request).run_schedule_now(schedule_name_param(request), actor=API_ACTOR)
    return JSONResponse(shown_job(job), status_code=201)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/schedules", list_schedules, methods=["GET"]),
        Route("/api/schedules", create_schedule, methods=["POST"]),
        Route("/api/schedules/{name}", get_schedule, methods=["GET"]),
        Route("/api/schedules/{name}", update_schedule, methods=["PATCH"]),
        Route("/api/schedules/{name}", delete_schedule, methods=["DELETE"]),
        Route("/api/schedules/{name}/run", run_schedule, methods=["POST"]),
    ]
