"""database-backup with the real pg_dump, restored with the real `pgjobs backup-restore`
into a fresh database, contents compared; plus pg_dump selection and memory use."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgjobs import App, FrozenClock, Job
from pgjobs.backups.fileformat import MAGIC
from pgjobs.backups.pgtools import PgToolNotFound, find_tool, target, tool_version
from pgjobs.config import Settings
from pgjobs.errors import ValidationError
from tests.conftest import make_settings
from tests.pgjobs_cli import run_pgjobs

pytestmark = pytest.mark.anyio

KEY_HEX = "5f" * 16 + "a0" * 16
OTHER_KEY_HEX = "11" * 32

SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    profile jsonb,
    avatar bytea,
    joined timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric(10, 2) NOT NULL,
    note text
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
INSERT INTO customers (name, email, profile, avatar)
SELECT 'Customer ' || i || ' ünïcødé ✓', 'c' || i || '@example.com',
       jsonb_build_object('n', i, 'tags', jsonb_build_array('a', i % 3)),
       decode(md5(i::text), 'hex')
FROM generate_series(1, 300) AS i;
INSERT INTO orders (customer_id, total, note)
SELECT 1 + i % 300, (i * 7 % 500) + 0.25,
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'tab	and ''quote''' END
FROM generate_series(1, 2000) AS i;
"""

COMPARED = {
    "customers": "SELECT * FROM customers ORDER BY id",
    "orders": "SELECT * FROM orders ORDER BY id",
    "big_orders": "SELECT count(*) AS n, sum(total) AS s FROM big_orders",
    "sequence": "SELECT last_value FROM orders_id_seq",
}


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in COMPARED.items()}


