"""The schema: `pgjobs init`, upgrades, the spec's tables and views, and the spec's own SQL
examples running unchanged against them.

schema.sql is the current schema, which a fresh install creates; migrations/ holds the steps
that upgrade older installs. The upgrade tests prove both end with the same catalog, and the
RELEASED manifest keeps every released migration unchanged."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs import db as pgjobs_db
from pgjobs.db import Migration, install_schema, migrations
from pgjobs.errors import SchemaError
from tests.conftest import database_url
from tests.paths import ROOT
from tests.pgjobs_cli import clean_env, run_pgjobs

LATEST = len(migrations())
MIGRATIONS = ROOT / "migrations"

# ------------------------------------------------------------------ the contract, literally
# From the spec's "Database Schema": every table starts with exactly these columns.
SPEC_TABLES: dict[str, list[tuple[str, str]]] = {
    "jobs": [
        ("id", "uuid"),
        ("type", "character varying(100)"),
        ("queue", "character varying(100)"),
        ("status", "character varying(50)"),
        ("priority", "integer"),
        ("payload", "jsonb"),
        ("progress", "integer"),
        ("attempts", "integer"),
        ("max_attempts", "integer"),
        ("delay_ms", "bigint"),
        ("timeout_ms", "bigint"),
        ("created_at", "timestamp with time zone"),
        ("started_at", "timestamp with time zone"),
        ("completed_at", "timestamp with time zone"),
    ],
    "job_results": [
        ("id", "uuid"),
        ("job_id", "uuid"),
        ("result", "jsonb"),
        ("duration_ms", "integer"),
        ("completed_at", "timestamp with time zone"),
    ],
    "job_failures": [
        ("id", "uuid"),
        ("job_id", "uuid"),
        ("attempt_number", "integer"),
        ("error_message", "text"),
        ("error_stack", "text"),
        ("failed_at", "timestamp with time zone"),
    ],
    "job_schedules": [
        ("id", "uuid"),
        ("name", "character varying(255)"),
        ("type", "character varying(100)"),
        ("queue", "character varying(100)"),
        ("cron_expression", "character varying(100)"),
        ("payload", "jsonb"),
        ("description", "text"),
        ("enabled", "boolean"),
        ("last_run_at", "timestamp with time zone"),
        ("next_run_at", "timestamp with time zone"),
        ("created_at", "timestamp with time zone"),
    ],
}

# From "Analytics Views", "Job Failure Rate Tracking" and "Processing Time Analysis".
SPEC_VIEWS: dict[str, list[str]] = {
    "jobs_active": ["id", "type", "queue", "priority", "payload", "started_at", "attempts"],
    "jobs_failed_details": [
        "id",
        "type",
        "queue",
        "attempts",
        "max_attempts",
        "error_message",
        "error_stack",
        "failed_at",
    ],
    "queue_stats": ["queue", "pending", "active", "completed", "failed", "delayed"],
    "job_type_stats": ["type", "total", "completed", "failed", "avg_duration_ms"],
    "recent_failures": ["id", "type", "queue", "error_message", "failed_at"],
    "scheduled_jobs_overview": [
        "name",
        "type",
        "queue",
        "cron_expression",
        "description",
        "enabled",
        "last_run_at",
        "next_run_at",
    ],
    "job_failure_rates": [
        "type",
        "queue",
        "total_jobs",
        "failed_jobs",
        "failure_rate_percent",
        "avg_attempts",
    ],
    "job_processing_percentiles": [
        "type",
        "queue",
        "total_jobs",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "avg_ms",
        "max_ms",
    ],
}

# The spec's view definitions, copied unchanged.
SPEC_VIEW_SQL: dict[str, str] = {
    "jobs_active": """
CREATE VIEW jobs_active AS
SELECT id, type, queue, priority, payload, started_at, attempts
FROM jobs
WHERE status = 'active'
ORDER BY started_at ASC;
""",
    "jobs_failed_details": """
CREATE VIEW jobs_failed_details AS
SELECT
    j.id, j.type, j.queue, j.attempts, j.max_attempts,
    f.error_message, f.error_stack, f.failed_at
FROM jobs j
JOIN job_failures f ON j.id = f.job_id
WHERE j.status = 'failed'
ORDER BY f.failed_at DESC;
""",
    "queue_stats": """
