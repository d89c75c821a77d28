"""REST route for flows, and its part of the OpenAPI document: `POST /api/flows`
creates a tree or DAG of jobs in one transaction (see pgjobs.producer.flows)."""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs.ops import Ops
from pgjobs.producer.flows import MAX_API_FLOW, flow_request_jobs
from pgjobs.producer.options import MAX_KEY_LENGTH
from pgjobs.web.openapi import QUEUE_PATTERN
from pgjobs.web.requests import object_body, read_json

BODY_LIMIT = 32 * 1024 * 1024


async def create_flow(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    ops: Ops = request.app.state.ops
    created = await ops.app.flow(flow_request_jobs(body))
    return JSONResponse(created.to_dict(), status_code=201)


def routes() -> list[BaseRoute]:
    return [Route("/api/flows", create_flow, methods=["POST"])]


# ------------------------------------------------------------------ OpenAPI


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_schemas(job_options: dict[str, Any]) -> dict[str, Any]:
    """FlowCreate and FlowCreated; `job_options` is the JobOptions schema, whose
    dependsOn here also takes the refs of jobs in the same flow."""
    options = copy.deepcopy(job_options)
    ref_or_id = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "description": "The ref of a job in this flow, or the id of an existing job",
    }
    options["properties"]["dependsOn"] = {
        "oneOf": [ref_or_id, {"type": "array", "items": ref_or_id, "maxItems": MAX_API_FLOW}]
    }
    job = {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "ref": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_KEY_LENGTH,
                "description": "A name for this job that other jobs' dependsOn can use",
            },
            "type": {"type": "string", "minLength": 1, "maxLength": 100},
            "queue": {"type": "string", "pattern": QUEUE_PATTERN},
            "payload": {"type": "object"},
            "options": _ref("FlowJobOptions"),
        },
    }
    return {
        "FlowJobOptions": options,
        "FlowJob": job,
        "FlowCreate": {
            "type": "object",
            "required": ["jobs"],
            "additionalProperties": False,
            "properties": {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_API_FLOW,
                    "items": _ref("FlowJob"),
                }
            },
        },
        "FlowCreated": {
            "type": "object",
            "required": ["ids", "refs", "count"],
            "properties": {
                "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                "refs": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "format": "uuid"},
                },
                "count": {"type": "integer"},
            },
        },
    }


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "/api/flows": {
            "post": {
                "operationId": "createFlow",
                "summary": "Create a tree or DAG of jobs in one transaction (all or none)",
                "description": "Jobs wait (status blocked) until the jobs they depend on "
                "finished; `onDependencyFailure` says what happens when one fails. "
                "Ids are returned in request order and by ref; a job whose unique key "
                "was held is represented by the holder's id. A cycle is refused.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("FlowCreate")}},
                },
                "responses": {
                    "201": {
                        "description": "The flow's job ids",
                        "content": {"application/json": {"schema": _ref("FlowCreated")}},
                    },
                    **{
                        code: errors[code]
                        for code in ("400", "401", "409", "413", "415", "422", "503")
                    },
                },
            }
        }
    }
