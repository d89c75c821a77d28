"""Once a write has committed, the request that made it is answered as a success.

What follows the commit (the Redis wake-up for workers) is best effort: if it failed
the request, a client that retries would create the job twice. The Redis here is a
TCP server that first just closes every connection (Redis down) and then, once the
API is up, answers every command with a reply redis-py cannot make sense of during its
handshake — which raised AttributeError, an exception no Redis error handler expected.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from pgjobs.app import App
from pgjobs.config import Settings
from tests.opsdata import insert_job
from tests.webserver import running_server

TOKEN = "post-commit-token"
Conn = psycopg.Connection[dict[str, Any]]


class BrokenRedis:
    """Accepts connections on a free port; closes them, or answers nonsense once
    `garbage` is set."""

    GARBAGE = b"*-5\r\n"

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.url = f"redis://127.0.0.1:{self._socket.getsockname()[1]}/0"
        self.garbage = threading.Event()
        self.answered = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed
            with conn:
                if self.garbage.is_set():
                    conn.settimeout(5)
                    try:
                        conn.recv(65536)
                        conn.sendall(self.GARBAGE)
                        self.answered += 1
                    except OSError:
                        pass

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def broken_redis() -> Iterator[BrokenRedis]:
    server = BrokenRedis()
    try:
        yield server
    finally:
        server.close()


def count(db: Conn, type: str) -> int:
    row = db.execute("SELECT count(*) AS n FROM jobs WHERE type = %s", (type,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_writes_answer_success_when_redis_fails_after_the_commit(
    db_url: str, db: Conn, broken_redis: BrokenRedis
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        running_server(
            db_url, JOBS_API_TOKEN=TOKEN, JOBS_REDIS_URL=broken_redis.url, LOG_LEVEL="warning"
        ) as base,
        httpx.Client(base_url=base, headers=auth, timeout=30) as http,
    ):
        broken_redis.garbage.set()
        one = http.post("/api/jobs", json={"type": "single"})
        assert one.status_code == 201, one.text[:300]
        assert one.json()["type"] == "single"
        bulk = http.post("/api/jobs/bulk", json={"jobs": [{"type": "bulk"}, {"type": "bulk"}]})
        assert bulk.status_code == 201, bulk.text[:300]
        flow = http.post("/api/flows", json={"jobs": [{"type": "flow"}]})
        assert flow.status_code == 201, flow.text[:300]
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["redis"].startswith("down")
    assert broken_redis.answered >= 1  # the server did answer nonsense
    assert (count(db, "single"), count(db, "bulk"), count(db, "flow")) == (1, 2, 1)


def test_python_create_returns_its_job_when_redis_fails_after_the_commit(
    settings: Settings, db: Conn, broken_redis: BrokenRedis
) -> None:
    broken_redis.garbage.set()
    app = App(settings.replace(redis_url=broken_redis.url))
    try:
        job = app.create_sync("sync-create")
        assert job.status == "pending"
        assert app.create_many_sync([{"type": "sync-many"}])
    finally:
        app.close_sync()
    assert (count(db, "sync-create"), count(db, "sync-many")) == (1, 1)


def test_retry_and_cancel_commit_with_their_audit_row_or_not_at_all(db_url: str, db: Conn) -> None:
    """An audit row written after the change could fail once the change had committed:
    the API answered 500 for a retry that happened. Now both commit together."""
    failed = insert_job(db, status="failed", type="audited")
    waiting = insert_job(db, status="pending", type="audited")
    db.execute(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit log unavailable'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON job_audit "
        "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        running_server(db_url, JOBS_API_TOKEN=TOKEN, LOG_LEVEL="error") as base,
        httpx.Client(base_url=base, headers=auth, timeout=30) as http,
    ):
        assert refused(http, f"/api/jobs/{failed}/retry")
        assert refused(http, f"/api/jobs/{waiting}/cancel")
        # Nothing happened, so a client that retries the request does no harm.
        assert status_of(db, failed) == "failed" and status_of(db, waiting) == "pending"
        db.execute("DROP TRIGGER refuse_audit ON job_audit")
        assert http.post(f"/api/jobs/{failed}/retry").status_code == 200
        assert http.post(f"/api/jobs/{waiting}/cancel").status_code == 200
    assert status_of(db, failed) == "pending" and status_of(db, waiting) == "cancelled"
    actions = db.execute("SELECT action FROM job_audit ORDER BY id").fetchall()
    assert [a["action"] for a in actions] == ["retry", "cancel"]


def status_of(db: Conn, job_id: Any) -> str:
    row = db.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def refused(http: httpx.Client, path: str) -> bool:
    """Whether the POST failed: a 5xx, or the server dropped the connection (what
    uvicorn may do after an unexpected error: the answer or a reset)."""
    try:
        return http.post(path).status_code >= 500
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return True
