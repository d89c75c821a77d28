"""What every web handler reads from the application's state."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from pgjobs.ops import Ops


def ops_of(request: Request) -> Ops:
    """The operator service every route calls (`ops.app` is the `App` it runs on)."""
    ops: Ops = request.app.state.ops
    return ops


def openapi_of(request: Request) -> dict[str, Any]:
    """The OpenAPI document of this server's routes (pgjobs.web.app sets the builder)."""
    document: dict[str, Any] = request.app.state.openapi_document()
    return document
