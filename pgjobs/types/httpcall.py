"""One HTTP exchange for the `http-request` and `custom` job types (httpx).

The response body is read as a stream and cut at a limit (`JOBS_HTTP_MAX_RESPONSE_BYTES`)
because it ends up in the job's result row. The whole exchange, redirects included,
runs under one deadline. Network failures and timeouts raise `HttpTemporaryError` (the
job is retried); a malformed URL or a redirect loop raises `Discard`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from pgjobs import __version__
from pgjobs.errors import Discard

USER_AGENT = f"pgjobs/{__version__}"


class HttpTemporaryError(Exception):
    """The request failed in a way worth retrying (network, timeout, retryable status)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    truncated: bool
    url: str
    duration_ms: int
    encoding: str | None

    def text(self) -> str:
        return self.body.decode(self.encoding or "utf-8", "replace")

    def decoded_body(self) -> Any:
        """JSON when the (complete) body parses as JSON, else text; None when empty."""
        if not self.body:
            return None
        if not self.truncated:
            try:
                return json.loads(self.body)
            except ValueError:
                pass
        return self.text()

    def snippet(self, limit: int = 300) -> str:
        text = " ".join(self.text().split())
        return text if len(text) <= limit else text[: limit - 3] + "..."


async def send(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    params: Any = None,
    json_body: Any = None,
    content: bytes | None = None,
    timeout_s: float,
    max_bytes: int,
    follow_redirects: bool = True,
) -> Response:
    started = time.monotonic()
    sent_headers = {"user-agent": USER_AGENT, **{k.lower(): v for k, v in headers.items()}}
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(follow_redirects=follow_redirects, timeout=timeout_s) as client,
            client.stream(
                method,
                url,
                headers=sent_headers,
                params=params,
                json=json_body,
                content=content,
            ) as response,
        ):
            body, truncated = await _read_limited(response, max_bytes)
    except TimeoutError:
        raise HttpTemporaryError(
            f"{method} {url} timed out after {round(timeout_s * 1000)} ms"
        ) from None
    except httpx.TimeoutException:
        raise HttpTemporaryError(
            f"{method} {url} timed out after {round(timeout_s * 1000)} ms"
        ) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise Discard(f"url: {exc}") from None
    except httpx.TooManyRedirects as exc:
        raise Discard(f"{method} {url}: {exc}") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise HttpTemporaryError(f"{method} {url} failed: {reason}") from None
    return Response(
        status=response.status_code,
        reason=response.reason_phrase,
        headers={k: ", ".join(response.headers.get_list(k)) for k in response.headers},
        body=body,
        truncated=truncated,
        url=str(response.url),
        duration_ms=round((time.monotonic() - started) * 1000),
        encoding=response.charset_encoding,
    )


async def _read_limited(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > max_bytes:
            parts.append(chunk[: max_bytes - size])
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False
