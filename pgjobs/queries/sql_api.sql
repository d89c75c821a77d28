-- The SQL API's defaults (schema.sql migration 5, pgjobs/sql_api.py).

-- name: sql_api_record_settings
-- The producer defaults the SQL functions use, from the settings `pgjobs init` runs with.
INSERT INTO pgjobs_settings AS s (id, retry_attempts, job_timeout_ms, max_payload_bytes,
                                  updated_at)
VALUES (true, %(retry_attempts)s, %(job_timeout_ms)s, %(max_payload_bytes)s, now())
ON CONFLICT (id) DO UPDATE
    SET retry_attempts = excluded.retry_attempts,
        job_timeout_ms = excluded.job_timeout_ms,
        max_payload_bytes = excluded.max_payload_bytes,
        updated_at = excluded.updated_at;
