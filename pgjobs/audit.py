"""Writing `job_audit` rows: who changed what, and when.

Every state change an operator asks for (CLI, REST API, dashboard, through `Ops`) and
the file-cleanup type's job clean-up record one row here and nowhere else. A change and
its row commit in one transaction (`record_in`), except for work committed in batches
(`record_after_commit`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from pgjobs.clock import Clock
from pgjobs.queries import query

AsyncConn = psycopg.AsyncConnection[Any]
Connect = Callable[[], AbstractAsyncContextManager[AsyncConn]]

log = logging.getLogger("pgjobs.ops")


async def record_in(
    conn: AsyncConn, clock: Clock, actor: str, action: str, target: str | None, detail: Any
) -> None:
    """Insert the audit row on `conn`, in the transaction of the change it records."""
    params = {
        "actor": actor[:200],
        "action": action,
        "target": target,
        "detail": json.dumps(detail, default=str),
        "now": clock.sql_now(),
    }
    async with conn.cursor() as cur:
        await cur.execute(query("ops_record_audit"), params)


async def record_after_commit(
    connect: Connect, clock: Clock, actor: str, action: str, target: str | None, detail: Any
) -> None:
    """The audit row of work committed in batches (cleaning): failing to write it is
    logged in full instead of failing the request, whose work is done."""
    try:
        async with connect() as conn:
            await record_in(conn, clock, actor, action, target, detail)
    except Exception as exc:
        log.error(
            "audit row not written (%s): actor=%s action=%s target=%s detail=%s",
            exc,
            actor,
            action,
            target,
            json.dumps(detail, default=str)[:2000],
        )
