"""REST routes for cron schedules: `GET|POST /api/schedules`,
`GET|PATCH|DELETE /api/schedules/{name}`."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    return {}


def openapi_schemas() -> dict[str, Any]:
    return {}
