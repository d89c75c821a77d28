CREATE TABLE IF NOT EXISTS pgjobs_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The one clock of the database side. Statements that need "now" take it as a
-- parameter and fall back to this function, so tests can pin time without sleeping.
CREATE OR REPLACE FUNCTION pgjobs_now() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$ SELECT clock_timestamp() $$;

-- gen_random_uuid() is core since PostgreSQL 13; its random bytes avoid needing pgcrypto.
CREATE OR REPLACE FUNCTION gen_random_bytes_compat(n integer) RETURNS bytea
LANGUAGE sql VOLATILE AS $$
    SELECT substring(decode(replace(gen_random_uuid()::text, '-', '') ||
                            replace(gen_random_uuid()::text, '-', ''), 'hex') FROM 1 FOR n)
$$;

-- Time-ordered UUID (version 7): inserts stay index-local and ids sort by creation.
CREATE OR REPLACE FUNCTION pgjobs_uuid7() RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    unix_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    bytes bytea := decode(lpad(to_hex(unix_ms), 12, '0'), 'hex') || gen_random_bytes_compat(10);
BEGIN
    bytes := set_byte(bytes, 6, (get_byte(bytes, 6) & 15) | 112);  -- version 7
    bytes := set_byte(bytes, 8, (get_byte(bytes, 8) & 63) | 128);  -- RFC 4122 variant
    RETURN encode(bytes, 'hex')::uuid;
END $$;


