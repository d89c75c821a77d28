"""`custom`: run business logic in a Hasura Action handler.

The job POSTs the body Hasura itself sends to an action handler,

    {"action": {"name": ACTION}, "input": INPUT,
     "session_variables": {"x-hasura-role": "admin", ...}, "request_query": ""}

to `url` (or `JOBS_CUSTOM_ACTION_URL`) with the configured headers
(`JOBS_CUSTOM_ACTION_HEADERS`, e.g. `x-hasura-admin-secret`) and the payload's own.

The configured headers are credentials, and the payload is written by whoever may
create jobs, so a payload `url` must be on an action endpoint the operator named: the
origin of `JOBS_CUSTOM_ACTION_URL` or one of `JOBS_CUSTOM_ACTION_ORIGINS`. Any other
`url` fails the job before a request is made, and redirects are followed only between
those origins. Without any configured endpoint a `url` is an ordinary outbound call:
it gets no configured headers and the `http-request` egress policy applies.
A 2xx JSON response is the job's result. Any other answer fails the attempt (retried
like any failure); when the body is a Hasura action error `{"message", "extensions"}`,
the failure carries that message and the extensions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pgjobs.errors import Discard
from pgjobs.netpolicy import origin_of
from pgjobs.types import payload as p
from pgjobs.types.egress import EgressPolicy
from pgjobs.types.httpcall import Response, Route, send

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
        self.endpoints = endpoints(settings)
        if self.endpoints and origin_of(url) not in self.endpoints:
            raise p.bad(
                "url",
                f"{origin_of(url) or url} is not a configured action endpoint: custom jobs "
                "call only the origin of JOBS_CUSTOM_ACTION_URL and JOBS_CUSTOM_ACTION_ORIGINS",
            )
        self.input: Any = data.get("input", {})
        session = p.string_map(data, "sessionVariables")
        for name in session:
            if not name.lower().startswith("x-hasura-"):
                raise p.bad(f"sessionVariables.{name}", "names must start with x-hasura-")
        self.session = {**DEFAULT_SESSION, **{k.lower(): v for k, v in session.items()}}
        configured = dict(settings.custom_action_headers) if self.endpoints else {}
        self.headers = {
            **{k.lower(): v for k, v in configured.items()},
            **{k.lower(): v for k, v in p.string_map(data, "headers").items()},
        }
        self.route = _route(self.endpoints, settings)
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


def endpoints(settings: Settings) -> frozenset[str]:
    """The origins the configured headers may be sent to."""
    configured = origin_of(settings.custom_action_url) if settings.custom_action_url else None
    return frozenset({*settings.custom_action_origins, *([configured] if configured else [])})


def _route(endpoints: frozenset[str], settings: Settings) -> Route:
    if not endpoints:
        return Route(EgressPolicy.of(settings.http_allow, settings.http_deny))
    # The operator's own endpoints are not subject to the outbound policy (an action
    # handler usually runs next to the worker), but nothing else is reached from them.

    def refusal(url: Any) -> str | None:
        origin = origin_of(str(url))
        if origin in endpoints:
            return None
        return (
            f"{origin} is not a configured action endpoint "
            "(JOBS_CUSTOM_ACTION_URL, JOBS_CUSTOM_ACTION_ORIGINS)"
        )

    return Route(None, origin_refusal=refusal)


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
        route=call.route,
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
