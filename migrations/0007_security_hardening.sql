-- Job types follow options.py JOB_TYPE in SQL too: letters (either case), digits and
-- . _ : -, 1 to 100 characters starting with a letter or digit. The function is
-- migration 5's with that one check added after the control-character check, where
-- validate_type makes it, so the first error of a bad job is the same on both sides.
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

-- The producer allowlist: which job types pgjobs_enqueue and pgjobs_enqueue_many may
-- create. NULL (the default) allows every type except the operator types below, which
-- act on the server's files, databases or run operator-defined actions; a list replaces
-- that rule entirely. `pgjobs producer-types set/reset` manages it. The SQL functions
-- check it for every caller; the Python, REST and CLI paths are the operators' and do
-- not consult it.
ALTER TABLE pgjobs_settings ADD COLUMN IF NOT EXISTS producer_types text[];

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

-- pgjobs_enqueue: migration 5's, plus the allowlist, and a unique key's holder returned
-- only as far as the caller may see it.
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

-- pgjobs_enqueue_many: migration 5's, plus the allowlist (refused as "job <index>: ...")
-- and holders of unique keys returned as pgjobs_enqueue returns them.
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

-- pgjobs_cancel: migration 5's, recorded in job_audit like pgjobs_pause, and the worker
-- is told by its id, not the job's: the notification is only a hint that makes the
-- worker read cancel_requested_at of the jobs it holds (any login may NOTIFY).
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

-- Replacing a function resets its settings: the SECURITY DEFINER ones get migration 5's
-- search_path again. The helpers they call are no API: nobody else needs to run them.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pgjobs_enqueue(text, jsonb, jsonb)', 'pgjobs_enqueue_many(jsonb)',
                             'pgjobs_cancel(uuid)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', f,
                       current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
