-- The worker's hot path: claim, finish, progress, heartbeats (engine/worker.py,
-- engine/completer.py).

-- name: claim_jobs
-- Picks up to %(limit)s pending jobs of the asked queues and marks them active.
-- Each queue is read through its own LATERAL subquery so every read is an ordered scan
-- of job_ready's index (queue, suspect, priority, run_at, id) that stops after LIMIT
-- rows; a single `queue = ANY(...)` would have to sort every pending row of all the
-- queues. job_ready only orders the candidates: the jobs row, found by its key, is the
-- one locked, and its status, queue and suspect flag decide (a lock on a row updated
-- meanwhile rechecks them on its newest version). That check is one CASE, which the
-- planner can neither use as an index condition (reading the pending jobs through
-- idx_jobs_status and joining job_ready to them would read every pending job) nor
-- estimate from the statistics of `jobs`, where pending rows are a sliver of the history:
-- from those it would expect to read all of job_ready for a few claimable rows, and
-- plan to read and sort it all. Unknown, it counts on half passing.
-- The picking is a CTE so the planner cannot update more rows than the LIMIT (the
-- UPDATE joins the already-limited set). Paused queues are skipped here, so a pause
-- takes effect on the next claim of every worker.
-- Suspects (jobs rescued from a dead worker) are left out, and claim_suspect hands them
-- out one at a time to a worker running nothing else.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
candidates AS (
    SELECT c.id, c.priority, c.run_at, c.ready_ctid
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT j.id, r.priority, r.run_at, r.ctid AS ready_ctid
        FROM job_ready r JOIN jobs j ON j.id = r.id
        WHERE r.queue = q.name AND NOT r.suspect
          AND CASE WHEN j.status = 'pending' AND NOT j.suspect AND j.queue = q.name
                   THEN true ELSE false END
        ORDER BY r.queue, r.suspect, r.priority, r.run_at, r.id
        LIMIT %(limit)s
        FOR UPDATE OF j SKIP LOCKED
    ) c
    WHERE NOT EXISTS (SELECT 1 FROM job_queues p WHERE p.name = q.name AND p.paused)
),
picked AS (
    SELECT id, ready_ctid FROM candidates ORDER BY priority, run_at, id LIMIT %(limit)s
),
{{claim_picked}};

-- name: claim_picked
-- The last step of claim_jobs and claim_suspect: the jobs in `picked` (locked by the
-- statement) become active runs of %(worker)s at the `clock`'s now, and their rows
-- leave job_ready, found by the row addresses the pick read (a row of job_ready is never
-- updated, so its address holds until it is deleted): never a search by value, whose
-- plan, made once for a small table, could read all of a large one. Claiming increments
-- attempts: (id, attempts) is the run's fence token.
claimed AS (
    UPDATE jobs j
    SET status = 'active',
        attempts = j.attempts + 1,
        started_at = c.now,
        worker_id = %(worker)s,
        progress = 0,
        progress_message = NULL
    FROM clock c
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.type, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
              j.timeout_ms, j.backoff, j.created_at, j.depends_on, j.cancel_requested_at,
              j.run_at
),
unready AS (
    DELETE FROM job_ready r
    WHERE r.ctid = ANY (ARRAY(SELECT p.ready_ctid FROM picked p JOIN claimed c ON c.id = p.id))
)
-- In claim order: the worker starts them in the order they come (an UPDATE returns
-- its rows in whatever order it found them).
SELECT * FROM claimed ORDER BY priority, run_at, id

-- name: claim_suspect
-- One suspect of the asked queues, for a worker that holds no other job and will claim
-- nothing else until this run is over and recorded (engine/worker.py). Its run is alone in its
-- process, so if the worker dies now the rescuer charges this job a stall, and only
-- this one. Found and locked as claim_jobs does, claimed as it claims (claim_picked).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
picked AS (
    SELECT c.id, c.ready_ctid
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT j.id, r.priority, r.run_at, r.ctid AS ready_ctid
        FROM job_ready r JOIN jobs j ON j.id = r.id
        WHERE r.queue = q.name AND r.suspect
          AND CASE WHEN j.status = 'pending' AND j.suspect AND j.queue = q.name
                   THEN true ELSE false END
        ORDER BY r.queue, r.suspect, r.priority, r.run_at, r.id
        LIMIT 1
        FOR UPDATE OF j SKIP LOCKED
    ) c
    WHERE NOT EXISTS (SELECT 1 FROM job_queues p WHERE p.name = q.name AND p.paused)
    ORDER BY c.priority, c.run_at, c.id
    LIMIT 1
),
{{claim_picked}};

