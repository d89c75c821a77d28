-- Job events and waiting for results (events.py).

-- name: listen_events
LISTEN pgjobs_events;

-- name: notify_job_events
-- Sends job events over NOTIFY from Python: used when Redis failed to take a batch that
-- was already committed (the statements that make changes NOTIFY themselves otherwise).
SELECT pgjobs_notify_events(%(events)s::text[]);

-- name: wait_job_states
-- What app.wait() needs of the awaited jobs, in one round trip for all of them: the
-- status, the last error, and the latest result (the same one Job.result gives).
SELECT j.id, j.status, j.last_error,
       (SELECT r.result FROM job_results r WHERE r.job_id = j.id
        ORDER BY r.completed_at DESC, r.id DESC LIMIT 1) AS result
FROM jobs j
WHERE j.id = ANY (%(ids)s::uuid[]);