CREATE VIEW queue_stats AS
SELECT
    queue,
    COUNT(*) FILTER (WHERE status = 'pending') AS pending,
    COUNT(*) FILTER (WHERE status = 'active') AS active,
    COUNT(*) FILTER (WHERE status = 'completed') AS completed,
    COUNT(*) FILTER (WHERE status = 'failed') AS failed,
    COUNT(*) FILTER (WHERE status = 'delayed') AS delayed
FROM jobs
GROUP BY queue;
""",
    "job_type_stats": """
CREATE VIEW job_type_stats AS
SELECT
    type,
    COUNT(*) AS total,
    COUNT(*) FILTER (WHERE status = 'completed') AS completed,
    COUNT(*) FILTER (WHERE status = 'failed') AS failed,
    AVG(r.duration_ms) AS avg_duration_ms
FROM jobs j
LEFT JOIN job_results r ON j.id = r.job_id
GROUP BY type
ORDER BY total DESC;
""",
    "recent_failures": """
CREATE VIEW recent_failures AS
SELECT j.id, j.type, j.queue, f.error_message, f.failed_at
FROM jobs j
JOIN job_failures f ON j.id = f.job_id
WHERE f.failed_at > NOW() - INTERVAL '24 hours'
ORDER BY f.failed_at DESC;
""",
    "scheduled_jobs_overview": """
CREATE VIEW scheduled_jobs_overview AS
SELECT name, type, queue, cron_expression, description, enabled, last_run_at, next_run_at
FROM job_schedules
ORDER BY enabled DESC, next_run_at ASC;
""",
    "job_failure_rates": """
-- Create failure rate view
CREATE VIEW job_failure_rates AS
SELECT
  type,
  queue,
  COUNT(*) AS total_jobs,
  COUNT(*) FILTER (WHERE status = 'failed') AS failed_jobs,
  ROUND(
    COUNT(*) FILTER (WHERE status = 'failed')::NUMERIC /
    NULLIF(COUNT(*), 0) * 100,
    2
  ) AS failure_rate_percent,
  AVG(attempts) AS avg_attempts
FROM jobs
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY type, queue
HAVING COUNT(*) > 10  -- Only show types with significant volume
ORDER BY failure_rate_percent DESC;
""",
    "job_processing_percentiles": """
-- Processing time percentiles
CREATE VIEW job_processing_percentiles AS
SELECT
  type,
  queue,
  COUNT(*) AS total_jobs,
  PERCENTILE_CONT(0.50) WITHIN GROUP (ORDER BY r.duration_ms) AS p50_ms,
  PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY r.duration_ms) AS p95_ms,
  PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY r.duration_ms) AS p99_ms,
  AVG(r.duration_ms) AS avg_ms,
  MAX(r.duration_ms) AS max_ms
FROM jobs j
JOIN job_results r ON j.id = r.job_id
WHERE j.created_at > NOW() - INTERVAL '24 hours'
  AND j.status = 'completed'
GROUP BY type, queue
ORDER BY p95_ms DESC;
""",
}

# "Cleanup and Maintenance" → Manual Cleanup, unchanged.
SPEC_MANUAL_CLEANUP = """
-- Clean old completed jobs
DELETE FROM jobs
WHERE status = 'completed'
  AND completed_at < NOW() - INTERVAL '7 days';
"""
SPEC_MANUAL_CLEANUP_FAILURES = """
-- Clean old failed jobs (keep recent for debugging)
DELETE FROM job_failures
WHERE failed_at < NOW() - INTERVAL '30 days';
"""

# "Job Failure Rate Tracking" → Failure Rate Alerts, the query inside db.query(...).
SPEC_FAILURE_ALERT = """
    SELECT type, queue, failure_rate_percent
    FROM job_failure_rates
    WHERE failure_rate_percent > 10  -- Alert threshold: 10%
"""

# "Processing Time Analysis" → Slow Job Detection, the query inside db.query(...).
SPEC_SLOW_JOBS = """
    SELECT j.id, j.type, j.queue, r.duration_ms,
           p.p95_ms
    FROM jobs j
    JOIN job_results r ON j.id = r.job_id
    JOIN job_processing_percentiles p ON j.type = p.type AND j.queue = p.queue
    WHERE r.duration_ms > p.p95_ms * 2  -- 2x slower than p95
      AND r.completed_at > NOW() - INTERVAL '1 hour'
