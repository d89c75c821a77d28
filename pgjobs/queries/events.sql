-- Job events and waiting for results (signals/events.py).

-- name: listen_events
LISTEN pgjobs_events;

-- name: events_consumer_lock
-- Every consumer of job events holds this shared advisory lock on its LISTEN connection
-- (gone with the connection), so workers can tell whether anyone listens at all.
SELECT pg_advisory_lock_shared(%(key)s);

-- name: events_consumed
-- Workers look every second: NOTIFYing events costs every commit a database-wide lock,
-- so they only do it while a consumer holds the lock above (pg_locks shows a bigint key
-- as classid = high half, objid = low half, objsubid = 1).
SELECT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = %(classid)s AND l.objid = %(objid)s
      AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS consumed;

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

-- name: read_event_batches
-- The events of the batches a consumer was told of: NOTIFY pgjobs_events carries only
-- a batch id, since any database login may LISTEN (pgjobs_notify_events in schema.sql).
SELECT id, events FROM job_event_batches WHERE id = ANY (%(ids)s::bigint[]);
