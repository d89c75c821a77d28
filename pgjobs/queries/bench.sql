-- Statements of `pgjobs bench` (dev/bench.py), run only on its scratch database.

-- name: bench_truncate
TRUNCATE jobs CASCADE;

-- name: bench_vacuum
VACUUM ANALYZE jobs, job_ready;

-- name: bench_analyze
-- Planner statistics for the backlog, as autovacuum keeps them on a table in use; the
-- peers' drains do the same for their tables (bench/peers/).
ANALYZE jobs, job_ready;

-- name: bench_completed_count
SELECT count(*) AS n FROM jobs WHERE status = 'completed';

-- name: bench_any_unfinished
-- Whether any job is still pending or running, cheaply enough to ask every 5 ms during a
-- drain: each EXISTS stops at the first live row of a small table or partial index, where
-- counting the pending jobs reads all of them (8 ms at 20,000, a core's worth of polling).
SELECT EXISTS (SELECT FROM job_ready)
    OR EXISTS (SELECT FROM jobs WHERE status = 'active') AS unfinished;

-- name: bench_worker_count
SELECT count(*) AS n FROM job_workers;

-- name: bench_drain_window
-- Drain rate from the database's own timestamps: first start to last completion.
SELECT count(*) AS n, extract(epoch FROM max(completed_at) - min(started_at)) AS s
FROM jobs WHERE status = 'completed';

-- name: bench_latencies
-- The latency workload's timed jobs (payload k from 0; the untimed first one is -1).
SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms
FROM jobs WHERE started_at IS NOT NULL AND (payload->>'k')::int >= 0;

-- name: bench_insert_one
-- The raw-SQL limit of a single create: a bare one-row insert (the same table, so the
-- same indexes and insert trigger).
INSERT INTO jobs (id, type, queue, payload) VALUES (%(id)s, 'noop', 'default', jsonb_build_object('n', %(n)s::int));

-- name: bench_start_one
-- What a claim must at least write durably before a job starts (see dev/limits.py).
UPDATE jobs SET status = 'active', attempts = attempts + 1, started_at = now()
WHERE id = %(id)s;

-- name: bench_fill_finished
INSERT INTO jobs (type, status, payload, created_at, started_at, completed_at, run_at)
SELECT 'bench-old', 'completed', '{}', now() - interval '1 hour', now() - interval '1 hour',
       now() - interval '1 hour', now() - interval '1 hour'
FROM generate_series(1, %(count)s);
