"""Which sites may talk to this server: the Host allowlist and the Origin check.

- Every request's Host header must name an allowed host (JOBS_ALLOWED_HOSTS; by default
  the bind address, localhost, 127.0.0.1 and ::1), or it gets a 400. This is what
  defeats DNS rebinding: a page on attacker.example whose name now resolves to
  127.0.0.1 still sends `Host: attacker.example`.
- A state-changing request (any method but GET, HEAD, OPTIONS) that carries an Origin
  header — or, without one, a Referer — must come from this server: the same scheme
  and port as the request and an allowed host name, or it gets a 403. Browsers always
  send Origin on cross-site POSTs; clients that send neither (curl, programs) pass, and
  still need their credentials and, on the dashboard, a CSRF token.

Both answers have the JSON error shape and the dashboard's security headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from pgjobs.config import Settings
from pgjobs.web.errors import error_response
from pgjobs.web.headers import SECURITY_HEADERS

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_host(name: str) -> str:
    bare = name.strip().lower().rstrip(".")
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """JOBS_ALLOWED_HOSTS, or the bind address plus the loopback names."""
    if settings.allowed_hosts:
        return tuple(normalise_host(h) if "*" not in h else h for h in settings.allowed_hosts)
    bind = normalise_host(settings.dashboard_host)
    extra = () if bind in WILDCARD_BINDS else (bind,)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *extra)))


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    host = normalise_host(name)
    if not host:
        return False
    for pattern in allowed:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header value, or None when it is malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return parts.hostname, port


def origin_problem(scope: Scope, allowed: Iterable[str]) -> str | None:
    """Why the Origin (or Referer) of this request is not this server, or None."""
    claimed = header(scope, b"origin") or header(scope, b"referer")
    if claimed is None:
        return None
    if claimed.strip().lower() == "null":
        return "cross-origin request refused: Origin is null"
    host = split_host_header(header(scope, b"host") or "")
    try:
        origin = urlsplit(claimed.strip())
        origin_port = origin.port
    except ValueError:
        return "cross-origin request refused: malformed Origin"
    scheme = str(scope.get("scheme", "http"))
    if host is None or origin.scheme not in DEFAULT_PORTS or not origin.hostname:
        return "cross-origin request refused: malformed Origin"
    own_port = host[1] or DEFAULT_PORTS.get(scheme)
    same = (
        origin.scheme == scheme
        and (origin_port or DEFAULT_PORTS[origin.scheme]) == own_port
        and host_allowed(origin.hostname, allowed)
    )
    return None if same else f"cross-origin request refused: {claimed.strip()[:200]}"


class HostGuard:
    """The Host allowlist on every request and the Origin check on every unsafe one
    (pure ASGI, before authentication, so a foreign site learns nothing else)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed = allowed_hosts(settings)
        self.headers = SECURITY_HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, code, message = problem
        response = error_response(status, code, message, self.headers)
        await response(scope, receive, send)

    def problem(self, scope: Scope) -> tuple[int, str, str] | None:
        host = split_host_header(header(scope, b"host") or "")
        if host is None or not host_allowed(host[0], self.allowed):
            shown = (header(scope, b"host") or "")[:100]
            return (
                400,
                "bad_request",
                f"host {shown!r} is not served here: add it to JOBS_ALLOWED_HOSTS",
            )
        if scope.get("method", "GET") in SAFE_METHODS or scope["type"] != "http":
            return None
        reason = origin_problem(scope, self.allowed)
        return None if reason is None else (403, "forbidden", reason)


def header(scope: Scope, name: bytes) -> str | None:
    headers: Any = scope.get("headers") or []
    for key, value in headers:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