-- name: suspects_waiting
-- Whether a suspect waits in one of the worker's queues (read at each heartbeat): the
-- worker then stops claiming, lets its runs end, and claims the suspect alone.
SELECT EXISTS (
    SELECT 1
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT 1 FROM job_ready r JOIN jobs j ON j.id = r.id
        WHERE r.queue = q.name AND r.suspect
          AND CASE WHEN j.status = 'pending' AND j.suspect AND j.queue = q.name
                   THEN true ELSE false END
        LIMIT 1
    ) s
    WHERE NOT EXISTS (SELECT 1 FROM job_queues p WHERE p.name = q.name AND p.paused)
) AS waiting;

-- name: finish_runs_steps
-- Records the outcomes of many runs. Every row is fenced on the run token: a run that
-- was rescued, cancelled or already recorded matches nothing, so its late outcome is
-- dropped and nothing is ever recorded twice. `finished` holds the rows that applied;
-- the statement returns their run tokens (id, attempt).
--   completed  -> completed + a job_results row
--   retry      -> delayed (or pending when the backoff is 0) + a job_failures row
--   failed     -> failed for good + a job_failures row
--   snooze     -> delayed, and the attempt is given back (RetryIn)
--   cancelled  -> cancelled (the cancel came from an operator)
--   release    -> pending, the attempt given back (graceful shutdown)
-- Any outcome but a release clears `suspect`: the run ended without killing its worker.
-- An attempt is given back by raising max_attempts, never by lowering attempts: the
-- token (id, attempts) must never repeat, or a replayed outcome of this run (a batch
-- retried after an ambiguous commit) could match the job's next run.
-- The outcomes arrive as one JSON array of arrays (see completer.encode_outcomes):
-- one parameter is several times quicker for the worker to send than nine arrays.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
input AS (
    SELECT (o->>0)::uuid AS id, (o->>1)::int AS attempt, o->>2 AS outcome, o->3 AS result,
           (o->>4)::int AS duration_ms, o->>5 AS message, o->>6 AS stack, o->>7 AS kind,
           (o->>8)::bigint AS delay_ms, o->9 AS progress, 'active'::text AS held, o->10 AS logs
    FROM jsonb_array_elements(%(outcomes)s::jsonb) AS e(o)
),
finished AS (
    UPDATE jobs j
    SET status = CASE
            WHEN i.outcome IN ('completed', 'failed', 'cancelled') THEN i.outcome
            WHEN i.outcome = 'release' THEN 'pending'
            WHEN i.delay_ms > 0 THEN 'delayed'
            ELSE 'pending' END,
        run_at = CASE WHEN i.outcome IN ('retry', 'snooze')
                      THEN c.now + i.delay_ms * interval '1 millisecond'
                      ELSE j.run_at END,
        completed_at = CASE WHEN i.outcome IN ('completed', 'failed', 'cancelled')
                            THEN c.now END,
        max_attempts = CASE WHEN i.outcome IN ('snooze', 'release')
                            THEN j.max_attempts + 1 ELSE j.max_attempts END,
        -- an operator's retry grants the budget the job was created with, not the
        -- raised max_attempts
        attempt_budget = coalesce(j.attempt_budget, j.max_attempts),
        -- The handler's last report lands with the outcome, even one still throttled
        -- when the run ended; a completed job is at 100 whatever it last said.
        progress = CASE WHEN i.outcome = 'completed' THEN 100
                        WHEN jsonb_typeof(i.progress) = 'array' THEN (i.progress->>0)::int
                        ELSE j.progress END,
        progress_message = CASE WHEN jsonb_typeof(i.progress) = 'array' THEN i.progress->>1
                                ELSE j.progress_message END,
        last_error = CASE WHEN i.outcome IN ('retry', 'failed') THEN i.message
                          ELSE j.last_error END,
        suspect = j.suspect AND i.outcome = 'release',
        worker_id = NULL
    FROM input i, clock c
    -- Each row is found by its primary key, whatever the plan: `id = ANY(ARRAY(...))` is
    -- an index condition even when the join is a hash or merge join (a generic plan made
    -- on an empty table), and `held` is the constant 'active' passed through the input
    -- rows, because compared with a constant, status would let the planner read every
    -- active job from the partial index jobs_active_worker_idx and test each against
    -- the whole batch (quadratic).
    WHERE j.id = ANY (ARRAY(SELECT id FROM input)) AND j.id = i.id
      AND j.status = i.held AND j.attempts = i.attempt
    -- The applied input row comes back with the job: the records below are made from
    -- it alone, never by joining the input again on the id, so one update yields at
    -- most one record even if a batch ever carried two outcomes for a job.
    RETURNING j.id, j.queue, j.type, j.status, j.run_at, i.outcome, i.attempt, i.result,
              i.duration_ms, i.message, i.stack, i.kind, i.logs
),
results AS (
    INSERT INTO job_results (job_id, result, duration_ms, completed_at, attempt)
    SELECT f.id, f.result, f.duration_ms, c.now, f.attempt
    FROM finished f CROSS JOIN clock c
    WHERE f.outcome = 'completed'
),
failures AS (
    INSERT INTO job_failures (job_id, attempt_number, error_message, error_stack, failed_at,
                              kind, worker_id)
    SELECT f.id, f.attempt, f.message, f.stack, c.now, f.kind, %(worker)s
    FROM finished f CROSS JOIN clock c
    WHERE f.outcome IN ('retry', 'failed')
),
-- Jobs that finished for good settle the jobs waiting on them in this same
-- transaction (see pgjobs_settle_blocked in schema.sql).
wake AS (
    SELECT pgjobs_notify_queues(array_agg(f.queue) FILTER (WHERE f.status = 'pending')),
           CASE WHEN bool_or(f.status = 'delayed') THEN pg_notify('pgjobs_delayed', '') END,
           -- Job events ride along over NOTIFY when the worker asks (someone listens and
           -- no Redis takes them). The flag also sits in FILTER, so nothing is built when
           -- it is off.
           CASE WHEN %(notify_events)s THEN pgjobs_notify_events(
               array_agg(json_build_array(CASE f.outcome WHEN 'retry' THEN 'retrying'
                                                         ELSE f.outcome END,
                                          f.id, f.queue, f.type, f.status, NULL)::text)
               FILTER (WHERE %(notify_events)s
                             AND f.outcome IN ('completed', 'failed', 'retry', 'cancelled')))
           END,
           pgjobs_settle_blocked(
               array_agg(f.id) FILTER (WHERE f.status IN ('completed', 'failed', 'cancelled')),
               NULL, (SELECT now FROM clock))
    FROM finished f
)

