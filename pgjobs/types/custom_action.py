"""`custom`: run business logic in a Hasura Action handler.

The job POSTs the body Hasura itself sends to an action handler,

    {"action": {"name": ACTION}, "input": INPUT,
     "session_variables": {"x-hasura-role": "admin", ...}, "request_query": ""}

to `url` (or `JOBS_CUSTOM_ACTION_URL`) with the configured headers
(`JOBS_CUSTOM_ACTION_HEADERS`, e.g. `x-hasura-admin-secret`) and the payload's own.
A 2xx JSON response is the job's result. Any other answer fails the attempt (retried
like any failure); when the body is a Hasura action error `{"message", "extensions"}`,
the failure carries that message and the extensions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pgjobs.errors import Discard
from pgjobs.types import payload as p
from pgjobs.types.httpcall import Response, send

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import JobContext

TYPE = "custom"
KNOWN_FIELDS = frozenset({"url", "action", "input", "sessionVariables", "headers", "timeout"})
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_SESSION = {"x-hasura-role": "admin"}


class ActionFailed(Exception):
    """The action handler answered with an error."""

    def __init__(self, message: str, extensions: Any = None, status: int | None = None) -> None:
        detail = message
        if extensions:
            detail += f" (extensions: {json.dumps(extensions, sort_keys=True)})"
        super().__init__(detail)
        self.extensions = extensions
        self.status = status


class ActionCall:
    """A validated custom payload."""

    def __init__(self, payload: Any, settings: Settings) -> None:
        data = p.as_object(payload)
        self.action: str = p.text(data, "action")
        url = p.text(data, "url", settings.custom_action_url)
        if url is None:
            raise p.bad("url", "required (or set JOBS_CUSTOM_ACTION_URL)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise p.bad("url", f"must be an http:// or https:// URL (got {url!r})")
        self.url: str = url
        self.input: Any = data.get("input", {})
        session = p.string_map(data, "sessionVariables")
        for name in session:
            if not name.lower().startswith("x-hasura-"):
                raise p.bad(f"sessionVariables.{name}", "names must start with x-hasura-")
        self.session = {**DEFAULT_SESSION, **{k.lower(): v for k, v in session.items()}}
        self.headers = {
            **{k.lower(): v for k, v in settings.custom_action_headers},
            **{k.lower(): v for k, v in p.string_map(data, "headers").items()},
        }
        self.timeout_s = (
            p.integer(data, "timeout", DEFAULT_TIMEOUT_MS, minimum=1, maximum=86_400_000) / 1000
        )

    def body(self) -> dict[str, Any]:
        return {
            "action": {"name": self.action},
            "input": self.input,
            "session_variables": self.session,
            "request_query": "",
        }


def error_of(response: Response, action: str) -> ActionFailed:
    """The failure for a non-2xx answer, using Hasura's `{message, extensions}` if given."""
    prefix = f"action {action} failed with HTTP {response.status}"
    body = response.decoded_body()
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return ActionFailed(f"{prefix}: {body['message']}", body.get("extensions"), response.status)
    detail = f": {response.snippet()}" if response.body else ""
    return ActionFailed(f"{prefix}{detail}", status=response.status)


async def handle(ctx: JobContext, payload: Any) -> Any:
    settings = ctx.app.settings
    unknown = p.unknown_fields(p.as_object(payload), KNOWN_FIELDS)
    if unknown:
        ctx.logger.warning("custom ignores unknown payload fields: %s", unknown)
    call = ActionCall(payload, settings)
    response = await send(
        "POST",
        call.url,
        headers=call.headers,
        json_body=call.body(),
        timeout_s=call.timeout_s,
        max_bytes=settings.http_max_response_bytes,
    )
    if not 200 <= response.status <= 299:
        raise error_of(response, call.action)
    if response.truncated:
        raise Discard(
            f"action {call.action} answered with more than JOBS_HTTP_MAX_RESPONSE_BYTES "
            f"({settings.http_max_response_bytes}) bytes"
        )
    if not response.body:
        return None
    try:
        return json.loads(response.body)
    except ValueError:
        raise ActionFailed(
            f"action {call.action} answered HTTP {response.status} with a body that is not "
            f"JSON: {response.snippet()}",
            status=response.status,
        ) from None
