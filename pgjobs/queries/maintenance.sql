-- Leader-elected maintenance (engine/maintenance/tasks.py). Each round runs in one transaction that
-- first takes its task's transaction-scoped advisory lock, so one worker acts at a time
-- and a crashed leader can never keep the lock.

-- name: try_leader_lock
-- A leader whose host is cut off from the database mid-round does not close its
-- connection: the server sees a session idle in its transaction, holding the lock, until
-- a timeout ends it. The round's own short idle timeout hands leadership on within
-- seconds instead of the session's minute (a round never waits between its statements).
SELECT pg_try_advisory_xact_lock(%(key)s) AS acquired,
       set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true) AS idle_timeout;

-- name: stage_due_jobs
-- delayed -> pending for every job whose run_at has come, in bounded batches. Also
-- returns when the next delayed job is due, so the stager can sleep exactly that long.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
due AS (
    SELECT j.id
    FROM jobs j, clock c
    WHERE j.status = 'delayed' AND j.run_at <= c.now
    ORDER BY j.run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
staged AS (
    UPDATE jobs j SET status = 'pending'
    FROM due
    WHERE j.id = due.id
    RETURNING j.queue
),
wake AS (SELECT pgjobs_notify_queues(array_agg(queue)) FROM staged)
SELECT (SELECT count(*) FROM staged) AS staged,
       (SELECT min(j.run_at) FROM jobs j, clock c
        WHERE j.status = 'delayed' AND j.run_at > c.now) AS next_run_at,
       (SELECT c.now FROM clock c) AS now
FROM (SELECT count(*) FROM wake) w;

-- name: rescue_stalled_jobs
-- Jobs held by a worker that stopped heartbeating (or whose worker row is gone) are
-- taken back. Any of the jobs in flight there may have killed it, so each becomes a
-- suspect: pending again, its interrupted attempt given back, and claimed from then on
-- only alone (claim_suspect). Only a job that was already a suspect (so it ran alone)
-- is charged: its stall count grows, and once it passes max_stalled it fails for good.
-- The attempt budget (max_attempts) is not touched by stalls: they have their own.
-- Every rescue leaves a job_failures row: kind 'stalled' when charged, 'interrupted'
-- when not. The dead workers' rows are removed; a worker that was only frozen
-- re-registers with its next heartbeat, and the fence rejects whatever its old runs try
-- to record.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
dead AS (
    SELECT w.id FROM job_workers w, clock c
    WHERE w.last_heartbeat_at < c.now - %(lock_ms)s * interval '1 millisecond'
),
stalled AS (
    SELECT j.id, j.worker_id, j.suspect AS charged, j.stalled_count + 1 AS stalls,
           j.suspect AND j.stalled_count + 1 > %(max_stalled)s::int AS exhausted
    FROM jobs j, clock c
    WHERE j.status = 'active'
      AND (j.worker_id IN (SELECT id FROM dead)
           OR NOT EXISTS (SELECT 1 FROM job_workers w WHERE w.id = j.worker_id))
      AND j.started_at < c.now - %(lock_ms)s * interval '1 millisecond'
    FOR UPDATE OF j SKIP LOCKED
),
rescued AS (
    UPDATE jobs j
    SET stalled_count = CASE WHEN s.charged THEN s.stalls ELSE j.stalled_count END,
        status = CASE WHEN s.exhausted THEN 'failed' ELSE 'pending' END,
        completed_at = CASE WHEN s.exhausted THEN c.now END,
        max_attempts = j.max_attempts + 1,
        attempt_budget = coalesce(j.attempt_budget, j.max_attempts),
        suspect = true,
        last_error = CASE
            WHEN s.exhausted THEN
                'stalled ' || s.stalls || ' times, more than JOBS_MAX_STALLED_COUNT ('
                || %(max_stalled)s::int || '): its worker died each time it ran alone (last: worker '
                || coalesce(s.worker_id::text, 'unknown') || ' lost its lease)'
            WHEN s.charged THEN
                'stalled (' || s.stalls || ' of at most ' || %(max_stalled)s::int
                || '): worker ' || coalesce(s.worker_id::text, 'unknown')
                || ' lost its lease while running the job alone'
            ELSE
                'interrupted: worker ' || coalesce(s.worker_id::text, 'unknown')
                || ' lost its lease while the job was in flight with others; not charged,'
                || ' it runs alone next'
            END,
        worker_id = NULL
    FROM stalled s, clock c
    WHERE j.id = s.id
    RETURNING j.id, j.queue, j.type, j.status, j.attempts, j.last_error, s.charged,
              s.worker_id AS old_worker
),
failures AS (
    INSERT INTO job_failures (job_id, attempt_number, error_message, failed_at, kind, worker_id)
    SELECT r.id, r.attempts, r.last_error, c.now,
           CASE WHEN r.charged THEN 'stalled' ELSE 'interrupted' END, r.old_worker
    FROM rescued r CROSS JOIN clock c
),
removed AS (DELETE FROM job_workers w USING dead d WHERE w.id = d.id),
wake AS (SELECT pgjobs_notify_queues(array_agg(queue) FILTER (WHERE status = 'pending')),
                -- Jobs that failed for good settle the jobs waiting on them.
                pgjobs_settle_blocked(array_agg(id) FILTER (WHERE status = 'failed'), NULL,
                                      (SELECT now FROM clock)),
                -- 'stalled' job events, sent at commit. Always over NOTIFY: this runs in
                -- the maintenance leader's transaction, which has no Redis publisher.
                pgjobs_notify_events(array_agg(
                    json_build_array('stalled', id, queue, type, status, NULL)::text))
         FROM rescued)
SELECT count(*) FILTER (WHERE r.status = 'pending') AS requeued,
       count(*) FILTER (WHERE r.status = 'pending' AND r.charged) AS charged,
       count(*) FILTER (WHERE r.status = 'failed') AS failed
FROM (SELECT count(*) FROM wake) w
LEFT JOIN rescued r ON true;

-- name: prune_finished_jobs
-- The next batch of finished jobs past their retention, locked, in (completed_at, id)
-- order after the cursor of the pass: a pass moves on past jobs it could not delete (see
-- delete_finished_jobs) instead of meeting them again in every batch. For the
-- maintenance leader's prune and for `pgjobs clean`; a NULL retention keeps that kind
-- of job. The caller deletes the batch with retention.delete_jobs (results and failures
-- cascade). Bounded batches never hold many row locks or one long transaction on the
-- hot table. A job that a blocked job still waits on is kept: its outcome is what
-- releases the child. The bound on the shorter retention lets the finished index stop
-- where nothing is old enough, however many newer finished jobs there are.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT j.id, j.completed_at
FROM jobs j, clock c
WHERE j.status IN ('completed', 'failed', 'cancelled')
  AND j.completed_at < c.now - make_interval(
        secs => least(%(completed_s)s::float8, %(failed_s)s::float8))
  AND ((j.status = 'completed' AND %(completed_s)s::float8 IS NOT NULL
        AND j.completed_at < c.now - make_interval(secs => %(completed_s)s::float8))
    OR (j.status IN ('failed', 'cancelled') AND %(failed_s)s::float8 IS NOT NULL
        AND j.completed_at < c.now - make_interval(secs => %(failed_s)s::float8)))
  AND (%(after_at)s::timestamptz IS NULL
       OR (j.completed_at >= %(after_at)s::timestamptz
           AND (j.completed_at, j.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid)))
  AND NOT EXISTS (SELECT 1 FROM jobs child
                  WHERE child.status = 'blocked' AND child.depends_on @> ARRAY[j.id])
ORDER BY j.completed_at, j.id
LIMIT %(batch)s
FOR UPDATE OF j SKIP LOCKED;

-- name: delete_finished_jobs
-- Deletes jobs the caller locked (results and failures go with them by cascade), except
-- those another table's NO ACTION / RESTRICT foreign key still points at: one row per
-- deleted job (its status), and one per job kept with the constraint that keeps it.
WITH kept AS (SELECT * FROM pgjobs_referencing_jobs(%(ids)s::uuid[])),
deleted AS (
    DELETE FROM jobs j
    WHERE j.id = ANY (%(ids)s::uuid[])
      AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.job_id = j.id)
    RETURNING j.id, j.status
)
SELECT d.id, d.status, NULL::text AS constraint_name, NULL::text AS table_name FROM deleted d
UNION ALL
SELECT DISTINCT ON (k.job_id) k.job_id, NULL, k.constraint_name, k.table_name FROM kept k;

