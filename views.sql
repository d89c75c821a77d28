-- pgjobs analytics views. Applied by `pgjobs init` after the schema, every time.
-- Column names and meaning are the public contract: add columns at the end, never
-- rename or drop one.

CREATE OR REPLACE VIEW jobs_active AS
SELECT id, type, queue, priority, payload, started_at, attempts,
       worker_id, progress, timeout_ms
FROM jobs
WHERE status = 'active'
ORDER BY started_at ASC;

CREATE OR REPLACE VIEW jobs_failed_details AS
SELECT j.id, j.type, j.queue, j.attempts, j.max_attempts,
       f.error_message, f.error_stack, f.failed_at,
       f.attempt_number, f.kind
FROM jobs j
JOIN job_failures f ON j.id = f.job_id
WHERE j.status = 'failed'
ORDER BY f.failed_at DESC;

CREATE OR REPLACE VIEW queue_stats AS
SELECT coalesce(s.queue, q.name)::varchar(100) AS queue,
       coalesce(s.pending, 0) AS pending,
       coalesce(s.active, 0) AS active,
       coalesce(s.completed, 0) AS completed,
       coalesce(s.failed, 0) AS failed,
       coalesce(s.delayed, 0) AS delayed,
       coalesce(s.blocked, 0) AS blocked,
       coalesce(s.cancelled, 0) AS cancelled,
       coalesce(q.paused, false) AS paused
FROM (
    SELECT queue,
           COUNT(*) FILTER (WHERE status = 'pending') AS pending,
           COUNT(*) FILTER (WHERE status = 'active') AS active,
           COUNT(*) FILTER (WHERE status = 'completed') AS completed,
           COUNT(*) FILTER (WHERE status = 'failed') AS failed,
           COUNT(*) FILTER (WHERE status = 'delayed') AS delayed,
           COUNT(*) FILTER (WHERE status = 'blocked') AS blocked,
           COUNT(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM jobs
    GROUP BY queue
) s
FULL OUTER JOIN job_queues q ON q.name = s.queue;

CREATE OR REPLACE VIEW job_type_stats AS
SELECT j.type,
       COUNT(*) AS total,
       COUNT(*) FILTER (WHERE j.status = 'completed') AS completed,
       COUNT(*) FILTER (WHERE j.status = 'failed') AS failed,
       AVG(r.duration_ms) AS avg_duration_ms
FROM jobs j
LEFT JOIN job_results r ON j.id = r.job_id
GROUP BY j.type
ORDER BY total DESC;

CREATE OR REPLACE VIEW recent_failures AS
SELECT j.id, j.type, j.queue, f.error_message, f.failed_at,
       f.attempt_number, f.kind
FROM jobs j
JOIN job_failures f ON j.id = f.job_id
WHERE f.failed_at > NOW() - INTERVAL '24 hours'
ORDER BY f.failed_at DESC;

CREATE OR REPLACE VIEW scheduled_jobs_overview AS
SELECT name, type, queue, cron_expression, description, enabled, last_run_at, next_run_at,
       timezone, misfire_policy
FROM job_schedules
ORDER BY enabled DESC, next_run_at ASC;

CREATE OR REPLACE VIEW job_failure_rates AS
SELECT type,
       queue,
       COUNT(*) AS total_jobs,
       COUNT(*) FILTER (WHERE status = 'failed') AS failed_jobs,
       ROUND(COUNT(*) FILTER (WHERE status = 'failed')::numeric
             / NULLIF(COUNT(*), 0) * 100, 2) AS failure_rate_percent,
       AVG(attempts) AS avg_attempts
FROM jobs
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY type, queue
HAVING COUNT(*) > 10
ORDER BY failure_rate_percent DESC;

CREATE OR REPLACE VIEW job_processing_percentiles AS
SELECT j.type,
       j.queue,
       COUNT(*) AS total_jobs,
       PERCENTILE_CONT(0.50) WITHIN GROUP (ORDER BY r.duration_ms) AS p50_ms,
       PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY r.duration_ms) AS p95_ms,
       PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY r.duration_ms) AS p99_ms,
       AVG(r.duration_ms) AS avg_ms,
       MAX(r.duration_ms) AS max_ms
FROM jobs j
JOIN job_results r ON j.id = r.job_id
WHERE j.created_at > NOW() - INTERVAL '24 hours'
  AND j.status = 'completed'
GROUP BY j.type, j.queue
ORDER BY p95_ms DESC;
