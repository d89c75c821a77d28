-- Operator actions and read models (pgjobs/ops): stats, listings, bulk retry, clean,
-- pause/resume, workers, database health, metrics. Shared by the CLI, the REST API and
-- the dashboard. Optional filters are written `(%(x)s IS NULL OR col = %(x)s)` so one
-- statement serves every combination; psycopg's custom plans keep them index-friendly.

-- name: ops_queue_counts
-- Counts per queue and status, including queues that are known (job_queues) but empty.
-- `waiting` follows BullMQ: pending jobs of a paused queue are counted as `paused`.
SELECT coalesce(c.queue, q.name)::text AS queue,
       coalesce(q.paused, false) AS is_paused,
       q.paused_at,
       q.rate_limit_max,
       q.rate_limit_duration_ms,
       CASE WHEN coalesce(q.paused, false) THEN 0 ELSE coalesce(c.pending, 0) END AS waiting,
       coalesce(c.active, 0) AS active,
       coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0) AS failed,
       coalesce(c.delayed, 0) AS delayed,
       CASE WHEN coalesce(q.paused, false) THEN coalesce(c.pending, 0) ELSE 0 END AS paused,
       coalesce(c.blocked, 0) AS blocked,
       coalesce(c.cancelled, 0) AS cancelled
FROM (
    SELECT queue,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'active') AS active,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'delayed') AS delayed,
           count(*) FILTER (WHERE status = 'blocked') AS blocked,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM jobs
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    GROUP BY queue
) c
FULL OUTER JOIN (
    SELECT * FROM job_queues WHERE (%(queue)s::text IS NULL OR name = %(queue)s::text)
) q ON q.name = c.queue
ORDER BY 1;

-- name: ops_queue_window
-- Outcomes of jobs that finished inside the window, per queue (served by jobs_finished_idx).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT j.queue::text AS queue,
       count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed
FROM jobs j, clock c
WHERE j.status IN ('completed', 'failed')
  AND j.completed_at > c.now - make_interval(secs => %(window_s)s)
  AND j.completed_at <= c.now
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
GROUP BY j.queue;

-- name: ops_oldest_pending
-- Age of the oldest runnable job per queue: how far behind the workers are.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT j.queue::text AS queue,
       greatest(extract(epoch FROM c.now - min(j.run_at)), 0)::float8 AS age_s
FROM jobs j, clock c
WHERE j.status = 'pending'
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
GROUP BY j.queue, c.now;

-- name: ops_duration_percentiles
-- Run durations of completed runs inside the window, per queue (type NULL) and per
-- queue and type, from job_results so every successful run counts once.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT j.queue::text AS queue,
       j.type::text AS type,
       count(*) AS runs,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_ms)::float8 AS p99_ms,
       avg(r.duration_ms)::float8 AS avg_ms,
       max(r.duration_ms)::float8 AS max_ms
FROM job_results r
JOIN jobs j ON j.id = r.job_id
CROSS JOIN clock c
WHERE r.duration_ms IS NOT NULL
  AND r.completed_at > c.now - make_interval(secs => %(window_s)s)
  AND r.completed_at <= c.now
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
GROUP BY GROUPING SETS ((j.queue), (j.queue, j.type))
ORDER BY 1, 2 NULLS FIRST;

-- name: ops_throughput_series
-- Finished jobs per time bucket over the window; empty buckets are filled by the caller.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
bounds AS (SELECT c.now - make_interval(secs => %(window_s)s) AS start, c.now AS stop
           FROM clock c)
SELECT least(floor(extract(epoch FROM j.completed_at - b.start) / %(width_s)s)::int,
             %(buckets)s::int - 1) AS bucket,
       count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed
FROM jobs j, bounds b
WHERE j.status IN ('completed', 'failed')
  AND j.completed_at > b.start
  AND j.completed_at <= b.stop
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
GROUP BY 1
ORDER BY 1;

-- name: ops_window_start
SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) - make_interval(secs => %(window_s)s)
       AS start;

