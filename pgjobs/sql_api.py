"""The SQL API's side in Python: the defaults its functions read from `pgjobs_settings`.

The functions themselves (pgjobs_enqueue and friends) live in schema.sql. The Python
producer takes JOBS_RETRY_ATTEMPTS, JOBS_JOB_TIMEOUT and JOBS_MAX_PAYLOAD_BYTES from its
settings; SQL callers have no settings, so `pgjobs init` records them in the database.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgjobs.config import Settings
from pgjobs.queries import query


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
