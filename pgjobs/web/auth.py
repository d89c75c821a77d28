"""Who may call what.

- `/health` is always open (load balancers and probes).
- `/api/*`, `/metrics` and `/openapi.json` need `Authorization: Bearer $JOBS_API_TOKEN`
  when a token is configured.
- The dashboard needs HTTP Basic auth with JOBS_DASHBOARD_USER / JOBS_DASHBOARD_PASSWORD;
  with those unset but a token configured, only `Authorization: Bearer $JOBS_API_TOKEN`
  opens it (the audit actor is then `dashboard:token`), so no route is left open by
  accident and no caller can choose the name written to the audit trail. A user name
  without its password (or the reverse) is a configuration error: the server refuses
  to start (`credentials_problem`). A second, read-only login
  (JOBS_DASHBOARD_READONLY_USER / _PASSWORD) may be configured; `request.state.read_only`
  tells the dashboard which kind of user is asking.

Secrets are compared with `hmac.compare_digest` so timing reveals nothing about them.
Binding to a non-loopback address without credentials is refused by `pgjobs server`
(see `startup_problem`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from pgjobs.config import Settings
from pgjobs.web.errors import error_response

API_PREFIXES = ("/api/", "/metrics", "/openapi.json")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def token_ok(header: str | None, token: str) -> bool:
    given = bearer_token(header)
    return given is not None and _same(given, token)


def basic_ok(header: str | None, user: str, password: str) -> bool:
    creds = basic_credentials(header)
    if creds is None:
        return False
    # Both comparisons always run, so timing does not tell which part was wrong.
    user_ok = _same(creds[0], user)
    password_ok = _same(creds[1], password)
    return user_ok and password_ok


def dashboard_user(settings: Settings, header: str | None) -> str | None:
    """The authenticated dashboard user, "anonymous" when no credentials are configured,
    or None when the request is not allowed in."""
    if settings.dashboard_user or settings.dashboard_password:
        user, password = settings.dashboard_user or "", settings.dashboard_password or ""
        if user and password and basic_ok(header, user, password):
            return user
        return None
    if settings.api_token:
        return "token" if token_ok(header, settings.api_token) else None
    return "anonymous"


def dashboard_identity(settings: Settings, header: str | None) -> tuple[str, bool] | None:
    """(user, read_only) of a dashboard request, or None when it is not allowed in.

    The read-only login (JOBS_DASHBOARD_READONLY_USER / _PASSWORD) sees everything and
    changes nothing; with JOBS_DASHBOARD_READONLY every user is read-only. Configuring a
    read-only login alone still requires a login: it never leaves the dashboard open."""
    ro_user, ro_password = settings.dashboard_readonly_user, settings.dashboard_readonly_password
    readonly_login = bool(ro_user and ro_password)
    if readonly_login and basic_ok(header, ro_user or "", ro_password or ""):
        return ro_user or "", True
    user = dashboard_user(settings, header)
    if user is None or (user == "anonymous" and readonly_login):
        return None
    return user, settings.dashboard_readonly


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def credentials_problem(settings: Settings) -> str | None:
    """A login configured by halves, which must stop the server rather than leave the
    dashboard open; None when the credentials are coherent."""
    pairs = (
        (
            "JOBS_DASHBOARD_USER",
            settings.dashboard_user,
            "JOBS_DASHBOARD_PASSWORD",
            settings.dashboard_password,
        ),
        (
            "JOBS_DASHBOARD_READONLY_USER",
            settings.dashboard_readonly_user,
            "JOBS_DASHBOARD_READONLY_PASSWORD",
            settings.dashboard_readonly_password,
        ),
    )
    for user_var, user, password_var, password in pairs:
        if bool(user) != bool(password):
            given, missing = (user_var, password_var) if user else (password_var, user_var)
            return f"{given} is set but {missing} is not: set both, or neither"
    return None


def startup_problem(settings: Settings, host: str) -> str | None:
    """Why the server must not listen on `host` with these settings, or None."""
    problem = credentials_problem(settings)
    if problem or is_loopback(host):
        return problem
    missing = []
    if not settings.api_token:
        missing.append("JOBS_API_TOKEN")
    if settings.dashboard_enabled and not (settings.dashboard_user and settings.dashboard_password):
        missing.append("JOBS_DASHBOARD_USER and JOBS_DASHBOARD_PASSWORD")
    if not missing:
        return None
    return (
        f"refusing to listen on {host} without credentials: set {' and '.join(missing)} "
        "(or bind to 127.0.0.1 with --host)"
    )


class AuthMiddleware:
    """Checks credentials by path before any route runs (pure ASGI, so streaming and
    the lifespan are untouched)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.dashboard = settings.dashboard_path if settings.dashboard_enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        header = _header(scope, b"authorization")
        if self._is_api(path) and self.settings.api_token:
            if not token_ok(header, self.settings.api_token):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token: send Authorization: Bearer $JOBS_API_TOKEN",
                    {"WWW-Authenticate": 'Bearer realm="pgjobs"'},
                )
                await response(scope, receive, send)
                return
        elif self._is_dashboard(path):
            identity = dashboard_identity(self.settings, header)
            if identity is None:
                response = error_response(
                    401,
                    "unauthorized",
                    "dashboard credentials required",
                    {"WWW-Authenticate": 'Basic realm="pgjobs dashboard", charset="UTF-8"'},
                )
                await response(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state["user"], state["read_only"] = identity
        await self.app(scope, receive, send)

    @staticmethod
    def _is_api(path: str) -> bool:
        return path == "/api" or path.startswith(API_PREFIXES)

    def _is_dashboard(self, path: str) -> bool:
        if self.dashboard is None:
            return False
        if self.dashboard == "/":
            return not self._is_api(path) and path != "/health"
        return path == self.dashboard or path.startswith(self.dashboard + "/")


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Any = scope.get("headers") or []
    for key, value in headers:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