-- name: ops_list_jobs
-- Newest first, keyset-paginated on (created_at, id): rows inserted while a client pages
-- land before its first page, so later pages never repeat or skip a row.
SELECT id, type, queue, status, priority, progress, progress_message, attempts,
       max_attempts, created_at, started_at, completed_at, run_at, last_error, worker_id,
       left(payload::text, %(preview)s) AS payload_preview,
       octet_length(payload::text) AS payload_bytes
FROM jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
  AND (%(id_prefix)s::text IS NULL OR id::text LIKE %(id_prefix)s::text || '%%')
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: ops_retryable_jobs
-- What `retry` would pick, most recent failure first, without changing anything.
SELECT id, type, queue, status, attempts, max_attempts, last_error, completed_at AS failed_at,
       created_at
FROM jobs
WHERE status = 'failed'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(ids)s::uuid[] IS NULL OR id = ANY (%(ids)s::uuid[]))
  AND (%(error_line)s::text IS NULL
       OR split_part(coalesce(last_error, ''), E'\n', 1) = %(error_line)s::text)
ORDER BY completed_at DESC NULLS LAST, id DESC
LIMIT %(limit)s;

-- name: ops_retry_failed
-- Bulk operator retry, as retry_job (jobs.sql) retries one job: pgjobs_retry_reset grants
-- a fresh budget of tries on top of the ones used. SKIP LOCKED leaves a job that is
-- being retried or pruned right now to its other owner.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (
    SELECT id FROM jobs
    WHERE status = 'failed'
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(type)s::text IS NULL OR type = %(type)s::text)
      AND (%(ids)s::uuid[] IS NULL OR id = ANY (%(ids)s::uuid[]))
      AND (%(error_line)s::text IS NULL
           OR split_part(coalesce(last_error, ''), E'\n', 1) = %(error_line)s::text)
    ORDER BY completed_at DESC NULLS LAST, id DESC
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
updated AS (
    SELECT r.id, r.type, r.queue, r.status, r.attempts, r.max_attempts, r.last_error,
           NULL::timestamptz AS failed_at, r.created_at
    FROM clock c, pgjobs_retry_reset(ARRAY(SELECT t.id FROM target t), c.now) r
),
wake AS (
    SELECT pgjobs_notify_queues(array_agg(u.queue::text) FILTER (WHERE u.status = 'pending')),
           -- Jobs with dependencies wait for them again (see retry_job).
           pgjobs_settle_blocked(NULL, array_agg(u.id) FILTER (WHERE u.status = 'blocked'),
                                 (SELECT now FROM clock))
    FROM updated u
)
SELECT u.* FROM updated u CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: ops_promote_delayed
-- Run delayed jobs now (staging does the same once run_at is reached).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (
    SELECT id FROM jobs
    WHERE status = 'delayed'
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(ids)s::uuid[] IS NULL OR id = ANY (%(ids)s::uuid[]))
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
updated AS (
    UPDATE jobs j SET status = 'pending', run_at = c.now
    FROM target t, clock c
    WHERE j.id = t.id
    RETURNING j.id, j.queue
),
wake AS (SELECT pgjobs_notify_queues(array_agg(u.queue::text)) FROM updated u)
SELECT u.id, u.queue FROM updated u CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: ops_clean_count
-- What prune_finished_jobs would give `pgjobs clean` to delete in total (dry run).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status <> 'completed') AS failed
FROM jobs j, clock c
WHERE ((j.status = 'completed' AND %(completed_s)s::float8 IS NOT NULL
        AND j.completed_at < c.now - make_interval(secs => %(completed_s)s::float8))
    OR (j.status IN ('failed', 'cancelled') AND %(failed_s)s::float8 IS NOT NULL
        AND j.completed_at < c.now - make_interval(secs => %(failed_s)s::float8)))
  AND NOT EXISTS (SELECT 1 FROM jobs child
                  WHERE child.status = 'blocked' AND child.depends_on @> ARRAY[j.id]);

