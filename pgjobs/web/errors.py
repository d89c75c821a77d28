"""Every error the HTTP surface returns has one shape, pgjobs.contract.shapes.Error:

    {"error": {"code": "<machine code>", "message": "<one line for a human>"}}

pgjobs errors map to 400/401/404/409/413/415/422/503; anything unexpected is logged with its
traceback and answered with a bare 500 that reveals nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pgjobs.contract.shapes import Error
from pgjobs.errors import (
    ConfigError,
    Conflict,
    JobNotFound,
    NotFound,
    PgJobsError,
    ServiceUnavailable,
    ValidationError,
)

log = logging.getLogger("pgjobs.web")


class HTTPError(Exception):
    """An error that belongs to HTTP itself (bad JSON, body too large, no credentials)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class BadRequest(HTTPError):
    status, code = 400, "bad_request"


class Unauthorized(HTTPError):
    status, code = 401, "unauthorized"


class PayloadTooLarge(HTTPError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status, code = 415, "unsupported_media_type"


STATUS_OF: tuple[tuple[type[PgJobsError], int], ...] = (
    (ValidationError, 422),
    (JobNotFound, 404),
    (NotFound, 404),
    (Conflict, 409),
    (ServiceUnavailable, 503),
    (ConfigError, 500),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    # One line, bounded: a message may quote user input.
    line = " ".join(message.split())[:1000] or code
    body: Error = {"error": {"code": code, "message": line}}
    return JSONResponse(body, status_code=status, headers=headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc.status, exc.code, str(exc), exc.headers)


async def on_pgjobs_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PgJobsError)
    status = next((s for cls, s in STATUS_OF if isinstance(exc, cls)), 500)
    if status >= 500 and not isinstance(exc, ServiceUnavailable):
        log.error("request failed: %s", exc)
        return error_response(500, "internal", "internal server error")
    return error_response(status, exc.code, str(exc))


async def on_starlette_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path[:200]}"
    return error_response(exc.status_code, code, message, exc.headers)


async def on_database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", str(exc).strip().splitlines()[-1:] or exc)
    return error_response(503, "unavailable", "the database is unavailable; try again shortly")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path[:200])
    return error_response(500, "internal", "internal server error")


def exception_handlers() -> dict[Any, Any]:
    return {
        HTTPError: on_http_error,
        PgJobsError: on_pgjobs_error,
        HTTPException: on_starlette_http,
        psycopg.OperationalError: on_database_down,
        PoolTimeout: on_database_down,
        Exception: on_unexpected,
    }
