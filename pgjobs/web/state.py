"""What every web handler reads from the application's state."""

from __future__ import annotations

from starlette.requests import Request

from pgjobs.ops import Ops


def ops_of(request: Request) -> Ops:
    """The operator service every route calls (`ops.app` is the `App` it runs on)."""
    ops: Ops = request.app.state.ops
    return ops
