"""Database backups: the streamed file format (gzip, AES-256-GCM), finding `pg_dump` and
`pg_restore` that match a server, and restoring a backup file into a database.

Used by the `database-backup` job type and the `pgjobs backup-restore` command.
"""