-- name: ops_set_queue_paused
-- Pausing names a queue that exists (a job_queues row or any job); the row is created on
-- first pause. Resuming wakes the workers at commit so waiting jobs start at once.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
known AS (
    SELECT %(queue)s::text AS name
    WHERE EXISTS (SELECT 1 FROM job_queues WHERE name = %(queue)s::text)
       OR EXISTS (SELECT 1 FROM jobs WHERE queue = %(queue)s::text)
),
upserted AS (
    INSERT INTO job_queues AS q (name, paused, paused_at)
    SELECT k.name, %(paused)s::boolean, CASE WHEN %(paused)s::boolean THEN c.now END
    FROM known k, clock c
    ON CONFLICT (name) DO UPDATE
        SET paused = excluded.paused,
            paused_at = CASE WHEN q.paused AND excluded.paused THEN q.paused_at
                             ELSE excluded.paused_at END
    RETURNING q.name, q.paused, q.paused_at
),
wake AS (SELECT pgjobs_notify_queues(array_agg(u.name::text)) FROM upserted u WHERE NOT u.paused)
SELECT u.name::text AS name, u.paused, u.paused_at
FROM upserted u CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: ops_delete_job
-- A running job must be cancelled first, and a job that blocked jobs wait on is kept.
WITH target AS (SELECT id, status FROM jobs WHERE id = %(id)s FOR UPDATE),
children AS (
    SELECT count(*) AS blocked_children FROM jobs child, target t
    WHERE child.status = 'blocked' AND child.depends_on @> ARRAY[t.id]
),
deleted AS (
    DELETE FROM jobs j USING target t, children ch
    WHERE j.id = t.id AND t.status <> 'active' AND ch.blocked_children = 0
    RETURNING j.id
)
SELECT t.status AS previous_status, ch.blocked_children, d.id
FROM target t CROSS JOIN children ch LEFT JOIN deleted d ON true;

-- name: ops_workers
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.in_flight, w.processed,
       w.version, w.stopping, w.last_heartbeat_at, w.started_at,
       (c.now - w.last_heartbeat_at) <= make_interval(secs => %(lease_s)s::float8) AS alive
FROM job_workers w, clock c
ORDER BY w.started_at, w.hostname, w.pid;

-- name: ops_db_health
-- Bloat and vacuum blockers: dead tuples on jobs, and the oldest open transaction on the
-- server (any database), which holds back vacuum everywhere.
SELECT coalesce(s.n_dead_tup, 0) AS dead_tuples,
       coalesce(s.n_live_tup, 0) AS live_tuples,
       s.last_autovacuum,
       s.last_vacuum,
       pg_total_relation_size('jobs'::regclass) AS jobs_total_bytes,
       (SELECT extract(epoch FROM max(clock_timestamp() - a.xact_start))::float8
        FROM pg_stat_activity a
        WHERE a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid()) AS oldest_transaction_s
FROM (SELECT 'jobs'::regclass AS relid) t
LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid;

-- name: ops_failure_groups
-- Failed jobs grouped by fingerprint (type + first line of the last error), the unit the
-- dashboard retries together (see the error_line filter of ops_retry_failed).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT j.type::text AS type,
       split_part(coalesce(j.last_error, ''), E'\n', 1) AS error_line,
       count(*) AS jobs,
       max(j.completed_at) AS last_failed_at,
       (array_agg(j.id ORDER BY j.completed_at DESC, j.id DESC))[1:5] AS sample_ids
FROM jobs j, clock c
WHERE j.status = 'failed'
  AND j.completed_at > c.now - make_interval(secs => %(window_s)s)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
GROUP BY 1, 2
ORDER BY jobs DESC, last_failed_at DESC
LIMIT %(limit)s;

-- name: ops_record_audit
INSERT INTO job_audit (at, actor, action, target, detail)
VALUES (coalesce(%(now)s::timestamptz, pgjobs_now()), %(actor)s, %(action)s, %(target)s,
        %(detail)s::jsonb);

