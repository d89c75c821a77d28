-- The SQL API's defaults (schema.sql, pgjobs/sql_api.py).

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

-- name: sql_api_producer_types
-- The producer allowlist (schema.sql migration 7): NULL = every type but the operator types.
SELECT producer_types FROM pgjobs_settings;

-- name: sql_api_set_producer_types
UPDATE pgjobs_settings SET producer_types = %(types)s::text[], updated_at = now();
