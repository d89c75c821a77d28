"""The OpenAPI 3 document of the REST API, generated from the code that serves it.

Paths, methods and path parameters come from the Starlette route table
(pgjobs.web.api.routes); what each operation takes and answers from
pgjobs.contract.operations; the body schemas from the shapes in pgjobs.contract.shapes;
which paths need the bearer token from pgjobs.web.auth. Building it fails when a route
has no declared operation or an operation no route. Tests run schemathesis against the
served document, so a handler and its description cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Route

from pgjobs._version import __version__
from pgjobs.config import Settings
from pgjobs.contract import shapes
from pgjobs.contract.jsonschema import SchemaBuilder
from pgjobs.contract.operations import (
    ERRORS,
    OPERATIONS,
    PATH_PARAMS,
    Answer,
    Operation,
    Param,
)
from pgjobs.web.api import routes
from pgjobs.web.auth import API_PREFIXES

Schema = dict[str, Any]
DOCUMENTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Routes of the API that AuthMiddleware leaves open (the dashboard's are not documented).
OPEN_PATHS = ("/health",)


def needs_token(path: str) -> bool:
    """Whether AuthMiddleware asks for the bearer token on `path` (when one is set)."""
    return path.startswith(API_PREFIXES)


def _method_order(method: str) -> int:
    return DOCUMENTED_METHODS.index(method) if method in DOCUMENTED_METHODS else 99


def build_document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The document for these routes (their declared operations must match exactly)."""
    declared = {(op.method, op.path): op for op in OPERATIONS}
    builder = SchemaBuilder()
    builder.ref(shapes.Error, request=False)
    paths: dict[str, Schema] = {}
    served: set[tuple[str, str]] = set()
    for route in routes:
        if not isinstance(route, Route) or not _documented(route.path):
            continue
        for method in sorted(set(route.methods or ()) - {"HEAD"}, key=_method_order):
            operation = declared.get((method, route.path))
            if operation is None:
                raise LookupError(f"route {method} {route.path} has no declared operation")
            served.add((method, route.path))
            item = paths.setdefault(route.path, {})
            names = list(route.param_convertors)
            if names:
                item["parameters"] = [_parameter(PATH_PARAMS[n], "path", builder) for n in names]
            item[method.lower()] = _operation(operation, builder)
    missing = sorted(set(declared) - served)
    if missing:
        raise LookupError(f"declared operations without a route: {missing}")
    return {"paths": paths, "schemas": builder.components}


def _documented(path: str) -> bool:
    return needs_token(path) or path in OPEN_PATHS


def _operation(op: Operation, builder: SchemaBuilder) -> Schema:
    out: Schema = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if not needs_token(op.path):
        out["security"] = []
    if op.query:
        out["parameters"] = [_parameter(p, "query", builder) for p in op.query]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": builder.ref(op.body, request=True)}},
        }
    responses = {str(a.status): _answer(a, builder) for a in op.answers}
    error = {"application/json": {"schema": builder.ref(shapes.Error, request=False)}}
    errors = [*op.errors, *((401,) if needs_token(op.path) else ()), 503]
    for status in sorted(set(errors)):
        responses.setdefault(str(status), {"description": ERRORS[status], "content": error})
    out["responses"] = responses
    return out


def _answer(answer: Answer, builder: SchemaBuilder) -> Schema:
    out: Schema = {"description": answer.description}
    if answer.body is not None:
        schema = builder.schema(answer.body, request=False)
        out["content"] = {answer.media_type: {"schema": schema}}
    return out


def _parameter(param: Param, where: str, builder: SchemaBuilder) -> Schema:
    out: Schema = {
        "name": param.name,
        "in": where,
        "required": where == "path",
        "schema": builder.schema(param.type, request=True),
    }
    if param.description:
        out["description"] = param.description
    return out


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document of the routes pgjobs.web.api serves (the same for every settings)."""
    built = build_document(routes())
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
        "paths": built["paths"],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": built["schemas"],
        },
    }