-- name: ops_recent_audit
SELECT id, at, actor, action, target, detail
FROM job_audit
ORDER BY at DESC, id DESC
LIMIT %(limit)s;

-- name: ops_database_ping
SELECT 1 AS ok;

-- name: ops_metrics_processed
-- Counters from append-only history, so they only grow while jobs are retried: every
-- completed run has a job_results row and every failed attempt a job_failures row.
SELECT j.queue::text AS queue, j.type::text AS type, 'completed' AS status, count(*) AS n
FROM job_results r JOIN jobs j ON j.id = r.job_id
GROUP BY j.queue, j.type
UNION ALL
SELECT j.queue::text, j.type::text,
       CASE WHEN f.kind = 'cancelled' THEN 'cancelled' ELSE 'failed' END, count(*)
FROM job_failures f JOIN jobs j ON j.id = f.job_id
GROUP BY 1, 2, 3;

-- name: ops_metrics_durations
-- Cumulative histogram buckets of run durations, computed in the database. The bounds
-- (ms) must match DURATION_BUCKETS_S in pgjobs/ops/service.py: 0.1 0.5 1 2 5 10 30 60 s.
SELECT j.queue::text AS queue,
       j.type::text AS type,
       count(*) AS count,
       coalesce(sum(r.duration_ms), 0)::float8 AS sum_ms,
       ARRAY[count(*) FILTER (WHERE r.duration_ms <= 100),
             count(*) FILTER (WHERE r.duration_ms <= 500),
             count(*) FILTER (WHERE r.duration_ms <= 1000),
             count(*) FILTER (WHERE r.duration_ms <= 2000),
             count(*) FILTER (WHERE r.duration_ms <= 5000),
             count(*) FILTER (WHERE r.duration_ms <= 10000),
             count(*) FILTER (WHERE r.duration_ms <= 30000),
             count(*) FILTER (WHERE r.duration_ms <= 60000)] AS buckets
FROM job_results r JOIN jobs j ON j.id = r.job_id
WHERE r.duration_ms IS NOT NULL
GROUP BY j.queue, j.type;

-- name: ops_search_custom_plans
-- A search plans for its own values: which index serves it depends on which terms it
-- has (a plan made for NULLs would read every job), so it never runs a generic plan.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: ops_search_jobs
-- The job search (pgjobs/ops/search.py), newest first, keyset-paginated like
-- ops_list_jobs. Terms left out are NULL and drop out of the custom plan, so a payload
-- term reads jobs_payload_search_idx, an error term jobs_error_search_idx (its
-- expression and predicate written exactly as the index has them), an id prefix a range
-- of the primary key. The payload index leaves running jobs out (see schema.sql): they
-- are read apart, through jobs_active_worker_idx, and the two newest-first lists merged.
WITH matching AS (
    (SELECT * FROM jobs
     WHERE status <> 'active' AND {{search_terms}}
     ORDER BY created_at DESC, id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT * FROM jobs
     WHERE status = 'active' AND {{search_terms}}
     ORDER BY created_at DESC, id DESC
     LIMIT %(limit)s)
)
SELECT id, type, queue, status, priority, progress, progress_message, attempts,
       max_attempts, created_at, started_at, completed_at, run_at, last_error, worker_id,
       left(payload::text, %(preview)s) AS payload_preview,
       octet_length(payload::text) AS payload_bytes
FROM matching
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: search_terms
-- The conditions of a job search (ops_search_jobs uses them twice).
(%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(id_low)s::uuid IS NULL OR id BETWEEN %(id_low)s::uuid AND %(id_high)s::uuid)
  AND (%(payload)s::jsonb IS NULL
       OR payload @> %(payload)s::jsonb
       OR (%(payload_alt)s::jsonb IS NOT NULL AND payload @> %(payload_alt)s::jsonb))
  AND (%(error)s::text IS NULL
       OR (last_error IS NOT NULL
           AND to_tsvector('simple'::regconfig, last_error)
               @@ websearch_to_tsquery('simple'::regconfig, %(error)s::text)))
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))

