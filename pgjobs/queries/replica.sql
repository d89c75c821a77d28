-- Reading from a streaming replica (pgjobs/replica.py): how far behind it is.

-- name: replica_primary_lsn
-- Where the primary's flushed WAL ends now. Read before the replica's position, so a
-- replica that has replayed up to here holds every change committed before the read
-- began (a commit returns once its WAL is flushed). Not the write position: records no
-- commit waits for (a read pruning a page) can sit written but unflushed for as long as
-- the primary stays idle, and a replica receives only flushed WAL, so it would look
-- behind with nothing missing.
SELECT pg_current_wal_flush_lsn()::text AS lsn;

-- name: replica_position
-- How far the replica's replay is behind %(primary_lsn)s, in bytes, and how long ago
-- the last transaction it replayed committed. That age alone overstates the lag after
-- the primary was idle (no commit to replay, yet nothing is missing), so the caller
-- uses it only when bytes are still missing. A server that is not in recovery has no
-- replay position: it is read as it is (0 bytes behind).
SELECT pg_is_in_recovery() AS in_recovery,
       coalesce(pg_wal_lsn_diff(%(primary_lsn)s::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8
           AS bytes_behind,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
           AS replay_age_s;
