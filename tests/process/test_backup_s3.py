"""database-backup to `s3://bucket/prefix` and `pgjobs backup-restore s3://...`, with the
real pg_dump, PostgreSQL, `pgjobs` processes and a real S3-compatible server (moto in
server mode on a loopback port)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import moto.s3.models
import psycopg
import pytest
from psycopg import sql

from pgjobs import App, FrozenClock, Job
from pgjobs.backups import s3 as s3_backups
from pgjobs.backups.fileformat import MAGIC, read_plain
from pgjobs.config import Settings
from tests.conftest import ADMIN_URL, database_url, make_settings
from tests.helpers import wait_until
from tests.pgjobs_cli import clean_env, one_line_error_problem, run_pgjobs
from tests.s3_server import AWS_ENV, AWS_UNSET, S3, moto_server
from tests.webserver import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.anyio

KEY_HEX = "5f" * 16 + "a0" * 16
OTHER_KEY_HEX = "11" * 32
BIN = str(Path(sys.executable).parent)
NAME = re.compile(r"^weekly/(pgjobs_t_[0-9a-f]{16})-\d{8}T\d{6}Z-[0-9a-f]{8}\.dump$")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The server, emptied, with a bucket `backups`; the AWS variables set as an operator
    would (they reach in-process workers and the `pgjobs` subprocesses alike)."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    server = S3(s3_endpoint)
    server.reset()
    server.client.create_bucket(Bucket="backups")
    return server


def create_db() -> str:
    name = f"pgjobs_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_db(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def production() -> Iterator[str]:
    """A scratch database with rows to back up; yields its bare name."""
    name = create_db()
    try:
        with psycopg.connect(database_url(name), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE orders (id int PRIMARY KEY, note text);"
                "INSERT INTO orders SELECT i, 'order ' || i FROM generate_series(1, 500) i"
            )
        yield name
    finally:
        drop_db(name)


@pytest.fixture
def fresh_db() -> Iterator[str]:
    """An empty database to restore into; yields its URL."""
    name = create_db()
    try:
        yield database_url(name)
    finally:
        drop_db(name)


def orders(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, note FROM orders ORDER BY id").fetchall()


def s3_settings(db_url: str, s3: S3, **env: str) -> Settings:
    return make_settings(
        db_url, JOBS_BACKUP_S3_ENDPOINT=s3.endpoint, JOBS_JOB_TIMEOUT="300000", **env
    )


@pytest.fixture
async def app(db_url: str, s3: S3) -> AsyncIterator[App]:
    settings = s3_settings(db_url, s3, JOBS_BACKUP_ENCRYPTION_KEY=KEY_HEX)
    async with App(settings, clock=FrozenClock()) as application:
        yield application


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("database-backup", payload, **options)
    await app.drain()
    return await app.get(job.id)


def cli_env(s3: S3, **env: str) -> dict[str, str]:
    return {"JOBS_BACKUP_S3_ENDPOINT": s3.endpoint, **env}


def restore_cli(source: str, target_url: str, cwd: Path, env: dict[str, str]) -> Any:
    return run_pgjobs(["backup-restore", source, "--database", target_url], cwd, env)


def test_spec_payload_in_a_real_worker_writes_an_object_that_restores(
    db_url: str, db: Any, s3: S3, production: str, fresh_db: str, tmp_path: Path
) -> None:
    payload = {"database": production, "destination": "s3://backups/weekly"}
    enqueued = run_pgjobs(
        ["enqueue", "database-backup", "--payload", json.dumps(payload), "--attempts", "1"],
        tmp_path,
        {"DATABASE_URL": db_url, "JOBS_BACKUP_S3_ENDPOINT": s3.endpoint},
    )
    assert enqueued.returncode == 0, enqueued.stderr
    env = clean_env(
        DATABASE_URL=db_url,
        JOBS_BACKUP_S3_ENDPOINT=s3.endpoint,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    with subprocess.Popen(
        [f"{BIN}/pgjobs", "worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_as_in_a_terminal,
    ) as worker:
        try:
            job = wait_until(
                lambda: db.execute(
                    "SELECT * FROM jobs WHERE type = 'database-backup' "
                    "AND status IN ('completed', 'failed')"
                ).fetchone(),
                timeout=60,
                message="the backup job to finish",
            )
        finally:
            worker.send_signal(signal.SIGINT)
            worker.wait(30)
    assert job["status"] == "completed", job["last_error"]
    [key] = s3.keys("backups")
    match = NAME.match(key)
    assert match and match.group(1) == production
    result = db.execute("SELECT result FROM job_results WHERE job_id = %s", [job["id"]]).fetchone()
    result = result["result"]
    data = s3.get("backups", key)
    assert result["path"] == f"s3://backups/{key}"
    assert result["size"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["database"] == production and data.startswith(b"PGDMP")

    done = restore_cli(result["path"], fresh_db, tmp_path, cli_env(s3))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restored s3://backups/{key} (custom, ")
    assert orders(fresh_db) == orders(database_url(production))
    assert len(orders(fresh_db)) == 500


async def test_encrypted_object_is_a_backup_file_like_any_other(
    app: App, s3: S3, production: str, fresh_db: str, tmp_path: Path
) -> None:
    payload = {
        "database": production,
        "destination": "s3://backups/enc",
        "compress": True,
        "encrypt": True,
    }
    job = await run(app, payload)
    assert job.status == "completed", job.last_error
    [key] = s3.keys("backups")
    assert key.endswith(".dump.gz.enc") and job.result["path"] == f"s3://backups/{key}"
    data = s3.get("backups", key)
    assert data.startswith(MAGIC) and b"order 1" not in data
    # The same bytes as a local file: the local reader and restore take them as they are.
    local = tmp_path / Path(key).name
    local.write_bytes(data)
    with local.open("rb") as f:
        chunks, layers = read_plain(f, bytes.fromhex(KEY_HEX), local.name)
        assert next(chunks).startswith(b"PGDMP") and layers.encrypted and layers.compressed

    wrong = restore_cli(
        job.result["path"],
        fresh_db,
        tmp_path,
        cli_env(s3, JOBS_BACKUP_ENCRYPTION_KEY=OTHER_KEY_HEX),
    )
    assert one_line_error_problem(wrong) is None
    assert "was encrypted with a different key than JOBS_BACKUP_ENCRYPTION_KEY" in wrong.stderr
    from_s3 = restore_cli(
        job.result["path"], fresh_db, tmp_path, cli_env(s3, JOBS_BACKUP_ENCRYPTION_KEY=KEY_HEX)
    )
    assert from_s3.returncode == 0, from_s3.stderr
    assert "custom, gzip, encrypted" in from_s3.stdout
    assert orders(fresh_db) == orders(database_url(production))


async def test_a_dump_larger_than_one_part_goes_up_in_parts(
    app: App, s3: S3, production: str, fresh_db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    part = 64 * 1024
    monkeypatch.setattr(s3_backups, "PART_SIZE", part)
    # S3 (and moto) refuse parts under 5 MiB but the last; lowered here like PART_SIZE.
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", part)
    with psycopg.connect(database_url(production), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders SELECT i, repeat(md5(i::text), 8) "
            "FROM generate_series(1000, 3000) i"
        )
    job = await run(app, {"database": production, "destination": "s3://backups/big"})
    assert job.status == "completed", job.last_error
    [key] = s3.keys("backups")
    head = s3.client.head_object(Bucket="backups", Key=key)
    parts = -(-job.result["size"] // part)
    assert parts >= 3
    # A multipart object's ETag ends in the number of its parts.
    assert head["ETag"].strip('"').endswith(f"-{parts}")
    data = s3.get("backups", key)
    assert hashlib.sha256(data).hexdigest() == job.result["sha256"]
    assert s3.client.list_multipart_uploads(Bucket="backups").get("Uploads", []) == []
    done = restore_cli(job.result["path"], fresh_db, tmp_path, cli_env(s3))
    assert done.returncode == 0, done.stderr
    assert orders(fresh_db) == orders(database_url(production))


def test_an_aborted_upload_leaves_nothing(s3: S3, monkeypatch: Any) -> None:
    monkeypatch.setattr(s3_backups, "PART_SIZE", 1024)
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    upload = s3_backups.MultipartUpload(s3.client, s3_backups.S3Location("backups", "x/y.dump"))
    upload.write(os.urandom(5000))
    assert upload.parts == 4
    assert len(s3.client.list_multipart_uploads(Bucket="backups")["Uploads"]) == 1
    upload.abort()
    assert s3.client.list_multipart_uploads(Bucket="backups").get("Uploads", []) == []
    assert s3.keys("backups") == []


async def test_retention_deletes_the_oldest_objects_of_that_database_only(
    app: App, s3: S3, production: str
) -> None:
    old = f"weekly/{production}-20200101T000000Z-0123abcd.dump"
    untouched = [
        "weekly/notes.txt",
        "weekly/otherdb-20200101T000000Z-0123abcd.dump",
        f"weekly/deeper/{production}-20200101T000000Z-0123abcd.dump",
        f"weekly2/{production}-20200101T000000Z-0123abcd.dump",
    ]
    for key in [old, *untouched]:
        s3.put("backups", key, b"x")
    assert isinstance(app.clock, FrozenClock)
    paths = []
    for _ in range(3):
        job = await run(
            app, {"database": production, "destination": "s3://backups/weekly", "retention": 2}
        )
        assert job.status == "completed", job.last_error
        paths.append(job.result["path"])
        app.clock.advance(timedelta(hours=1))
    assert job.result["removed"] == [paths[0]]
    newest = [p.removeprefix("s3://backups/") for p in paths[1:]]
    assert s3.keys("backups") == sorted([*newest, *untouched])


async def test_missing_bucket_fails_the_job_clearly(app: App, s3: S3, production: str) -> None:
    job = await run(
        app, {"database": production, "destination": "s3://no-such-bucket/x"}, attempts=1
    )
    assert job.status == "failed"
    assert "uploading s3://no-such-bucket/x/" in (job.last_error or "")
    assert "bucket 'no-such-bucket' does not exist" in (job.last_error or "")


def test_restore_errors_are_one_line(s3: S3, fresh_db: str, tmp_path: Path) -> None:
    cases = {
        "s3://backups/weekly/nothing-here.dump": "no such object s3://backups/weekly/nothing-here.dump",
        "s3://no-such-bucket/a.dump": "bucket 'no-such-bucket' does not exist",
        "gs://backups/a.dump": "only local files and s3://bucket/key can be restored",
    }
    for source, message in cases.items():
        done = restore_cli(source, fresh_db, tmp_path, cli_env(s3))
        assert one_line_error_problem(done) is None, (source, done.stderr)
        assert message in done.stderr, (source, done.stderr)
    s3.put("backups", "a.dump", b"PGDMP not really")
    anonymous = {name: "" for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = restore_cli("s3://backups/a.dump", fresh_db, tmp_path, cli_env(s3, **anonymous))
    assert one_line_error_problem(done) is None, done.stderr
    assert "no AWS credentials found" in done.stderr


def test_the_spec_schedule_command_is_accepted(
    db_url: str, db: Any, s3: S3, production: str, tmp_path: Path
) -> None:
    payload = json.dumps({"database": production, "destination": "s3://backups/weekly"})
    created = run_pgjobs(
        [
            "schedule",
            "create",
            "--name",
            "weekly-backup",
            "--type",
            "database-backup",
            "--cron",
            "0 3 * * 0",
            "--payload",
            payload,
        ],
        tmp_path,
        {"DATABASE_URL": db_url},
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created schedule 'weekly-backup'; next run ")
    row = db.execute("SELECT * FROM job_schedules WHERE name = 'weekly-backup'").fetchone()
    assert row["payload"] == json.loads(payload) and row["cron_expression"] == "0 3 * * 0"
