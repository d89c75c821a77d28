-- The dependency sweep (flows.sql, sweep_blocked_jobs) walks the blocked jobs in id order.
-- Without an index of its own, a plan made without fresh statistics walked the primary key
-- and filtered on status: every pass read the whole table, finished jobs included, to find
-- no blocked job (0.3 s and 420,000 buffers at half a million rows, every 30 s). This one
-- holds blocked jobs only, so it costs nothing on a queue without flows.
CREATE INDEX IF NOT EXISTS jobs_blocked_idx ON jobs (id) WHERE status = 'blocked';
