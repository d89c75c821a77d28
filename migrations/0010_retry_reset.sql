-- An operator's retry of failed or cancelled jobs, for every path that retries
-- (retry_job, ops_retry_failed, pgjobs_retry), which lock the rows and check their status
-- first. It grants a fresh budget of tries on top of the ones used, so attempts keeps
-- increasing and every run's (id, attempts) fence token stays unique; the budget is the
-- one the job was created with, not a max_attempts raised by given-back attempts. A job
-- with dependencies waits for them again: it becomes blocked, and the caller settles it
-- against their current outcomes.
CREATE OR REPLACE FUNCTION pgjobs_retry_reset(ids uuid[], at timestamptz) RETURNS SETOF jobs
LANGUAGE sql VOLATILE AS $$
    UPDATE jobs j
    SET status = CASE WHEN j.depends_on IS NULL THEN 'pending' ELSE 'blocked' END,
        run_at = at,
        attempt_budget = coalesce(j.attempt_budget, j.max_attempts),
        max_attempts = j.attempts + coalesce(j.attempt_budget, j.max_attempts),
        stalled_count = 0,
        progress = 0,
        progress_message = NULL,
        started_at = NULL,
        completed_at = NULL,
        worker_id = NULL,
        cancel_requested_at = NULL
    WHERE j.id = ANY (ids)
    RETURNING j.*
$$;

-- pgjobs_retry(id): client.py retry_job. A failed or cancelled job runs again with a
-- fresh budget of tries (pgjobs_retry_reset); one with dependencies is settled against
-- them at once.
CREATE OR REPLACE FUNCTION pgjobs_retry(id uuid) RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    job_id uuid := $1;
    previous text;
    at timestamptz := pgjobs_now();
    r jobs;
BEGIN
    SELECT j.status INTO previous FROM jobs j WHERE j.id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = 'no job with id ' || job_id;
    END IF;
    IF previous NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state', MESSAGE = format(
            'job %s is %s; only failed or cancelled jobs can be retried', job_id, previous);
    END IF;
    SELECT * INTO r FROM pgjobs_retry_reset(ARRAY[job_id], at);
    IF r.status = 'pending' THEN
        PERFORM pgjobs_notify_queues(ARRAY[r.queue::text]);
    ELSE
        PERFORM pgjobs_settle_blocked(NULL, ARRAY[r.id], at);
        SELECT * INTO r FROM jobs j WHERE j.id = job_id;
    END IF;
    RETURN NEXT r;
END $$;

-- Replacing pgjobs_retry reset its settings (its grants stay): migration 5's search_path
-- again.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION pgjobs_retry(uuid) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END $$;
