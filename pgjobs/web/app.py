"""`create_app(settings)`: the Starlette application behind `pgjobs server`.

The lifespan opens one `pgjobs.App` (its psycopg pool is created inside the running
event loop) and closes it on shutdown. Routes: pgjobs.web.api (REST, /health, /metrics,
/openapi.json) and, when JOBS_DASHBOARD_ENABLED, pgjobs.web.dashboard at
JOBS_DASHBOARD_PATH. The Host allowlist and Origin check (pgjobs.web.hosts), then
authentication (pgjobs.web.auth), wrap everything; log lines of the server pass
through pgjobs.redact so payload and URL secrets stay out of them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.errors import ConfigError
from pgjobs.ops import Ops
from pgjobs.redact import filter_loggers
from pgjobs.web import api, dashboard
from pgjobs.web.auth import AuthMiddleware, credentials_problem
from pgjobs.web.errors import exception_handlers
from pgjobs.web.hosts import HostGuard
from pgjobs.web.openapi import openapi_document
from pgjobs.web.readsource import ReadSourceHeaders

# What the server process logs through (a logger's filters do not apply to its children).
SERVER_LOGGERS = (
    "pgjobs.web",
    "pgjobs.web.dashboard",
    "pgjobs.events",
    "pgjobs.limits",
    "pgjobs.redis",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
)
# A request waits at most this long for a database connection, then gets a 503.
ACQUIRE_TIMEOUT_S = 5.0


def create_app(settings: Settings, *, app: App | None = None) -> Starlette:
    """The web application. Pass `app` to share an existing App (it is then not closed
    on shutdown); otherwise one is created from `settings`."""

    problem = credentials_problem(settings)
    if problem:
        raise ConfigError(problem)
    filter_loggers(*SERVER_LOGGERS)
    board = dashboard.Dashboard.create(settings) if settings.dashboard_enabled else None

    @asynccontextmanager
    async def lifespan(web: Starlette) -> AsyncIterator[None]:
        jobs = app or App(settings)
        try:
            await jobs.pool()
            web.state.pgjobs = jobs
            web.state.ops = Ops(jobs, acquire_timeout=ACQUIRE_TIMEOUT_S)
            if board is not None:
                board.start(web.state.ops)
            yield
        finally:
            if board is not None:
                await board.stop()
            if app is None:
                await jobs.close()

    routes = api.routes()
    if board is not None:
        routes += dashboard.routes(board)
    web = Starlette(
        routes=routes,
        middleware=[
            Middleware(HostGuard, settings=settings),
            Middleware(AuthMiddleware, settings=settings),
            Middleware(ReadSourceHeaders),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    web.state.settings = settings
    web.state.openapi_document = functools.partial(openapi_document, settings)
    return web
