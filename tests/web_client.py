"""The pgjobs web app in-process: an httpx client over ASGI (no socket) with the app's
lifespan running, and the check of the REST API's error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.web import create_app

# The in-process clients' base URL; TEST_ENV in tests/conftest.py allows this host.
BASE_URL = "http://test"
TOKEN = "t0ken"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def asgi_client(
    web: Starlette,
    *,
    token: str | None = None,
    raise_app_exceptions: bool = True,
    **options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `web` (its lifespan started), sending `token` as a bearer token."""
    options.setdefault("base_url", BASE_URL)
    if token is not None:
        options["headers"] = {**bearer(token), **options.get("headers", {})}
    transport = httpx.ASGITransport(app=web, raise_app_exceptions=raise_app_exceptions)
    async with (
        web.router.lifespan_context(web),
        httpx.AsyncClient(transport=transport, **options) as http,
    ):
        yield http


@asynccontextmanager
async def api_client(
    settings: Settings, token: str = TOKEN, app: App | None = None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the web app built from `settings` with JOBS_API_TOKEN=`token`."""
    web = create_app(settings.replace(api_token=token), app=app)
    async with asgi_client(web, token=token, **options) as http:
        yield http


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, message: str = ""
) -> None:
    """The response is the API's error shape {"error": {"code", "message"}} with
    `status`, `code` (when given) and a message containing `message`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    assert message in body["error"]["message"], body
