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
