"""Producing jobs: create, create_many, transactional enqueue, get, cancel, retry."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.errors import Conflict, JobNotFound, ValidationError

pytestmark = pytest.mark.anyio


async def test_create_returns_stored_job_with_defaults(app: App) -> None:
    job = await app.create("resize-image", {"path": "a.png"})
    assert job.status == "pending"
    assert job.queue == "default"
    assert job.priority == 10
    assert job.max_attempts == 3
    assert job.timeout_ms == 60000
    stored = await app.get(job.id)
    assert stored.payload == {"path": "a.png"}
    assert stored.id.version == 7


async def test_create_with_options(app: App) -> None:
    job = await app.create(
        "send-email",
        {"to": "a@b.c"},
        queue="high-priority",
        priority="critical",
        max_retries=4,
        delay=5000,
        timeout=1000,
        backoff={"type": "fixed", "delay": 10},
    )
    assert (job.status, job.priority, job.max_attempts, job.timeout_ms) == (
        "delayed",
        1,
        5,
        1000,
    )
    assert job.delay_ms == 5000
    assert (job.run_at - job.created_at).total_seconds() == pytest.approx(5.0)
    assert job.backoff == {"type": "fixed", "delay": 10}


async def test_transactional_enqueue_rolls_back_with_caller(app: App, db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        async with conn.transaction(force_rollback=True):
            rolled_back = await app.create("email", {"n": 1}, conn=conn)
        async with conn.transaction():
            committed = await app.create("email", {"n": 2}, conn=conn)
    with pytest.raises(JobNotFound):
        await app.get(rolled_back.id)
    assert (await app.get(committed.id)).payload == {"n": 2}


def test_transactional_enqueue_sync_connection(sync_app: App, db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        job = sync_app.create_sync("email", {"n": 1}, conn=conn)
        ids = sync_app.create_many_sync([{"type": "email"}] * 3, conn=conn)
        conn.rollback()
    with pytest.raises(JobNotFound):
        sync_app.get_sync(job.id)
    for job_id in ids:
        with pytest.raises(JobNotFound):
            sync_app.get_sync(job_id)


async def test_create_many_keeps_order_and_uses_both_paths(app: App, db: Any) -> None:
    requests: list[Any] = [{"type": "bulk", "payload": {"i": i}} for i in range(500)]
    requests[10] = {"type": "bulk", "payload": {"i": 10}, "options": {"delay": 60000}}
    ids = await app.create_many(requests)
    assert len(ids) == 500 and len(set(ids)) == 500
    rows = db.execute(
        "SELECT id, payload->>'i' AS i, status FROM jobs WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    by_id = {r["id"]: r for r in rows}
    assert [int(by_id[i]["i"]) for i in ids] == list(range(500))
    assert by_id[ids[10]]["status"] == "delayed"
    assert sum(r["status"] == "pending" for r in rows) == 499


async def test_create_many_rejects_a_bad_item_and_writes_nothing(app: App, db: Any) -> None:
    with pytest.raises(ValidationError, match=r"^job 2: invalid queue name 'Bad Queue'"):
        await app.create_many([{"type": "a"}, {"type": "b"}, {"type": "c", "queue": "Bad Queue"}])
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


async def test_cancel_and_retry(app: App) -> None:
    job = await app.create("work", {})
    cancelled = await app.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(Conflict, match="is cancelled; only pending, delayed, blocked or active"):
        await app.cancel(job.id)
    retried = await app.retry(job.id)
    assert retried.status == "pending"
    assert retried.max_attempts == 3
    with pytest.raises(Conflict, match="only failed or cancelled jobs can be retried"):
        await app.retry(job.id)


async def test_unknown_and_malformed_ids(app: App) -> None:
    with pytest.raises(JobNotFound, match="no job with id 00000000-0000-0000-0000-000000000000"):
        await app.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ValidationError, match="invalid job id 'nope': expected a UUID"):
        await app.get("nope")


async def test_unique_key_returns_the_live_job(app: App) -> None:
    first = await app.create("sync-user", {"u": 1}, unique_key="user:1")
    second = await app.create("sync-user", {"u": 1}, unique_key="user:1")
    assert second.id == first.id
