"""The table of built-in handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgjobs.app import Handler
    from pgjobs.config import Settings


def handlers() -> dict[str, Handler]:
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
        from pgjobs.types import database_backup

        database_backup.check(payload, settings)