-- name: finish_runs
{{finish_runs_steps}}
SELECT f.id, f.attempt, f.status, f.outcome
FROM finished f
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: finish_runs_logged
-- finish_runs for a batch in which some run logged lines through ctx.logger: they are
-- stored with the outcome that applied (a stale run's lines go with its outcome), in the
-- same statement, so logging adds no round trip. Batches without lines use finish_runs.
{{finish_runs_steps}},
logged AS (
    INSERT INTO job_logs (job_id, attempt, seq, at, level, message)
    SELECT f.id, f.attempt, (l->>0)::int, to_timestamp((l->>1)::float8), l->>2, l->>3
    FROM finished f
    CROSS JOIN LATERAL jsonb_array_elements(f.logs) AS e(l)
    WHERE jsonb_typeof(f.logs) = 'array'
    ON CONFLICT DO NOTHING
)
SELECT f.id, f.attempt, f.status, f.outcome
FROM finished f
CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: complete_in_transaction
-- ctx.complete_in(conn): completes the job inside the handler's own transaction, fenced
-- like finish_runs, so its effects and its completion commit or roll back together.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
finished AS (
    UPDATE jobs j
    SET status = 'completed', completed_at = c.now, progress = 100, worker_id = NULL,
        suspect = false,
        progress_message = CASE WHEN %(progress_reported)s THEN %(progress_message)s
                                ELSE j.progress_message END
    FROM clock c
    WHERE j.id = %(id)s AND j.status = 'active' AND j.attempts = %(attempt)s
    RETURNING j.id, j.queue, j.type
),
events AS (
    SELECT pgjobs_notify_events(ARRAY(
        SELECT json_build_array('completed', f.id, f.queue, f.type, 'completed', NULL)::text
        FROM finished f WHERE %(notify_events)s))
),
results AS (
    INSERT INTO job_results (job_id, result, duration_ms, completed_at, attempt)
    SELECT f.id, %(result)s::jsonb, %(duration_ms)s, c.now, %(attempt)s
    FROM finished f CROSS JOIN clock c
),
settled AS (
    SELECT pgjobs_settle_blocked(array_agg(f.id), NULL, (SELECT now FROM clock))
    FROM finished f
)
SELECT f.id FROM finished f CROSS JOIN LATERAL (SELECT count(*) FROM settled) s
CROSS JOIN LATERAL (SELECT count(*) FROM events) e;

-- name: update_progress
-- Fenced like the finish; the progress event goes out over NOTIFY unless the worker
-- publishes it to Redis (it then uses the row returned).
WITH updated AS (
    UPDATE jobs
    SET progress = %(progress)s, progress_message = %(message)s
    WHERE id = %(id)s AND status = 'active' AND attempts = %(attempt)s
    RETURNING id, queue, type, status, progress
),
events AS (
    SELECT pgjobs_notify_events(ARRAY(
        SELECT json_build_array('progress', u.id, u.queue, u.type, u.status, u.progress)::text
        FROM updated u WHERE %(notify_events)s))
)
SELECT u.id, u.queue, u.type, u.status, u.progress
FROM updated u CROSS JOIN LATERAL (SELECT count(*) FROM events) e;

-- name: parent_results
SELECT r.job_id, r.result
FROM job_results r
WHERE r.job_id = ANY (%(ids)s::uuid[])
ORDER BY r.completed_at;

-- name: heartbeat_worker
-- An upsert: a worker that was declared dead (and whose jobs were rescued) and then
-- comes back re-registers; its old runs stay fenced out. Returns the jobs this worker
-- holds: `cancel` for those an operator asked to cancel (in case their NOTIFY was
-- missed), and `settled` once a job has been held longer than %(grace_ms)s, so the
-- worker can give back any it is not running (a claim whose answer was lost).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
beat AS (
    INSERT INTO job_workers (id, hostname, pid, queues, concurrency, version, started_at,
                             last_heartbeat_at, in_flight, processed, stopping)
    SELECT %(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(version)s, c.now,
           c.now, %(in_flight)s, %(processed)s, %(stopping)s
    FROM clock c
    ON CONFLICT (id) DO UPDATE
    SET last_heartbeat_at = EXCLUDED.last_heartbeat_at,
        in_flight = EXCLUDED.in_flight,
        processed = EXCLUDED.processed,
        stopping = EXCLUDED.stopping
    RETURNING id
)
SELECT j.id, j.attempts,
       j.cancel_requested_at IS NOT NULL AS cancel,
       j.started_at < c.now - %(grace_ms)s * interval '1 millisecond' AS settled
FROM jobs j, clock c
WHERE j.worker_id = %(id)s AND j.status = 'active'
  AND EXISTS (SELECT 1 FROM beat);

-- name: deregister_worker
-- A worker that stops cleanly gives back whatever it still holds (its runs are over or
-- abandoned) without using up an attempt (max_attempts grows, see finish_runs), then
-- removes its row.
WITH released AS (
    UPDATE jobs
    SET status = 'pending', max_attempts = max_attempts + 1,
        attempt_budget = coalesce(attempt_budget, max_attempts), worker_id = NULL
    WHERE worker_id = %(id)s AND status = 'active'
    RETURNING queue
),
removed AS (DELETE FROM job_workers WHERE id = %(id)s),
wake AS (SELECT pgjobs_notify_queues(array_agg(queue)) FROM released)
SELECT count(*) AS released FROM released CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;

-- name: listen_channels
LISTEN pgjobs_jobs; LISTEN pgjobs_cancel; LISTEN pgjobs_delayed;

-- name: cancel_requested_runs
-- Which of the jobs this worker holds were asked to cancel (pgjobs_cancel, App.cancel):
-- what a cancel notification, a hint any login can send, is checked against.
SELECT j.id
FROM jobs j
WHERE j.worker_id = %(worker)s AND j.status = 'active' AND j.id = ANY (%(ids)s::uuid[])
  AND j.cancel_requested_at IS NOT NULL;
