-- Producing and looking up jobs (producer/statements.py).

-- name: insert_input
-- The jobs to insert: parallel arrays through unnest keep one job or thousands one
-- statement and one round trip. Statuses are decided against the database clock.
clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
input AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(types)s::text[], %(queues)s::text[], %(payloads)s::jsonb[],
                %(priorities)s::int[], %(max_attempts)s::int[], %(delays)s::bigint[],
                %(run_ats)s::timestamptz[], %(backoffs)s::jsonb[], %(timeouts)s::bigint[],
                %(unique_keys)s::text[], %(policies)s::text[], %(rate_keys)s::text[],
                %(metadatas)s::jsonb[])
        WITH ORDINALITY AS t(id, type, queue, payload, priority, max_attempts, delay_ms, run_at,
                             backoff, timeout_ms, unique_key, dependency_policy,
                             rate_limit_key, metadata, ord)
)

-- name: insert_one_input
-- insert_input for one job without dependencies (App.create): scalar parameters are
-- quicker to send and to plan than fourteen one-element arrays.
clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
input AS (
    SELECT %(id)s::uuid AS id, %(type)s::text AS type, %(queue)s::text AS queue,
           %(payload)s::jsonb AS payload, %(priority)s::int AS priority,
           %(max_attempts)s::int AS max_attempts, %(delay)s::bigint AS delay_ms,
           %(run_at)s::timestamptz AS run_at, %(backoff)s::jsonb AS backoff,
           %(timeout)s::bigint AS timeout_ms, %(unique_key)s::text AS unique_key,
           %(policy)s::text AS dependency_policy, %(rate_key)s::text AS rate_limit_key,
           %(metadata)s::jsonb AS metadata, 1::bigint AS ord
)

-- name: insert_independent_steps
-- Jobs without dependencies: 'delayed' while run_at is in the future, else 'pending'.
-- A held unique key makes the insert of that job a no-op; the caller then resolves it.
-- (A statement of its own because it plans in a fraction of the dependent variant's
-- time, and most creates are like this.)
inserted AS (
    INSERT INTO jobs (id, type, queue, status, priority, payload, max_attempts, delay_ms,
                      timeout_ms, run_at, backoff, unique_key, dependency_policy,
                      rate_limit_key, metadata, created_at)
    SELECT i.id, i.type, i.queue,
           CASE WHEN r.run_at > c.now THEN 'delayed' ELSE 'pending' END,
           i.priority, i.payload, i.max_attempts, i.delay_ms, i.timeout_ms, r.run_at, i.backoff,
           i.unique_key, i.dependency_policy, i.rate_limit_key, i.metadata, c.now
    FROM input i
    CROSS JOIN clock c
    CROSS JOIN LATERAL (
        SELECT coalesce(i.run_at, c.now + i.delay_ms * interval '1 millisecond') AS run_at) r
    ORDER BY i.ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND unique_released_at IS NULL
        DO NOTHING
    RETURNING *
),
settled AS (SELECT 0)

-- name: insert_dependent_steps
-- Jobs of a batch in which some depend on others: 'blocked' while a dependency is
-- unfinished (one created in the same batch counts as unfinished), 'failed' or
-- 'cancelled' when a dependency already failed and the job's policy says so, else as
-- in insert_independent_steps.
-- Dependencies outside the batch are share-locked in id order (see
-- pgjobs_settle_blocked): one finishing right now is read after its outcome commits,
-- and one finishing later waits for this insert, so its settle step sees the new job.
-- If any dependency does not exist nothing is inserted (the caller then names it).
-- Jobs that start failed or cancelled settle their children within the batch.
-- One row per (job, dependency), flattened by the caller: exact row estimates keep the
-- planner (and JIT) from pricing a 10,000-job flow as if it were a billion rows.
deps AS (
    SELECT d.job, d.dep, d.ord
    FROM unnest(%(dep_jobs)s::uuid[], %(dep_ids)s::uuid[]) WITH ORDINALITY AS d(job, dep, ord)
),
parents AS (
    SELECT j.id, j.status
    FROM jobs j
    WHERE j.id IN (SELECT d.dep FROM deps d WHERE d.dep NOT IN (SELECT id FROM input))
    ORDER BY j.id
    FOR SHARE
),
dep_state AS (
    SELECT g.job, g.ids, g.known, v.verdict, v.reason
    FROM (
        SELECT d.job,
               array_agg(d.dep ORDER BY d.ord) AS ids,
               array_agg(CASE WHEN b.id IS NOT NULL THEN 'pending' ELSE p.status END
                         ORDER BY d.ord) AS statuses,
               bool_and(b.id IS NOT NULL OR p.id IS NOT NULL) AS known
        FROM deps d
        LEFT JOIN parents p ON p.id = d.dep
        LEFT JOIN input b ON b.id = d.dep
        GROUP BY d.job
    ) g
    JOIN input i ON i.id = g.job
    CROSS JOIN LATERAL pgjobs_dependency_verdict(i.dependency_policy, g.ids, g.statuses) v
),
inserted AS (
    INSERT INTO jobs (id, type, queue, status, priority, payload, max_attempts, delay_ms,
                      timeout_ms, run_at, backoff, unique_key, depends_on, dependency_policy,
                      rate_limit_key, metadata, created_at, completed_at, last_error)
    SELECT i.id, i.type, i.queue,
           CASE WHEN s.verdict IN ('blocked', 'failed', 'cancelled') THEN s.verdict
                WHEN r.run_at > c.now THEN 'delayed'
                ELSE 'pending' END,
           i.priority, i.payload, i.max_attempts, i.delay_ms, i.timeout_ms, r.run_at, i.backoff,
           i.unique_key, s.ids, i.dependency_policy, i.rate_limit_key, i.metadata, c.now,
           CASE WHEN s.verdict IN ('failed', 'cancelled') THEN c.now END, s.reason
    FROM input i
    CROSS JOIN clock c
    CROSS JOIN LATERAL (
        SELECT coalesce(i.run_at, c.now + i.delay_ms * interval '1 millisecond') AS run_at) r
    LEFT JOIN dep_state s ON s.job = i.id
    WHERE NOT EXISTS (SELECT 1 FROM dep_state x WHERE NOT x.known)
    ORDER BY i.ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND unique_released_at IS NULL
        DO NOTHING
    RETURNING *
),
failures AS (
    INSERT INTO job_failures (job_id, attempt_number, error_message, failed_at, kind)
    SELECT n.id, 0, n.last_error, n.created_at, 'dependency'
    FROM inserted n WHERE n.status = 'failed'
),
settled AS (
    SELECT pgjobs_settle_blocked(
               array_agg(x.id) FILTER (WHERE x.status IN ('failed', 'cancelled')), NULL,
               (SELECT now FROM clock)) AS settled
    FROM inserted x
)

