-- Schema installation and upgrades (pgjobs init).

-- name: transaction_timeouts
-- db.SESSION_OPTIONS' timeouts for one transaction, for the transactions that hold locks
-- others wait on (init, maintenance rounds) when connections carry no session settings
-- (JOBS_POOL_MODE=transaction).
SELECT set_config('statement_timeout', '60000', true),
       set_config('idle_in_transaction_session_timeout', '60000', true);

-- name: migration_timeouts
-- An upgrade may build indexes over every job stored (migration 13 builds two): no
-- statement limit for that transaction, however many jobs the table holds.
SELECT set_config('statement_timeout', '0', true);

-- name: init_lock
-- Transaction-scoped, so a crashed init can never leave the lock held.
SELECT pg_advisory_xact_lock(7423510001);

-- name: schema_installed
SELECT to_regclass('pgjobs_schema_migrations') IS NOT NULL AS installed;

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM pgjobs_schema_migrations;

-- name: record_migration
INSERT INTO pgjobs_schema_migrations (version, name) VALUES (%(version)s, %(name)s)
ON CONFLICT (version) DO NOTHING;

-- name: ensure_default_queues
INSERT INTO job_queues (name) VALUES ('default'), ('high-priority'), ('low-priority')
ON CONFLICT (name) DO NOTHING;

-- name: server_info
SELECT current_setting('server_version_num')::int AS server_version_num,
       current_setting('server_version') AS server_version,
       current_database() AS database;

-- name: missing_relations
SELECT r.name
FROM unnest(%(names)s::text[]) AS r(name)
WHERE to_regclass(r.name) IS NULL;
