-- Read models and bulk actions the dashboard needs beyond ops.sql. They are executed by
-- pgjobs/ops (never by the web layer) and sized for a jobs table of millions of rows:
-- the overview runs on every auto-refresh, so nothing here reads every finished job.

-- name: dashboard_queue_status_counts
-- Jobs per (queue, status) pair. The pairs come from a skip scan of idx_jobs_status
-- (queue, status): one index probe per pair instead of a pass over the table. Live
-- statuses are counted exactly (their rows are few and the counts drive the health
-- score); a finished status is counted only up to %(cap)s + 1 rows, so a queue with a
-- million completed jobs costs no more than one with %(cap)s. Counts above the cap are
-- estimated by dashboard_finished_sample.
WITH RECURSIVE pairs AS (
    (SELECT j.queue, j.status FROM jobs j ORDER BY j.queue, j.status LIMIT 1)
    UNION ALL
    SELECT n.queue, n.status
    FROM pairs p
    CROSS JOIN LATERAL (
        SELECT j.queue, j.status FROM jobs j
        WHERE (j.queue, j.status) > (p.queue, p.status)
        ORDER BY j.queue, j.status
        LIMIT 1
    ) n
)
SELECT p.queue::text AS queue,
       p.status::text AS status,
       CASE WHEN p.status IN ('completed', 'failed', 'cancelled') THEN
                (SELECT count(*) FROM (SELECT 1 FROM jobs j
                                       WHERE j.queue = p.queue AND j.status = p.status
                                       LIMIT %(cap)s + 1) capped)
            ELSE (SELECT count(*) FROM jobs j WHERE j.queue = p.queue AND j.status = p.status)
       END AS n
FROM pairs p;

-- name: dashboard_known_queues
SELECT name::text AS name, paused FROM job_queues ORDER BY name;

-- name: dashboard_jobs_reltuples
-- The planner's row count of jobs (kept fresh by the table's eager autoanalyze); -1
-- when the table was never analysed.
SELECT reltuples::float8 AS reltuples FROM pg_class WHERE oid = 'jobs'::regclass;

-- name: dashboard_finished_sample
-- Finished jobs per queue and status in a sample of the table's pages. REPEATABLE keeps
-- the same pages between refreshes, so an estimate moves with the table, not with the
-- luck of the draw. The caller scales counts by 100 / %(percent)s.
SELECT queue::text AS queue, status::text AS status, count(*) AS n
FROM jobs TABLESAMPLE SYSTEM (%(percent)s) REPEATABLE (7)
WHERE status IN ('completed', 'failed', 'cancelled')
GROUP BY 1, 2;

-- name: dashboard_now
SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now;

-- name: dashboard_serial_scan
-- For the transaction of the first history fill, which reads a day of finished jobs in
-- the background: one backend is enough, and the other cores stay with the workers and
-- the pages being served (a parallel scan would take them all).
SET LOCAL max_parallel_workers_per_gather = 0;

-- name: dashboard_finished_minutes
-- Jobs that finished per queue and minute since %(since)s (served by jobs_finished_idx).
-- Minutes are aligned to the epoch so callers can cache the ones that are over.
SELECT j.queue::text AS queue,
       date_bin('1 minute', j.completed_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
       count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed
FROM jobs j
WHERE j.status IN ('completed', 'failed')
  AND j.completed_at >= %(since)s::timestamptz
  AND j.completed_at <= %(until)s::timestamptz
GROUP BY 1, 2
ORDER BY 2, 1;

-- name: dashboard_job_links
-- A job's dependencies (in their declared order) and up to %(limit)s jobs that depend
-- on it (served by the GIN index on depends_on).
SELECT 'parent' AS relation, d.ord, j.id, j.type::text AS type, j.queue::text AS queue,
       j.status::text AS status, j.completed_at
FROM unnest(%(parents)s::uuid[]) WITH ORDINALITY AS d(id, ord)
JOIN jobs j ON j.id = d.id
UNION ALL
(SELECT 'child', 0, j.id, j.type::text, j.queue::text, j.status::text, j.completed_at
 FROM jobs j
 WHERE j.depends_on @> ARRAY[%(id)s::uuid]
 ORDER BY j.created_at, j.id
 LIMIT %(limit)s)
ORDER BY 1 DESC, 2;

-- name: dashboard_worker_jobs
-- The jobs each worker is running now (served by jobs_active_worker_idx).
SELECT j.worker_id, j.id, j.type::text AS type, j.queue::text AS queue,
       j.status::text AS status, j.completed_at
FROM jobs j
WHERE j.status = 'active' AND j.worker_id = ANY (%(workers)s::uuid[])
ORDER BY j.worker_id, j.started_at, j.id
LIMIT %(limit)s;

-- name: dashboard_schedule_last_runs
-- The latest fire of each schedule (primary key of job_schedule_fires) and its job.
SELECT s.id AS schedule_id, f.fire_time, f.job_id, j.type::text AS type,
       j.queue::text AS queue, j.status::text AS status, j.completed_at
FROM unnest(%(ids)s::uuid[]) AS s(id)
CROSS JOIN LATERAL (
    SELECT fire_time, job_id FROM job_schedule_fires
    WHERE schedule_id = s.id
    ORDER BY fire_time DESC
    LIMIT 1
) f
LEFT JOIN jobs j ON j.id = f.job_id;

-- name: dashboard_clean_queue_batch
-- The next bounded batch of a queue's completed jobs after the clean's cursor, locked;
-- the caller deletes them with delete_finished_jobs (results cascade) and keeps their
-- ids for the audit trail. As in prune_finished_jobs, a job that a blocked job still waits
-- on is kept.
SELECT j.id FROM jobs j
WHERE j.queue = %(queue)s::text
  AND j.status = 'completed'
  AND (%(after_id)s::uuid IS NULL OR j.id > %(after_id)s::uuid)
  AND NOT EXISTS (SELECT 1 FROM jobs child
                  WHERE child.status = 'blocked' AND child.depends_on @> ARRAY[j.id])
ORDER BY j.id
LIMIT %(batch)s
FOR UPDATE OF j SKIP LOCKED;
