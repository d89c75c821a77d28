-- Cron schedules: definitions (schedules/store.py) and exactly-once fires (schedules/task.py).

-- name: schedule_clock
SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now;

-- name: schedule_insert
-- A taken name inserts nothing; the caller reports the conflict. The row was validated
-- here (croniter) and carries its next_run_at: the mark tells the table's trigger,
-- which checks rows written by plain SQL, to let it through (schema.sql).
INSERT INTO job_schedules (name, type, queue, cron_expression, payload, description, enabled,
                           next_run_at, created_at, updated_at, timezone, misfire_policy,
                           max_catch_up, priority, options)
SELECT %(name)s, %(type)s, %(queue)s, %(cron_expression)s, %(payload)s::jsonb,
       %(description)s, %(enabled)s, %(next_run_at)s, %(now)s, %(now)s, %(timezone)s,
       %(misfire_policy)s, %(max_catch_up)s, %(priority)s, %(options)s::jsonb
FROM (SELECT set_config('pgjobs.schedule_write', 'pgjobs', true)) AS mark
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: schedule_get
SELECT * FROM job_schedules WHERE name = %(name)s;

-- name: schedule_lock
-- The row to edit, locked until the edit commits, and the clock the edit computes
-- next_run_at with. A fire round that read the row before the edit sees updated_at
-- change and leaves next_run_at alone.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
SELECT c.now AS clock_now, s.*
FROM clock c
LEFT JOIN LATERAL (
    SELECT * FROM job_schedules WHERE name = %(name)s FOR UPDATE
) s ON true;

-- name: schedule_list
SELECT * FROM job_schedules ORDER BY name;

-- name: schedule_update
UPDATE job_schedules
SET name = %(name)s,
    type = %(type)s,
    queue = %(queue)s,
    cron_expression = %(cron_expression)s,
    payload = %(payload)s::jsonb,
    description = %(description)s,
    enabled = %(enabled)s,
    next_run_at = %(next_run_at)s,
    timezone = %(timezone)s,
    misfire_policy = %(misfire_policy)s,
    max_catch_up = %(max_catch_up)s,
    priority = %(priority)s,
    options = %(options)s::jsonb,
    updated_at = %(now)s
FROM (SELECT set_config('pgjobs.schedule_write', 'pgjobs', true)) AS mark
WHERE id = %(id)s
RETURNING job_schedules.*;

-- name: schedule_delete
-- Its fire records go with it (ON DELETE CASCADE); jobs it created stay.
DELETE FROM job_schedules WHERE name = %(name)s RETURNING *;

-- name: cron_due_schedules
-- The enabled schedules whose next fire has come (or was never computed), and when the
-- next one after those is due, so the task can sleep until then. `skip` lists
-- definitions known to be unusable (edited to garbage by hand): they must not take
-- the places of good ones in the batch; any edit of them makes them eligible again.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
skip AS (
    SELECT * FROM unnest(%(skip_ids)s::uuid[], %(skip_crons)s::text[], %(skip_zones)s::text[])
        AS k(id, cron_expression, timezone)
)
SELECT c.now AS clock_now,
       (SELECT min(s.next_run_at) FROM job_schedules s
        WHERE s.enabled AND s.next_run_at > c.now) AS next_future,
       d.*
FROM clock c
LEFT JOIN LATERAL (
    SELECT s.*
    FROM job_schedules s
    WHERE s.enabled
      AND (s.next_run_at IS NULL OR s.next_run_at <= c.now)
      AND NOT EXISTS (SELECT 1 FROM skip k
                      WHERE k.id = s.id AND k.cron_expression = s.cron_expression
                        AND k.timezone = s.timezone)
    ORDER BY s.next_run_at NULLS FIRST, s.id
    LIMIT %(limit)s
) d ON true;