@pytest.fixture
def source_url(db_url: str) -> str:
    """The test's database (it also holds the pgjobs tables) with business tables added."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return db_url


def backup_settings(db_url: str, destination: Path, **env: str) -> Settings:
    return make_settings(
        db_url,
        JOBS_BACKUP_DIR=str(destination),
        JOBS_BACKUP_ENCRYPTION_KEY=KEY_HEX,
        JOBS_JOB_TIMEOUT="300000",
        **env,
    )


@pytest.fixture
async def backup_app(source_url: str, tmp_path: Path) -> AsyncIterator[App]:
    async with App(backup_settings(source_url, tmp_path / "backups"), clock=FrozenClock()) as app:
        yield app


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("database-backup", payload, **options)
    await app.drain()
    return await app.get(job.id)


def restore_cli(
    path: str, database_url: str, cwd: Path, key: str | None = KEY_HEX, *extra: str
) -> Any:
    env = {"JOBS_BACKUP_ENCRYPTION_KEY": key} if key else {}
    return run_pgjobs(["backup-restore", path, "--database", database_url, *extra], cwd, env)


@pytest.mark.parametrize(
    ("payload", "suffix"),
    [
        ({"format": "plain"}, ".sql"),
        ({"compress": True}, ".dump.gz"),
        ({"compress": True, "encrypt": True}, ".dump.gz.enc"),
        ({"format": "plain", "compress": True, "encrypt": True}, ".sql.gz.enc"),
        ({}, ".dump"),
    ],
)
async def test_backup_then_restore_into_a_fresh_database(
    backup_app: App,
    source_url: str,
    empty_db_url: str,
    tmp_path: Path,
    payload: dict[str, Any],
    suffix: str,
) -> None:
    job = await run(backup_app, payload)
    assert job.status == "completed", job.last_error
    result = job.result
    path = Path(result["path"])
    assert path.name.endswith(suffix) and path.parent == tmp_path / "backups"
    data = path.read_bytes()
    assert result["size"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["durationMs"] >= 0 and result["dumpBytes"] > 0
    assert result["format"] == payload.get("format", "custom")
    assert result["compressed"] is bool(payload.get("compress"))
    assert result["encrypted"] is bool(payload.get("encrypt"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert job.progress == 100
    if payload.get("encrypt"):
        assert data.startswith(MAGIC) and b"Customer 1" not in data
    elif payload.get("compress"):
        assert gzip.decompress(data)[:5] in (b"PGDMP", b"--\n--")
    assert not list(path.parent.glob("*.partial"))

    # With the key set only encrypted files restore; unencrypted ones restore without it.
    key = KEY_HEX if payload.get("encrypt") else None
    done = restore_cli(str(path), empty_db_url, tmp_path, key)
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout and "into database" in done.stdout
    assert snapshot(empty_db_url) == snapshot(source_url)


async def test_wrong_key_fails_clearly_and_restores_nothing(
    backup_app: App, empty_db_url: str, tmp_path: Path
) -> None:
    job = await run(backup_app, {"compress": True, "encrypt": True})
    path = job.result["path"]
    wrong = restore_cli(path, empty_db_url, tmp_path, OTHER_KEY_HEX)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"error: {path} was encrypted with a different key than JOBS_BACKUP_ENCRYPTION_KEY"
    ]
    missing = restore_cli(path, empty_db_url, tmp_path, None)
    assert missing.returncode == 2
    assert "set JOBS_BACKUP_ENCRYPTION_KEY" in missing.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('customers')").fetchone() == (None,)


async def test_damaged_backup_restores_nothing(
    backup_app: App, empty_db_url: str, tmp_path: Path
) -> None:
    job = await run(backup_app, {"encrypt": True})
    path = Path(job.result["path"])
    cut = tmp_path / "cut.dump.enc"
    cut.write_bytes(path.read_bytes()[:-100])
    done = restore_cli(str(cut), empty_db_url, tmp_path)
    assert done.returncode == 2
    assert "truncated or corrupted; nothing was restored" in done.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('customers')").fetchone() == (None,)


async def test_restore_into_a_database_that_has_the_tables_fails_atomically(
    backup_app: App, source_url: str, tmp_path: Path
) -> None:
    job = await run(backup_app, {"format": "plain"})
    done = restore_cli(job.result["path"], source_url, tmp_path, None)
    assert done.returncode == 2
    assert done.stderr.startswith("error: psql failed with exit status")
    assert "already exists" in done.stderr


async def test_retention_keeps_the_newest(backup_app: App, tmp_path: Path) -> None:
    destination = tmp_path / "backups"
    destination.mkdir()
    unrelated = destination / "notes.txt"
    unrelated.write_text("keep me")
    other_db = destination / "otherdb-20200101T000000Z-0123abcd.dump"
    other_db.write_text("another database's backup")
    assert isinstance(backup_app.clock, FrozenClock)
    paths = []
    for _ in range(4):
        job = await run(backup_app, {"retention": 2})
        assert job.status == "completed", job.last_error
        paths.append(job.result["path"])
        backup_app.clock.advance(timedelta(hours=1))
    assert job.result["removed"] == [paths[1]]
    assert sorted(p.name for p in destination.iterdir()) == sorted(
        [Path(paths[2]).name, Path(paths[3]).name, "notes.txt", other_db.name]
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"format": "tar"}, "format: must be custom or plain"),
        ({"destination": "gs://backups/weekly"}, "destination: must be a local directory or s3:"),
        ({"destination": "s3://"}, "destination: 's3://' names no bucket"),
        ({"destination": "relative/dir"}, "destination: must be an absolute path"),
        ({"retention": 0}, "retention: must be at least 1"),
        ({"compress": "yes"}, "compress: must be true or false"),
        ({"database": "mysql://x"}, "database: must be a PostgreSQL URL"),
    ],
)
async def test_bad_payload_is_refused_at_creation_and_discarded_by_the_worker(
    backup_app: App, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await backup_app.create("database-backup", payload)
    job = await run_unchecked(backup_app, payload)
    assert job.status == "failed" and job.attempts == 1
    assert message in (job.last_error or "")
    assert job.failures[-1].kind == "discarded"


async def run_unchecked(app: App, payload: dict[str, Any]) -> Job:
    """Insert the job with SQL, as any producer with table access can, skipping the
    create-time checks; the worker must check again."""
    with psycopg.connect(app.settings.require_database_url()) as conn:
        row = conn.execute(
            "INSERT INTO jobs (type, payload) VALUES ('database-backup', %s::jsonb) RETURNING id",
            [json.dumps(payload)],
        ).fetchone()
    assert row is not None
    await app.drain()
    return await app.get(row[0])


async def test_encrypt_without_a_key_is_discarded(source_url: str, tmp_path: Path) -> None:
    settings = make_settings(source_url, JOBS_BACKUP_DIR=str(tmp_path))
    async with App(settings) as app:
        with pytest.raises(ValidationError, match="JOBS_BACKUP_ENCRYPTION_KEY is not set"):
            await app.create("database-backup", {"encrypt": True})
        job = await run_unchecked(app, {"encrypt": True})
    assert job.status == "failed"
    assert "encrypt: JOBS_BACKUP_ENCRYPTION_KEY is not set on the worker" in (job.last_error or "")


async def test_pg_dump_failure_is_reported_and_leaves_no_file(
    source_url: str, tmp_path: Path
) -> None:
    settings = backup_settings(source_url, tmp_path)
    role = f"pgjobs_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(source_url, autocommit=True) as conn:
        # A role that may connect but not read the tables: pg_dump fails part-way.
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        url = source_url.replace("postgres@", f"{role}@")
        async with App(settings) as app:
            job = await run(app, {"database": url}, attempts=1)
    finally:
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert job.status == "failed"
    assert "pg_dump" in (job.last_error or "") and "permission denied" in (job.last_error or "")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- choosing pg_dump


def fake_tool(directory: Path, name: str, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return tool


def server_major(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def test_matching_major_is_chosen(db_url: str) -> None:
    major = server_major(db_url)
    tool = find_tool("pg_dump", major, make_settings(db_url))
    assert tool.major == major
    assert tool_version(tool.path) == tool.version


def test_explicit_bindir_is_the_only_place_looked_at(db_url: str, tmp_path: Path) -> None:
    major = server_major(db_url)
    fake_tool(tmp_path / "old", "pg_dump", f"{major - 1}.3")
    settings = make_settings(db_url, JOBS_PG_BINDIR=str(tmp_path / "old"))
    with pytest.raises(PgToolNotFound) as caught:
        find_tool("pg_dump", major, settings)
    message = str(caught.value)
    assert message.startswith(f"no pg_dump for PostgreSQL {major} (")
    assert f"is {major - 1}.3" in message
    assert "point JOBS_PG_BINDIR at a PostgreSQL" in message
    empty = make_settings(db_url, JOBS_PG_BINDIR=str(tmp_path / "nothing"))
    with pytest.raises(PgToolNotFound, match="no executable"):
        find_tool("pg_dump", major, empty)
    fake_tool(tmp_path / "same", "pg_dump", f"{major}.1")
    same = make_settings(db_url, JOBS_PG_BINDIR=str(tmp_path / "same"))
    assert find_tool("pg_dump", major, same).path == tmp_path / "same" / "pg_dump"


def test_newer_tool_is_used_only_without_an_exact_match(db_url: str, tmp_path: Path) -> None:
    fake_tool(tmp_path / "new", "pg_dump", "99.0")
    settings = make_settings(db_url, JOBS_PG_BINDIR=str(tmp_path / "new"))
    assert find_tool("pg_dump", 98, settings).major == 99


async def test_backup_with_unfit_pg_dump_is_discarded_with_the_reason(
    source_url: str, tmp_path: Path
) -> None:
    fake_tool(tmp_path / "bin", "pg_dump", "9.6")
    settings = backup_settings(source_url, tmp_path / "out", JOBS_PG_BINDIR=str(tmp_path / "bin"))
    async with App(settings) as app:
        job = await run(app, {})
    assert job.status == "failed" and job.attempts == 1
    assert "no pg_dump for PostgreSQL" in (job.last_error or "")
    assert "9.6" in (job.last_error or "")


def test_password_stays_off_the_command_line() -> None:
    where = target("postgresql://u:s3cret@db.example.com:6543/app?sslmode=require", "backup")
    assert "s3cret" not in where.conninfo
    assert where.env["PGPASSWORD"] == "s3cret"
    assert "sslmode=require" in where.conninfo and "port=6543" in where.conninfo
    assert where.database == "app"
    assert os.environ.get("PGPASSWORD") != "s3cret"