"""

# "Database Security": row-level security and audit logging, unchanged.
SPEC_RLS = """
-- Enable RLS on jobs table
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;

-- Policy: Users can only see their own jobs
CREATE POLICY user_jobs_policy ON jobs
  FOR ALL
  USING (payload->>'tenant_id' = current_setting('app.current_tenant_id'));

-- Set tenant ID in session
SET app.current_tenant_id = 'tenant_123';
"""
SPEC_AUDIT = """
-- Create audit table
CREATE TABLE job_audit_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id UUID REFERENCES jobs(id),
    action VARCHAR(50) NOT NULL,  -- created, started, completed, failed, retried
    user_id VARCHAR(255),
    ip_address INET,
    timestamp TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- Audit trigger function
CREATE OR REPLACE FUNCTION log_job_changes()
RETURNS TRIGGER AS $$
BEGIN
  INSERT INTO job_audit_log (job_id, action)
  VALUES (NEW.id, TG_OP);
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Attach trigger
CREATE TRIGGER job_audit_trigger
  AFTER INSERT OR UPDATE ON jobs
  FOR EACH ROW EXECUTE FUNCTION log_job_changes();
"""


# ------------------------------------------------------------------ helpers


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def rows(conn: psycopg.Connection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    return list(conn.execute(sql, params or None).fetchall())


def columns(conn: psycopg.Connection[Any], relation: str) -> list[tuple[str, str]]:
    """(name, type) of a table's or view's columns, in order."""
    return [
        (r["attname"], r["type"])
        for r in rows(
            conn,
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
               FROM pg_attribute a
               WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""",
            relation,
        )
    ]


def schema_snapshot(url: str) -> dict[str, Any]:
    """Everything init creates, in a comparable form: relations with their columns,
    defaults, options, indexes and constraints; functions as pg_get_functiondef prints
    them (body, settings, security); triggers, views, composite types, privileges,
    comments and the rows every install holds."""
    with connect(url) as conn:
        return {
            "relations": rows(
                conn,
                """SELECT c.relname, c.relkind, c.relpersistence, c.relacl::text AS acl,
                          c.relrowsecurity, c.relforcerowsecurity
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'public' ORDER BY c.relname""",
            ),
            "types": rows(
                conn,
                """SELECT t.typname, a.attnum, a.attname,
                          format_type(a.atttypid, a.atttypmod) AS type
                   FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                   WHERE n.nspname = 'public' ORDER BY t.typname, a.attnum""",
            ),
            "function_acls": rows(
                conn,
                """SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
                          p.proacl::text AS acl
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'public' ORDER BY p.proname, args""",
            ),
            "comments": rows(
                conn,
                """SELECT o.type, o.identity, d.description
                   FROM pg_description d
                   CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o
                   WHERE o.schema = 'public' ORDER BY o.type, o.identity""",
            ),
            "policies": rows(
                conn,
                "SELECT tablename, policyname, cmd, qual FROM pg_policies"
                " WHERE schemaname = 'public' ORDER BY tablename, policyname",
            ),
            "settings": rows(
                conn,
                "SELECT retry_attempts, job_timeout_ms, max_payload_bytes, producer_types"
                " FROM pgjobs_settings",
            ),
            "rate_state": rows(
                conn,
                "SELECT store, redis_adopted_at, redis_grants_until FROM job_rate_state",
            ),
            "columns": rows(
                conn,
                """SELECT table_name, column_name, ordinal_position, data_type, udt_name,
                          character_maximum_length, column_default, is_nullable
                   FROM information_schema.columns WHERE table_schema = 'public'
                   ORDER BY table_name, ordinal_position""",
            ),
            "indexes": rows(
                conn,
                """SELECT tablename, indexname, indexdef FROM pg_indexes
                   WHERE schemaname = 'public' ORDER BY tablename, indexname""",
            ),
            "constraints": rows(
                conn,
                """SELECT c.conrelid::regclass::text AS rel, c.conname,
                          pg_get_constraintdef(c.oid) AS def
                   FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                   WHERE n.nspname = 'public' ORDER BY rel, c.conname""",
            ),
            "views": rows(
                conn,
                """SELECT viewname, definition FROM pg_views
                   WHERE schemaname = 'public' ORDER BY viewname""",
            ),
            "functions": rows(
                conn,
                """SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
                          pg_get_functiondef(p.oid) AS def
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'public' ORDER BY p.proname, args""",
            ),
            "triggers": rows(
                conn,
                """SELECT tgname, pg_get_triggerdef(t.oid) AS def, tgenabled FROM pg_trigger t
                   WHERE NOT tgisinternal ORDER BY tgname""",
            ),
            "reloptions": rows(
                conn,
                # Sorted: the order of a table's options means nothing to PostgreSQL.
                """SELECT c.relname, array(SELECT unnest(c.reloptions) ORDER BY 1) AS reloptions
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'public' AND c.reloptions IS NOT NULL
                   ORDER BY c.relname""",
            ),
            "migrations": rows(
                conn, "SELECT version, name FROM pgjobs_schema_migrations ORDER BY version"
            ),
            "queues": rows(conn, "SELECT name, paused FROM job_queues ORDER BY name"),
        }


