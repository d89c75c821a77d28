-- pgjobs schema: everything a fresh install creates, each object once, in its current form.
--
-- `pgjobs init` on an empty database runs this file and records every migration in
-- migrations/ as applied. A database made by an older pgjobs is upgraded by the
-- migrations newer than its recorded version instead (migrations/0001_initial.sql ...),
-- in order; both happen in one transaction holding an advisory lock, so two inits at
-- once cannot interleave. A change is made twice: as a new migration, and here.
-- tests/test_schema.py proves that an upgrade from every older version ends with exactly
-- the catalog this file creates (see docs/development.md, "Changing the schema").
-- Statements stay idempotent, so running the file again by hand is harmless.

-- ---------------------------------------------------------------- bookkeeping, ids, time

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
-- The millisecond clock goes over the first six bytes of a random (version 4) UUID, whose
-- version nibble then turns from 4 (0100) into 7 (0111) by setting bits 52 and 53; its
-- variant bits stay. One SQL expression: every job_results row takes one, and the
-- earlier PL/pgSQL version cost a tenth of recording a completion.
CREATE OR REPLACE FUNCTION pgjobs_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                     * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- ---------------------------------------------------------------- queues, workers, jobs

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
    -- Unique keys. The latest job created with a key holds it until a later create finds
    -- that the holder no longer counts (its status is outside the states that count and
    -- its uniqueFor period is over) and releases it by setting unique_released_at. The
    -- unique index jobs_unique_hold_idx is the only arbiter, so two creators can never
    -- both hold a key.
    unique_released_at timestamptz,
    -- A job taken back from a worker that died is a suspect: any job in flight there may
    -- have killed it. Suspects are claimed one at a time by a worker that runs nothing
    -- else (claim_suspect), so the job that really kills workers is the one charged a
    -- stall and its neighbours are not.
    suspect boolean NOT NULL DEFAULT false,
    CONSTRAINT jobs_status_check CHECK (status IN
        ('pending', 'active', 'completed', 'failed', 'delayed', 'blocked', 'cancelled')),
    CONSTRAINT jobs_progress_check CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_dependency_policy_check CHECK (dependency_policy IN ('fail', 'ignore', 'cancel'))
) WITH (
    -- Every job is updated several times in its life: leave room for HOT updates.
    -- Claims read job_ready, not this table, so vacuum comes at about autovacuum's pace.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.1,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

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
-- The dependency sweep walks the blocked jobs in id order. Without this index a plan may
-- walk the primary key and filter, reading every finished job to find none blocked (the
-- planner's choice whenever statistics are missing or old, as on a table that grew since
-- its last ANALYZE). It holds blocked jobs only: nothing on a queue without flows.
CREATE INDEX IF NOT EXISTS jobs_blocked_idx ON jobs (id) WHERE status = 'blocked';
-- Settling finds the blocked children of finished jobs.
CREATE INDEX IF NOT EXISTS jobs_blocked_deps_idx ON jobs USING gin (depends_on)
    WHERE status = 'blocked';
-- A job's parents and children for any status (the blocked-only index serves settling).
CREATE INDEX IF NOT EXISTS jobs_depends_on_idx ON jobs USING gin (depends_on)
    WHERE depends_on IS NOT NULL;
-- One holder per unique key (see unique_released_at).
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_hold_idx ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND unique_released_at IS NULL;
-- Search (see pgjobs/ops/search.py): payload fields by containment (payload @> ...), the
-- only operator the search uses on payloads, which jsonb_path_ops serves best; error text
-- by words ('simple': no stemming or stop words, identifiers match as written), only for
-- jobs that failed at least once, so creating a job never touches that index.
-- Running jobs are left out: a job's payload enters it when the job is created and when
-- it ends, not when it is claimed (every claim writes a new row version, and a payload
-- with keys costs GIN entries per version). The few running jobs are searched through
-- jobs_active_worker_idx.
CREATE INDEX IF NOT EXISTS jobs_payload_search_idx ON jobs USING gin (payload jsonb_path_ops)
    WHERE status <> 'active';
CREATE INDEX IF NOT EXISTS jobs_error_search_idx ON jobs
    USING gin (to_tsvector('simple'::regconfig, last_error))
    WHERE last_error IS NOT NULL;

-- ---------------------------------------------------------------- pending jobs, for claims

-- Pending jobs are claimed through this small table, kept by triggers on jobs and by the
-- claim itself. A claim reads its index from the oldest entry, and entries of jobs
-- already claimed stay until a VACUUM: vacuuming this table every few thousand claims
-- costs milliseconds, where vacuuming a claim index on jobs meant a pass over every index
-- of a table that keeps a day of history. A claim still decides on the jobs row:
-- job_ready only orders the candidates.
CREATE TABLE IF NOT EXISTS job_ready (
    queue varchar(100) NOT NULL,
    suspect boolean NOT NULL,
    priority integer NOT NULL,
    run_at timestamptz NOT NULL,
    id uuid NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
-- The one index: claims read it in claim order (suspects apart), and a row is found by
-- all of its columns, so the table needs no key of its own (one index fewer to write per
-- job). A publication of all tables still replicates its deletes.
CREATE INDEX IF NOT EXISTS job_ready_claim_idx ON job_ready (queue, suspect, priority, run_at, id);
ALTER TABLE job_ready REPLICA IDENTITY FULL;

CREATE OR REPLACE FUNCTION pgjobs_ready_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO job_ready (queue, suspect, priority, run_at, id)
    SELECT n.queue, n.suspect, n.priority, n.run_at, n.id FROM ready_new n
    WHERE n.status = 'pending';
    RETURN NULL;
END $$;

-- A row that left `pending`, or whose claim order changed while pending, leaves by its
-- old values; a row that is pending now enters with its new ones.
CREATE OR REPLACE FUNCTION pgjobs_ready_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status = 'pending' THEN
        DELETE FROM job_ready r
        WHERE r.queue = OLD.queue AND r.suspect = OLD.suspect AND r.priority = OLD.priority
          AND r.run_at = OLD.run_at AND r.id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status = 'pending' THEN
        INSERT INTO job_ready (queue, suspect, priority, run_at, id)
        VALUES (NEW.queue, NEW.suspect, NEW.priority, NEW.run_at, NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pgjobs_ready_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    TRUNCATE job_ready;
    RETURN NULL;
END $$;

-- Inserts are handled per statement (a COPY of 20,000 jobs adds their rows in one INSERT
-- ... SELECT); updates and deletes per row, and only rows whose place in job_ready
-- changes: the WHEN test costs no function call, so a finished run's update or a
-- progress report pays nothing here. A claim (pending to active) removes its rows
-- itself, in the claim's statement (claim_picked): a row whose job was made active any
-- other way is left behind, never claimed (the claim checks the jobs row), and removed
-- by the maintenance sweep.
-- ALWAYS: the triggers also fire where session_replication_role is `replica` (a logical
-- replication apply, some restore tools), so job_ready never misses a pending job.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pgjobs_ready_inserted()', 'pgjobs_ready_changed()',
                             'pgjobs_ready_truncated()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', f,
                       current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'jobs_ready_insert'
                   AND tgrelid = 'jobs'::regclass) THEN
        CREATE TRIGGER jobs_ready_insert AFTER INSERT ON jobs
            REFERENCING NEW TABLE AS ready_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_ready_inserted();
        CREATE TRIGGER jobs_ready_update AFTER UPDATE ON jobs FOR EACH ROW
            WHEN ((OLD.status = 'pending' OR NEW.status = 'pending') AND NEW.status <> 'active'
                  AND (OLD.status, OLD.queue, OLD.suspect, OLD.priority, OLD.run_at, OLD.id)
                      IS DISTINCT FROM
                      (NEW.status, NEW.queue, NEW.suspect, NEW.priority, NEW.run_at, NEW.id))
            EXECUTE FUNCTION pgjobs_ready_changed();
        CREATE TRIGGER jobs_ready_delete AFTER DELETE ON jobs FOR EACH ROW
            WHEN (OLD.status = 'pending')
            EXECUTE FUNCTION pgjobs_ready_changed();
        CREATE TRIGGER jobs_ready_truncate AFTER TRUNCATE ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_ready_truncated();
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_insert;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_update;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_delete;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_truncate;
    END IF;
END $$;

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

-- What a handler logged through ctx.logger, per attempt: the first lines and the last ones
-- (seq is the line's number in its attempt: a gap is the lines dropped in between),
-- written with the run's outcome (finish_runs_logged).
CREATE TABLE IF NOT EXISTS job_logs (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    seq integer NOT NULL,
    at timestamptz NOT NULL,
    level text NOT NULL,
    message text NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);

-- ---------------------------------------------------------------- schedules

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

-- Schedules edited with plain SQL: a trigger validates cron_expression and timezone and
-- keeps next_run_at true to them, computing what pgjobs/schedules/cron.py computes
-- (croniter on the local wall clock, the same DST rules). Migration 12.
DO $$
BEGIN
    IF to_regtype('pgjobs_cron') IS NULL THEN
        CREATE TYPE pgjobs_cron AS (
            seconds integer[],
            minutes integer[],
            hours integer[],
            days integer[],       -- NULL = '*'; 32 stands for L (the last day of the month)
            months integer[],
            weekdays integer[],   -- NULL = '*'; 0 = Sunday
            with_seconds boolean
        );
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pgjobs_cron_error(expression text, detail text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
        MESSAGE = format('invalid cron expression %L: %s', expression, detail),
        HINT = 'use 5 fields (minute hour day-of-month month day-of-week), 6 with seconds '
               'last, or @hourly, @daily, @weekly, @monthly, @yearly';
END $$;

-- A number as croniter reads it: digits of any length; anything beyond a field's range
-- is only ever compared against it, so huge values saturate instead of overflowing.
CREATE OR REPLACE FUNCTION pgjobs_cron_int(digits text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(ltrim(digits, '0')) > 6 THEN 1000000 ELSE digits::integer END
$$;

-- One field, expanded the way croniter's _expand does (including its quirks: an equal
-- range 'a-a' is the whole field, 'a/n' with a at the field's maximum is just a, a
-- wrapping range 'fri-mon' continues from the field's minimum keeping the step's phase,
-- and a field listing every value is '*' unless the other day field has no '*').
-- Returns NULL for '*'. W, '#' and 'L<n>' are refused here: they need day rules this
-- function does not have, so such schedules are edited with `pgjobs schedule update`.
CREATE OR REPLACE FUNCTION pgjobs_cron_field(shown text, idx integer, fields text[])
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    names CONSTANT text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week',
                                   'second'];
    allowed CONSTANT text[] := ARRAY['0-59', '0-23', '1-31', '1-12 or jan-dec',
                                     '0-7 or sun-sat', '0-59'];
    lows CONSTANT integer[] := ARRAY[0, 0, 1, 1, 0, 0];
    highs CONSTANT integer[] := ARRAY[59, 23, 31, 12, 6, 59];
    month_names CONSTANT text[] := ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul',
                                         'aug', 'sep', 'oct', 'nov', 'dec'];
    day_names CONSTANT text[] := ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
    part text := fields[idx];
    expr text := lower(fields[idx]);
    lo integer := lows[idx];
    hi integer := highs[idx];
    width integer := highs[idx] - lows[idx] + 1;
    bad text := format('%s field %L is not valid (allowed: %s, ''*'', lists a,b, ranges a-b, '
                       'steps */n or a-b/n)', names[idx], fields[idx], allowed[idx]);
    e text;
    t text;
    m text[];
    bands text[];
    start_with_step boolean;
    low integer;
    high integer;
    step integer;
    v integer;
    rng integer[];
    to_skip integer;
    star boolean := false;
    res integer[] := '{}';
BEGIN
    IF position('?' IN expr) > 0 THEN
        IF expr <> '?' OR idx NOT IN (3, 5) THEN
            PERFORM pgjobs_cron_error(shown, bad);
        END IF;
        expr := '*';
    END IF;
    FOREACH e IN ARRAY string_to_array(expr, ',') LOOP
        IF (idx = 5 AND (position('#' IN e) > 0 OR e ~ '^l[0-9]+$'))
           OR (idx = 3 AND e ~ '^([0-9]+w|w[0-9]+)$') THEN
            PERFORM pgjobs_cron_error(shown, format(
                '%s field %L uses W, # or L<n>, which only `pgjobs schedule update` (or the '
                'REST API) can set', names[idx], part));
        END IF;
        t := regexp_replace(e, '^\*(/.+)$', lo || '-' || hi || '\1');
        m := regexp_match(t, '^([^-]+)-([^-/]+)(/([0-9]+))?$');
        start_with_step := false;
        IF m IS NULL THEN
            t := regexp_replace(e, '^(.+)/(.+)$', '\1-' || hi || '/\2');
            m := regexp_match(t, '^([^-]+)-([^-/]+)(/([0-9]+))?$');
            start_with_step := m IS NOT NULL;
        END IF;
        IF m IS NOT NULL THEN
            bands := ARRAY[m[1], CASE WHEN idx = 3 AND m[2] = 'l' THEN '31' ELSE m[2] END];
            FOR i IN 1..2 LOOP
                IF bands[i] !~ '^[0-9]+$' THEN
                    IF idx = 4 AND bands[i] = ANY (month_names) THEN
                        bands[i] := array_position(month_names, bands[i])::text;
                    ELSIF idx = 5 AND bands[i] = ANY (day_names) THEN
                        bands[i] := (array_position(day_names, bands[i]) - 1)::text;
                    ELSE
                        PERFORM pgjobs_cron_error(shown, bad);
                    END IF;
                END IF;
            END LOOP;
            step := pgjobs_cron_int(coalesce(m[4], '1'));
            IF step = 0 THEN
                PERFORM pgjobs_cron_error(shown, bad);
            END IF;
            low := pgjobs_cron_int(bands[1]);
            high := pgjobs_cron_int(bands[2]);
            IF idx = 5 AND low = 7 THEN low := 0; END IF;
            IF idx = 5 AND high = 7 THEN high := 0; END IF;
            IF greatest(low, high) > hi THEN
                PERFORM pgjobs_cron_error(shown, bad);
            END IF;
            IF start_with_step AND low = high THEN
                rng := ARRAY[low];
            ELSE
                IF low = high THEN
                    low := lo;
                    high := hi;
                END IF;
                IF low > high THEN
                    rng := ARRAY(SELECT generate_series(low, hi, step));
                    to_skip := 0;
                    IF rng[cardinality(rng)] - lo + step > width
                       AND hi - rng[cardinality(rng)] < step THEN
                        to_skip := step - (hi - rng[cardinality(rng)]);
                    END IF;
                    rng := rng || ARRAY(SELECT generate_series(lo + to_skip, high, step));
                ELSE
                    rng := ARRAY(SELECT generate_series(low, high, step));
                END IF;
            END IF;
            FOREACH v IN ARRAY rng LOOP
                IF v < lo OR v > hi THEN
                    PERFORM pgjobs_cron_error(shown, bad);
                END IF;
                res := res || v;
            END LOOP;
        ELSE
            IF left(t, 1) = '-' THEN
                PERFORM pgjobs_cron_error(shown, bad);
            END IF;
            IF t = '*' THEN
                star := true;
            ELSIF idx = 3 AND t = 'l' THEN
                res := res || 32;
            ELSE
                IF t ~ '^[0-9]+$' THEN
                    v := pgjobs_cron_int(t);
                ELSIF idx = 4 AND t = ANY (month_names) THEN
                    v := array_position(month_names, t);
                ELSIF idx = 5 AND t = ANY (day_names) THEN
                    v := array_position(day_names, t) - 1;
                ELSE
                    PERFORM pgjobs_cron_error(shown, bad);
                END IF;
                IF idx = 5 AND v = 7 THEN v := 0; END IF;
                IF v < lo OR v > hi THEN
                    PERFORM pgjobs_cron_error(shown, bad);
                END IF;
                res := res || v;
            END IF;
        END IF;
    END LOOP;
    res := ARRAY(SELECT DISTINCT x FROM unnest(res) x ORDER BY x);
    IF star THEN
        RETURN NULL;
    END IF;
    IF cardinality(res) = width
       AND NOT (idx = 3 AND position('*' IN lower(fields[5])) = 0)
       AND NOT (idx = 5 AND position('*' IN lower(fields[3])) = 0) THEN
        RETURN NULL;
    END IF;
    RETURN res;
END $$;

-- The first wall time strictly after `after` that the expression matches, or NULL when
-- there is none within 3000 days (every expression that matches at all does within
-- eight years: 29 February skips 2100).
CREATE OR REPLACE FUNCTION pgjobs_cron_next_wall(c pgjobs_cron, after timestamp)
RETURNS timestamp
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t timestamp := CASE WHEN c.with_seconds
                        THEN date_trunc('second', after) + interval '1 second'
                        ELSE date_trunc('minute', after) + interval '1 minute' END;
    d date := t::date;
    last_day date := t::date + 3000;
    h0 integer := extract(hour FROM t)::integer;
    m0 integer := extract(minute FROM t)::integer;
    s0 integer := extract(second FROM t)::integer;
    dom integer;
    dom_ok boolean;
    dow_ok boolean;
    h integer;
    mi integer;
    s integer;
BEGIN
    WHILE d <= last_day LOOP
        IF c.months IS NOT NULL AND NOT extract(month FROM d)::integer = ANY (c.months) THEN
            d := (date_trunc('month', d) + interval '1 month')::date;
            h0 := 0; m0 := 0; s0 := 0;
            CONTINUE;
        END IF;
        dom := extract(day FROM d)::integer;
        dom_ok := c.days IS NULL OR dom = ANY (c.days)
            OR (32 = ANY (c.days)
                AND d = (date_trunc('month', d) + interval '1 month - 1 day')::date);
        dow_ok := c.weekdays IS NULL OR extract(dow FROM d)::integer = ANY (c.weekdays);
        -- croniter: when both day fields are restricted, either one matching is enough.
        IF (CASE WHEN c.days IS NOT NULL AND c.weekdays IS NOT NULL THEN dom_ok OR dow_ok
                 ELSE dom_ok AND dow_ok END) THEN
            FOREACH h IN ARRAY c.hours LOOP
                CONTINUE WHEN h < h0;
                FOREACH mi IN ARRAY c.minutes LOOP
                    CONTINUE WHEN h = h0 AND mi < m0;
                    FOREACH s IN ARRAY c.seconds LOOP
                        CONTINUE WHEN h = h0 AND mi = m0 AND s < s0;
                        RETURN d + make_time(h, mi, s);
                    END LOOP;
                END LOOP;
            END LOOP;
        END IF;
        d := d + 1;
        h0 := 0; m0 := 0; s0 := 0;
    END LOOP;
    RETURN NULL;
END $$;

-- An expression as pgjobs accepts it (pgjobs/schedules/cron.py parse_cron), expanded;
-- raises invalid_parameter_value naming the bad field.
CREATE OR REPLACE FUNCTION pgjobs_cron_parse(expression text) RETURNS pgjobs_cron
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    -- Python's str.strip() and str.split() whitespace.
    blank CONSTANT text := '[\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680'
                           '\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]';
    shown text;
    fields text[];
    c pgjobs_cron;
BEGIN
    IF expression IS NULL THEN
        PERFORM pgjobs_cron_error('', 'cron expression must be a non-empty string');
    END IF;
    shown := regexp_replace(expression, '^' || blank || '+|' || blank || '+$', '', 'g');
    IF shown = '' THEN
        PERFORM pgjobs_cron_error(expression, 'cron expression must be a non-empty string');
    END IF;
    IF length(shown) > 100 THEN
        PERFORM pgjobs_cron_error(shown, 'longer than 100 characters');
    END IF;
    IF left(shown, 1) = '@' THEN
        fields := CASE lower(shown)
            WHEN '@yearly' THEN '{0,0,1,1,*}'
            WHEN '@annually' THEN '{0,0,1,1,*}'
            WHEN '@monthly' THEN '{0,0,1,*,*}'
            WHEN '@weekly' THEN '{0,0,*,*,0}'
            WHEN '@daily' THEN '{0,0,*,*,*}'
            WHEN '@midnight' THEN '{0,0,*,*,*}'
            WHEN '@hourly' THEN '{0,*,*,*,*}'
        END::text[];
        IF fields IS NULL THEN
            PERFORM pgjobs_cron_error(shown, 'unknown alias; use one of @annually, @daily, '
                                             '@hourly, @midnight, @monthly, @weekly, @yearly');
        END IF;
    ELSE
        IF shown !~ '^[ -~]+$' THEN
            PERFORM pgjobs_cron_error(shown, 'use plain ASCII fields separated by spaces');
        END IF;
        fields := regexp_split_to_array(shown, ' +');
        IF cardinality(fields) NOT IN (5, 6) THEN
            PERFORM pgjobs_cron_error(shown, format(
                'expected 5 fields (minute hour day-of-month month day-of-week) or 6 with '
                'seconds last, got %s', cardinality(fields)));
        END IF;
        IF shown ~* '(^|[ ,/-])[hr]($|[ (/,-])' THEN
            PERFORM pgjobs_cron_error(shown,
                'hashed (H) and random (R) values are not supported');
        END IF;
    END IF;
    c.minutes := coalesce(pgjobs_cron_field(shown, 1, fields),
                          ARRAY(SELECT generate_series(0, 59)));
    c.hours := coalesce(pgjobs_cron_field(shown, 2, fields),
                        ARRAY(SELECT generate_series(0, 23)));
    c.days := pgjobs_cron_field(shown, 3, fields);
    c.months := pgjobs_cron_field(shown, 4, fields);
    c.weekdays := pgjobs_cron_field(shown, 5, fields);
    c.with_seconds := cardinality(fields) = 6;
    c.seconds := CASE WHEN c.with_seconds
                      THEN coalesce(pgjobs_cron_field(shown, 6, fields),
                                    ARRAY(SELECT generate_series(0, 59)))
                      ELSE ARRAY[0] END;
    -- From a leap year's first day, so 29 February counts.
    IF pgjobs_cron_next_wall(c, timestamp '1999-12-31 23:59:59') IS NULL THEN
        PERFORM pgjobs_cron_error(shown, 'it never matches a date');
    END IF;
    RETURN c;
END $$;

-- The UTC offset in `zone` at instant `at`.
CREATE OR REPLACE FUNCTION pgjobs_tz_offset(at timestamptz, zone text) RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT (at AT TIME ZONE zone) - (at AT TIME ZONE 'UTC')
$$;

-- The first instant in (lower, upper] whose offset is upper's, given one offset change
-- in between; changes fall on whole seconds (cron.py _first_instant_with_offset).
CREATE OR REPLACE FUNCTION pgjobs_tz_change(lower timestamptz, upper timestamptz, zone text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    target interval := pgjobs_tz_offset(upper, zone);
    low bigint := floor(extract(epoch FROM lower))::bigint;
    high bigint := ceil(extract(epoch FROM upper))::bigint;
    middle bigint;
BEGIN
    WHILE high - low > 1 LOOP
        middle := (low + high) / 2;
        IF pgjobs_tz_offset(to_timestamp(middle), zone) = target THEN
            high := middle;
        ELSE
            low := middle;
        END IF;
    END LOOP;
    RETURN to_timestamp(high);
END $$;

-- The instant a local wall time fires at (cron.py resolve_wall_time): a repeated wall
-- time at its first occurrence, a skipped one at the first instant after the jump.
CREATE OR REPLACE FUNCTION pgjobs_cron_resolve(wall timestamp, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    guess timestamptz := wall AT TIME ZONE zone;
    before_offset interval := pgjobs_tz_offset(guess - interval '1 day', zone);
    after_offset interval := pgjobs_tz_offset(guess + interval '1 day', zone);
    first timestamptz;
BEGIN
    SELECT min(at) INTO first
    FROM (VALUES ((wall - before_offset) AT TIME ZONE 'UTC'),
                 ((wall - after_offset) AT TIME ZONE 'UTC'),
                 (guess)) AS candidates(at)
    WHERE (at AT TIME ZONE zone) = wall;
    IF first IS NOT NULL THEN
        RETURN first;
    END IF;
    RETURN pgjobs_tz_change((wall - after_offset) AT TIME ZONE 'UTC',
                            (wall - before_offset) AT TIME ZONE 'UTC', zone);
END $$;

-- The first fire instant strictly after `after` (cron.py Cron.next_fire).
CREATE OR REPLACE FUNCTION pgjobs_cron_next(expression text, zone text, after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c pgjobs_cron := pgjobs_cron_parse(expression);
    wall timestamp := after AT TIME ZONE zone;
    first timestamptz := pgjobs_cron_resolve(wall, zone);
    at timestamptz;
BEGIN
    IF first < after THEN
        -- `after` is in the second pass of a repeated period: every wall time of it
        -- already fired during the first pass, so go on from where it ends.
        wall := (pgjobs_tz_change(first, after, zone) + pgjobs_tz_offset(first, zone))
                AT TIME ZONE 'UTC' - interval '1 microsecond';
    END IF;
    LOOP
        wall := pgjobs_cron_next_wall(c, wall);
        IF wall IS NULL THEN
            PERFORM pgjobs_cron_error(expression, 'it never matches a date');
        END IF;
        at := pgjobs_cron_resolve(wall, zone);
        IF at > after THEN
            RETURN at;
        END IF;
    END LOOP;
END $$;

-- Keeps next_run_at true to the definition when SQL edits cron_expression, timezone or
-- enabled: an invalid expression or timezone is refused (the row stays as it was), a
-- disabled schedule has no next fire, and a changed or re-enabled one gets the first
-- slot after the edit (no catch-up for the time it was off, as with the API). A writer
-- that sets next_run_at itself (pgjobs' own edits, with its clock) is left alone.
-- The edit also moves updated_at, which makes any fire round that read the row before
-- it drop its plan instead of firing the old slot.
CREATE OR REPLACE FUNCTION pgjobs_schedule_edited() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN
    -- pgjobs' own writes (pgjobs/queries/schedules.sql) validated the row with croniter,
    -- which also knows the W, # and L<n> forms this trigger does not, and set
    -- next_run_at themselves: they mark their one-row statement, and the mark is used up.
    IF current_setting('pgjobs.schedule_write', true) = 'pgjobs' THEN
        PERFORM set_config('pgjobs.schedule_write', '', true);
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND NEW.cron_expression IS NOT DISTINCT FROM OLD.cron_expression
       AND NEW.timezone IS NOT DISTINCT FROM OLD.timezone
       AND NEW.enabled IS NOT DISTINCT FROM OLD.enabled THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.timezone IS DISTINCT FROM OLD.timezone THEN
        IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = NEW.timezone) THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown timezone %L: use an IANA name such as ''UTC'' or '
                                 '''Europe/Berlin''', NEW.timezone);
        END IF;
    END IF;
    PERFORM pgjobs_cron_parse(NEW.cron_expression);
    IF TG_OP = 'INSERT' THEN
        IF NEW.enabled AND NEW.next_run_at IS NULL THEN
            NEW.next_run_at := pgjobs_cron_next(NEW.cron_expression, NEW.timezone,
                                                pgjobs_now());
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.next_run_at IS DISTINCT FROM OLD.next_run_at THEN
        RETURN NEW;
    END IF;
    IF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
        at := NEW.updated_at;
    ELSE
        at := pgjobs_now();
        NEW.updated_at := CASE WHEN at = OLD.updated_at THEN at + interval '1 microsecond'
                               ELSE at END;
    END IF;
    IF NOT NEW.enabled THEN
        NEW.next_run_at := NULL;
    ELSIF NEW.cron_expression IS DISTINCT FROM OLD.cron_expression
          OR NEW.timezone IS DISTINCT FROM OLD.timezone
          OR NOT OLD.enabled
          OR OLD.next_run_at IS NULL THEN
        NEW.next_run_at := pgjobs_cron_next(NEW.cron_expression, NEW.timezone, at);
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS job_schedules_edited ON job_schedules;
CREATE TRIGGER job_schedules_edited
    BEFORE INSERT OR UPDATE OF cron_expression, timezone, enabled ON job_schedules
    FOR EACH ROW EXECUTE FUNCTION pgjobs_schedule_edited();

-- Tables of the user's own that reference jobs (an audit log, as in the spec's "Audit
-- Logging") with a foreign key that forbids deleting the job (NO ACTION or RESTRICT):
-- which of `ids` they still point at, and through which constraint. Pruning and
-- cleaning leave those jobs in place instead of failing the whole batch. One set-based
-- query per such constraint; the names come from the catalog, never from a caller.
CREATE OR REPLACE FUNCTION pgjobs_referencing_jobs(ids uuid[])
RETURNS TABLE (job_id uuid, constraint_name text, table_name text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.conname, c.conrelid, a.attname
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute k ON k.attrelid = c.confrelid AND k.attnum = c.confkey[1]
        WHERE c.contype = 'f'
          AND c.confrelid = 'jobs'::regclass
          AND c.confdeltype IN ('a', 'r')
          AND cardinality(c.conkey) = 1
          AND k.attname = 'id'
        ORDER BY c.conname
    LOOP
        -- A semi-join: a hash of the batch against the table, or its index if the
        -- column has one.
        RETURN QUERY EXECUTE format(
            'SELECT i.id, $2, $3 FROM unnest($1) AS i(id) '
            'WHERE EXISTS (SELECT 1 FROM %2$s x WHERE x.%1$I = i.id)',
            r.attname, r.conrelid::regclass)
            USING ids, r.conname::text, r.conrelid::regclass::text;
    END LOOP;
END $$;

-- ---------------------------------------------------------------- operator audit

CREATE TABLE IF NOT EXISTS job_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS job_audit_at_idx ON job_audit (at DESC);

-- ---------------------------------------------------------------- rate limits (tables)

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

-- ---------------------------------------------------------------- settings

-- Defaults the Python producer takes from its settings. `pgjobs init` writes them from
-- the settings it runs with (JOBS_RETRY_ATTEMPTS, JOBS_JOB_TIMEOUT,
-- JOBS_MAX_PAYLOAD_BYTES); until then they hold the settings' defaults.
CREATE TABLE IF NOT EXISTS pgjobs_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    retry_attempts integer NOT NULL DEFAULT 3 CHECK (retry_attempts >= 1),
    job_timeout_ms bigint NOT NULL DEFAULT 60000 CHECK (job_timeout_ms >= 1),
    max_payload_bytes integer NOT NULL DEFAULT 1048576 CHECK (max_payload_bytes >= 1),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The producer allowlist: which job types pgjobs_enqueue and pgjobs_enqueue_many may
    -- create. NULL (the default) allows every type except pgjobs_operator_types(), which
    -- act on the server's files, databases or run operator-defined actions; a list
    -- replaces that rule entirely. `pgjobs producer-types set/reset` manages it. The SQL
    -- functions check it for every caller; the Python, REST and CLI paths are the
    -- operators' and do not consult it.
    producer_types text[]
);

-- ---------------------------------------------------------------- the rows that always exist

INSERT INTO job_queues (name) VALUES ('default'), ('high-priority'), ('low-priority')
ON CONFLICT (name) DO NOTHING;
INSERT INTO job_rate_state (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
INSERT INTO pgjobs_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- ---------------------------------------------------------------- wake-ups and job events

-- Wake-ups: one NOTIFY per queue that received runnable jobs, sent by PostgreSQL at
-- commit (so a rolled-back enqueue wakes nobody). The payload is the queue name only.
CREATE OR REPLACE FUNCTION pgjobs_notify_queues(queues text[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('pgjobs_jobs', q) FROM (SELECT DISTINCT unnest(queues) AS q) AS d
$$;

-- The insert trigger's wake-ups, once per statement: one pass over the new rows, then a
-- NOTIFY per queue as a plain expression (a third of a one-job insert's server time
-- went to this trigger when it ran three queries).
CREATE OR REPLACE FUNCTION pgjobs_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queues text[];
    any_delayed boolean;
    q text;
BEGIN
    SELECT array_agg(DISTINCT queue) FILTER (WHERE status = 'pending'),
           bool_or(status = 'delayed')
    INTO queues, any_delayed
    FROM new_jobs;
    FOREACH q IN ARRAY coalesce(queues, '{}') LOOP
        PERFORM pg_notify('pgjobs_jobs', q);
    END LOOP;
    -- Delayed jobs wake the stager, which may need to run earlier than it planned.
    IF any_delayed THEN
        PERFORM pg_notify('pgjobs_delayed', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS jobs_notify_insert ON jobs;
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_notify_inserted();

-- Job events travel in this table; NOTIFY pgjobs_events carries only the id of a batch
-- (a bare number), so a login that may LISTEN but not read this table learns nothing
-- about jobs. Consumers read the batches they were told of. Batches are kept for
-- 5 minutes: consumers read them within milliseconds, and a consumer that falls further
-- behind misses events, as one whose connection drops does (events are hints).
CREATE TABLE IF NOT EXISTS job_event_batches (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    events jsonb NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);

-- Each event is a JSON array [event, id, queue, type, status, progress]; one call stores
-- them, in the order given, as one batch. Every 64th batch also prunes expired ones,
-- skipping rows another pruner holds, so pruning never waits and needs no maintenance.
CREATE OR REPLACE FUNCTION pgjobs_notify_events(events text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    batch bigint;
BEGIN
    IF coalesce(cardinality(events), 0) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO job_event_batches (events)
    SELECT jsonb_agg(e::jsonb ORDER BY o) FROM unnest(events) WITH ORDINALITY AS u(e, o)
    RETURNING id INTO batch;
    PERFORM pg_notify('pgjobs_events', batch::text);
    IF batch % 64 = 0 THEN
        DELETE FROM job_event_batches b
        WHERE b.id IN (SELECT x.id FROM job_event_batches x
                       WHERE x.at < now() - interval '5 minutes'
                       ORDER BY x.id LIMIT 1000 FOR UPDATE SKIP LOCKED);
    END IF;
END $$;

-- ---------------------------------------------------------------- rate limits (tokens)

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

-- ---------------------------------------------------------------- dependencies

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
--
-- It runs inside every finishing statement of the worker, usually for jobs that nobody
-- waits on: first a single probe of the blocked-only index, and generic plans for its
-- statements (custom plans were re-planned on every call).
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

-- ---------------------------------------------------------------- operator retry

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

-- ---------------------------------------------------------------- the SQL API

-- The SQL API: create and steer jobs from SQL (triggers, Hasura, PostgREST, any
-- language) inside the caller's transaction. The rules and error texts are those of
-- pgjobs/options.py and pgjobs/client.py; tests/sql_api_cases.py runs one table of cases
-- through both and requires identical rows or identical messages.
-- SQLSTATEs: 22023 invalid option (Python ValidationError), 23505 unique key held with
-- onConflict 'raise', P0002 no such job or queue, 55000 a job in the wrong state.

CREATE OR REPLACE FUNCTION pgjobs_invalid(message text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'invalid_parameter_value';
END $$;

-- A JSON value as Python's repr() shows it once decoded, so messages quote values the
-- way the Python API does ('x', 1.5, True, None, [1, 2]).
CREATE OR REPLACE FUNCTION pgjobs_py_repr(v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text;
    q text;
BEGIN
    CASE jsonb_typeof(v)
    WHEN 'string' THEN
        s := v #>> '{}';
        q := CASE WHEN strpos(s, '''') > 0 AND strpos(s, '"') = 0 THEN '"' ELSE '''' END;
        s := replace(s, '\', '\\');
        s := replace(replace(replace(s, E'\n', '\n'), E'\r', '\r'), E'\t', '\t');
        IF q = '''' THEN
            s := replace(s, '''', '\''');
        END IF;
        RETURN q || s || q;
    WHEN 'number' THEN
        s := v #>> '{}';
        IF s ~ '^-?\d+$' THEN
            RETURN s;
        END IF;
        s := s::float8::text;
        RETURN CASE WHEN s ~ '[.e]|inf|nan' THEN s ELSE s || '.0' END;
    WHEN 'boolean' THEN
        RETURN CASE WHEN v::text = 'true' THEN 'True' ELSE 'False' END;
    WHEN 'array' THEN
        RETURN '[' || coalesce((SELECT string_agg(pgjobs_py_repr(e), ', ' ORDER BY o)
                                FROM jsonb_array_elements(v) WITH ORDINALITY AS a(e, o)), '')
               || ']';
    WHEN 'object' THEN
        RETURN '{' || coalesce((SELECT string_agg(pgjobs_py_repr(to_jsonb(k)) || ': '
                                                  || pgjobs_py_repr(x), ', ')
                                FROM jsonb_each(v) AS o(k, x)), '') || '}';
    ELSE
        RETURN 'None';
    END CASE;
END $$;

-- options.py _whole_number: a JSON number within bounds, rounded half to even like
-- Python's round(). `ms` adds " of milliseconds" to the type error; `integral` refuses
-- fractions.
CREATE OR REPLACE FUNCTION pgjobs_whole_number(name text, v jsonb, minimum bigint,
                                               maximum bigint, ms boolean DEFAULT false,
                                               integral boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    unit text := CASE WHEN ms THEN ' of milliseconds' ELSE '' END;
    x numeric;
    r numeric;
BEGIN
    IF jsonb_typeof(v) IS DISTINCT FROM 'number' THEN
        PERFORM pgjobs_invalid(format('%s must be a number%s (got %s)', name, unit,
                                      pgjobs_py_repr(v)));
    END IF;
    x := (v #>> '{}')::numeric;
    IF integral AND x <> trunc(x) THEN
        PERFORM pgjobs_invalid(format('%s must be a whole number (got %s)', name,
                                      pgjobs_py_repr(v)));
    END IF;
    IF x < minimum THEN
        IF minimum = 0 THEN
            PERFORM pgjobs_invalid(format('%s must be a non-negative number%s (got %s)', name,
                                          unit, pgjobs_py_repr(v)));
        END IF;
        PERFORM pgjobs_invalid(format('%s must be at least %s (got %s)', name, minimum,
                                      pgjobs_py_repr(v)));
    END IF;
    IF x > maximum THEN
        PERFORM pgjobs_invalid(format('%s must be at most %s (got %s)', name,
                                      maximum || CASE WHEN ms THEN ' ms' ELSE '' END,
                                      pgjobs_py_repr(v)));
    END IF;
    r := round(x);
    IF abs(x - trunc(x)) = 0.5 THEN
        r := 2 * round(x / 2);  -- half to even
    END IF;
    RETURN r::bigint;
END $$;

-- options.py _key: uniqueKey and rateLimitKey.
CREATE OR REPLACE FUNCTION pgjobs_option_key(name text, v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF v IS NULL OR v = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' OR char_length(v #>> '{}') NOT BETWEEN 1 AND 255 THEN
        PERFORM pgjobs_invalid(format('%s must be a string of 1 to 255 characters without NUL',
                                      name));
    END IF;
    RETURN v #>> '{}';
END $$;
-- Payloads and metadata nested more than 100 levels deep are refused, as by
-- pgjobs/jsonlimits.py (MAX_JSON_DEPTH), whichever producer sends them: Python's decoder
-- fails a little below 1,000 levels and code that walks a decoded value far earlier, so
-- such a payload would poison every worker that claims it and every page that shows it.
CREATE OR REPLACE FUNCTION pgjobs_json_too_deep(v jsonb, max_depth integer DEFAULT 100)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text := v::text;
BEGIN
    -- Fewer brackets than levels allowed (the usual case) cannot be too deep.
    IF length(t) - length(translate(t, '[{', '')) <= max_depth THEN
        RETURN false;
    END IF;
    -- A container at level max_depth (the outermost value is level 0) nests one
    -- level too many; the walk stops at that level.
    RETURN jsonb_path_exists(
        v, format('strict $.**{%s} ? (@.type() == "object" || @.type() == "array")',
                  max_depth)::jsonpath);
END $$;

-- options.py encode_payload: a JSON object (NULL = {}) not nested too deeply whose compact
-- JSON text fits, the depth checked before the size as options.py does.
CREATE OR REPLACE FUNCTION pgjobs_option_object(what text, v jsonb, max_bytes integer)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    size bigint;
BEGIN
    IF v IS NULL OR v = 'null' THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(v) <> 'object' THEN
        PERFORM pgjobs_invalid(format('%s must be a JSON object', what));
    END IF;
    IF pgjobs_json_too_deep(v) THEN
        PERFORM pgjobs_invalid(format('%s is nested too deeply (the limit is 100 levels)',
                                      what));
    END IF;
    size := octet_length(v::text);
    -- jsonb's text puts a space after every ':' and ','; Python measures compact JSON.
    -- The spaced text is never shorter, so only a payload near the limit is measured.
    IF size > max_bytes THEN
        SELECT size - coalesce(sum(CASE jsonb_typeof(n)
                                       WHEN 'object' THEN 2 * (SELECT count(*) FROM jsonb_object_keys(n)) - 1
                                       ELSE jsonb_array_length(n) - 1 END), 0)
        INTO size
        FROM jsonb_path_query(v, 'strict $.**') AS p(n)
        WHERE jsonb_typeof(n) IN ('object', 'array') AND n NOT IN ('{}', '[]');
        IF size > max_bytes THEN
            PERFORM pgjobs_invalid(format('%s is %s bytes; the limit is %s (JOBS_MAX_PAYLOAD_BYTES)',
                                          what, size, max_bytes));
        END IF;
    END IF;
    RETURN v;
END $$;

-- A job validated for insert: what options.py's NewJob holds.
DO $$
BEGIN
    IF to_regtype('pgjobs_new_job') IS NULL THEN
        CREATE TYPE pgjobs_new_job AS (
            id uuid, job_type text, job_queue text, job_payload jsonb, priority integer,
            max_attempts integer, delay_ms bigint, run_at timestamptz, backoff jsonb,
            timeout_ms bigint, unique_key text, unique_for_ms bigint, unique_states text[],
            on_conflict text, depends_on uuid[], dependency_policy text, rate_limit_key text,
            metadata jsonb);
    END IF;
END $$;
-- One job's type, payload and options, validated and encoded as options.py new_job does
-- (same checks in the same order, same messages, so the first error of a bad job is the
-- same on both sides). `queue` is the queue given outside the options (NULL =
-- 'default'); `queue_option` allows "queue" inside the options as well. Job types follow
-- options.py JOB_TYPE: letters (either case), digits and . _ : -, 1 to 100 characters
-- starting with a letter or digit.
CREATE OR REPLACE FUNCTION pgjobs_validate_job(
    type text, payload jsonb, options jsonb, queue jsonb DEFAULT NULL,
    queue_option boolean DEFAULT false)
RETURNS pgjobs_new_job
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j pgjobs_new_job;
    statuses CONSTANT text[] := ARRAY['pending', 'active', 'completed', 'failed', 'delayed',
                                      'blocked', 'cancelled'];
    max_delay CONSTANT bigint := 10::bigint * 365 * 86400000;
    cfg pgjobs_settings;
    opt jsonb := '{}';
    name text;
    keyword text;
    value jsonb;
    o_priority jsonb; o_attempts jsonb; o_retries jsonb; o_delay jsonb; o_run_at jsonb;
    o_backoff jsonb; o_timeout jsonb; o_unique_for jsonb; o_states jsonb; o_conflict jsonb;
    o_depends jsonb; o_policy jsonb; o_rate_key jsonb; o_metadata jsonb;
    s text;
    m text[];
    item jsonb;
    ids uuid[] := '{}';
BEGIN
    IF options IS NULL OR options = 'null' THEN
        options := '{}';
    END IF;
    IF jsonb_typeof(options) <> 'object' THEN
        PERFORM pgjobs_invalid('options must be a JSON object');
    END IF;
    -- keyword_options: API names (camelCase or snake_case) to one keyword each.
    FOR name, value IN SELECT e.key, e.value FROM jsonb_each(options) AS e LOOP
        keyword := CASE name
            WHEN 'priority' THEN 'priority' WHEN 'attempts' THEN 'attempts'
            WHEN 'maxRetries' THEN 'max_retries' WHEN 'max_retries' THEN 'max_retries'
            WHEN 'delay' THEN 'delay' WHEN 'runAt' THEN 'run_at' WHEN 'run_at' THEN 'run_at'
            WHEN 'backoff' THEN 'backoff' WHEN 'timeout' THEN 'timeout'
            WHEN 'uniqueKey' THEN 'unique_key' WHEN 'unique_key' THEN 'unique_key'
            WHEN 'uniqueFor' THEN 'unique_for' WHEN 'unique_for' THEN 'unique_for'
            WHEN 'uniqueStates' THEN 'unique_states' WHEN 'unique_states' THEN 'unique_states'
            WHEN 'onConflict' THEN 'on_conflict' WHEN 'on_conflict' THEN 'on_conflict'
            WHEN 'dependsOn' THEN 'depends_on' WHEN 'depends_on' THEN 'depends_on'
            WHEN 'onDependencyFailure' THEN 'dependency_policy'
            WHEN 'dependency_policy' THEN 'dependency_policy'
            WHEN 'rateLimitKey' THEN 'rate_limit_key' WHEN 'rate_limit_key' THEN 'rate_limit_key'
            WHEN 'metadata' THEN 'metadata'
            WHEN 'queue' THEN CASE WHEN queue_option THEN 'queue' END
        END;
        IF keyword IS NULL THEN
            PERFORM pgjobs_invalid(format('unknown option %L', name));
        END IF;
        IF opt ? keyword THEN
            PERFORM pgjobs_invalid(format('option %L is given twice', name));
        END IF;
        opt := opt || jsonb_build_object(keyword, value);
    END LOOP;
    -- An absent or null option takes its default, as None does in Python.
    opt := jsonb_strip_nulls(opt);
    queue := coalesce(opt -> 'queue', queue);
    o_priority := opt -> 'priority'; o_attempts := opt -> 'attempts';
    o_retries := opt -> 'max_retries'; o_delay := opt -> 'delay'; o_run_at := opt -> 'run_at';
    o_backoff := opt -> 'backoff'; o_timeout := opt -> 'timeout';
    o_unique_for := opt -> 'unique_for'; o_states := opt -> 'unique_states';
    o_conflict := opt -> 'on_conflict'; o_depends := opt -> 'depends_on';
    o_policy := opt -> 'dependency_policy'; o_rate_key := opt -> 'rate_limit_key';
    o_metadata := opt -> 'metadata';
    SELECT * INTO cfg FROM pgjobs_settings LIMIT 1;
    IF o_delay IS NOT NULL AND o_run_at IS NOT NULL THEN
        PERFORM pgjobs_invalid('give either delay or runAt, not both');
    END IF;
    j.unique_key := pgjobs_option_key('uniqueKey', opt -> 'unique_key');
    IF j.unique_key IS NULL THEN
        IF o_unique_for IS NOT NULL THEN
            PERFORM pgjobs_invalid('uniqueFor needs a uniqueKey');
        ELSIF o_states IS NOT NULL THEN
            PERFORM pgjobs_invalid('uniqueStates needs a uniqueKey');
        ELSIF o_conflict IS NOT NULL THEN
            PERFORM pgjobs_invalid('onConflict needs a uniqueKey');
        END IF;
    END IF;
    -- type
    IF type IS NULL OR char_length(type) NOT BETWEEN 1 AND 100 THEN
        PERFORM pgjobs_invalid(
            'job type must be a non-empty string of at most 100 characters');
    END IF;
    IF type ~ '[\x01-\x1f\x7f-\x9f]' THEN
        PERFORM pgjobs_invalid('job type contains a control character');
    END IF;
    IF type !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$' THEN
        PERFORM pgjobs_invalid(format(
            'invalid job type %s: use 1-100 characters A-Z a-z 0-9 . _ : - '
            'starting with a letter or digit', pgjobs_py_repr(to_jsonb(type))));
    END IF;
    j.job_type := type;
    -- queue
    IF queue IS NULL OR queue = 'null' THEN
        queue := '"default"';
    END IF;
    IF jsonb_typeof(queue) <> 'string' THEN
        PERFORM pgjobs_invalid(format('queue name must be a string (got %s)',
            CASE jsonb_typeof(queue) WHEN 'number' THEN
                CASE WHEN queue::text ~ '^-?\d+$' THEN 'int' ELSE 'float' END
                WHEN 'boolean' THEN 'bool' WHEN 'array' THEN 'list'
                WHEN 'object' THEN 'dict' END));
    END IF;
    j.job_queue := queue #>> '{}';
    IF j.job_queue !~ '^[a-z0-9][a-z0-9._:-]{0,99}$' THEN
        PERFORM pgjobs_invalid(format(
            'invalid queue name %s: use 1-100 characters a-z 0-9 . _ : - '
            'starting with a letter or digit', pgjobs_py_repr(to_jsonb(left(j.job_queue, 120)))));
    END IF;
    -- payload
    j.job_payload := pgjobs_option_object('payload', payload, cfg.max_payload_bytes);
    -- priority
    IF o_priority IS NULL THEN
        j.priority := 10;
    ELSE
        IF jsonb_typeof(o_priority) = 'string' THEN
            s := lower(btrim(o_priority #>> '{}', E' \t\n\r\f\v'));
            IF s IN ('critical', 'high', 'normal', 'low') THEN
                o_priority := to_jsonb(CASE s WHEN 'critical' THEN 1 WHEN 'high' THEN 5
                                              WHEN 'normal' THEN 10 ELSE 20 END);
            ELSIF s ~ '^-?\d+$' AND length(s) < 30 THEN
                o_priority := to_jsonb(s::numeric);
            ELSE
                PERFORM pgjobs_invalid(format('unknown priority %s: use critical, high, '
                    'normal, low or an integer', pgjobs_py_repr(o_priority)));
            END IF;
        END IF;
        IF jsonb_typeof(o_priority) <> 'number' OR o_priority::text !~ '^-?\d+$' THEN
            PERFORM pgjobs_invalid(
                'priority must be critical, high, normal, low or an integer');
        END IF;
        IF (o_priority::text)::numeric NOT BETWEEN -1000000 AND 1000000 THEN
            PERFORM pgjobs_invalid(format('priority must be between -1000000 and 1000000 '
                                          '(got %s)', o_priority::text));
        END IF;
        j.priority := (o_priority::text)::integer;
    END IF;
    -- attempts
    IF o_attempts IS NOT NULL AND o_retries IS NOT NULL THEN
        PERFORM pgjobs_invalid('give either attempts or maxRetries, not both');
    ELSIF o_retries IS NOT NULL THEN
        j.max_attempts := pgjobs_whole_number('maxRetries', o_retries, 0, 999,
                                            integral => true) + 1;
    ELSIF o_attempts IS NOT NULL THEN
        j.max_attempts := pgjobs_whole_number('attempts', o_attempts, 1, 1000,
                                            integral => true);
    ELSE
        j.max_attempts := cfg.retry_attempts;
    END IF;
    -- delay / runAt
    j.delay_ms := CASE WHEN o_delay IS NULL THEN 0
                     ELSE pgjobs_whole_number('delay', o_delay, 0, max_delay, ms => true) END;
    IF o_run_at IS NOT NULL THEN
        s := o_run_at #>> '{}';
        m := regexp_match(s, '^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?)?'
                             '(Z|[+-]\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?)?)?$');
        IF jsonb_typeof(o_run_at) <> 'string' OR m IS NULL THEN
            PERFORM pgjobs_invalid(format('runAt must be an ISO-8601 time with an offset '
                                          '(got %s)', pgjobs_py_repr(o_run_at)));
        END IF;
        BEGIN
            j.run_at := replace(s, ',', '.')::timestamptz;
        EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
            PERFORM pgjobs_invalid(format('runAt must be an ISO-8601 time with an offset '
                                          '(got %s)', pgjobs_py_repr(o_run_at)));
        END;
        IF m[1] IS NULL THEN
            j.run_at := NULL;
            PERFORM pgjobs_invalid(
                'runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00');
        END IF;
    END IF;
    -- backoff
    IF o_backoff IS NOT NULL THEN
        IF jsonb_typeof(o_backoff) = 'array' THEN
            IF jsonb_array_length(o_backoff) NOT BETWEEN 1 AND 100 THEN
                PERFORM pgjobs_invalid('backoff list must have 1 to 100 delays');
            END IF;
            SELECT jsonb_build_object('type', 'list', 'delays',
                       jsonb_agg(pgjobs_whole_number('backoff', e, 0, max_delay, ms => true)
                                 ORDER BY o))
            INTO j.backoff
            FROM jsonb_array_elements(o_backoff) WITH ORDINALITY AS a(e, o);
        ELSIF jsonb_typeof(o_backoff) = 'object'
              AND o_backoff -> 'type' IN ('"exponential"', '"fixed"')
              AND o_backoff - 'type' - 'delay' = '{}' THEN
            j.backoff := jsonb_build_object('type', o_backoff -> 'type');
            IF o_backoff ? 'delay' THEN
                j.backoff := j.backoff || jsonb_build_object('delay',
                    pgjobs_whole_number('backoff delay', o_backoff -> 'delay', 0, max_delay,
                                        ms => true));
            END IF;
        ELSE
            PERFORM pgjobs_invalid('backoff must be {"type": "exponential"|"fixed", '
                                   '"delay": ms} or a list of delays in ms');
        END IF;
    END IF;
    -- timeout
    j.timeout_ms := CASE WHEN o_timeout IS NULL THEN cfg.job_timeout_ms
        ELSE pgjobs_whole_number('timeout', o_timeout, 1, 30::bigint * 86400000,
                                 ms => true) END;
    -- unique options
    IF o_unique_for IS NOT NULL THEN
        j.unique_for_ms := pgjobs_whole_number('uniqueFor', o_unique_for, 0, max_delay,
                                             ms => true);
    END IF;
    IF o_states IS NULL THEN
        j.unique_states := ARRAY['pending', 'delayed', 'active', 'blocked'];
    ELSE
        IF jsonb_typeof(o_states) <> 'array' THEN
            PERFORM pgjobs_invalid('uniqueStates must be a list of job statuses');
        END IF;
        SELECT e INTO item FROM jsonb_array_elements(o_states) WITH ORDINALITY AS a(e, o)
        WHERE jsonb_typeof(e) <> 'string' OR NOT (e #>> '{}') = ANY (statuses)
        ORDER BY o LIMIT 1;
        IF item IS NOT NULL OR jsonb_array_length(o_states) = 0 THEN
            PERFORM pgjobs_invalid('uniqueStates must be a non-empty list of: '
                || array_to_string(statuses, ', ')
                || CASE WHEN item IS NOT NULL THEN ' (got ' || pgjobs_py_repr(item) || ')'
                        ELSE '' END);
        END IF;
        j.unique_states := ARRAY(SELECT x FROM unnest(statuses) WITH ORDINALITY AS u(x, o)
                               WHERE o_states ? x ORDER BY o);
    END IF;
    IF o_conflict IS NULL THEN
        j.on_conflict := 'return';
    ELSIF o_conflict IN ('"return"', '"raise"') THEN
        j.on_conflict := o_conflict #>> '{}';
    ELSE
        PERFORM pgjobs_invalid('onConflict must be ''return'' or ''raise''');
    END IF;
    -- dependsOn
    IF o_depends IS NOT NULL THEN
        IF jsonb_typeof(o_depends) = 'string' THEN
            o_depends := jsonb_build_array(o_depends);
        ELSIF jsonb_typeof(o_depends) <> 'array' THEN
            PERFORM pgjobs_invalid('dependsOn must be a job id or a list of job ids');
        END IF;
        FOR item IN SELECT e FROM jsonb_array_elements(o_depends) AS a(e) LOOP
            -- str(item) as Python shows it, then parsed as uuid.UUID does.
            s := CASE jsonb_typeof(item) WHEN 'string' THEN item #>> '{}'
                                         ELSE pgjobs_py_repr(item) END;
            IF replace(btrim(replace(replace(s, 'urn:', ''), 'uuid:', ''), '{}'), '-', '')
               !~ '^[0-9a-fA-F]{32}$' THEN
                PERFORM pgjobs_invalid(format('dependsOn has an invalid job id %s',
                                              pgjobs_py_repr(to_jsonb(left(s, 60)))));
            END IF;
            ids := ids || replace(btrim(replace(replace(s, 'urn:', ''), 'uuid:', ''), '{}'),
                                  '-', '')::uuid;
        END LOOP;
        j.depends_on := ARRAY(SELECT DISTINCT d FROM unnest(ids) AS d ORDER BY d);
        IF cardinality(j.depends_on) = 0 THEN
            j.depends_on := NULL;
        END IF;
    END IF;
    IF o_policy IS NULL THEN
        j.dependency_policy := 'fail';
    ELSIF o_policy IN ('"fail"', '"ignore"', '"cancel"') THEN
        j.dependency_policy := o_policy #>> '{}';
    ELSE
        PERFORM pgjobs_invalid('onDependencyFailure must be one of fail, ignore, cancel');
    END IF;
    j.rate_limit_key := pgjobs_option_key('rateLimitKey', o_rate_key);
    j.metadata := pgjobs_option_object('metadata', o_metadata, 65536);
    j.id := pgjobs_uuid7();
    RETURN j;
END $$;

-- An API-shaped job {"type", "queue", "payload", "options"} validated as
-- options.py new_job_from_request does (the shape of the REST API and create_many).
CREATE OR REPLACE FUNCTION pgjobs_validate_request(body jsonb) RETURNS pgjobs_new_job
LANGUAGE plpgsql STABLE AS $$
DECLARE
    unknown text;
BEGIN
    IF jsonb_typeof(body) IS DISTINCT FROM 'object' THEN
        PERFORM pgjobs_invalid('a job must be a JSON object with at least a ''type''');
    END IF;
    SELECT min(k) INTO unknown FROM jsonb_object_keys(body) AS k
    WHERE k NOT IN ('type', 'queue', 'payload', 'options');
    IF unknown IS NOT NULL THEN
        PERFORM pgjobs_invalid(format('unknown field %L', unknown));
    END IF;
    IF NOT body ? 'type' THEN
        PERFORM pgjobs_invalid('missing field ''type''');
    END IF;
    RETURN pgjobs_validate_job(
        CASE WHEN jsonb_typeof(body -> 'type') = 'string' THEN body ->> 'type' END,
        body -> 'payload', body -> 'options', body -> 'queue');
END $$;

-- Inserts one validated job at `at`, as client.py insert_plan does: its dependencies
-- (which must exist) are share-locked in id order and decide whether it starts
-- blocked, failed or cancelled; a unique key held by a job that still counts answers
-- with that job (or raises for onConflict 'raise'), and a holder that no longer counts
-- is released under its row lock before the insert is tried again.
CREATE OR REPLACE FUNCTION pgjobs_insert_job(j pgjobs_new_job, at timestamptz) RETURNS jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r jobs;
    holder jobs;
    verdict text;
    reason text;
    statuses text[];
    missing uuid;
BEGIN
    FOR round IN 1 .. 5 LOOP
        verdict := NULL;
        reason := NULL;
        IF j.depends_on IS NOT NULL THEN
            PERFORM 1 FROM jobs p WHERE p.id = ANY (j.depends_on) ORDER BY p.id FOR SHARE;
            SELECT d.id INTO missing FROM unnest(j.depends_on) AS d(id)
            WHERE NOT EXISTS (SELECT 1 FROM jobs p WHERE p.id = d.id)
            ORDER BY d.id LIMIT 1;
            IF missing IS NOT NULL THEN
                PERFORM pgjobs_invalid('dependsOn names an unknown job ' || missing);
            END IF;
            SELECT array_agg(p.status ORDER BY d.ord) INTO statuses
            FROM unnest(j.depends_on) WITH ORDINALITY AS d(id, ord) JOIN jobs p ON p.id = d.id;
            SELECT v.verdict, v.reason INTO verdict, reason
            FROM pgjobs_dependency_verdict(j.dependency_policy, j.depends_on, statuses) v;
        END IF;
        INSERT INTO jobs AS n (id, type, queue, status, priority, payload, max_attempts,
                               delay_ms, timeout_ms, run_at, backoff, unique_key, depends_on,
                               dependency_policy, rate_limit_key, metadata, created_at,
                               completed_at, last_error)
        SELECT j.id, j.job_type, j.job_queue,
               CASE WHEN verdict IN ('blocked', 'failed', 'cancelled') THEN verdict
                    WHEN w.run_at > at THEN 'delayed'
                    ELSE 'pending' END,
               j.priority, j.job_payload, j.max_attempts, j.delay_ms, j.timeout_ms, w.run_at,
               j.backoff, j.unique_key, j.depends_on, j.dependency_policy, j.rate_limit_key,
               j.metadata, at, CASE WHEN verdict IN ('failed', 'cancelled') THEN at END, reason
        FROM (SELECT coalesce(j.run_at, at + j.delay_ms * interval '1 millisecond') AS run_at) w
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND unique_released_at IS NULL
            DO NOTHING
        RETURNING n.* INTO r;
        IF r.id IS NOT NULL THEN
            IF r.status = 'failed' THEN
                INSERT INTO job_failures (job_id, attempt_number, error_message, failed_at, kind)
                VALUES (r.id, 0, r.last_error, at, 'dependency');
            END IF;
            RETURN r;
        END IF;
        SELECT * INTO holder FROM jobs h
        WHERE h.unique_key = j.unique_key AND h.unique_released_at IS NULL;
        IF holder.id IS NOT NULL AND holder.status = ANY (j.unique_states) THEN
            EXIT;
        END IF;
        UPDATE jobs h SET unique_released_at = at
        WHERE h.unique_key = j.unique_key AND h.unique_released_at IS NULL
          AND NOT h.status = ANY (j.unique_states)
          AND (j.unique_for_ms IS NULL
               OR h.created_at <= at - j.unique_for_ms * interval '1 millisecond');
        IF NOT FOUND THEN
            holder := NULL;
            SELECT * INTO holder FROM jobs h
            WHERE h.unique_key = j.unique_key AND h.unique_released_at IS NULL;
            EXIT WHEN holder.id IS NOT NULL;
        END IF;
        holder := NULL;
    END LOOP;
    IF holder.id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE =
            'could not create 1 job(s): their unique keys changed hands 5 times in a row; '
            'try again';
    END IF;
    IF j.on_conflict = 'raise' THEN
        RAISE EXCEPTION USING ERRCODE = 'unique_violation', MESSAGE = format(
            'unique key %s is held by job %s (%s)', pgjobs_py_repr(to_jsonb(j.unique_key)),
            holder.id, holder.status);
    END IF;
    RETURN holder;
END $$;

-- The producer allowlist (pgjobs_settings.producer_types) and the job types it refuses
-- by default.
CREATE OR REPLACE FUNCTION pgjobs_operator_types() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['custom', 'database-backup', 'file-cleanup'] $$;

CREATE OR REPLACE FUNCTION pgjobs_check_producer_type(type text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    allowed text[];
BEGIN
    SELECT s.producer_types INTO allowed FROM pgjobs_settings s LIMIT 1;
    IF (allowed IS NULL AND type = ANY (pgjobs_operator_types()))
       OR (allowed IS NOT NULL AND NOT type = ANY (allowed)) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = format(
            'job type %s may not be enqueued through the SQL API: it is not in the '
            'producer allowlist (pgjobs producer-types)', pgjobs_py_repr(to_jsonb(type)));
    END IF;
END $$;

-- The role calling a SECURITY DEFINER function: current_user there is the owner, but
-- the `role` setting still holds a SET ROLE made by the caller (it cannot be set to a
-- role the session may not become), and without one the login role is the caller.
CREATE OR REPLACE FUNCTION pgjobs_calling_role() RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('role'), 'none'), session_user)::name
$$;

-- A job row as the calling role may see it: all of it when the role may read jobs
-- itself, else only its id and status (a producer that names a unique key someone else
-- holds learns that job's id and state, never its payload or options).
CREATE OR REPLACE FUNCTION pgjobs_visible_job(r jobs, own boolean) RETURNS jobs
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF own OR r.id IS NULL OR has_table_privilege(pgjobs_calling_role(), 'jobs', 'SELECT') THEN
        RETURN r;
    END IF;
    RETURN jsonb_populate_record(NULL::jobs, jsonb_build_object('id', r.id, 'status', r.status));
END $$;

-- pgjobs_enqueue(type, payload, options): create one job in the caller's transaction
-- and return its row (or, for a unique key already held, the holder's, only as far as
-- the caller may see it). The options are the Python API's in their JSON names, plus
-- "queue". The type must pass the producer allowlist. Workers are woken at commit.
CREATE OR REPLACE FUNCTION pgjobs_enqueue(type text, payload jsonb DEFAULT '{}',
                                          options jsonb DEFAULT '{}')
RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    j pgjobs_new_job := pgjobs_validate_job($1, $2, $3, queue_option => true);
    r jobs;
BEGIN
    PERFORM pgjobs_check_producer_type(j.job_type);
    r := pgjobs_insert_job(j, pgjobs_now());
    RETURN NEXT pgjobs_visible_job(r, r.id = j.id);
END $$;

-- pgjobs_enqueue_many(jobs): a JSON array of {"type", "queue", "payload", "options"},
-- created all or nothing in one statement; returns the rows in the order given, holders
-- of unique keys as pgjobs_enqueue returns them. A bad job, or one the allowlist refuses,
-- fails the whole call with "job <index>: <reason>" (index from 0).
CREATE OR REPLACE FUNCTION pgjobs_enqueue_many(jobs jsonb) RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    batch jsonb := $1;
    todo pgjobs_new_job[] := '{}';
    body jsonb;
    one pgjobs_new_job;
    i integer := 0;
    msg text;
    state text;
    at timestamptz := pgjobs_now();
    inserted uuid[];
    o bigint;
    moved_ord bigint[] := '{}';
    moved uuid[] := '{}';
BEGIN
    IF jsonb_typeof(batch) IS DISTINCT FROM 'array' THEN
        PERFORM pgjobs_invalid('jobs must be a JSON array of job objects');
    END IF;
    -- One block (one subtransaction) for the whole loop: it only adds the job's index.
    BEGIN
        FOR body IN SELECT e FROM jsonb_array_elements(batch) AS a(e) LOOP
            one := pgjobs_validate_request(body);
            PERFORM pgjobs_check_producer_type(one.job_type);
            todo := todo || one;
            i := i + 1;
        END LOOP;
    EXCEPTION WHEN invalid_parameter_value OR insufficient_privilege THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = format('job %s: %s', i, msg);
    END;
    IF NOT EXISTS (SELECT 1 FROM unnest(todo) AS t WHERE t.depends_on IS NOT NULL) THEN
        -- Without dependencies: one set-based insert; a held unique key is skipped here
        -- and resolved below, job by job, in order.
        WITH ins AS (
            INSERT INTO jobs AS n (id, type, queue, status, priority, payload, max_attempts,
                                   delay_ms, timeout_ms, run_at, backoff, unique_key,
                                   dependency_policy, rate_limit_key, metadata, created_at)
            SELECT t.id, t.job_type, t.job_queue,
                   CASE WHEN w.run_at > at THEN 'delayed' ELSE 'pending' END,
                   t.priority, t.job_payload, t.max_attempts, t.delay_ms, t.timeout_ms,
                   w.run_at, t.backoff, t.unique_key, t.dependency_policy, t.rate_limit_key,
                   t.metadata, at
            FROM unnest(todo) WITH ORDINALITY AS t
            CROSS JOIN LATERAL (
                SELECT coalesce(t.run_at, at + t.delay_ms * interval '1 millisecond') AS run_at
            ) w
            ORDER BY t.ordinality
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND unique_released_at IS NULL
                DO NOTHING
            RETURNING n.id
        )
        SELECT array_agg(ins.id) INTO inserted FROM ins;
        IF coalesce(cardinality(inserted), 0) = cardinality(todo) THEN
            RETURN QUERY SELECT n.* FROM unnest(todo) WITH ORDINALITY AS t
                         JOIN jobs n ON n.id = t.id ORDER BY t.ordinality;
            RETURN;
        END IF;
    END IF;
    -- The rest (all of them when some have dependencies) one by one, in order.
    FOR o IN SELECT t.ordinality FROM unnest(todo) WITH ORDINALITY AS t
             WHERE NOT EXISTS (SELECT 1 FROM unnest(inserted) AS x(id) WHERE x.id = t.id)
             ORDER BY t.ordinality LOOP
        moved_ord := moved_ord || o;
        moved := moved || (pgjobs_insert_job(todo[o], at)).id;
    END LOOP;
    RETURN QUERY SELECT v.* FROM unnest(todo) WITH ORDINALITY AS t
                 LEFT JOIN unnest(moved_ord, moved) AS m(ord, id) ON m.ord = t.ordinality
                 JOIN jobs n ON n.id = coalesce(m.id, t.id)
                 CROSS JOIN LATERAL pgjobs_visible_job(n, n.id = t.id) AS v
                 ORDER BY t.ordinality;
END $$;

-- pgjobs_cancel(id): client.py cancel_job, recorded in job_audit like pgjobs_pause. A
-- waiting job is cancelled at once (and the jobs waiting on it settle); a running one is
-- flagged and its worker told at commit, by the worker's id, not the job's: the
-- notification is only a hint that makes the worker read cancel_requested_at of the jobs
-- it holds (any login may NOTIFY).
CREATE OR REPLACE FUNCTION pgjobs_cancel(id uuid) RETURNS SETOF jobs
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
    IF previous NOT IN ('pending', 'delayed', 'blocked', 'active') THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state', MESSAGE = format(
            'job %s is %s; only pending, delayed, blocked or active jobs can be cancelled',
            job_id, previous);
    END IF;
    UPDATE jobs j
    SET status = CASE WHEN previous = 'active' THEN 'active' ELSE 'cancelled' END,
        cancel_requested_at = at,
        completed_at = CASE WHEN previous = 'active' THEN NULL ELSE at END
    WHERE j.id = job_id
    RETURNING j.* INTO r;
    IF r.status = 'active' THEN
        PERFORM pg_notify('pgjobs_cancel', coalesce(r.worker_id::text, ''));
    ELSE
        PERFORM pgjobs_settle_blocked(ARRAY[r.id], NULL, at);
    END IF;
    INSERT INTO job_audit (at, actor, action, target, detail)
    VALUES (at, left('sql:' || pgjobs_calling_role(), 200), 'cancel', r.id::text,
            jsonb_build_object('status', r.status));
    RETURN NEXT r;
END $$;

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

-- pgjobs_pause(queue) / pgjobs_resume(queue): ops_set_queue_paused, recorded in
-- job_audit with the actor 'sql:<session user>'. Resuming wakes the workers at commit.
CREATE OR REPLACE FUNCTION pgjobs_set_paused(queue text, paused boolean) RETURNS job_queues
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
    name text;
    at timestamptz := pgjobs_now();
    r job_queues;
BEGIN
    IF queue IS NULL THEN
        PERFORM pgjobs_invalid('queue name must be a string (got NoneType)');
    END IF;
    name := (pgjobs_validate_job('pause', NULL, jsonb_build_object('queue', queue),
                                 queue_option => true)).job_queue;
    IF NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = name)
       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = name) THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'no queue named ' || pgjobs_py_repr(to_jsonb(name));
    END IF;
    INSERT INTO job_queues AS q (name, paused, paused_at)
    VALUES (name, paused, CASE WHEN paused THEN at END)
    ON CONFLICT ON CONSTRAINT job_queues_pkey DO UPDATE
        SET paused = excluded.paused,
            paused_at = CASE WHEN q.paused AND excluded.paused THEN q.paused_at
                             ELSE excluded.paused_at END
    RETURNING q.* INTO r;
    IF NOT r.paused THEN
        PERFORM pgjobs_notify_queues(ARRAY[name]);
    END IF;
    INSERT INTO job_audit (at, actor, action, target, detail)
    VALUES (at, left('sql:' || session_user, 200), CASE WHEN paused THEN 'pause' ELSE 'resume' END,
            name, '{}');
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION pgjobs_pause(queue text) RETURNS SETOF job_queues
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$ SELECT * FROM pgjobs_set_paused($1, true) $$;

CREATE OR REPLACE FUNCTION pgjobs_resume(queue text) RETURNS SETOF job_queues
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$ SELECT * FROM pgjobs_set_paused($1, false) $$;

-- The SECURITY DEFINER functions resolve names in the schema pgjobs is installed in
-- only (pg_temp last, so no caller's temporary table can stand in for a pgjobs one).
-- Replacing one of them resets its settings: a migration that replaces one must set its
-- search_path again. Nobody may call them until granted; pgjobs_producer may enqueue (and
-- nothing else: it has no privilege on any table). The helpers they call are no API:
-- nobody else needs to run them. Roles are cluster-wide: created only if missing, and an
-- installing user without CREATEROLE leaves that to the DBA (see docs/sql-api.md).
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pgjobs_enqueue(text, jsonb, jsonb)', 'pgjobs_enqueue_many(jsonb)',
                             'pgjobs_cancel(uuid)', 'pgjobs_retry(uuid)', 'pgjobs_pause(text)',
                             'pgjobs_resume(text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', f,
                       current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgjobs_producer') THEN
        BEGIN
            CREATE ROLE pgjobs_producer NOLOGIN;
        EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
            RAISE NOTICE 'pgjobs_producer was not created: %', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgjobs_producer') THEN
        GRANT EXECUTE ON FUNCTION pgjobs_enqueue(text, jsonb, jsonb), pgjobs_enqueue_many(jsonb)
            TO pgjobs_producer;
    END IF;
END $$;
