"""`http-request`: call a URL and keep the response as the job's result.

Outcome by status: one in `expectedStatus` (default 2xx) completes the job; one in
`retryOn` (default 408, 429, 500, 502, 503, 504) is retried — after the server's
`Retry-After` when it sends one; any other status fails the job at once (`Discard`),
since sending the same request again would get the same answer. Network errors and
timeouts are retried.

`Retry-After` is the server scheduling the next try, not a failure of the job, so
waiting for it does not use up an attempt; to keep a server that always answers
"later" from holding a job forever, that only lasts until the job is `retryAfterLimit`
old (default 1 h), after which such answers count as failed attempts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pgjobs.errors import Discard, RetryIn
from pgjobs.types import payload as p
from pgjobs.types.egress import EgressPolicy
from pgjobs.types.httpcall import HttpTemporaryError, Response, Route, send, shown

if TYPE_CHECKING:
    from pgjobs.context import JobContext

TYPE = "http-request"
KNOWN_FIELDS = frozenset(
    {
        "url",
        "method",
        "headers",
        "query",
        "json",
        "body",
        "timeout",
        "expectedStatus",
        "retryOn",
        "followRedirects",
        "retryAfterLimit",
    }
)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULT_RETRY_ON = (408, 429, 500, 502, 503, 504)
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_RETRY_AFTER_LIMIT_S = 3600.0

StatusSet = list[tuple[int, int]]


def statuses(value: Any, name: str, default: StatusSet) -> StatusSet:
    """Status codes as inclusive ranges: 404, "2xx", "200-299", or a list of those."""
    if value is None:
        return default
    items = value if isinstance(value, list) else [value]
    ranges: StatusSet = []
    for item in items:
        low_high = _status_range(item)
        if low_high is None:
            raise p.bad(name, f'{item!r} is not a status code, "2xx" or "200-299"')
        ranges.append(low_high)
    return ranges


def _status_range(item: Any) -> tuple[int, int] | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return (item, item) if 100 <= item <= 599 else None
    if not isinstance(item, str):
        return None
    text = item.strip().lower()
    if re.fullmatch(r"[1-5]xx", text):
        return int(text[0]) * 100, int(text[0]) * 100 + 99
    match = re.fullmatch(r"(\d{3})\s*(?:-\s*(\d{3}))?", text)
    if not match:
        return None
    low = int(match.group(1))
    high = int(match.group(2) or low)
    return (low, high) if 100 <= low <= high <= 599 else None


def _in(status: int, ranges: StatusSet) -> bool:
    return any(low <= status <= high for low, high in ranges)


class Request:
    """A validated http-request payload."""

    def __init__(self, payload: Any) -> None:
        data = p.as_object(payload)
        self.url: str = p.text(data, "url")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise p.bad("url", f"must be an http:// or https:// URL (got {self.url!r})")
        if "json" in data and "body" in data:
            raise p.bad("body", "give either json or body, not both")
        self.json: Any = data.get("json")
        body = data.get("body")
        self.json_body: Any = None
        self.content: bytes | None = None
        if "json" in data:
            self.json_body = self.json
        elif isinstance(body, dict | list):
            self.json_body = body  # an object body can only mean JSON
        elif isinstance(body, str):
            self.content = body.encode()
        elif body is not None:
            raise p.bad("body", "must be a string (or use json for structured data)")
        has_body = "json" in data or body is not None
        self.method: str = p.text(data, "method", "POST" if has_body else "GET").upper()
        if self.method not in METHODS:
            raise p.bad("method", f"must be one of {', '.join(METHODS)}")
        self.headers = p.string_map(data, "headers")
        self.query = _query(data.get("query"))
        self.timeout_s = (
            p.integer(data, "timeout", DEFAULT_TIMEOUT_MS, minimum=1, maximum=86_400_000) / 1000
        )
        self.expected = statuses(data.get("expectedStatus"), "expectedStatus", [(200, 299)])
        self.retry_on = statuses(data.get("retryOn"), "retryOn", [(s, s) for s in DEFAULT_RETRY_ON])
        self.follow_redirects = p.flag(data, "followRedirects", True)
        self.retry_after_limit_s: float = p.duration_seconds(
            data, "retryAfterLimit", DEFAULT_RETRY_AFTER_LIMIT_S
        )


def _query(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise p.bad("query", "must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        values = item if isinstance(item, list) else [item]
        converted = []
        for v in values:
            if isinstance(v, bool):
                converted.append("true" if v else "false")
            elif isinstance(v, str | int | float):
                converted.append(str(v))
            else:
                raise p.bad(f"query.{key}", "must be a string, number, boolean or a list of them")
        out[key] = converted if isinstance(item, list) else converted[0]
    return out


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds the server asked us to wait: `Retry-After: 120` or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def result_of(response: Response) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": response.headers,
        "body": response.decoded_body(),
        "bodyTruncated": response.truncated,
        "url": response.url,
        "durationMs": response.duration_ms,
    }


async def handle(ctx: JobContext, payload: Any) -> dict[str, Any]:
    settings = ctx.app.settings
    unknown = p.unknown_fields(p.as_object(payload), KNOWN_FIELDS)
    if unknown:
        ctx.logger.warning("http-request ignores unknown payload fields: %s", unknown)
    request = Request(payload)
    response = await send(
        request.method,
        request.url,
        route=Route(EgressPolicy.of(settings.http_allow, settings.http_deny)),
        headers=request.headers,
        params=request.query or None,
        json_body=request.json_body,
        content=request.content,
        timeout_s=request.timeout_s,
        max_bytes=settings.http_max_response_bytes,
        follow_redirects=request.follow_redirects,
    )
    if _in(response.status, request.expected):
        return result_of(response)
    summary = f"HTTP {response.status} {response.reason} from {request.method} {shown(request.url)}"
    if response.body:
        summary += f": {response.snippet()}"
    if not _in(response.status, request.retry_on):
        raise Discard(summary)
    now = ctx.app.clock.now()
    wait = retry_after_seconds(response.headers.get("retry-after"), now)
    if wait is not None:
        wait = min(wait, settings.backoff_max_ms / 1000)
        age = (now - ctx.created_at).total_seconds()
        if age + wait <= request.retry_after_limit_s:
            raise RetryIn(wait, f"{summary} (Retry-After: {wait:g} s)")
    raise HttpTemporaryError(summary)
