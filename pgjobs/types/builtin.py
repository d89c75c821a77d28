"""The table of built-in handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgjobs.app import Handler


def handlers() -> dict[str, Handler]:
    from pgjobs.types import database_backup, send_email

    return {
        send_email.TYPE: send_email.handle,
        database_backup.TYPE: database_backup.handle,
    }
