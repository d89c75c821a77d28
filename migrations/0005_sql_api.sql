-- The SQL API: create and steer jobs from SQL (triggers, Hasura, PostgREST, any
-- language) inside the caller's transaction. The rules and error texts are those of
-- pgjobs/options.py and pgjobs/client.py; tests/sql_api_cases.py runs one table of cases
-- through both and requires identical rows or identical messages.
-- SQLSTATEs: 22023 invalid option (Python ValidationError), 23505 unique key held with
-- onConflict 'raise', P0002 no such job or queue, 55000 a job in the wrong state.

-- Defaults the Python producer takes from its settings. `pgjobs init` writes them from
-- the settings it runs with (JOBS_RETRY_ATTEMPTS, JOBS_JOB_TIMEOUT,
-- JOBS_MAX_PAYLOAD_BYTES); until then they hold the settings' defaults.
CREATE TABLE IF NOT EXISTS pgjobs_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    retry_attempts integer NOT NULL DEFAULT 3 CHECK (retry_attempts >= 1),
    job_timeout_ms bigint NOT NULL DEFAULT 60000 CHECK (job_timeout_ms >= 1),
    max_payload_bytes integer NOT NULL DEFAULT 1048576 CHECK (max_payload_bytes >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pgjobs_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

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

-- options.py encode_payload: a JSON object (NULL = {}) whose compact JSON text fits.
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
-- (same checks in the same order, same messages). `queue` is the queue given outside the
-- options (NULL = 'default'); `queue_option` allows "queue" inside the options as well.
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

-- pgjobs_enqueue(type, payload, options): create one job in the caller's transaction
-- and return its row (or, for a unique key already held, the holder's). The options are
-- the Python API's in their JSON names, plus "queue". Workers are woken at commit.
CREATE OR REPLACE FUNCTION pgjobs_enqueue(type text, payload jsonb DEFAULT '{}',
                                          options jsonb DEFAULT '{}')
RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
BEGIN
    RETURN NEXT pgjobs_insert_job(pgjobs_validate_job($1, $2, $3, queue_option => true),
                                  pgjobs_now());
END $$;

-- pgjobs_enqueue_many(jobs): a JSON array of {"type", "queue", "payload", "options"},
-- created all or nothing in one statement; returns the rows in the order given. A bad
-- job fails the whole call with "job <index>: <reason>" (index from 0).
CREATE OR REPLACE FUNCTION pgjobs_enqueue_many(jobs jsonb) RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    batch jsonb := $1;
    todo pgjobs_new_job[] := '{}';
    body jsonb;
    i integer := 0;
    msg text;
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
            todo := todo || pgjobs_validate_request(body);
            i := i + 1;
        END LOOP;
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        PERFORM pgjobs_invalid(format('job %s: %s', i, msg));
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
    RETURN QUERY SELECT n.* FROM unnest(todo) WITH ORDINALITY AS t
                 LEFT JOIN unnest(moved_ord, moved) AS m(ord, id) ON m.ord = t.ordinality
                 JOIN jobs n ON n.id = coalesce(m.id, t.id)
                 ORDER BY t.ordinality;
END $$;

-- pgjobs_cancel(id): client.py cancel_job. A waiting job is cancelled at once (and the
-- jobs waiting on it settle); a running one is flagged and its worker told at commit.
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
        PERFORM pg_notify('pgjobs_cancel', r.id::text);
    ELSE
        PERFORM pgjobs_settle_blocked(ARRAY[r.id], NULL, at);
    END IF;
    RETURN NEXT r;
END $$;

-- pgjobs_retry(id): client.py retry_job. A failed or cancelled job runs again with a
-- fresh budget of tries; one with dependencies is settled against them at once.
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
    WHERE j.id = job_id
    RETURNING j.* INTO r;
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
-- A later migration that replaces one of them must set its search_path again.
-- Nobody may call them until granted; pgjobs_producer may enqueue (and nothing else:
-- it has no privilege on any table). Roles are cluster-wide: created only if missing,
-- and an installing user without CREATEROLE leaves that to the DBA (see README).
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
