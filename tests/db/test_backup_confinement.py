"""database-backup may write only under its roots and dump only allowed servers, and never
hands the worker's credentials to another server; with the real pg_dump and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjobs import App, Job
from pgjobs.backups.pgtools import target
from pgjobs.backups.sources import resolve
from pgjobs.config import Settings
from pgjobs.errors import ValidationError
from tests.conftest import make_settings
from tests.pgjobs_cli import run_pgjobs
from tests.web_client import api_client

pytestmark = pytest.mark.anyio

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


class FakeServer:
    """A TCP listener speaking just enough of the PostgreSQL protocol to ask the client
    for a clear-text password, recording every byte it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._serve(conn)

    def _read(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            piece = conn.recv(size - len(data))
            if not piece:
                break
            data += piece
        self.received += data
        return data

    def _serve(self, conn: socket.socket) -> None:
        while True:
            head = self._read(conn, 8)
            if len(head) < 8:
                return
            length, code = struct.unpack("!II", head)
            if length == 8 and code in (SSL_REQUEST, GSS_REQUEST):
                conn.sendall(b"N")
                continue
            self._read(conn, length - 8)
            conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            while data := conn.recv(4096):
                self.received += data
            return


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(the backup root, a directory outside it)."""
    (tmp_path / "backups").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "backups", tmp_path / "outside"


def settings_for(db_url: str, root: Path, **env: str) -> Settings:
    return make_settings(db_url, JOBS_BACKUP_DIR=str(root), JOBS_JOB_TIMEOUT="300000", **env)


@pytest.fixture
async def app(db_url: str, roots: tuple[Path, Path]) -> AsyncIterator[App]:
    async with App(settings_for(db_url, roots[0])) as application:
        yield application


async def run_unchecked(app: App, payload: dict[str, Any]) -> Job:
    """Insert the job with SQL, skipping the create-time checks, and let a worker run it."""
    with psycopg.connect(app.settings.require_database_url()) as conn:
        row = conn.execute(
            "INSERT INTO jobs (type, payload, max_attempts) "
            "VALUES ('database-backup', %s::jsonb, 1) RETURNING id",
            [json.dumps(payload)],
        ).fetchone()
    assert row is not None
    await app.drain()
    return await app.get(row[0])


async def refused_everywhere(app: App, payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await app.create("database-backup", payload)
    job = await run_unchecked(app, payload)
    assert job.status == "failed" and job.attempts == 1, job.last_error
    assert job.failures[-1].kind == "discarded"
    assert message in (job.last_error or "")


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------- destination


@pytest.mark.parametrize("how", ["traversal", "absolute", "symlink", "under a symlink"])
async def test_destination_outside_the_root_is_refused_and_nothing_written(
    app: App, roots: tuple[Path, Path], how: str
) -> None:
    root, outside = roots
    (root / "link").symlink_to(outside)
    destination = {
        "traversal": f"{root}/../elsewhere",
        "absolute": str(outside / "dumps"),
        "symlink": str(root / "link"),
        "under a symlink": str(root / "link" / "nested"),
    }[how]
    await refused_everywhere(app, {"destination": destination}, "destination: ")
    assert everything_under(outside) == []
    assert everything_under(root) == ["link"]
    assert not (root.parent / "elsewhere").exists()


async def test_root_itself_and_directories_under_it_are_accepted(
    app: App, roots: tuple[Path, Path]
) -> None:
    root, _ = roots
    for destination in (str(root), f"{root}/weekly/", f"{root}/a/../b"):
        job = await app.create("database-backup", {"destination": destination})
        await app.drain()
        done = await app.get(job.id)
        assert done.status == "completed", done.last_error
        assert Path(done.result["path"]).parent == Path(os.path.normpath(destination))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["b", "weekly"]


async def test_several_roots(db_url: str, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    settings = make_settings(
        db_url,
        JOBS_BACKUP_DIR=str(first),
        JOBS_BACKUP_ROOTS=f"{first}:{second}",
        JOBS_JOB_TIMEOUT="300000",
    )
    async with App(settings) as app:
        job = await app.create("database-backup", {"destination": str(second / "x")})
        await app.drain()
        assert (await app.get(job.id)).status == "completed"
        with pytest.raises(ValidationError, match="outside the directories in JOBS_BACKUP_ROOTS"):
            await app.create("database-backup", {"destination": str(tmp_path / "three")})


async def test_default_root_is_backups(db_url: str, tmp_path: Path) -> None:
    async with App(make_settings(db_url)) as app:
        assert app.settings.backup_destination_roots == ("/backups",)
        outside = r"outside the directories in JOBS_BACKUP_DIR \(/backups\)"
        with pytest.raises(ValidationError, match=outside):
            await app.create("database-backup", {"destination": str(tmp_path)})
        # the spec's own schedule example stays valid
        await app.schedule(
            "daily-backup",
            "database-backup",
            "0 2 * * *",
            {"database": "production", "destination": "/backups"},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("s3://", "destination: 's3://' names no bucket: use s3://bucket/prefix"),
        ("s3:///weekly", "destination: 's3:///weekly' names no bucket"),
        ("s3://Not_A_Bucket/x", "destination: 'Not_A_Bucket' is not an S3 bucket name"),
        ("s3://backups/../x", "(no empty parts, . or ..)"),
        ("gs://backups/weekly", "destination: must be a local directory or s3://bucket/prefix"),
        ("file:///backups", "destination: must be a local directory or s3://bucket/prefix"),
    ],
)
async def test_bad_object_storage_destinations_are_refused(
    app: App, destination: str, message: str
) -> None:
    await refused_everywhere(app, {"destination": destination}, message)


async def test_s3_destination_is_accepted_at_creation(app: App) -> None:
    # The spec's example; nothing is contacted until a worker runs the job.
    job = await app.create(
        "database-backup", {"database": "production", "destination": "s3://backups/weekly"}
    )
    assert job.payload["destination"] == "s3://backups/weekly"


async def test_without_boto3_an_s3_backup_fails_naming_the_extra(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an uninstalled module looks like
    name = psycopg.conninfo.conninfo_to_dict(app.settings.require_database_url())["dbname"]
    job = await run_unchecked(app, {"database": name, "destination": "s3://backups/weekly"})
    assert job.status == "failed" and job.failures[-1].kind == "discarded"
    assert (job.last_error or "").endswith("s3:// backups need boto3: pip install pgjobs[s3]")


# ---------------------------------------------------------------- database


def other_server_urls(port: int) -> list[str]:
    return [
        f"postgresql://app@127.0.0.1:{port}/x",
        f"host=127.0.0.1 port={port} dbname=x",
        f"postgresql://127.0.0.1:5432,127.0.0.1:{port}/x",
    ]


@pytest.mark.parametrize("case", [0, 1, 2])
async def test_database_on_another_server_is_refused_without_connecting(
    app: App, roots: tuple[Path, Path], fake_server: FakeServer, case: int
) -> None:
    url = other_server_urls(fake_server.port)[case]
    await refused_everywhere(app, {"database": url}, "database: ")
    assert fake_server.connections == 0
    assert everything_under(roots[0]) == []


@pytest.mark.parametrize(
    ("query", "name"),
    [("hostaddr=127.0.0.2", "hostaddr"), ("service=evil", "service"), ("passfile=/x", "passfile")],
)
async def test_connection_parameters_that_redirect_are_refused(
    app: App, db_url: str, query: str, name: str
) -> None:
    url = f"{db_url}?{query}"
    await refused_everywhere(app, {"database": url}, f"connection parameter '{name}'")


async def test_allowed_other_server_never_gets_the_workers_passwords(
    db_url: str, roots: tuple[Path, Path], fake_server: FakeServer, monkeypatch: Any
) -> None:
    monkeypatch.setenv("PGPASSWORD", "env-secret-pw")
    own = db_url.replace("postgres@", "postgres:url-secret-pw@")  # trust auth ignores it
    settings = settings_for(own, roots[0], JOBS_BACKUP_DATABASES=f"127.0.0.1:{fake_server.port}/x")
    url = f"postgresql://app@127.0.0.1:{fake_server.port}/x"
    async with App(settings) as app:
        await app.create("database-backup", {"database": url}, attempts=1)
        await app.drain()
    # pg_dump as the worker would start it for that server
    source = resolve(url, settings)
    where = target(source.url, "backup", source.child_env())
    subprocess.run(
        ["pg_dump", "--no-password", *where.args()],
        env=where.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert fake_server.connections >= 2
    assert b"app\x00" in fake_server.received  # it was asked, and sent only the user name
    assert b"secret-pw" not in fake_server.received


async def test_database_not_in_the_allowed_list_of_that_server_is_refused(
    db_url: str, roots: tuple[Path, Path], fake_server: FakeServer
) -> None:
    settings = settings_for(
        db_url, roots[0], JOBS_BACKUP_DATABASES=f"127.0.0.1:{fake_server.port}/sales"
    )
    async with App(settings) as app:
        url = f"postgresql://app@127.0.0.1:{fake_server.port}/other"
        await refused_everywhere(app, {"database": url}, "is not a server backups may")
    assert fake_server.connections == 0


async def test_bare_name_is_that_database_on_the_database_url_server(
    app: App, empty_db_url: str, db_url: str, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch_marker (v text)")
        conn.execute("INSERT INTO scratch_marker VALUES ('x')")
    name = psycopg.conninfo.conninfo_to_dict(empty_db_url)["dbname"]
    job = await app.create("database-backup", {"database": name, "format": "plain"})
    await app.drain()
    done = await app.get(job.id)
    assert done.status == "completed", done.last_error
    assert done.result["database"] == name
    dump = Path(done.result["path"]).read_text()
    assert "CREATE TABLE public.scratch_marker" in dump
    # and it restores: the database the name meant was dumped
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('scratch_marker')").fetchone() == (None,)
    restored = run_pgjobs(["backup-restore", done.result["path"], "--database", db_url], tmp_path)
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT v FROM scratch_marker").fetchall() == [("x",)]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("1production", "'1production' is neither a database name"),
        ("prod/other", "'prod/other' is neither a database name"),
        ("prod?host=evil", "is not a valid PostgreSQL URL or connection string"),
        ("prod@evil", "'prod@evil' is neither a database name"),
        ("prod name", "'prod name' is neither a database name"),
        ("x" * 64, f"'{'x' * 64}' is longer than 63 bytes"),
    ],
)
async def test_bad_database_names_are_refused(app: App, name: str, message: str) -> None:
    await refused_everywhere(app, {"database": name}, f"database: {message}")


async def test_names_on_the_database_url_server_follow_its_allowed_list(
    db_url: str, empty_db_url: str, roots: tuple[Path, Path]
) -> None:
    allowed = psycopg.conninfo.conninfo_to_dict(empty_db_url)["dbname"]
    own = psycopg.conninfo.conninfo_to_dict(db_url)
    server = f"{own['host']}:{own['port']}"
    settings = settings_for(db_url, roots[0], JOBS_BACKUP_DATABASES=f"{server}/{allowed}")
    async with App(settings) as app:
        await refused_everywhere(
            app,
            {"database": "production"},
            f"database: 'production' is not a database backups may be taken from: "
            f"JOBS_BACKUP_DATABASES allows only {allowed} on the DATABASE_URL server",
        )
        # A URL naming the same database is held to the same list.
        await refused_everywhere(
            app, {"database": db_url}, "is not a database backups may be taken from"
        )
        job = await app.create("database-backup", {"database": allowed})
        await app.drain()
        done = await app.get(job.id)
        assert done.status == "completed", done.last_error
        assert done.result["database"] == allowed


# ---------------------------------------------------------------- the REST API


async def test_api_refuses_both_with_a_4xx_and_stores_nothing(
    db_url: str, roots: tuple[Path, Path], fake_server: FakeServer
) -> None:
    async with api_client(settings_for(db_url, roots[0])) as http:
        for payload in (
            {"destination": f"{roots[0]}/../elsewhere"},
            {"database": f"postgresql://app@127.0.0.1:{fake_server.port}/x"},
        ):
            response = await http.post(
                "/api/jobs", json={"type": "database-backup", "payload": payload}
            )
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_request"
            assert "database-backup: " in error["message"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert fake_server.connections == 0
    assert not (roots[0].parent / "elsewhere").exists()