-- name: holders_of_skipped_keys
-- The current holders of the unique keys whose insert found one, as this statement's
-- snapshot shows them: a holder that still counts answers the create at once.
FROM jobs j
WHERE j.unique_key IN (SELECT i.unique_key FROM input i
                       WHERE i.unique_key IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM inserted n WHERE n.id = i.id))
  AND j.unique_released_at IS NULL

-- name: insert_rows
-- The inserted rows (held = false), then the holders of skipped keys (held = true).
SELECT n.*, false AS held
FROM inserted n
CROSS JOIN LATERAL (SELECT count(*) FROM settled) s
UNION ALL
SELECT j.*, true AS held
{{holders_of_skipped_keys}}

-- name: insert_ids
-- insert_rows for callers that only need the ids (bulk creates, flows).
SELECT n.id, n.unique_key, n.depends_on, n.status, false AS held
FROM inserted n
CROSS JOIN LATERAL (SELECT count(*) FROM settled) s
UNION ALL
SELECT j.id, j.unique_key, j.depends_on, j.status, true AS held
{{holders_of_skipped_keys}}

-- name: insert_jobs
WITH {{insert_input}}, {{insert_independent_steps}} {{insert_rows}};

-- name: insert_one_job
WITH {{insert_one_input}}, {{insert_independent_steps}} {{insert_rows}};

-- name: insert_plain_job
-- App.create of one job without a unique key or dependencies, the common case: a plain
-- INSERT with no CTE and no unique-key holders to look for runs in a fraction of
-- insert_one_job's time. Statuses and columns as in insert_independent_steps; it
-- returns only what the database decides (producer/statements.py builds the rest of the Job),
-- read by position: keep the RETURNING list's order.
INSERT INTO jobs (id, type, queue, status, priority, payload, max_attempts, delay_ms,
                  timeout_ms, run_at, backoff, dependency_policy, rate_limit_key, metadata,
                  created_at)
SELECT %(id)s::uuid, %(type)s::text, %(queue)s::text,
       CASE WHEN r.run_at > c.now THEN 'delayed' ELSE 'pending' END,
       %(priority)s::int, %(payload)s::jsonb, %(max_attempts)s::int, %(delay)s::bigint,
       %(timeout)s::bigint, r.run_at, %(backoff)s::jsonb, %(policy)s::text,
       %(rate_key)s::text, %(metadata)s::jsonb, c.now
FROM (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now) c
CROSS JOIN LATERAL (
    SELECT coalesce(%(run_at)s::timestamptz,
                    c.now + %(delay)s::bigint * interval '1 millisecond') AS run_at) r
RETURNING status, run_at, created_at, attempts, progress;

-- name: insert_job_ids
WITH {{insert_input}}, {{insert_independent_steps}} {{insert_ids}};

-- name: insert_dependent_jobs
WITH {{insert_input}}, {{insert_dependent_steps}} {{insert_rows}};

-- name: insert_dependent_job_ids
WITH {{insert_input}}, {{insert_dependent_steps}} {{insert_ids}};

-- name: copy_plain_jobs
-- Bulk path for jobs that run now: COPY is several times faster than any INSERT.
-- status, run_at and created_at take their column defaults ('pending', now(), now()).
COPY jobs (id, type, queue, payload, priority, max_attempts, timeout_ms, backoff,
           rate_limit_key, metadata) FROM STDIN;

