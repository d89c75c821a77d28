-- pgjobs_settle_blocked runs inside every finishing statement of the worker, usually
-- for jobs that nobody waits on: first a single probe of the blocked-only index, and
-- generic plans for its statements (custom plans were re-planned on every call).
CREATE OR REPLACE FUNCTION pgjobs_settle_blocked(parents uuid[], children uuid[],
                                                 at timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    found uuid[];
    locked uuid[];
    ended uuid[];
    changed integer;
    total integer := 0;
BEGIN
    IF coalesce(cardinality(children), 0) > 0 THEN
        -- Parents before children, in id order: the order finishing transactions take.
        PERFORM 1 FROM jobs p
        WHERE p.id IN (SELECT unnest(c.depends_on) FROM jobs c
                       WHERE c.id = ANY (children) AND c.status = 'blocked')
        ORDER BY p.id
        FOR SHARE OF p;
    END IF;
    LOOP
        -- Most finished jobs have no dependents: one probe of the blocked-only index.
        found := coalesce(children, '{}');
        IF coalesce(cardinality(parents), 0) > 0 THEN
            found := found || ARRAY(SELECT j.id FROM jobs j
                                    WHERE j.status = 'blocked' AND j.depends_on && parents);
        END IF;
        EXIT WHEN cardinality(found) = 0;
        SELECT array_agg(s.id) INTO locked
        FROM (SELECT j.id FROM jobs j
              WHERE j.id = ANY (found) AND j.status = 'blocked'
              ORDER BY j.id
              FOR NO KEY UPDATE OF j) s;
        EXIT WHEN locked IS NULL;
        at := coalesce(at, pgjobs_now());
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
