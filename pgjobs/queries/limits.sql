-- Rate limits (limits.py): configuration, the rate-limited claim, and the Postgres
-- token store with its hand-over to and from Redis.

-- name: limits_config
-- Everything a worker's limiter needs, read every couple of seconds in one round trip:
-- the queue limits, the key limits and which store holds the tokens.
SELECT 'queue' AS kind, q.name::text AS name, q.rate_limit_max AS max_jobs,
       q.rate_limit_duration_ms AS duration_ms
FROM job_queues q
WHERE q.rate_limit_max IS NOT NULL AND q.rate_limit_duration_ms IS NOT NULL
UNION ALL
SELECT 'key', k.pattern::text, k.max_jobs, k.duration_ms FROM job_rate_limits k
UNION ALL
SELECT 'store', s.store, NULL, NULL FROM job_rate_state s;

-- name: limits_lock_candidates
-- The rate-limited claim, step 1 of 3 (one transaction; see limits.py): lock the next
-- pending jobs in claim order exactly as claim_jobs picks them, minus the queues
-- (left out of %(queues)s) and the keys (%(excluded_keys)s) that had no tokens at the
-- last answer, so their jobs wait without holding up the others.
SELECT c.id, c.queue, c.rate_limit_key, c.ready_ctid::text AS ready_ctid
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT j.id, j.queue, j.rate_limit_key, r.priority, r.run_at, r.ctid AS ready_ctid
    FROM job_ready r JOIN jobs j ON j.id = r.id
    WHERE r.queue = q.name AND NOT r.suspect
      AND CASE WHEN j.status = 'pending' AND NOT j.suspect AND j.queue = q.name
                   THEN true ELSE false END
      AND (j.rate_limit_key IS NULL OR j.rate_limit_key <> ALL (%(excluded_keys)s::text[]))
    ORDER BY r.queue, r.suspect, r.priority, r.run_at, r.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
) c
WHERE NOT EXISTS (SELECT 1 FROM job_queues p WHERE p.name = q.name AND p.paused)
ORDER BY c.priority, c.run_at, c.id
LIMIT %(limit)s;

-- name: limits_take_tokens
-- Step 2 with the Postgres store: tokens for the locked jobs, in the same transaction,
-- so a claim that fails takes no tokens.
SELECT grants, waits_ms, taken_at, use_redis
FROM pgjobs_take_tokens(%(buckets)s::text[], %(maxes)s::int[], %(windows)s::int[],
                        %(firsts)s::int[], %(seconds)s::int[], %(now)s::timestamptz,
                        %(follow_store)s, %(strict)s);

-- name: limits_claim_locked
-- Step 3: claim exactly the granted jobs (rows this transaction holds locked since step
-- 1, so still pending), as claim_jobs claims them (claim_picked), their job_ready rows
-- found by the addresses step 1 read (%(ready)s, in the order of %(ids)s). started_at
-- is the instant the tokens were taken at when the store is Postgres, so the windows
-- the limiter counted and those of started_at are the same.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
picked AS (
    SELECT g.id, g.ready_ctid FROM unnest(%(ids)s::uuid[], %(ready)s::tid[]) AS g(id, ready_ctid)
),
{{claim_picked}};

-- name: limits_leave_redis
-- Redis failed: Postgres holds the tokens from now on. Starts Redis granted are unknown
-- here, so the Postgres store waits one window past the last moment Redis may have
-- granted one (the switch itself, or this worker's latest Redis grant if later).
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now)
UPDATE job_rate_state s
SET redis_grants_until = CASE
        WHEN s.store = 'redis' AND s.redis_adopted_at IS NOT NULL THEN c.now
        ELSE greatest(s.redis_grants_until,
                      c.now - %(last_grant_age_ms)s::bigint * interval '1 millisecond')
    END,
    store = 'postgres',
    changed_at = CASE WHEN s.store = 'redis' THEN c.now ELSE s.changed_at END
FROM clock c
WHERE s.id
RETURNING s.store;

-- name: limits_lock_state
-- Adopting Redis as the store: serialises adopters and, as pgjobs_take_tokens reads the
-- row FOR SHARE, waits for every claim still taking Postgres tokens.
SELECT s.store, s.redis_adopted_at, s.redis_grants_until,
       coalesce(%(now)s::timestamptz, pgjobs_now()) AS now
FROM job_rate_state s
WHERE s.id
FOR UPDATE;

-- name: limits_postgres_log
-- The starts the Postgres store granted inside each bucket's window, to copy into Redis.
SELECT b.bucket, b.window_ms,
       ARRAY(SELECT s FROM unnest(b.starts) AS s
             WHERE s > %(now)s::timestamptz - b.window_ms * interval '1 millisecond'
             ORDER BY s) AS starts
FROM job_rate_buckets b
WHERE b.updated_at > %(now)s::timestamptz - b.window_ms * interval '1 millisecond';

-- name: limits_adopt_redis
UPDATE job_rate_state s
SET store = 'redis',
    redis_adopted_at = %(now)s::timestamptz,
    changed_at = CASE WHEN s.store = 'postgres' THEN %(now)s::timestamptz ELSE s.changed_at END
WHERE s.id;

-- name: limits_set_queue
-- Limits may be set before a queue has jobs: the queue row is created if needed.
INSERT INTO job_queues AS q (name, rate_limit_max, rate_limit_duration_ms)
VALUES (%(queue)s, %(max_jobs)s, %(duration_ms)s)
ON CONFLICT (name) DO UPDATE
    SET rate_limit_max = excluded.rate_limit_max,
        rate_limit_duration_ms = excluded.rate_limit_duration_ms
RETURNING q.name::text AS queue, q.rate_limit_max AS max_jobs,
          q.rate_limit_duration_ms AS duration_ms;

-- name: limits_clear_queue
UPDATE job_queues q
SET rate_limit_max = NULL, rate_limit_duration_ms = NULL
WHERE q.name = %(queue)s
RETURNING q.name::text AS queue, q.rate_limit_max AS max_jobs,
          q.rate_limit_duration_ms AS duration_ms;

-- name: limits_set_key
INSERT INTO job_rate_limits AS k (pattern, max_jobs, duration_ms, created_at, updated_at)
VALUES (%(pattern)s, %(max_jobs)s, %(duration_ms)s,
        coalesce(%(now)s::timestamptz, pgjobs_now()), coalesce(%(now)s::timestamptz, pgjobs_now()))
ON CONFLICT (pattern) DO UPDATE
    SET max_jobs = excluded.max_jobs,
        duration_ms = excluded.duration_ms,
        updated_at = excluded.updated_at
RETURNING k.pattern::text AS pattern, k.max_jobs, k.duration_ms;

-- name: limits_clear_key
DELETE FROM job_rate_limits k
WHERE k.pattern = %(pattern)s
RETURNING k.pattern::text AS pattern, k.max_jobs, k.duration_ms;

-- name: limits_list
SELECT 'queue' AS kind, q.name::text AS name, q.rate_limit_max AS max_jobs,
       q.rate_limit_duration_ms AS duration_ms
FROM job_queues q
WHERE q.rate_limit_max IS NOT NULL
UNION ALL
SELECT 'key', k.pattern::text, k.max_jobs, k.duration_ms FROM job_rate_limits k
ORDER BY 1 DESC, 2;