CREATE TABLE IF NOT EXISTS job_queues (
    name varchar(100) PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    paused_at timestamptz,
    rate_limit_max integer CHECK (rate_limit_max > 0),
    rate_limit_duration_ms integer CHECK (rate_limit_duration_ms > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS job_workers (
    id uuid PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    concurrency integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    in_flight integer NOT NULL DEFAULT 0,
    processed integer NOT NULL DEFAULT 0,
    stopping boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS jobs (
    id uuid PRIMARY KEY DEFAULT pgjobs_uuid7(),
    type varchar(100) NOT NULL,
    queue varchar(100) NOT NULL DEFAULT 'default',
    status varchar(50) NOT NULL DEFAULT 'pending',
    priority integer NOT NULL DEFAULT 10,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    progress integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    delay_ms bigint NOT NULL DEFAULT 0,
    timeout_ms bigint NOT NULL DEFAULT 60000,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz,
    -- engine columns beyond the spec
    run_at timestamptz NOT NULL DEFAULT now(),
    backoff jsonb,
    worker_id uuid,
    stalled_count integer NOT NULL DEFAULT 0,
    -- tries granted per operator retry; NULL = the max_attempts the job was created with
    attempt_budget integer,
    progress_message text,
    last_error text,
    unique_key text,
    depends_on uuid[],
    dependency_policy varchar(20) NOT NULL DEFAULT 'fail',
    rate_limit_key text,
    cancel_requested_at timestamptz,
    schedule_id uuid,
    scheduled_for timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT jobs_status_check CHECK (status IN
        ('pending', 'active', 'completed', 'failed', 'delayed', 'blocked', 'cancelled')),
    CONSTRAINT jobs_progress_check CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_dependency_policy_check CHECK (dependency_policy IN ('fail', 'ignore', 'cancel'))
) WITH (
    -- Every job is updated several times in its life: leave room for HOT updates and
    -- vacuum the hot table far more eagerly than the 20 % default.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim reads this index only: pending rows of the asked queues in claim order.
CREATE INDEX IF NOT EXISTS jobs_claim_idx ON jobs (queue, priority, run_at, id)
    WHERE status = 'pending';
-- Staging delayed jobs looks for the earliest run_at.
CREATE INDEX IF NOT EXISTS jobs_delayed_idx ON jobs (run_at) WHERE status = 'delayed';
-- Rescue finds active jobs by their lease owner.
CREATE INDEX IF NOT EXISTS jobs_active_worker_idx ON jobs (worker_id) WHERE status = 'active';
-- Pruning finds finished jobs by age.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs (queue, status);
CREATE INDEX IF NOT EXISTS idx_jobs_type ON jobs (type);
CREATE INDEX IF NOT EXISTS idx_jobs_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_blocked_deps_idx ON jobs USING gin (depends_on)
    WHERE status = 'blocked';
-- A unique key holds while its job is live; finished jobs free it for a new one.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_key_idx ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'active', 'blocked');

CREATE TABLE IF NOT EXISTS job_results (
    id uuid PRIMARY KEY DEFAULT pgjobs_uuid7(),
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    result jsonb,
    duration_ms integer,
    completed_at timestamptz NOT NULL DEFAULT now(),
    attempt integer
);
CREATE INDEX IF NOT EXISTS idx_job_results_job ON job_results (job_id);

CREATE TABLE IF NOT EXISTS job_failures (
    id uuid PRIMARY KEY DEFAULT pgjobs_uuid7(),
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt_number integer NOT NULL,
    error_message text,
    error_stack text,
    failed_at timestamptz NOT NULL DEFAULT now(),
    -- error, timeout, stalled, discarded, dependency, cancelled
    kind varchar(20) NOT NULL DEFAULT 'error',
    worker_id uuid
);
CREATE INDEX IF NOT EXISTS idx_job_failures_job ON job_failures (job_id);
CREATE INDEX IF NOT EXISTS idx_job_failures_failed ON job_failures (failed_at DESC);

CREATE TABLE IF NOT EXISTS job_schedules (
    id uuid PRIMARY KEY DEFAULT pgjobs_uuid7(),
    name varchar(255) NOT NULL UNIQUE,
    type varchar(100) NOT NULL,
    queue varchar(100) NOT NULL DEFAULT 'default',
    cron_expression varchar(100) NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    description text,
    enabled boolean NOT NULL DEFAULT true,
    last_run_at timestamptz,
    next_run_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    timezone text NOT NULL DEFAULT 'UTC',
    misfire_policy varchar(20) NOT NULL DEFAULT 'skip',
    max_catch_up integer NOT NULL DEFAULT 100,
    priority integer NOT NULL DEFAULT 10,
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT job_schedules_misfire_check CHECK (misfire_policy IN ('skip', 'run_once', 'catch_up'))
);
CREATE INDEX IF NOT EXISTS idx_job_schedules_enabled ON job_schedules (enabled);
CREATE INDEX IF NOT EXISTS idx_job_schedules_next ON job_schedules (next_run_at);

-- One row per fire instant of a schedule: the primary key is what makes a fire
-- impossible to enqueue twice, whatever the leaders do.
CREATE TABLE IF NOT EXISTS job_schedule_fires (
    schedule_id uuid NOT NULL REFERENCES job_schedules (id) ON DELETE CASCADE,
    fire_time timestamptz NOT NULL,
    job_id uuid,
    fired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_time)
);

CREATE TABLE IF NOT EXISTS job_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS job_audit_at_idx ON job_audit (at DESC);

-- Wake-ups: one NOTIFY per queue that received runnable jobs, sent by PostgreSQL at
-- commit (so a rolled-back enqueue wakes nobody). The payload is the queue name only.
CREATE OR REPLACE FUNCTION pgjobs_notify_queues(queues text[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('pgjobs_jobs', q) FROM (SELECT DISTINCT unnest(queues) AS q) AS d
$$;

CREATE OR REPLACE FUNCTION pgjobs_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgjobs_notify_queues(ARRAY(SELECT DISTINCT queue FROM new_jobs
                                       WHERE status = 'pending'));
    -- Delayed jobs wake the stager, which may need to run earlier than it planned.
    IF EXISTS (SELECT 1 FROM new_jobs WHERE status = 'delayed') THEN
        PERFORM pg_notify('pgjobs_delayed', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS jobs_notify_insert ON jobs;
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_notify_inserted();

INSERT INTO job_queues (name) VALUES ('default'), ('high-priority'), ('low-priority')
ON CONFLICT (name) DO NOTHING;
