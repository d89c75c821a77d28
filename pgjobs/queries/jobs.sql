-- Producing and looking up jobs (client.py).

-- name: insert_jobs
-- One statement for one job or thousands: parallel arrays through unnest keep it one
-- round trip. The status is decided here against the database clock: 'blocked' while a
-- dependency is unfinished, 'delayed' while run_at is in the future, else 'pending'.
-- A live unique key makes the insert a no-op; the caller then looks up the holder.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
input AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(types)s::text[], %(queues)s::text[], %(payloads)s::jsonb[],
                %(priorities)s::int[], %(max_attempts)s::int[], %(delays)s::bigint[],
                %(run_ats)s::timestamptz[], %(backoffs)s::jsonb[], %(timeouts)s::bigint[],
                %(unique_keys)s::text[], %(depends_ons)s::jsonb[], %(policies)s::text[],
                %(rate_keys)s::text[], %(metadatas)s::jsonb[])
        WITH ORDINALITY AS t(id, type, queue, payload, priority, max_attempts, delay_ms, run_at,
                             backoff, timeout_ms, unique_key, depends_on, dependency_policy,
                             rate_limit_key, metadata, ord)
)
INSERT INTO jobs (id, type, queue, status, priority, payload, max_attempts, delay_ms,
                  timeout_ms, run_at, backoff, unique_key, depends_on, dependency_policy,
                  rate_limit_key, metadata, created_at)
SELECT i.id, i.type, i.queue,
       CASE WHEN d.ids IS NOT NULL AND (
                EXISTS (SELECT 1 FROM jobs p WHERE p.id = ANY (d.ids) AND p.status <> 'completed')
                OR EXISTS (SELECT 1 FROM input x WHERE x.id = ANY (d.ids)))
            THEN 'blocked'
            WHEN r.run_at > c.now THEN 'delayed'
            ELSE 'pending' END,
       i.priority, i.payload, i.max_attempts, i.delay_ms, i.timeout_ms, r.run_at, i.backoff,
       i.unique_key, d.ids, i.dependency_policy, i.rate_limit_key, i.metadata, c.now
FROM input i
CROSS JOIN clock c
CROSS JOIN LATERAL (
    SELECT coalesce(i.run_at, c.now + i.delay_ms * interval '1 millisecond') AS run_at) r
CROSS JOIN LATERAL (
    SELECT CASE WHEN i.depends_on IS NULL THEN NULL
                ELSE ARRAY(SELECT jsonb_array_elements_text(i.depends_on)::uuid) END AS ids) d
ORDER BY i.ord
ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'active', 'blocked')
    DO NOTHING
RETURNING *;

-- name: copy_plain_jobs
-- Bulk path for jobs that run now: COPY is several times faster than any INSERT.
-- status, run_at and created_at take their column defaults ('pending', now(), now()).
COPY jobs (id, type, queue, payload, priority, max_attempts, timeout_ms, backoff,
           rate_limit_key, metadata) FROM STDIN;

-- name: live_jobs_by_unique_key
SELECT * FROM jobs
WHERE unique_key = ANY (%(keys)s::text[])
  AND status IN ('pending', 'delayed', 'active', 'blocked');

-- name: missing_job_ids
SELECT i.id FROM unnest(%(ids)s::uuid[]) AS i(id)
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.id);

-- name: get_job
-- The job with its whole history, in one round trip.
SELECT j.*,
       (SELECT coalesce(json_agg(r ORDER BY r.completed_at), '[]'::json)
        FROM (SELECT result, duration_ms, completed_at, attempt
              FROM job_results WHERE job_id = j.id) r) AS results,
       (SELECT coalesce(json_agg(f ORDER BY f.failed_at, f.attempt_number), '[]'::json)
        FROM (SELECT attempt_number, error_message, error_stack, failed_at, kind, worker_id
              FROM job_failures WHERE job_id = j.id) f) AS failures
FROM jobs j
WHERE j.id = %(id)s;

-- name: cancel_job
-- A job that is not running is cancelled at once. A running one is only flagged and its
-- worker is told (at commit); the worker stops the handler and records the outcome, so
-- the run's fence stays the one place that decides it.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (SELECT id, status FROM jobs WHERE id = %(id)s FOR UPDATE),
updated AS (
    UPDATE jobs j
    SET status = CASE WHEN t.status = 'active' THEN 'active' ELSE 'cancelled' END,
        cancel_requested_at = c.now,
        completed_at = CASE WHEN t.status = 'active' THEN NULL ELSE c.now END
    FROM target t, clock c
    WHERE j.id = t.id AND t.status IN ('pending', 'delayed', 'blocked', 'active')
    RETURNING j.*
),
signal AS (SELECT pg_notify('pgjobs_cancel', u.id::text) FROM updated u WHERE u.status = 'active')
SELECT t.status AS previous_status, u.*
FROM target t
LEFT JOIN updated u ON true
CROSS JOIN LATERAL (SELECT count(*) FROM signal) s;

-- name: retry_job
-- An operator retry grants a fresh budget of tries on top of the ones used, so attempts
-- keeps increasing and every run's (id, attempts) fence token stays unique.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (SELECT id, status FROM jobs WHERE id = %(id)s FOR UPDATE),
updated AS (
    UPDATE jobs j
    SET status = 'pending',
        run_at = c.now,
        attempt_budget = coalesce(j.attempt_budget, j.max_attempts),
        max_attempts = j.attempts + coalesce(j.attempt_budget, j.max_attempts),
        stalled_count = 0,
        progress = 0,
        progress_message = NULL,
        started_at = NULL,
        completed_at = NULL,
        worker_id = NULL,
        cancel_requested_at = NULL
    FROM target t, clock c
    WHERE j.id = t.id AND t.status IN ('failed', 'cancelled')
    RETURNING j.*
),
wake AS (SELECT pgjobs_notify_queues(array_agg(u.queue)) FROM updated u)
SELECT t.status AS previous_status, u.*
FROM target t
LEFT JOIN updated u ON true
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;