-- name: ops_job_logs
-- The log lines of a job's last %(attempts)s attempts that logged any, in order (the
-- primary key of job_logs); each row also counts the earlier attempts left out, so a
-- job retried many times answers with a bounded number of lines.
WITH logged AS (
    SELECT DISTINCT attempt FROM job_logs WHERE job_id = %(id)s
),
shown AS (
    SELECT attempt FROM logged ORDER BY attempt DESC LIMIT %(attempts)s
)
SELECT l.attempt, l.seq, l.at, l.level, l.message,
       (SELECT count(*) FROM logged) - (SELECT count(*) FROM shown) AS attempts_omitted
FROM job_logs l
JOIN shown s ON s.attempt = l.attempt
WHERE l.job_id = %(id)s
ORDER BY l.attempt, l.seq;

-- Bulk actions on listed jobs (the dashboard's row checkboxes). Each locks the listed
-- jobs in id order (as every bulk lock of jobs does), changes the ones whose status
-- allows it the way the one-job statement (jobs.sql) does, and returns every listed job
-- that exists with the status it had and whether it changed.

-- name: ops_bulk_retry
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (
    SELECT id, status FROM jobs WHERE id = ANY (%(ids)s::uuid[]) ORDER BY id FOR UPDATE
),
{{retry_steps}}
SELECT t.id, t.status::text AS previous_status, u.id IS NOT NULL AS applied
FROM target t
LEFT JOIN updated u ON u.id = t.id
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w
CROSS JOIN LATERAL (SELECT count(*) FROM settled) d;

-- name: ops_bulk_cancel
-- As cancel_job: waiting jobs are cancelled at once, running ones flagged and their
-- workers told.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (
    SELECT id, status FROM jobs WHERE id = ANY (%(ids)s::uuid[]) ORDER BY id FOR UPDATE
),
{{cancel_steps}}
SELECT t.id, t.status::text AS previous_status, u.id IS NOT NULL AS applied
FROM target t
LEFT JOIN updated u ON u.id = t.id
CROSS JOIN LATERAL (SELECT count(*) FROM signal) s
CROSS JOIN LATERAL (SELECT count(*) FROM settled) d;

-- name: ops_bulk_delete
-- As ops_delete_job: a running job, and a job that blocked jobs wait on, are kept. This
-- only locks and sorts the listed jobs; the caller deletes the deletable ones with
-- delete_finished_jobs (retention.delete_jobs), which keeps those a table of the user's
-- own still references rather than failing the whole action.
WITH target AS (
    SELECT id, status FROM jobs WHERE id = ANY (%(ids)s::uuid[]) ORDER BY id FOR UPDATE
),
waited AS (
    SELECT t.id, t.status,
           EXISTS (SELECT 1 FROM jobs child
                   WHERE child.status = 'blocked' AND child.depends_on @> ARRAY[t.id])
               AS waited_on
    FROM target t
)
SELECT w.id, w.status::text AS previous_status, w.waited_on,
       w.status <> 'active' AND NOT w.waited_on AS deletable
FROM waited w;

-- name: ops_bulk_promote
-- As ops_promote_delayed, for listed jobs.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
target AS (
    SELECT id, status FROM jobs WHERE id = ANY (%(ids)s::uuid[]) ORDER BY id FOR UPDATE
),
updated AS (
    UPDATE jobs j SET status = 'pending', run_at = c.now
    FROM target t, clock c
    WHERE j.id = t.id AND t.status = 'delayed'
    RETURNING j.id, j.queue
),
wake AS (SELECT pgjobs_notify_queues(array_agg(u.queue::text)) FROM updated u)
SELECT t.id, t.status::text AS previous_status, u.id IS NOT NULL AS applied
FROM target t
LEFT JOIN updated u ON u.id = t.id
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;