-- name: delete_finished_job
-- One job, when a batch hit a reference pgjobs_referencing_jobs cannot see (through a
-- cascade to job_results, a key of several columns, a trigger).
DELETE FROM jobs WHERE id = %(id)s RETURNING id, status;

-- name: vacuum_leader_lock
-- VACUUM cannot run inside a transaction, so the vacuum round's leader holds a
-- session-level lock, released by vacuum_leader_unlock or when its connection closes.
SELECT pg_try_advisory_lock(%(key)s) AS acquired;

-- name: vacuum_leader_unlock
SELECT pg_advisory_unlock(%(key)s) AS released;

-- name: vacuum_dead_tuples
-- What the vacuum round decides on: dead row versions in job_ready and `jobs` (the
-- statistics lag a second at most), live ones, and whether this role may vacuum each
-- table (its owner).
SELECT c.oid = 'job_ready'::regclass AS ready, s.n_dead_tup AS dead, s.n_live_tup AS live,
       pg_has_role(current_user, c.relowner, 'USAGE') AS may_vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.relid IN ('job_ready'::regclass, 'jobs'::regclass)
ORDER BY ready DESC;

-- name: vacuum_ready
-- The claim's table: its claim index must shed the entries of claimed jobs (index cleanup
-- always, where the default may skip it when few pages hold dead rows), and the planner
-- needs its statistics to see that reading it in order stops early (a few thousand rows:
-- milliseconds). No truncation: it would take an exclusive lock that claims wait behind.
-- SKIP_LOCKED: an autovacuum already at work does the same job.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON, TRUNCATE false, ANALYZE) job_ready;

