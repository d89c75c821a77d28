-- Dependencies between jobs: the settling safety net (producer/dependencies.py).

-- name: sweep_blocked_jobs
-- Safety net behind the settling that every finish does in its own transaction: finds
-- blocked jobs whose dependencies already decide their fate (all finished, or one
-- failed under 'fail'/'cancel') and settles them under the usual locks, which re-read
-- everything. Bounded per round; returns how many jobs changed and whether the batch
-- was full.
WITH clock AS (SELECT coalesce(%(now)s::timestamptz, pgjobs_now()) AS now),
stuck AS (
    SELECT j.id
    FROM jobs j
    CROSS JOIN LATERAL (
        SELECT array_agg(p.status ORDER BY d.ord) AS statuses
        FROM unnest(j.depends_on) WITH ORDINALITY AS d(id, ord)
        LEFT JOIN jobs p ON p.id = d.id
    ) s
    CROSS JOIN LATERAL pgjobs_dependency_verdict(j.dependency_policy, j.depends_on,
                                                 s.statuses) v
    WHERE j.status = 'blocked' AND v.verdict <> 'blocked'
    ORDER BY j.id
    LIMIT %(limit)s
)
SELECT pgjobs_settle_blocked(NULL, array_agg(st.id), (SELECT now FROM clock)) AS settled,
       count(*) AS found
FROM stuck st;
