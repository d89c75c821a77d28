"""The REST API (and the dashboard) in process: an httpx client over ASGI, with the
app's lifespan run explicitly, sending `Authorization: Bearer <token>`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from pgjobs.config import Settings
from pgjobs.web import create_app

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_URL = "http://test"


@asynccontextmanager
async def api_client(
    settings: Settings, *, token: str = TOKEN, **client_options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a fresh app built from `settings` with JOBS_API_TOKEN = `token`;
    `client_options` go to httpx.AsyncClient (timeout, ...)."""
    web = create_app(settings.replace(api_token=token))
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(
            transport=transport,
            base_url=BASE_URL,
            headers={"Authorization": f"Bearer {token}"},
            **client_options,
        ) as http:
            yield http
