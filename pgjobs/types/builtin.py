"""The table of built-in handlers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import Handler, JobContext

# Type name -> the module of pgjobs.types whose `handle(ctx, payload)` runs it (and whose
# TYPE is that name).
MODULES = {
    "send-email": "send_email",
    "http-request": "http_request",
    "database-backup": "database_backup",
    "file-cleanup": "file_cleanup",
    "custom": "custom_action",
}


def handlers() -> dict[str, Handler]:
    """The built-in handlers, each importing its module on its first run: the modules
    pull in httpx, jinja2 and cryptography, which were 45 % of creating an App (and of
    starting a worker) when imported up front."""
    return {type_name: _on_first_run(module) for type_name, module in MODULES.items()}


def _on_first_run(module_name: str) -> Handler:
    async def handle(ctx: JobContext, payload: Any) -> Any:
        module = importlib.import_module(f"pgjobs.types.{module_name}")
        return await module.handle(ctx, payload)

    handle.__qualname__ = handle.__name__ = f"{module_name}.handle"
    return handle


def check_payload(settings: Settings, type: str, payload: Any) -> None:
    """Refuse at creation, with a `ValidationError`, a payload a built-in handler would
    only discard: one that would make it write or connect where it must not. The
    handler checks again (rows written straight into the table skip this)."""
    if type == "database-backup":
        # Function-level: the backup type pulls in cryptography (see handlers()).
        from pgjobs.types import database_backup

        database_backup.check(payload, settings)
