-- Unique keys. The latest job created with a key holds it until a later create finds
-- that the holder no longer counts (its status is outside the states that count and
-- its uniqueFor period is over) and releases it by setting unique_released_at. The
-- unique index below is the only arbiter, so two creators can never both hold a key.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS unique_released_at timestamptz;
UPDATE jobs SET unique_released_at = coalesce(completed_at, now())
WHERE unique_key IS NOT NULL AND unique_released_at IS NULL
  AND status NOT IN ('pending', 'delayed', 'active', 'blocked');
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_hold_idx ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND unique_released_at IS NULL;
DROP INDEX IF EXISTS jobs_unique_key_idx;

-- A job's parents and children for any status (the blocked-only index serves settling).
CREATE INDEX IF NOT EXISTS jobs_depends_on_idx ON jobs USING gin (depends_on)
    WHERE depends_on IS NOT NULL;

-- What a job's dependencies decide, given their statuses in the same order (NULL = the
-- dependency no longer exists; a dependency created in the same batch counts as
-- 'pending'), under the job's policy:
--   ready      every dependency finished in a way the policy accepts: the job may run
--   blocked    a dependency is unfinished and nothing decides otherwise yet
--   failed     policy 'fail' and a dependency failed (or vanished)
--   cancelled  policy 'cancel' and a dependency failed, or a dependency was cancelled
--              under 'fail' or 'cancel'
-- 'fail' and 'cancel' decide as soon as one dependency fails; 'ignore' waits for all.
-- A set-returning SQL function of one SELECT, so the planner inlines it.
CREATE OR REPLACE FUNCTION pgjobs_dependency_verdict(policy text, deps uuid[], statuses text[])
RETURNS TABLE (verdict text, reason text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
               WHEN policy <> 'ignore' AND bad.id IS NOT NULL THEN
                   CASE WHEN policy = 'fail' AND bad.status IS DISTINCT FROM 'cancelled'
                        THEN 'failed' ELSE 'cancelled' END
               WHEN open.any THEN 'blocked'
               ELSE 'ready'
           END,
           CASE WHEN policy <> 'ignore' AND bad.id IS NOT NULL THEN
               'dependency ' || bad.id || CASE bad.status
                   WHEN 'failed' THEN ' failed'
                   WHEN 'cancelled' THEN ' was cancelled'
                   ELSE ' no longer exists' END
           END
    FROM (SELECT coalesce(bool_or(s IN ('pending', 'delayed', 'active', 'blocked')), false)
                 AS any
          FROM unnest(statuses) AS s) open
    LEFT JOIN LATERAL (
        SELECT d.id, d.status
        FROM unnest(deps, statuses) WITH ORDINALITY AS d(id, status, ord)
        WHERE d.status IS NULL OR d.status IN ('failed', 'cancelled')
        ORDER BY d.status IS NOT DISTINCT FROM 'cancelled', d.ord
        LIMIT 1
    ) bad ON true
$$;

-- Settles blocked jobs: the blocked children of `parents` (jobs that just finished) and
-- the blocked jobs in `children`. Each settled job becomes pending (or delayed until
-- its run_at), failed (with a 'dependency' failure row) or cancelled, per its
-- dependencies' verdict; jobs that fail or are cancelled settle their own children in
-- turn, down the whole chain. Returns how many jobs changed.
--
-- Why this is race-free under READ COMMITTED: every caller either has just updated the
-- finished parents (holding their row locks) or, for `children`, takes a share lock on
-- their parents first. The children are then locked in id order, and their parents'
-- statuses are read by a later statement of this function, whose fresh snapshot comes
-- after those locks were granted. So of two parents finishing in two transactions, the
-- second to lock the child sees the first one's outcome; a job created while its
-- parent finishes either waits for that outcome (creators share-lock the parents) or
-- makes the finishing transaction wait, whose settle step then sees the new job.
CREATE OR REPLACE FUNCTION pgjobs_settle_blocked(parents uuid[], children uuid[],
                                                 at timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked uuid[];
    ended uuid[];
    changed integer;
    total integer := 0;
BEGIN
    IF coalesce(cardinality(parents), 0) = 0 AND coalesce(cardinality(children), 0) = 0 THEN
        RETURN 0;
    END IF;
    at := coalesce(at, pgjobs_now());
    IF coalesce(cardinality(children), 0) > 0 THEN
        -- Parents before children, in id order: the order finishing transactions take.
        PERFORM 1 FROM jobs p
        WHERE p.id IN (SELECT unnest(c.depends_on) FROM jobs c
                       WHERE c.id = ANY (children) AND c.status = 'blocked')
        ORDER BY p.id
        FOR SHARE OF p;
    END IF;
    LOOP
        SELECT array_agg(s.id) INTO locked
        FROM (SELECT j.id FROM jobs j
              WHERE j.status = 'blocked'
                AND (j.depends_on && parents OR j.id = ANY (children))
              ORDER BY j.id
              FOR NO KEY UPDATE OF j) s;
        EXIT WHEN locked IS NULL;
        WITH verdicts AS (
            SELECT j.id, v.verdict, v.reason
            FROM jobs j
            CROSS JOIN LATERAL (
                SELECT array_agg(p.status ORDER BY d.ord) AS statuses
                FROM unnest(j.depends_on) WITH ORDINALITY AS d(id, ord)
                LEFT JOIN jobs p ON p.id = d.id
            ) s
            CROSS JOIN LATERAL pgjobs_dependency_verdict(j.dependency_policy, j.depends_on,
                                                         s.statuses) v
            WHERE j.id = ANY (locked) AND v.verdict <> 'blocked'
        ),
        settled AS (
            UPDATE jobs j
            SET status = CASE WHEN v.verdict <> 'ready' THEN v.verdict
                              WHEN j.run_at > at THEN 'delayed'
                              ELSE 'pending' END,
                completed_at = CASE WHEN v.verdict <> 'ready' THEN at END,
                last_error = coalesce(v.reason, j.last_error)
            FROM verdicts v
            WHERE j.id = v.id
            RETURNING j.id, j.queue, j.status, j.attempts, j.last_error
        ),
        failures AS (
            INSERT INTO job_failures (job_id, attempt_number, error_message, failed_at, kind)
            SELECT s.id, s.attempts, s.last_error, at, 'dependency'
            FROM settled s WHERE s.status = 'failed'
        ),
        wake AS (
            SELECT pgjobs_notify_queues(array_agg(s.queue) FILTER (WHERE s.status = 'pending')),
                   CASE WHEN bool_or(s.status = 'delayed') THEN pg_notify('pgjobs_delayed', '')
                   END
            FROM settled s
        )
        SELECT count(*), array_agg(s.id) FILTER (WHERE s.status IN ('failed', 'cancelled'))
        INTO changed, ended
        FROM settled s CROSS JOIN LATERAL (SELECT count(*) FROM wake) w;
        total := total + changed;
        EXIT WHEN ended IS NULL;
        -- Jobs that just failed or were cancelled settle their own children.
        parents := ended;
        children := NULL;
    END LOOP;
    RETURN total;
END $$;
