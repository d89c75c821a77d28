"""JOBS_READ_DATABASE_URL against a real streaming replica: a private primary and a hot
standby made from it with pg_basebackup. The read surfaces (dashboard overview, the
stats, job list and /metrics, `pgjobs stats` and `pgjobs jobs`) read the standby and
say how far behind it is; a job's detail and the page after an action read the
primary; a standby that lags beyond JOBS_READ_MAX_LAG or is down is skipped with a
note, quickly, and used again once it is back.

Which server answered is proven by what it holds: with replay paused on the standby, a
job just created on the primary is missing from reads of the standby only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import psycopg
import pytest

from pgjobs.dev.services import POSTGRES_USER, PrivatePostgres, debian_bin_dirs, free_port
from pgjobs.web import create_app
from tests.conftest import make_settings
from tests.pgjobs_cli import run_pgjobs
from tests.web_client import asgi_client

# The clusters are shared by the tests of this module: one xdist worker runs them all.
pytestmark = [pytest.mark.xdist_group("read_replica"), pytest.mark.anyio]

ADMIN = ("admin", "pw")
QUEUE = "replica-q"


@dataclass
class Pair:
    primary: PrivatePostgres
    standby: PrivatePostgres
    primary_url: str
    standby_url: str
    standby_port: int

    def standby_sql(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def primary_sql(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []


def _bin_dir() -> Path:
    for found in debian_bin_dirs("/usr/lib/postgresql/*/bin"):
        if (found / "pg_basebackup").exists():
            return found
    pytest.skip("needs the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup)")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="pgjobs-replica-"))
    base.chmod(0o755)  # the server's system user must reach the data folders
    primary = PrivatePostgres(bin_dir, base / "primary")
    standby = PrivatePostgres(bin_dir, base / "standby")
    try:
        primary_url = primary.start(port=free_port())
        assert run_pgjobs(["init"], Path("/"), {"DATABASE_URL": primary_url}).returncode == 0
        (base / "standby").mkdir(mode=0o700)
        user = primary.run_as
        if user is not None:
            shutil.chown(base / "standby", user, user)
        port = int(primary_url.rsplit(":", 1)[1].split("/")[0])
        backup = [
            str(bin_dir / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER),
            *("-D", str(base / "standby"), "-R", "-X", "stream", "--checkpoint=fast"),
        ]
        argv = ["runuser", "-u", user, "--", *backup] if user is not None else backup
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        standby_port = free_port()
        standby_url = standby.start(port=standby_port)
        found = Pair(primary, standby, primary_url, standby_url, standby_port)
        assert found.standby_sql("SELECT pg_is_in_recovery()") == [(True,)]
        yield found
    finally:
        for cluster in (standby, primary):
            try:
                cluster.stop()
            except Exception as exc:  # the other cluster and the folder are still cleaned up
                print(f"stopping {cluster.data_dir}: {exc}")
        shutil.rmtree(base, ignore_errors=True)


def replayed(pair: Pair) -> bool:
    """The standby has replayed everything the primary has written."""
    (lsn,) = pair.primary_sql("SELECT pg_current_wal_lsn()::text")[0]
    rows = pair.standby_sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
    return rows == [(True,)]


@contextmanager
def replay_paused(pair: Pair) -> Iterator[None]:
    """Replay paused on the standby inside the block, resumed afterwards."""
    pair.standby_sql("SELECT pg_wal_replay_pause()")
    try:
        wait_for(
            lambda: pair.standby_sql("SELECT pg_get_wal_replay_pause_state()") == [("paused",)],
            "replay paused",
        )
        yield
    finally:
        pair.standby_sql("SELECT pg_wal_replay_resume()")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await anyio.sleep(0.1)


@asynccontextmanager
async def client(pair: Pair, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """The web app (API and dashboard) on the primary with the standby as read replica."""
    settings = make_settings(
        pair.primary_url, JOBS_READ_DATABASE_URL=pair.standby_url, **env
    ).replace(dashboard_user=ADMIN[0], dashboard_password=ADMIN[1], dashboard_secret="s3cret")
    async with asgi_client(create_app(settings), auth=ADMIN) as http:
        yield http


def cli(pair: Pair, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    env = {"DATABASE_URL": pair.primary_url, "JOBS_READ_DATABASE_URL": pair.standby_url, **env}
    return run_pgjobs(args, Path("/"), env)


async def create_job(http: httpx.AsyncClient) -> str:
    created = await http.post("/api/jobs", json={"type": "replica-check", "queue": QUEUE})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def listed(http: httpx.AsyncClient) -> tuple[httpx.Response, list[str]]:
    page = await http.get("/api/jobs", params={"queue": QUEUE})
    assert page.status_code == 200, page.text
    return page, [job["id"] for job in page.json()["jobs"]]


def read_connections(pair: Pair, server: str) -> int:
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE application_name = 'pgjobs:read:{os.getpid()}'"
    )
    rows = pair.standby_sql(sql) if server == "standby" else pair.primary_sql(sql)
    return int(rows[0][0])


@pytest.fixture
def caught_up(pair: Pair) -> None:
    pair.primary_sql(f"DELETE FROM jobs WHERE queue = '{QUEUE}'")
    # A commit for the standby to replay: a process that has not seen it caught up
    # bounds its lag by the age of the last transaction it replayed.
    pair.primary_sql("SELECT pg_current_xact_id()")
    wait_for(lambda: replayed(pair), "the standby caught up")


# ---------------------------------------------------------------- tests


async def test_read_surfaces_read_the_standby_and_say_how_far_behind(
    pair: Pair, caught_up: None
) -> None:
    async with client(pair, JOBS_READ_MAX_LAG="60000") as http:
        for path in ("/api/stats", "/api/queues", "/api/workers", "/metrics", "/api/jobs"):
            answer = await http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["x-read-from"] == "replica", path
            assert answer.headers["x-read-note"] == "read from a replica: up to date", path
            assert float(answer.headers["x-replica-lag"]) == 0.0
        # The read connections are the standby's; the primary has none of them.
        assert read_connections(pair, "standby") >= 1
        assert read_connections(pair, "primary") == 0

        with replay_paused(pair):
            job_id = await create_job(http)
            page, ids = await listed(http)
            assert job_id not in ids  # the standby has not replayed it
            assert page.headers["x-read-from"] == "replica"
            assert float(page.headers["x-replica-lag"]) > 0
            assert page.headers["x-read-note"].endswith(" behind")

            detail = await http.get(f"/api/jobs/{job_id}")  # the primary's
            assert detail.status_code == 200 and detail.json()["id"] == job_id
            assert "x-read-from" not in detail.headers

            schedules = await http.get("/api/schedules")  # lists what a client just made
            assert schedules.status_code == 200 and "x-read-from" not in schedules.headers

            stats = await http.get("/api/stats")
            assert QUEUE not in [q["name"] for q in stats.json()["queues"]]
            metrics = await http.get("/metrics")
            assert f'queue="{QUEUE}"' not in metrics.text
            assert metrics.headers["x-read-from"] == "replica"

            overview = await http.get("/dashboard")
            assert overview.status_code == 200
            assert "read from a replica: " in overview.text and " behind" in overview.text
            assert QUEUE not in overview.text
            # The page an action redirects to reads the primary, which has the job.
            after = await http.get(f"/dashboard/queues/{QUEUE}", params={"done": "pause"})
            assert after.status_code == 200 and job_id in after.text
            assert "read from a replica" not in after.text

            stats_cli = cli(pair, "stats", "--json", JOBS_READ_MAX_LAG="60000")
            assert stats_cli.returncode == 0, stats_cli.stderr
            assert "note: read from a replica: " in stats_cli.stderr, stats_cli.stderr
            assert QUEUE not in [q["name"] for q in json.loads(stats_cli.stdout)["queues"]]
            assert "note: read from a replica: " in stats_cli.stderr
            jobs_cli = cli(pair, "jobs", "--queue", QUEUE, "--json", JOBS_READ_MAX_LAG="60000")
            assert jobs_cli.returncode == 0, jobs_cli.stderr
            assert json.loads(jobs_cli.stdout)["jobs"] == []

        async def shown() -> bool:
            return job_id in (await listed(http))[1]

        await eventually(shown, "the resumed standby lists the job")
        jobs_cli = cli(pair, "jobs", "--queue", QUEUE, "--json")
        assert [j["id"] for j in json.loads(jobs_cli.stdout)["jobs"]] == [job_id]


async def test_a_standby_behind_by_more_than_the_limit_is_skipped(
    pair: Pair, caught_up: None
) -> None:
    async with client(pair, JOBS_READ_MAX_LAG="1000") as http:
        first, _ = await listed(http)
        assert first.headers["x-read-from"] == "replica"
        with replay_paused(pair):
            job_id = await create_job(http)

            async def skipped() -> bool:
                page, _ = await listed(http)
                return page.headers["x-read-from"] == "primary"

            await eventually(skipped, "reads skip the lagging standby", timeout=10)
            page, ids = await listed(http)
            assert job_id in ids  # read on the primary
            note = page.headers["x-read-note"]
            assert re.fullmatch(r"replica [0-9.]+ s behind: reading from the primary", note)
            assert float(page.headers["x-replica-lag"]) > 1.0
            overview = await http.get("/dashboard")
            assert (
                overview.status_code == 200 and "behind: reading from the primary" in overview.text
            )

        async def back() -> bool:
            page, ids = await listed(http)
            return page.headers["x-read-from"] == "replica" and job_id in ids

        await eventually(back, "reads return to the standby once it caught up")


async def test_a_stopped_standby_is_skipped_quickly_and_used_again(
    pair: Pair, caught_up: None
) -> None:
    unavailable = "replica unavailable: reading from the primary"
    async with client(pair) as http:
        assert (await http.get("/api/stats")).headers["x-read-from"] == "replica"
        pair.standby.stop()
        try:
            job_id = await create_job(http)
            took = []
            for path in ("/dashboard", "/api/stats", "/api/jobs", "/metrics", "/api/queues") * 3:
                started = time.monotonic()
                answer = await http.get(path)
                took.append(time.monotonic() - started)
                assert answer.status_code == 200, (path, answer.text)
                assert answer.headers["x-read-from"] == "primary", path
                assert answer.headers["x-read-note"] == unavailable, path
                if path == "/dashboard":
                    assert unavailable in answer.text
            assert max(took[1:]) < 1.0, took
            _, ids = await listed(http)
            assert job_id in ids  # the primary's data
            stats_cli = cli(pair, "stats")
            assert stats_cli.returncode == 0, stats_cli.stderr
            assert f"note: {unavailable}" in stats_cli.stderr
        finally:
            pair.standby.start(port=pair.standby_port)

        async def back() -> bool:
            answer = await http.get("/api/stats")
            return answer.headers["x-read-from"] == "replica"

        await eventually(back, "reads return to the restarted standby")
        _, ids = await listed(http)
        assert job_id in ids


async def test_a_standby_this_role_cannot_read_is_skipped(pair: Pair, caught_up: None) -> None:
    """A replica that answers but refuses the read (here a login without rights on the
    tables) is a replica unavailable, not a failed page."""
    role = f"pgjobs_noread_{os.getpid()}"
    pair.primary_sql(f"CREATE ROLE {role} LOGIN")
    try:
        pair.primary_sql("SELECT pg_current_xact_id()")
        wait_for(lambda: replayed(pair), "the role replayed to the standby")
        parts = urlsplit(pair.standby_url)
        standby_as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        settings = make_settings(pair.primary_url, JOBS_READ_DATABASE_URL=standby_as_role)
        async with asgi_client(create_app(settings)) as http:
            for path in ("/api/stats", "/api/jobs", "/metrics"):
                answer = await http.get(path)
                assert answer.status_code == 200, (path, answer.text)
                assert answer.headers["x-read-from"] == "primary", path
                assert answer.headers["x-read-note"].startswith("replica unavailable"), path
    finally:
        pair.primary_sql(f"DROP ROLE IF EXISTS {role}")
