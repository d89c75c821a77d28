-- Search over jobs (the dashboard's search box, GET /api/jobs?q=, pgjobs jobs --search)
-- and the log lines a handler writes through ctx.logger, kept with the job.
--
-- Payload fields are found by containment (payload @> '{"user_id": 42}'): a jsonb_path_ops
-- GIN index, the smaller and quicker of the two GIN operator classes for @>, the only
-- operator the search uses on payloads.
-- Running jobs are left out: a job's payload enters it when the job is created and when
-- it ends, not when it is claimed (every claim writes a new row version, and a payload
-- with keys costs GIN entries per version). The few running jobs are searched through
-- jobs_active_worker_idx.
CREATE INDEX IF NOT EXISTS jobs_payload_search_idx ON jobs USING gin (payload jsonb_path_ops)
    WHERE status <> 'active';
-- Error text is found by words (full text, the 'simple' configuration: no stemming, no
-- stop words, so identifiers and codes match as written). Only jobs that failed at least
-- once carry an error: the index costs nothing when a job is created.
CREATE INDEX IF NOT EXISTS jobs_error_search_idx ON jobs
    USING gin (to_tsvector('simple'::regconfig, last_error))
    WHERE last_error IS NOT NULL;

-- What a handler logged through ctx.logger, per attempt: the first lines and the last ones
-- of each attempt (seq is the line's number in its attempt, so a gap is the lines dropped
-- in between), written with the run's outcome. Deleted with the job.
CREATE TABLE IF NOT EXISTS job_logs (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    seq integer NOT NULL,
    at timestamptz NOT NULL,
    level text NOT NULL,
    message text NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