@pytest.fixture(scope="module")
def fresh_snapshot(template_db: str) -> dict[str, Any]:
    """The schema as a fresh install creates it (the tests' template database)."""
    return schema_snapshot(database_url(template_db))


def init(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_pgjobs(["init"], cwd, {"DATABASE_URL": url})


# ------------------------------------------------------------------ pgjobs init


def test_init_creates_then_is_a_no_op(
    empty_db_url: str, tmp_path: Path, fresh_snapshot: dict[str, Any]
) -> None:
    first = init(empty_db_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert lines[0].startswith("postgres: ok (PostgreSQL ")
    assert lines[1:] == [
        f"schema: created (version {LATEST})",
        "views: 8 refreshed",
        "queues: default, high-priority, low-priority",
        "redis: disabled",
    ]
    assert schema_snapshot(empty_db_url) == fresh_snapshot

    second = init(empty_db_url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1] == f"schema: up to date (version {LATEST})"
    assert schema_snapshot(empty_db_url) == fresh_snapshot


def test_init_keeps_existing_data(db_url: str, tmp_path: Path) -> None:
    with connect(db_url) as conn:
        conn.execute("INSERT INTO jobs (type, payload) VALUES ('keep-me', '{\"a\": 1}')")
        conn.execute("UPDATE job_queues SET paused = true WHERE name = 'low-priority'")
    result = init(db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    with connect(db_url) as conn:
        assert rows(conn, "SELECT type, payload FROM jobs") == [
            {"type": "keep-me", "payload": {"a": 1}}
        ]
        assert rows(conn, "SELECT paused FROM job_queues WHERE name = 'low-priority'") == [
            {"paused": True}
        ]


def test_concurrent_inits_both_succeed_and_migrate_once(
    empty_db_url: str, tmp_path: Path, fresh_snapshot: dict[str, Any]
) -> None:
    env = clean_env(DATABASE_URL=empty_db_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgjobs", "init"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    schema_lines = sorted(out.splitlines()[1] for out, _ in outputs)
    assert schema_lines == [
        f"schema: created (version {LATEST})",
        f"schema: up to date (version {LATEST})",
    ]
    with connect(empty_db_url) as conn:
        assert rows(
            conn,
            "SELECT version, count(*) AS n FROM pgjobs_schema_migrations"
            " GROUP BY version ORDER BY version",
        ) == [{"version": v, "n": 1} for v in range(1, LATEST + 1)]
    assert schema_snapshot(empty_db_url) == fresh_snapshot


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    result = init("postgresql://postgres@127.0.0.1:1/x", tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: cannot connect to PostgreSQL at 127.0.0.1:1 (connection refused)"
        " — check DATABASE_URL\n"
    )


# ------------------------------------------------------------------ upgrades


@pytest.mark.parametrize("version", range(1, LATEST), ids=lambda n: f"from-{n}")
def test_upgrade_from_every_older_version_matches_a_fresh_install(
    version: int, empty_db_url: str, tmp_path: Path, fresh_snapshot: dict[str, Any]
) -> None:
    """An install left at an older version (as that pgjobs made it, from migrations/)
    upgrades to exactly the catalog schema.sql creates."""
    with connect(empty_db_url) as conn:
        report = install_schema(conn, up_to=version)
    assert report.version_after == version
    result = init(empty_db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"schema: upgraded from version {version} to {LATEST} (applied: "
        + ", ".join(f"{m.version} {m.name}" for m in migrations()[version:])
        + ")"
    )
    assert schema_snapshot(empty_db_url) == fresh_snapshot


def test_an_upgrade_is_not_cut_short_by_the_statement_timeout(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 13 builds indexes over every stored job; on a large table that takes
    longer than the 60 s limit pgjobs' transactions carry. Here the limit is 100 ms and
    the build takes longer: the upgrade still completes."""
    real_query = pgjobs_db.query

    def short_limits(name: str) -> str:
        if name == "transaction_timeouts":
            return "SELECT set_config('statement_timeout', '100', true)"
        return real_query(name)

    monkeypatch.setattr(pgjobs_db, "query", short_limits)
    with connect(empty_db_url) as conn:
        install_schema(conn, up_to=LATEST - 1)
        conn.execute(
            "INSERT INTO jobs (type, status, payload, completed_at, last_error) "
            "SELECT 'old', 'failed', jsonb_build_object('user', i, 'to', 'u' || i), now(), "
            "'ValueError: bad amount ' || i FROM generate_series(1, 300000) AS i"
        )
    with connect(empty_db_url) as conn:
        report = install_schema(conn)
    assert report.version_after == LATEST


def test_all_migrations_on_an_empty_database_match_a_fresh_install(
    empty_db_url: str, fresh_snapshot: dict[str, Any]
) -> None:
    with connect(empty_db_url) as conn:
        assert install_schema(conn, up_to=LATEST).applied == migrations()
        assert not install_schema(conn).changed  # the views and default queues only
    assert schema_snapshot(empty_db_url) == fresh_snapshot


def test_a_fresh_install_records_every_migration(empty_db_url: str) -> None:
    with connect(empty_db_url) as conn:
        report = install_schema(conn)
        assert (report.version_before, report.version_after) == (0, LATEST)
        assert report.applied == migrations()
        assert rows(conn, "SELECT version, name FROM pgjobs_schema_migrations ORDER BY 1") == [
            {"version": m.version, "name": m.name} for m in migrations()
        ]


def test_init_upgrades_a_version_1_install(
    empty_db_url: str, tmp_path: Path, fresh_snapshot: dict[str, Any]
) -> None:
    with connect(empty_db_url) as conn:
        install_schema(conn, up_to=1)
        # up_to leaves the views out: like an install whose views were lost.
        assert rows(conn, "SELECT to_regclass('queue_stats') AS v") == [{"v": None}]
    result = init(empty_db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    if LATEST == 1:
        assert result.stdout.splitlines()[1] == "schema: up to date (version 1)"
    else:
        assert result.stdout.splitlines()[1].startswith(
            f"schema: upgraded from version 1 to {LATEST} "
        )
    assert schema_snapshot(empty_db_url) == fresh_snapshot


def test_init_restores_dropped_views(
    db_url: str, tmp_path: Path, fresh_snapshot: dict[str, Any]
) -> None:
    with connect(db_url) as conn:
        for view in SPEC_VIEWS:
            conn.execute(f"DROP VIEW {view}")
        conn.execute("DELETE FROM job_queues")
    result = init(db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert schema_snapshot(db_url) == fresh_snapshot


@pytest.fixture
def extra_migrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Migration]]:
    """Migrations appended after the real ones, as a later release would add them."""
    added: list[Migration] = []
    real = migrations()
    monkeypatch.setattr(pgjobs_db, "migrations", lambda: real + added)
    yield added


def test_a_later_migration_is_applied_once(db_url: str, extra_migrations: list[Migration]) -> None:
    extra_migrations.append(
        Migration(LATEST + 1, "add note", "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS note text;")
    )
    with connect(db_url) as conn:
        report = install_schema(conn)
        assert (report.version_before, report.version_after) == (LATEST, LATEST + 1)
        assert [m.name for m in report.applied] == ["add note"]
        assert columns(conn, "jobs")[-1] == ("note", "text")
        again = install_schema(conn)
        assert not again.changed and again.version_after == LATEST + 1
        assert rows(conn, "SELECT max(version) AS v FROM pgjobs_schema_migrations") == [
            {"v": LATEST + 1}
        ]


def test_a_failing_migration_changes_nothing(
    db_url: str, extra_migrations: list[Migration], fresh_snapshot: dict[str, Any]
) -> None:
    extra_migrations.append(
        Migration(
            LATEST + 1,
            "broken",
            "ALTER TABLE jobs ADD COLUMN note text; CREATE INDEX x ON jobs (no_such_column);",
        )
    )
    with connect(db_url) as conn, pytest.raises(SchemaError) as caught:
        install_schema(conn)
    assert str(caught.value) == (
        f'migration {LATEST + 1} broken failed, nothing was changed: column "no_such_column" '
        "does not exist"
    )
    assert schema_snapshot(db_url) == fresh_snapshot


def test_migrations_are_numbered_in_order() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "initial"


def test_a_gap_in_the_migrations_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name in ("0001_initial.sql", "0003_later.sql"):
        (folder / name).write_text("SELECT 1;\n")
    monkeypatch.setattr(pgjobs_db, "data_path", lambda name: tmp_path / name)
    with pytest.raises(RuntimeError, match=r"numbered 1..N without a gap, found \[1, 3\]"):
        migrations()
    (folder / "0002 Bad Name.sql").write_text("SELECT 1;\n")
    with pytest.raises(RuntimeError, match=r"0002 Bad Name\.sql is not named NNNN_"):
        migrations()


# ------------------------------------------------------------------ released migrations


def released_problems(folder: Path) -> list[str]:
    """What is wrong with the released migrations in `folder` against its RELEASED
    manifest (lines as `sha256sum` writes them: digest, two spaces, file name)."""
    manifest = dict(
        reversed(line.split("  ", 1))
        for line in (folder / "RELEASED").read_text().splitlines()
        if line and not line.startswith("#")
    )
    problems = []
    numbers = [int(name[:4]) for name in sorted(manifest)]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"RELEASED must list migrations 1..N without a gap, found {numbers}")
    for name, digest in sorted(manifest.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"released migration {name} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"released migration {name} was edited: add a new migration instead")
    for path in sorted(folder.glob("*.sql")):
        if path.name not in manifest and int(path.name[:4]) <= len(numbers):
            problems.append(f"{path.name} is numbered like a released migration")
    return problems


def test_released_migrations_never_change() -> None:
    assert released_problems(MIGRATIONS) == []


def test_the_release_check_catches_an_edit_and_a_missing_number(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    texts = {"0001_initial.sql": "SELECT 1;\n", "0002_more.sql": "SELECT 2;\n"}
    lines = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        lines.append(f"{hashlib.sha256(text.encode()).hexdigest()}  {name}")
    (folder / "RELEASED").write_text("# comment\n" + "\n".join(lines) + "\n")
    assert released_problems(folder) == []
    (folder / "0002_more.sql").write_text("SELECT 2; -- edited\n")
    assert released_problems(folder) == [
        "released migration 0002_more.sql was edited: add a new migration instead"
    ]
    (folder / "0002_more.sql").unlink()
    (folder / "RELEASED").write_text(lines[1] + "\n")
    assert released_problems(folder) == [
        "RELEASED must list migrations 1..N without a gap, found [2]",
        "released migration 0002_more.sql is missing",
        "0001_initial.sql is numbered like a released migration",
    ]


# ------------------------------------------------------------------ the spec's shapes


def test_tables_start_with_the_spec_columns(db: psycopg.Connection[Any]) -> None:
    for table, expected in SPEC_TABLES.items():
        assert columns(db, table)[: len(expected)] == expected, table


def test_views_start_with_the_spec_columns(db: psycopg.Connection[Any]) -> None:
    for view, expected in SPEC_VIEWS.items():
        assert [name for name, _ in columns(db, view)][: len(expected)] == expected, view


def test_claims_read_job_ready_whose_triggers_fire_always(db: psycopg.Connection[Any]) -> None:
    """Pending jobs in claim order, suspects apart, in a table of their own; jobs keeps
    no claim index. The triggers fire under session_replication_role = replica too."""
    found = rows(db, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'job_ready'")
    assert found == [
        {
            "indexname": "job_ready_claim_idx",
            "indexdef": "CREATE INDEX job_ready_claim_idx ON public.job_ready USING btree "
            "(queue, suspect, priority, run_at, id)",
        }
    ]
    assert not rows(
        db,
        "SELECT indexname FROM pg_indexes "
        "WHERE indexname IN ('jobs_claim_idx', 'jobs_suspect_idx')",
    )
    triggers = rows(
        db,
        "SELECT tgname, tgenabled FROM pg_trigger "
        "WHERE tgrelid = 'jobs'::regclass AND tgname LIKE 'jobs_ready_%' ORDER BY tgname",
    )
    assert triggers == [
        {"tgname": f"jobs_ready_{op}", "tgenabled": "A"}
        for op in ("delete", "insert", "truncate", "update")
    ]


def test_a_queue_filter_over_all_states_reads_the_queue_status_index(
    db: psycopg.Connection[Any],
) -> None:
    """The spec's idx_jobs_queue (queue) is covered by idx_jobs_status (queue, status)."""
    assert rows(db, "SELECT indexname FROM pg_indexes WHERE indexname = 'idx_jobs_queue'") == []
    with db.transaction(force_rollback=True):
        db.execute(
            "INSERT INTO jobs (type, queue, status) SELECT 'x', 'q' || (i % 50), "
            "(ARRAY['pending', 'completed', 'failed'])[1 + i % 3] FROM generate_series(1, 5000) i"
        )
        db.execute("ANALYZE jobs")
        plan = rows(db, "EXPLAIN (FORMAT JSON) SELECT count(*) FROM jobs WHERE queue = 'q7'")
    assert "idx_jobs_status" in str(plan[0])


def test_jobs_table_has_autovacuum_settings(db: psycopg.Connection[Any]) -> None:
    [row] = rows(db, "SELECT reloptions FROM pg_class WHERE oid = 'jobs'::regclass")
    options = dict(opt.split("=", 1) for opt in row["reloptions"])
    assert options["autovacuum_vacuum_scale_factor"] == "0.1"
    assert options["autovacuum_vacuum_threshold"] == "20000"
    assert options["autovacuum_analyze_scale_factor"] == "0.02"
    assert options["autovacuum_vacuum_cost_delay"] == "0"
    assert options["fillfactor"] == "80"


# ------------------------------------------------------------------ the spec's SQL, unchanged


def insert_sample_data(conn: psycopg.Connection[Any]) -> None:
    """Jobs in every state, with results and failures, recent and old."""
    now = datetime.now(UTC)

    def job(type_: str, queue: str, status: str, **cols: Any) -> Any:
        values = {"type": type_, "queue": queue, "status": status, **cols}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        return conn.execute(
            f"INSERT INTO jobs ({names}) VALUES ({marks}) RETURNING id",
            list(values.values()),
        ).fetchone()["id"]

    def result(job_id: Any, duration_ms: int, at: datetime = now) -> None:
        conn.execute(
            "INSERT INTO job_results (job_id, result, duration_ms, completed_at)"
            " VALUES (%s, '{\"ok\": true}', %s, %s)",
            (job_id, duration_ms, at),
        )

    def failure(job_id: Any, attempt: int, at: datetime) -> None:
        conn.execute(
            "INSERT INTO job_failures (job_id, attempt_number, error_message, error_stack,"
            " failed_at) VALUES (%s, %s, %s, 'Traceback ...', %s)",
            (job_id, attempt, f"boom {attempt}", at),
        )

    job("send-email", "default", "pending")
    job("send-email", "default", "pending", priority=1)
    job("http-request", "high-priority", "active", started_at=now - timedelta(seconds=5))
    job("http-request", "high-priority", "active", started_at=now - timedelta(seconds=9))
    job("send-email", "default", "delayed", run_at=now + timedelta(hours=1))
    job("send-email", "default", "cancelled", completed_at=now)
    job("send-email", "default", "blocked")
    for i, ms in enumerate((100, 200, 300)):
        jid = job("send-email", "default", "completed", completed_at=now, attempts=1)
        result(jid, ms, now - timedelta(seconds=i))
    # Old enough for the manual cleanup, with a result that must go along with it.
    old = job(
        "send-email",
        "default",
        "completed",
        created_at=now - timedelta(days=9),
        completed_at=now - timedelta(days=8),
    )
    result(old, 50, now - timedelta(days=8))
    for i in range(2):
        jid = job("http-request", "default", "failed", attempts=3, completed_at=now)
        failure(jid, 1, now - timedelta(minutes=10 + i))
        failure(jid, 2, now - timedelta(minutes=5 + i))
    ancient = job("http-request", "default", "failed", attempts=3)
    failure(ancient, 1, now - timedelta(days=40))
    # Volume for the failure-rate view: 12 jobs in the last hour, 3 of them failed.
    for i in range(12):
        job("flaky", "low-priority", "failed" if i < 3 else "completed", attempts=2)
    # Volume for the percentiles: thirty quick runs and one very slow one.
    for i in range(31):
        jid = job("resize", "default", "completed", attempts=1, completed_at=now)
        result(jid, 10_000 if i == 30 else 100 + i % 3, now - timedelta(minutes=1))
    conn.execute(
        "INSERT INTO job_schedules (name, type, cron_expression, payload, enabled, next_run_at)"
        " VALUES ('nightly', 'database-backup', '0 3 * * *', '{}', true, %s),"
        " ('paused-report', 'send-email', '0 9 * * 1', '{}', false, NULL)",
        (now + timedelta(hours=3),),
    )


def _canonical(records: list[dict[str, Any]]) -> list[str]:
    return sorted(repr(sorted(r.items())) for r in records)


def test_spec_view_definitions_run_unchanged_and_agree(db: psycopg.Connection[Any]) -> None:
    """Each CREATE VIEW of the spec, run as written (in a scratch schema so it does not
    collide), gives the same rows and types as pgjobs' view on the spec's columns."""
    insert_sample_data(db)
    db.execute("CREATE SCHEMA spec")
    db.execute("SET search_path = spec, public")
    for view, sql in SPEC_VIEW_SQL.items():
        db.execute(sql)
        spec_columns = columns(db, f"spec.{view}")
        assert [name for name, _ in spec_columns] == SPEC_VIEWS[view], view
        ours = columns(db, f"public.{view}")[: len(spec_columns)]
        assert ours == spec_columns, f"{view}: column types differ from the spec's"

        names = ", ".join(SPEC_VIEWS[view])
        theirs = rows(db, f"SELECT {names} FROM spec.{view}")
        mine = rows(db, f"SELECT {names} FROM public.{view}")
        assert theirs, f"{view}: the sample data should give rows"
        if view == "queue_stats":
            # pgjobs also lists known queues that have no jobs yet, with zero counts.
            extra = [r for r in mine if r not in theirs]
            assert all(r["pending"] == r["active"] == r["failed"] == 0 for r in extra)
            mine = [r for r in mine if r in theirs]
        assert _canonical(mine) == _canonical(theirs), view


def test_spec_manual_cleanup_runs_unchanged(db: psycopg.Connection[Any]) -> None:
    insert_sample_data(db)
    before = rows(db, "SELECT count(*) AS n FROM job_results")[0]["n"]
    deleted = db.execute(SPEC_MANUAL_CLEANUP)
    assert deleted.rowcount == 1
    # The old job's result went with it (no dangling rows, no foreign-key error).
    assert rows(db, "SELECT count(*) AS n FROM job_results")[0]["n"] == before - 1
    assert db.execute(SPEC_MANUAL_CLEANUP_FAILURES).rowcount == 1
    assert (
        rows(db, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"] == 3 + 9 + 31
    )


def test_spec_failure_rate_alert_query(db: psycopg.Connection[Any]) -> None:
    insert_sample_data(db)
    assert rows(db, SPEC_FAILURE_ALERT) == [
        {"type": "flaky", "queue": "low-priority", "failure_rate_percent": 25}
    ]


def test_spec_slow_job_query(db: psycopg.Connection[Any]) -> None:
    insert_sample_data(db)
    slow = rows(db, SPEC_SLOW_JOBS)
    assert [(r["type"], r["duration_ms"]) for r in slow] == [("resize", 10_000)]


def test_spec_security_examples_run_unchanged(db: psycopg.Connection[Any]) -> None:
    with db.transaction(force_rollback=True):
        db.execute(SPEC_RLS)
        db.execute(SPEC_AUDIT)
        [row] = rows(db, "INSERT INTO jobs (type) VALUES ('audited') RETURNING id")
        db.execute("UPDATE jobs SET progress = 50 WHERE id = %s", (row["id"],))
        assert rows(db, "SELECT action FROM job_audit_log ORDER BY timestamp, action") == [
            {"action": "INSERT"},
            {"action": "UPDATE"},
        ]