-- name: vacuum_jobs
-- The heap and the history's indexes: index cleanup left to VACUUM's own judgement (it
-- skips the indexes when few heap pages hold dead rows). No truncation, as above.
VACUUM (SKIP_LOCKED, TRUNCATE false, PROCESS_TOAST false) jobs;

-- name: sweep_job_ready
-- job_ready against `jobs` (ReadySweeper): rows of jobs that are not pending with those
-- values go, pending jobs without their row get one. Both read one snapshot, where a job
-- and its row are written in the same transaction: a job claimed or created meanwhile
-- is not mistaken for a missing or stale row. A row added for a job claimed just after
-- the snapshot is stale, never claimed, and goes at the next sweep.
-- The pending jobs are read once, queue by queue, from the (queue, status) index: the
-- queues by a skip over that index (one probe per queue), then each queue's pending
-- range. However many finished jobs the table keeps, a sweep reads the pending jobs and
-- a few index pages per queue, not the history.
WITH RECURSIVE queues AS (
    (SELECT j.queue FROM jobs j ORDER BY j.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j WHERE j.queue > q.queue ORDER BY j.queue LIMIT 1)
    FROM queues q
    WHERE q.queue IS NOT NULL
),
pending AS MATERIALIZED (
    SELECT j.queue, j.suspect, j.priority, j.run_at, j.id
    FROM queues q
    CROSS JOIN LATERAL (
        SELECT j.queue, j.suspect, j.priority, j.run_at, j.id
        FROM jobs j
        WHERE j.queue = q.queue AND j.status = 'pending'
        -- Kept a subquery run per queue: joined, the planner may read every queue's
        -- entries of the index for the status alone.
        OFFSET 0
    ) j
),
stale AS (
    DELETE FROM job_ready r
    WHERE NOT EXISTS (
        SELECT 1 FROM pending p
        WHERE p.id = r.id AND p.queue = r.queue AND p.suspect = r.suspect
          AND p.priority = r.priority AND p.run_at = r.run_at)
    RETURNING 1
),
missing AS (
    INSERT INTO job_ready (queue, suspect, priority, run_at, id)
    SELECT p.queue, p.suspect, p.priority, p.run_at, p.id
    FROM pending p
    WHERE NOT EXISTS (
        SELECT 1 FROM job_ready r
        WHERE r.queue = p.queue AND r.suspect = p.suspect AND r.priority = p.priority
          AND r.run_at = p.run_at AND r.id = p.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM stale) AS removed, (SELECT count(*) FROM missing) AS added;
