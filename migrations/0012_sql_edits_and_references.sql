-- Schedules edited with plain SQL, and pruning beside tables that reference jobs.
--
-- Schedules edited with plain SQL (`UPDATE job_schedules SET cron_expression = ...`, as
-- the spec's dynamic schedules do): a trigger validates the expression and the timezone
-- and moves next_run_at in the same statement, so every reader (CLI, REST API,
-- dashboard, scheduled_jobs_overview) sees the new next fire as soon as the edit commits
-- and the scheduler never fires the old slot.
--
-- The functions compute what pgjobs/schedules/cron.py computes in Python: croniter's
-- grammar and matching on the schedule's local wall clock, then the same mapping of a
-- wall time to an instant on DST days. tests/db/test_schedule_sql_edits.py checks the
-- two agree on random expressions, timezones and instants around DST changes.

CREATE TYPE pgjobs_cron AS (
    seconds integer[],
    minutes integer[],
    hours integer[],
    days integer[],       -- NULL = '*'; 32 stands for L (the last day of the month)
    months integer[],
    weekdays integer[],   -- NULL = '*'; 0 = Sunday
    with_seconds boolean
);

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
