"""Reading untrusted input: JSON bodies with a size limit, query and path parameters.

Anything malformed becomes a 4xx `HTTPError` or `ValidationError` here, before it can
reach the database (PostgreSQL rejects NUL characters, and Python's int parser rejects
numbers longer than 4,300 digits — both would otherwise surface as 500s).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from starlette.requests import ClientDisconnect, Request

from pgjobs.errors import JobNotFound, NotFound, ValidationError
from pgjobs.validation import MAX_QUERY_PARAM_LENGTH, SCHEDULE_NAME
from pgjobs.web.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# How much of an oversized body is read and dropped so that the 413 reaches the client.
DRAIN_FACTOR = 4
CLOSE = {"Connection": "close"}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing bodies over `limit` bytes with a 413.

    A refused body is still read (and thrown away) up to DRAIN_FACTOR times the limit:
    clients that send the whole body before reading the answer (urllib, requests)
    would otherwise see the connection reset instead of the 413. Beyond that bound the
    connection is closed unread."""
    declared = request.headers.get("content-length", "")
    bound = limit * DRAIN_FACTOR
    if declared.isdigit() and int(declared) > limit:
        if int(declared) <= bound:
            await discard(request, bound)
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}", CLOSE)
    body = bytearray()
    more = True
    while more:
        chunk, more = await _next_chunk(request)
        body += chunk
        if len(body) > limit:
            if more:
                await discard(request, bound - len(body))
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", CLOSE)
    return bytes(body)


async def discard(request: Request, bound: int) -> None:
    """Read and drop the rest of the body, at most about `bound` more bytes."""
    seen, more = 0, True
    while more and seen <= bound:
        chunk, more = await _next_chunk(request)
        seen += len(chunk)


async def _next_chunk(request: Request) -> tuple[bytes, bool]:
    """(the next piece of the body, whether more follows)."""
    message = await request.receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return bytes(message.get("body", b"")), bool(message.get("more_body", False))


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"malformed JSON: {name} is not a JSON number")


def is_json_media_type(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, whatever the parameters."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, refusing bodies over `limit` bytes and any other
    media type (a cross-site form can send text/plain, never application/json)."""
    if not is_json_media_type(request.headers.get("content-type")):
        await discard(request, limit)  # so that the client can read the answer
        raise UnsupportedMediaType(
            "request body must be JSON: send Content-Type: application/json",
            {"Accept-Post": "application/json"},
        )
    body = await read_body(request, limit)
    if not body.strip():
        raise BadRequest("request body is empty: send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise BadRequest(f"malformed JSON: {str(exc)[:120]}") from None


def query_param(request: Request, name: str) -> str | None:
    """A query parameter, or None when absent or empty."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise BadRequest(f"query parameter {name!r} contains a NUL character")
    if len(value) > MAX_QUERY_PARAM_LENGTH:
        raise BadRequest(f"query parameter {name!r} is too long")
    return value


def bool_param(request: Request, name: str) -> bool:
    value = query_param(request, name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false")


def float_param(request: Request, name: str, default: float) -> float:
    value = query_param(request, name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValidationError(f"{name} must be a number (got {value[:40]!r})", field=name) from None


def job_id_param(request: Request) -> UUID:
    """The `{id}` path parameter; an id that is not a UUID names no job (404)."""
    raw = str(request.path_params["id"])
    try:
        return UUID(raw)
    except ValueError:
        shown = raw[:80].replace("\x00", "\\0")
        raise JobNotFound(f"no job with id {shown!r} (job ids are UUIDs)") from None


def schedule_name_param(request: Request) -> str:
    """The `{name}` path parameter; a name no schedule could have names none (404)."""
    name = str(request.path_params["name"])
    if not SCHEDULE_NAME.match(name) or name.endswith("\n"):
        raise NotFound(f"no schedule named {name[:80]!r}")
    return name


def object_body(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return body