-- name: resolve_unique_keys
-- For keys whose insert found a holder: releases each holder that no longer counts for
-- the job being created (its status is not one of the states that count and it is
-- older than the uniqueFor period) and returns the holders that still count. The
-- release re-checks the holder under its row lock, so a holder that was just made live
-- again keeps its key. A key left without a holder is free: the caller inserts again.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
wanted AS (
    SELECT *
    FROM unnest(%(keys)s::text[], %(states)s::jsonb[], %(periods)s::bigint[])
        AS w(key, states, period_ms)
),
released AS (
    UPDATE jobs j
    SET unique_released_at = c.now
    FROM wanted w, clock c
    WHERE j.unique_key = w.key AND j.unique_released_at IS NULL
      AND NOT w.states ? j.status
      AND (w.period_ms IS NULL
           OR j.created_at <= c.now - w.period_ms * interval '1 millisecond')
    RETURNING j.id
)
SELECT j.*
FROM jobs j
JOIN wanted w ON j.unique_key = w.key
WHERE j.unique_released_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM released r WHERE r.id = j.id);

-- name: redirect_dependencies
-- A job of a batch that found its unique key held was not inserted: the jobs of the
-- batch that depend on it now depend on the holder instead, and are settled against it.
WITH moves AS (
    SELECT * FROM unnest(%(old)s::uuid[], %(new)s::uuid[]) AS m(old, new)
),
moved AS (
    UPDATE jobs j
    SET depends_on = ARRAY(
        SELECT DISTINCT coalesce(m.new, d.id)
        FROM unnest(j.depends_on) AS d(id) LEFT JOIN moves m ON m.old = d.id
        ORDER BY 1)
    WHERE j.id = ANY (%(children)s::uuid[]) AND j.status = 'blocked'
    RETURNING j.id
)
SELECT pgjobs_settle_blocked(NULL, array_agg(id), %(now)s::timestamptz) AS settled
FROM moved;

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
-- the run's fence stays the one place that decides it. The notification names the
-- worker, not the job: any login may LISTEN and NOTIFY, so it is only a hint that makes
-- the worker read cancel_requested_at of the jobs it holds.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (SELECT id, status FROM jobs WHERE id = %(id)s FOR UPDATE),
{{cancel_steps}}
SELECT t.status AS previous_status, u.*
FROM target t
LEFT JOIN updated u ON true
CROSS JOIN LATERAL (SELECT count(*) FROM signal) s
CROSS JOIN LATERAL (SELECT count(*) FROM settled) d;

-- name: cancel_steps
-- The steps of a cancel after the CTEs `clock` and `target` (the locked jobs), for
-- cancel_job and ops_bulk_cancel: `updated` holds the jobs changed.
updated AS (
    UPDATE jobs j
    SET status = CASE WHEN t.status = 'active' THEN 'active' ELSE 'cancelled' END,
        cancel_requested_at = c.now,
        completed_at = CASE WHEN t.status = 'active' THEN NULL ELSE c.now END
    FROM target t, clock c
    WHERE j.id = t.id AND t.status IN ('pending', 'delayed', 'blocked', 'active')
    RETURNING j.*
),
signal AS (SELECT pg_notify('pgjobs_cancel', coalesce(u.worker_id::text, ''))
           FROM updated u WHERE u.status = 'active'),
-- A job cancelled now settles the jobs waiting on it (a running one does when its
-- worker records the outcome).
settled AS (
    SELECT pgjobs_settle_blocked(array_agg(u.id) FILTER (WHERE u.status = 'cancelled'), NULL,
                                 (SELECT now FROM clock))
    FROM updated u
);

-- name: retry_job
-- An operator retry grants a fresh budget of tries on top of the ones used (see
-- pgjobs_retry_reset in schema.sql). A job with dependencies waits for them again: it is
-- settled at once against their current outcomes (it runs if they all completed, fails
-- again if one still has failed).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (SELECT id, status FROM jobs WHERE id = %(id)s FOR UPDATE),
{{retry_steps}}
SELECT t.status AS previous_status, u.*
FROM target t
LEFT JOIN updated u ON true
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w
CROSS JOIN LATERAL (SELECT count(*) FROM settled) d;

-- name: retry_steps
-- The steps of an operator retry after the CTEs `clock` and `target` (the locked jobs),
-- for retry_job and ops_bulk_retry: `updated` holds the jobs queued again.
updated AS (
    SELECT r.*
    FROM clock c,
         pgjobs_retry_reset(ARRAY(SELECT t.id FROM target t
                                  WHERE t.status IN ('failed', 'cancelled')), c.now) r
),
wake AS (
    SELECT pgjobs_notify_queues(array_agg(u.queue::text) FILTER (WHERE u.status = 'pending'))
    FROM updated u
),
settled AS (
    SELECT pgjobs_settle_blocked(NULL, array_agg(u.id) FILTER (WHERE u.status = 'blocked'),
                                 (SELECT now FROM clock))
    FROM updated u
);
