"""One HTTP exchange for the `http-request` and `custom` job types (httpx).

The response body is read as a stream and cut at a limit (`JOBS_HTTP_MAX_RESPONSE_BYTES`)
because it ends up in the job's result row. The whole exchange, redirects included,
runs under one deadline. Network failures and timeouts raise `HttpTemporaryError` (the
job is retried); a malformed URL, a redirect loop or a destination the egress policy
refuses (pgjobs.types.egress) raises `Discard`.

Redirects are followed here, not by httpx, so every hop is checked and credentials
(`Authorization`, `Cookie`, names with token/secret/api-key/auth/password/session,
and the
configured headers of `custom`) are dropped when a redirect leaves the first origin.
Messages and results show URLs without their user and password, and httpx's own
request log (INFO, full URL) is kept quiet for the same reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pgjobs._version import __version__
from pgjobs.errors import Discard
from pgjobs.types.egress import EgressDenied, EgressPolicy, GuardedTransport

USER_AGENT = f"pgjobs/{__version__}"
MAX_REDIRECTS = 20
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
CREDENTIAL_WORDS = ("token", "secret", "api-key", "apikey", "auth", "password", "session")

# httpx logs every request's full URL, user and password included, at INFO.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call may go. `policy` checks every connection (None: the operator's own
    endpoints, not checked). `origin_refusal` says why an origin may not be called, or
    None; when it is given it is asked for the first request (as httpx parsed its URL)
    and every redirect, the origins it lets through are the operator's and get every
    header; otherwise credentials stay with the first origin."""

    policy: EgressPolicy | None
    origin_refusal: Callable[[httpx.URL], str | None] | None = None


def is_credential(name: str) -> bool:
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or any(word in lowered for word in CREDENTIAL_WORDS)


async def send(
    method: str,
    url: str,
    *,
    route: Route,
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
    where = f"{method} {shown(url)}"
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(
                transport=GuardedTransport(route.policy), timeout=timeout_s, trust_env=False
            ) as client,
        ):
            first = client.build_request(
                method, url, headers=sent_headers, params=params, json=json_body, content=content
            )
            response = await _exchange(client, first, route, follow_redirects, where)
            try:
                body, truncated = await _read_limited(response, max_bytes)
            finally:
                await response.aclose()
    except TimeoutError:
        raise HttpTemporaryError(f"{where} timed out after {round(timeout_s * 1000)} ms") from None
    except httpx.TimeoutException:
        raise HttpTemporaryError(f"{where} timed out after {round(timeout_s * 1000)} ms") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise Discard(f"url: {_without_userinfo(str(exc), url)}") from None
    except httpx.TooManyRedirects as exc:
        raise Discard(f"{where}: {exc}") from None
    except httpx.HTTPError as exc:
        reason = _without_userinfo(str(exc) or type(exc).__name__, url)
        raise HttpTemporaryError(f"{where} failed: {reason}") from None
    return Response(
        status=response.status_code,
        reason=response.reason_phrase,
        headers={k: ", ".join(response.headers.get_list(k)) for k in response.headers},
        body=body,
        truncated=truncated,
        url=shown(str(response.url)),
        duration_ms=round((time.monotonic() - started) * 1000),
        encoding=response.charset_encoding,
    )


async def _exchange(
    client: httpx.AsyncClient,
    request: httpx.Request,
    route: Route,
    follow_redirects: bool,
    where: str,
) -> httpx.Response:
    """Send `request`, following redirects hop by hop so each target is checked and
    private headers stay with the origin they were meant for."""
    refusal = route.origin_refusal(request.url) if route.origin_refusal else None
    if refusal is not None:
        raise Discard(f"{where}: not sent: {refusal}")
    for hop in range(MAX_REDIRECTS + 1):
        try:
            response = await client.send(request, stream=True)
        except EgressDenied as exc:
            target = "" if hop == 0 else f"redirect to {shown(str(exc.url))} "
            raise Discard(f"{where}: {target}refused by the egress policy: {exc.reason}") from None
        following = response.next_request if follow_redirects else None
        if following is None:
            return response
        await response.aclose()
        if _origin(following.url) != _origin(request.url):
            if route.origin_refusal is None:
                _drop_credentials(following.headers)
            elif (refusal := route.origin_refusal(following.url)) is not None:
                raise Discard(
                    f"{where}: redirect to {shown(str(following.url))} not followed: {refusal}"
                )
        request = following
    raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)


def _drop_credentials(headers: httpx.Headers) -> None:
    for name in [n for n in headers if is_credential(n)]:
        del headers[name]


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host, url.port or default


def shown(url: str) -> str:
    """`url` without its user and password, for messages, logs and results."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _without_userinfo(text: str, url: str) -> str:
    netloc = urlsplit(url).netloc
    userinfo = netloc.rpartition("@")[0]
    return text.replace(userinfo + "@", "") if userinfo else text


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
