"""The built-in job types, registered on every App (one module per type)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgjobs.types.mail_headers import headers_problem

if TYPE_CHECKING:
    from pgjobs.context import HandlerRegistry


def register_builtin_types(app: HandlerRegistry) -> None:
    """Register send-email, http-request, database-backup, file-cleanup and custom."""
    # Each module exposes `TYPE` and `handle(ctx, payload)`, imported on its type's first
    # run (see builtin.handlers), so an App that never runs them does not pay for them.
    from pgjobs.types import builtin

    for type_name, handler in builtin.handlers().items():
        app.register(type_name, handler)


def payload_problem(type: str, payload: Any) -> tuple[str, str] | None:
    """(field, problem) when a built-in type's payload carries something that must never
    be stored, checked as the job is created; the handler checks everything again."""
    if type == "send-email":
        return headers_problem(payload)
    return None
