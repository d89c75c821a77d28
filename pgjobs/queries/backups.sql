-- The database-backup job type (pgjobs/types/database_backup.py).

-- name: backup_source_info
-- The server's major version picks a matching pg_dump; the database size is only an
-- estimate of the dump size, used for progress (indexes are not dumped, so the dump is
-- usually smaller and progress is capped below 100 until pg_dump ends).
SELECT current_setting('server_version_num')::int AS server_version_num,
       current_setting('server_version') AS server_version,
       current_database() AS database,
       pg_database_size(current_database()) AS size_bytes;
