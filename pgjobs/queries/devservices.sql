-- Development services (pgjobs.dev.services): probing a server, and the database that
-- `pgjobs demo` and `pgjobs dev-services` use on a server they found or started.

-- name: dev_ping
SELECT 1 AS ok

-- name: dev_database_exists
SELECT 1 AS found FROM pg_database WHERE datname = %(name)s

-- Database names cannot be bind parameters: {name} is filled with psycopg.sql.Identifier.
-- name: dev_create_database
CREATE DATABASE {name}
