"""REST route for flows: `POST /api/flows` creates a tree or DAG of jobs in one
transaction (see pgjobs.producer.flows). Its shapes: pgjobs.contract.shapes.FlowCreate."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs.producer.flows import flow_request_jobs
from pgjobs.web.requests import object_body, read_json
from pgjobs.web.state import ops_of

BODY_LIMIT = 32 * 1024 * 1024


async def create_flow(request: Request) -> Response:
    body = object_body(await read_json(request, BODY_LIMIT))
    created = await ops_of(request).app.flow(flow_request_jobs(body))
    return JSONResponse(created.to_dict(), status_code=201)


def routes() -> list[BaseRoute]:
    return [Route("/api/flows", create_flow, methods=["POST"])]
