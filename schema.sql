-- pgjobs schema.
--
-- The file is a sequence of versioned migrations. `pgjobs init` applies, in order and
-- exactly once, every migration newer than the version recorded in
-- pgjobs_schema_migrations, all inside one transaction that holds an advisory lock, so
-- two processes running init at once cannot interleave. Every statement is also
-- written to be idempotent, so re-applying a migration by hand is harmless.
--
-- Add changes as a new "-- migration: N name" section at the end; never edit a
-- released section.

-- migration: 1 initial

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

-- migration: 2 rate limits and job events

-- Per-key rate limits. A job whose rate_limit_key matches `pattern` starts at most
-- max_jobs times per duration_ms, counted per key: `tenant:*` gives every tenant key its
-- own budget. `*` matches any run of characters, `?` one; an exact pattern wins over a
-- glob, and a longer glob over a shorter one (pgjobs/limits.py).
CREATE TABLE IF NOT EXISTS job_rate_limits (
    pattern varchar(255) PRIMARY KEY,
    max_jobs integer NOT NULL CHECK (max_jobs > 0),
    duration_ms integer NOT NULL CHECK (duration_ms > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The Postgres token store (without Redis, and while Redis is down): per bucket
-- ('q:<queue>' or 'k:<key>') the start times granted inside its sliding window.
CREATE TABLE IF NOT EXISTS job_rate_buckets (
    bucket text PRIMARY KEY,
    starts timestamptz[] NOT NULL DEFAULT '{}',
    window_ms integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- Which store holds the limiter's state when Redis is configured. Workers switch it to
-- 'postgres' when Redis fails and back when Redis returns (copying the Postgres log
-- into Redis). redis_grants_until is the latest moment Redis may have granted a start:
-- the Postgres store waits one window past it (fail closed). redis_adopted_at stays
-- NULL until Redis is first used, so a fresh Redis needs no wait.
CREATE TABLE IF NOT EXISTS job_rate_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    store text NOT NULL DEFAULT 'redis' CHECK (store IN ('redis', 'postgres')),
    redis_adopted_at timestamptz,
    redis_grants_until timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO job_rate_state (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- Takes start tokens for jobs a worker holds locked, atomically across buckets. Each
-- bucket is a sliding log: it grants while fewer than its max starts lie inside the
-- last window, so no window of that length ever holds more. Job j needs a token from
-- bucket firsts[j] and from bucket seconds[j] (1-based indexes, 0 = none); jobs are
-- served in the order given (claim order) and get both tokens or none. Returns per job
-- whether it was granted, per bucket the ms until it can grant again (0 = it still
-- can), the instant the starts were recorded at (the claim uses it as started_at), and
-- whether the caller must use Redis instead (follow_store and the store is 'redis').
CREATE OR REPLACE FUNCTION pgjobs_take_tokens(
    buckets text[], maxes integer[], windows_ms integer[], firsts integer[],
    seconds integer[], at_time timestamptz, follow_store boolean, strict boolean,
    OUT grants boolean[], OUT waits_ms integer[], OUT taken_at timestamptz,
    OUT use_redis boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n integer := coalesce(array_length(buckets, 1), 0);
    m integer := coalesce(array_length(firsts, 1), 0);
    closed_until timestamptz := '-infinity';
    state job_rate_state;
    free integer[];
    taken integer[];
    oldest timestamptz[];
    first_start timestamptz;
    used integer;
    win interval;
    a integer;
    b integer;
BEGIN
    taken_at := coalesce(at_time, pgjobs_now());
    use_redis := false;
    grants := array_fill(false, ARRAY[m]);
    waits_ms := array_fill(0, ARRAY[n]);
    IF follow_store THEN
        SELECT * INTO state FROM job_rate_state WHERE id FOR SHARE;
        IF state.store = 'redis' THEN
            use_redis := true;
            RETURN;
        END IF;
        IF strict AND state.redis_grants_until IS NOT NULL THEN
            closed_until := state.redis_grants_until;
        END IF;
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO job_rate_buckets AS rb (bucket, window_ms)
    SELECT u.bucket, u.window_ms FROM unnest(buckets, windows_ms) AS u(bucket, window_ms)
    ON CONFLICT (bucket) DO NOTHING;
    -- One lock order for every claimer, so two never wait on each other in a cycle.
    PERFORM 1 FROM job_rate_buckets rb WHERE rb.bucket = ANY (buckets)
    ORDER BY rb.bucket FOR UPDATE;
    free := array_fill(0, ARRAY[n]);
    taken := array_fill(0, ARRAY[n]);
    oldest := array_fill(NULL::timestamptz, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        win := windows_ms[i] * interval '1 millisecond';
        SELECT count(s), min(s) INTO used, first_start
        FROM job_rate_buckets rb CROSS JOIN LATERAL unnest(rb.starts) AS s
        WHERE rb.bucket = buckets[i] AND s > taken_at - win;
        oldest[i] := first_start;
        IF taken_at >= closed_until + win THEN
            free[i] := maxes[i] - used;
        END IF;
    END LOOP;
    FOR j IN 1 .. m LOOP
        a := firsts[j];
        b := seconds[j];
        IF (a = 0 OR free[a] > 0) AND (b = 0 OR free[b] > 0) THEN
            grants[j] := true;
            IF a > 0 THEN
                free[a] := free[a] - 1;
                taken[a] := taken[a] + 1;
            END IF;
            IF b > 0 THEN
                free[b] := free[b] - 1;
                taken[b] := taken[b] + 1;
            END IF;
        END IF;
    END LOOP;
    FOR i IN 1 .. n LOOP
        win := windows_ms[i] * interval '1 millisecond';
        IF taken[i] > 0 THEN
            UPDATE job_rate_buckets rb
            SET starts = ARRAY(SELECT s FROM unnest(rb.starts) AS s
                               WHERE s > taken_at - win ORDER BY s)
                         || array_fill(taken_at, ARRAY[taken[i]]),
                window_ms = windows_ms[i],
                updated_at = taken_at
            WHERE rb.bucket = buckets[i];
        END IF;
        IF free[i] <= 0 THEN
            waits_ms[i] := greatest(1, ceil(1000 * extract(epoch FROM
                greatest(closed_until + win, coalesce(oldest[i], taken_at) + win) - taken_at)));
        END IF;
    END LOOP;
END $$;

-- Job events for LISTEN pgjobs_events, sent at commit (never for a rolled-back change).
-- Each event is a JSON array [event, id, queue, type, status, progress]; they are packed,
-- in the order given, into notifications of at most ~7 kB (payloads must stay < 8000 bytes).
CREATE OR REPLACE FUNCTION pgjobs_notify_events(events text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    chunk text := '';
    e text;
BEGIN
    FOREACH e IN ARRAY coalesce(events, '{}'::text[]) LOOP
        IF chunk <> '' AND octet_length(chunk) + octet_length(e) > 7000 THEN
            PERFORM pg_notify('pgjobs_events', '[' || chunk || ']');
            chunk := '';
        END IF;
        chunk := CASE WHEN chunk = '' THEN e ELSE chunk || ',' || e END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify('pgjobs_events', '[' || chunk || ']');
    END IF;
END $$;

-- migration: 3 dependencies and unique keys

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

-- migration: 4 cheaper settling

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