-- name: cron_fire
-- One statement per round: for each planned fire, record (schedule, fire_time) and, only
-- when that row is new, insert its job; then advance the schedules. The primary key of
-- job_schedule_fires is what makes a fire impossible to enqueue twice, even by two
-- leaders at once: the second one's insert waits for the first to commit, then finds
-- the key taken and inserts no job.
--
-- A plan is applied only to a schedule still as it was read (same next_run_at and
-- updated_at), locked in id order so concurrent rounds queue up instead of deadlocking:
-- a round that lost the race, or raced an edit, changes nothing.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
plan AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(seen_nexts)s::timestamptz[], %(seen_updated)s::timestamptz[],
                %(new_nexts)s::timestamptz[], %(last_fires)s::timestamptz[])
        AS p(schedule_id, seen_next, seen_updated, new_next, last_fire)
),
locked AS (
    SELECT s.id
    FROM job_schedules s
    JOIN plan p ON p.schedule_id = s.id
    WHERE s.enabled
      AND s.next_run_at IS NOT DISTINCT FROM p.seen_next
      AND s.updated_at = p.seen_updated
    ORDER BY s.id
    FOR UPDATE OF s
),
input AS (
    SELECT f.*
    FROM unnest(%(f_schedule_ids)s::uuid[], %(f_fire_times)s::timestamptz[],
                %(f_job_ids)s::uuid[], %(f_types)s::text[], %(f_queues)s::text[],
                %(f_payloads)s::jsonb[], %(f_priorities)s::int[], %(f_max_attempts)s::int[],
                %(f_timeouts)s::bigint[], %(f_backoffs)s::jsonb[], %(f_rate_keys)s::text[],
                %(f_metadatas)s::jsonb[])
        WITH ORDINALITY AS f(schedule_id, fire_time, job_id, type, queue, payload, priority,
                             max_attempts, timeout_ms, backoff, rate_limit_key, metadata, ord)
    WHERE f.schedule_id IN (SELECT id FROM locked)
),
fired AS (
    INSERT INTO job_schedule_fires (schedule_id, fire_time, job_id, fired_at)
    SELECT i.schedule_id, i.fire_time, i.job_id, c.now
    FROM input i CROSS JOIN clock c
    ORDER BY i.schedule_id, i.fire_time
    ON CONFLICT (schedule_id, fire_time) DO NOTHING
    RETURNING job_id
),
inserted AS (
    INSERT INTO jobs (id, type, queue, status, priority, payload, max_attempts, delay_ms,
                      timeout_ms, run_at, backoff, rate_limit_key, metadata, created_at,
                      schedule_id, scheduled_for)
    SELECT i.job_id, i.type, i.queue, 'pending', i.priority, i.payload, i.max_attempts, 0,
           i.timeout_ms, c.now, i.backoff, i.rate_limit_key, i.metadata, c.now,
           i.schedule_id, i.fire_time
    FROM input i
    JOIN fired f ON f.job_id = i.job_id
    CROSS JOIN clock c
    ORDER BY i.ord
    RETURNING id
),
advanced AS (
    UPDATE job_schedules s
    SET next_run_at = p.new_next,
        last_run_at = greatest(s.last_run_at, p.last_fire)
    FROM plan p
    WHERE s.id = p.schedule_id AND s.id IN (SELECT id FROM locked)
    RETURNING s.id
)
SELECT (SELECT count(*) FROM advanced) AS advanced,
       (SELECT count(*) FROM inserted) AS inserted;

-- name: cron_prune_fires
-- Fire records only need to outlive any round that could still plan their slot;
-- older ones are history. Per schedule, so the primary key serves the range scan.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
old AS (
    SELECT x.schedule_id, x.fire_time
    FROM job_schedules s
    CROSS JOIN clock c
    CROSS JOIN LATERAL (
        SELECT f.schedule_id, f.fire_time FROM job_schedule_fires f
        WHERE f.schedule_id = s.id
          AND f.fire_time < c.now - make_interval(secs => %(keep_seconds)s)
        ORDER BY f.fire_time
        LIMIT %(limit)s
    ) x
    LIMIT %(limit)s
)
DELETE FROM job_schedule_fires f
USING old
WHERE f.schedule_id = old.schedule_id AND f.fire_time = old.fire_time;
