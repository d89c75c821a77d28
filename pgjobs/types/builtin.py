"""The table of built-in handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgjobs.app import Handler


def handlers() -> dict[str, Handler]:
    from pgjobs.types import custom_action, database_backup, file_cleanup, http_request, send_email

    return {
        send_email.TYPE: send_email.handle,
        http_request.TYPE: http_request.handle,
        database_backup.TYPE: database_backup.handle,
        file_cleanup.TYPE: file_cleanup.handle,
        custom_action.TYPE: custom_action.handle,
    }
