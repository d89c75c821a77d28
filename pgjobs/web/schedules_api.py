"""REST routes for cron schedules, and their part of the OpenAPI document:
`GET|POST /api/schedules`, `GET|PATCH|DELETE /api/schedules/{name}`."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs.errors import NotFound
from pgjobs.models import PRIORITIES
from pgjobs.web.openapi import QUEUE_PATTERN
from pgjobs.web.requests import object_body, read_json
from pgjobs.web.state import ops_of

BODY_LIMIT = 4 * 1024 * 1024
UPCOMING = 5
API_ACTOR = "api"
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$"
_NAME = re.compile(NAME_PATTERN)


def _name(request: Request) -> str:
    """The `{name}` path parameter; a name no schedule could have names none (404)."""
    name = str(request.path_params["name"])
    if not _NAME.match(name) or name.endswith("\n"):
        raise NotFound(f"no schedule named {name[:80]!r}")
    return name


async def list_schedules(request: Request) -> Response:
    schedules = await ops_of(request).schedules()
    return JSONResponse({"schedules": [s.to_dict() for s in schedules]})


async def create_schedule(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    created = await ops_of(request).create_schedule(body, actor=API_ACTOR)
    return JSONResponse(created.to_dict(), status_code=201)


async def get_schedule(request: Request) -> Response:
    schedule = await ops_of(request).schedule(_name(request), upcoming=UPCOMING)
    return JSONResponse(schedule.to_dict())


async def update_schedule(request: Request) -> Response:
    name = _name(request)
    body = object_body(await read_json(request, BODY_LIMIT))
    updated = await ops_of(request).update_schedule(name, body, actor=API_ACTOR)
    return JSONResponse(updated.to_dict())


async def delete_schedule(request: Request) -> Response:
    await ops_of(request).delete_schedule(_name(request), actor=API_ACTOR)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/schedules", list_schedules, methods=["GET"]),
        Route("/api/schedules", create_schedule, methods=["POST"]),
        Route("/api/schedules/{name}", get_schedule, methods=["GET"]),
        Route("/api/schedules/{name}", update_schedule, methods=["PATCH"]),
        Route("/api/schedules/{name}", delete_schedule, methods=["DELETE"]),
    ]


# ------------------------------------------------------------------ OpenAPI


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_schemas() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    nullable_time = {**time, "nullable": True}
    fields: dict[str, Any] = {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "type": {"type": "string", "minLength": 1, "maxLength": 100},
        "cron": {
            "type": "string",
            "description": "5 fields (or 6 with seconds last), or @hourly/@daily/...",
        },
        "payload": {"type": "object"},
        "queue": {"type": "string", "pattern": QUEUE_PATTERN},
        "timezone": {"type": "string", "description": "IANA name, default UTC"},
        "description": {"type": "string", "nullable": True, "maxLength": 10_000},
        "misfire": {"type": "string", "enum": ["skip", "run_once", "catch_up"]},
        "max_catch_up": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "priority": {
            "oneOf": [
                {"type": "string", "enum": list(PRIORITIES)},
                {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000},
            ]
        },
        "enabled": {"type": "boolean"},
        "options": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
                "maxRetries": {"type": "integer", "minimum": 0, "maximum": 999},
                "backoff": {},
                "timeout": {"type": "integer", "minimum": 1},
                "rateLimitKey": {"type": "string", "minLength": 1, "maxLength": 255},
                "metadata": {"type": "object"},
            },
        },
    }
    schedule = {
        "type": "object",
        "required": [
            "id",
            "name",
            "type",
            "queue",
            "cron_expression",
            "timezone",
            "payload",
            "enabled",
            "misfire_policy",
            "next_run_at",
            "last_run_at",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "queue": {"type": "string"},
            "cron_expression": {"type": "string"},
            "timezone": {"type": "string"},
            "payload": {},
            "description": {"type": "string", "nullable": True},
            "enabled": {"type": "boolean"},
            "misfire_policy": {"type": "string"},
            "max_catch_up": {"type": "integer"},
            "priority": {"type": "integer"},
            "priority_name": {"type": "string", "nullable": True},
            "options": {"type": "object"},
            "last_run_at": nullable_time,
            "next_run_at": nullable_time,
            "created_at": time,
            "updated_at": time,
            "upcoming": {"type": "array", "items": time},
        },
    }
    return {
        "Schedule": schedule,
        "ScheduleCreate": {
            "type": "object",
            "required": ["name", "type", "cron"],
            "additionalProperties": False,
            "properties": fields,
        },
        "ScheduleChange": {
            "type": "object",
            "additionalProperties": False,
            "properties": fields,
        },
    }


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    def responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
        return {**ok, **{c: errors[c] for c in ("401", "503", *codes)}}

    def body(schema: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}

    def one(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": _ref("Schedule")}},
        }

    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Schedule name",
    }
    listing = {
        "type": "object",
        "required": ["schedules"],
        "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
    }
    return {
        "/api/schedules": {
            "get": {
                "operationId": "listSchedules",
                "summary": "Every cron schedule",
                "responses": responses(
                    {
                        "200": {
                            "description": "Schedules by name",
                            "content": {"application/json": {"schema": listing}},
                        }
                    }
                ),
            },
            "post": {
                "operationId": "createSchedule",
                "summary": "Create a cron schedule",
                "requestBody": body("ScheduleCreate"),
                "responses": responses(
                    {"201": one("The schedule as stored")}, "400", "409", "413", "415", "422"
                ),
            },
        },
        "/api/schedules/{name}": {
            "parameters": [name_param],
            "get": {
                "operationId": "getSchedule",
                "summary": "A schedule with its next five fire times",
                "responses": responses({"200": one("The schedule")}, "404"),
            },
            "patch": {
                "operationId": "updateSchedule",
                "summary": "Change fields of a schedule (enable/disable with `enabled`)",
                "requestBody": body("ScheduleChange"),
                "responses": responses(
                    {"200": one("The schedule as stored")}, "400", "404", "409", "413", "415", "422"
                ),
            },
            "delete": {
                "operationId": "deleteSchedule",
                "summary": "Delete a schedule",
                "responses": responses({"204": {"description": "Deleted"}}, "404"),
            },
        },
    }
