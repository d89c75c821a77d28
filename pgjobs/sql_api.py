"""The SQL API's side in Python: what its functions read from `pgjobs_settings`.

The functions themselves (pgjobs_enqueue and friends) live in schema.sql. The Python
producer takes JOBS_RETRY_ATTEMPTS, JOBS_JOB_TIMEOUT and JOBS_MAX_PAYLOAD_BYTES from its
settings; SQL callers have no settings, so `pgjobs init` records them in the database.

The producer allowlist says which job types the SQL functions may create. By default
(NULL) every type except OPERATOR_TYPES, which act on the server's files and databases
or run operator-defined actions; a list replaces that rule. The Python, REST and CLI
paths are the operators' own and do not consult it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgjobs.config import Settings
from pgjobs.producer.options import validate_type
from pgjobs.queries import query

# Must match pgjobs_operator_types() in schema.sql.
OPERATOR_TYPES = ("custom", "database-backup", "file-cleanup")


def record_settings(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """Store the producer defaults of `settings` for the SQL functions."""
    with conn.transaction():
        conn.execute(
            query("sql_api_record_settings"),
            {
                "retry_attempts": settings.retry_attempts,
                "job_timeout_ms": settings.job_timeout_ms,
                "max_payload_bytes": settings.max_payload_bytes,
            },
        )


def producer_types(conn: psycopg.Connection[Any]) -> list[str] | None:
    """The allowlist, or None for the default (every type but OPERATOR_TYPES)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("sql_api_producer_types"))
        row = cur.fetchone()
    return None if row is None or row["producer_types"] is None else list(row["producer_types"])


async def set_producer_types(
    conn: psycopg.AsyncConnection[Any], types: Sequence[str] | None
) -> list[str] | None:
    """Replace the allowlist (None = back to the default). Operators reach this through
    pgjobs.ops.Ops, which records the change in job_audit in the same transaction."""
    chosen = None if types is None else sorted({validate_type(t) for t in types})
    await conn.execute(query("sql_api_set_producer_types"), {"types": chosen})
    return chosen
