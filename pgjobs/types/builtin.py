"""The table of built-in handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import Handler


def handlers() -> dict[str, Handler]:
    # Function-level: the handlers pull in httpx, jinja2 and cryptography; an App
    # that never runs a built-in type does not pay for them.
    from pgjobs.types import custom_action, database_backup, file_cleanup, http_request, send_email

    return {
        send_email.TYPE: send_email.handle,
        http_request.TYPE: http_request.handle,
        database_backup.TYPE: database_backup.handle,
        file_cleanup.TYPE: file_cleanup.handle,
        custom_action.TYPE: custom_action.handle,
    }


def check_payload(settings: Settings, type: str, payload: Any) -> None:
    """Refuse at creation, with a `ValidationError`, a payload a built-in handler would
    only discard: one that would make it write or connect where it must not. The
    handler checks again (rows written straight into the table skip this)."""
    if type == "database-backup":
        # Function-level: the backup type pulls in cryptography (see handlers()).
        from pgjobs.types import database_backup

        database_backup.check(payload, settings)
