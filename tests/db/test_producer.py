"""Producing jobs: create, create_many, transactional enqueue, get, cancel, retry."""

from __future__ import annotations

import asyncio
import json
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


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"delay": 60_000, "backoff": {"type": "fixed", "delay": 10}, "metadata": {"a": [1]}},
        {"queue": "low-priority", "priority": "high", "rate_limit_key": "tenant:1"},
    ],
)
async def test_create_returns_the_job_as_stored(app: App, options: dict[str, Any]) -> None:
    # A job without unique key or dependencies is not read back from the database:
    # what create returns must equal what get reads.
    payload = {"text": "é ✓", "n": [1, 2.5, None]}
    created = await app.create("resize-image", payload, **options)
    assert created == await app.get(created.id)
    created_sync = await asyncio.to_thread(app.create_sync, "resize-image", payload, **options)
    assert created_sync == await app.get(created_sync.id)
    assert created.status == ("delayed" if "delay" in options else "pending")


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


# ------------------------------------------------------------------ more of the producer API


def test_sync_api_round_trip(sync_app: App, db: Any) -> None:
    job = sync_app.create_sync("report", {"month": 5}, priority="low", attempts=2)
    assert (job.status, job.priority, job.max_attempts) == ("pending", 20, 2)
    fetched = sync_app.get_sync(str(job.id))
    assert fetched.payload == {"month": 5}
    assert (fetched.results, fetched.failures) == ((), ())
    assert sync_app.cancel_sync(job.id).status == "cancelled"
    assert sync_app.get_sync(job.id).cancel_requested_at is not None
    retried = sync_app.retry_sync(job.id)
    assert (retried.status, retried.max_attempts) == ("pending", 2)
    ids = sync_app.create_many_sync([{"type": "bulk", "payload": {"i": i}} for i in range(200)])
    assert len(set(ids)) == 200
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 201


async def test_create_many_50000_in_one_call(app: App, db: Any) -> None:
    count = 50_000
    ids = await app.create_many({"type": "bulk", "payload": {"i": i}} for i in range(count))
    assert len(ids) == count and len(set(ids)) == count
    assert ids == sorted(ids)  # time-ordered ids keep the request order
    row = db.execute(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum((payload->>'i')::int) AS total,"
        " count(*) FILTER (WHERE status = 'pending') AS pending FROM jobs"
    ).fetchone()
    assert row == {"n": count, "ids": count, "total": count * (count - 1) // 2, "pending": count}
    first, last = ids[0], ids[-1]
    assert db.execute("SELECT payload FROM jobs WHERE id = %s", (first,)).fetchone() == {
        "payload": {"i": 0}
    }
    assert db.execute("SELECT payload FROM jobs WHERE id = %s", (last,)).fetchone() == {
        "payload": {"i": count - 1}
    }


async def test_create_many_accepts_built_jobs_and_empty_batches(app: App, db: Any) -> None:
    assert await app.create_many([]) == []
    built = [app.build("send-email", {"to": f"u{i}@x.y"}, queue="high-priority") for i in range(3)]
    ids = await app.create_many(built)
    assert ids == [job.id for job in built]
    rows = db.execute("SELECT queue FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()
    assert [r["queue"] for r in rows] == ["high-priority"] * 3


async def test_create_many_in_a_callers_transaction(app: App, db_url: str, db: Any) -> None:
    requests: list[Any] = [{"type": "bulk"}] * 100
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        async with conn.transaction(force_rollback=True):
            await app.create_many(requests, conn=conn)
        assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0
        async with conn.transaction():
            ids = await app.create_many(requests, conn=conn)
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == len(ids) == 100


async def test_unique_key_inside_one_batch(app: App) -> None:
    ids = await app.create_many(
        [
            {"type": "sync-user", "options": {"uniqueKey": "user:7"}},
            {"type": "sync-user", "options": {"uniqueKey": "user:7"}},
            {"type": "sync-user", "options": {"uniqueKey": "user:8"}},
        ]
    )
    assert ids[0] == ids[1] != ids[2]
    # A finished job frees its key for a new one.
    await app.cancel(ids[0])
    again = await app.create("sync-user", unique_key="user:7")
    assert again.id != ids[0]


async def test_dependencies_block_until_their_parents_complete(app: App, db: Any) -> None:
    parent = await app.create("extract")
    child = await app.create("load", depends_on=parent.id)
    assert child.status == "blocked"
    assert child.depends_on == [parent.id]
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (parent.id,))
    assert (await app.create("report", depends_on=[parent.id])).status == "pending"
    # A dependency on a job of the same batch.
    extract = app.build("extract")
    load = app.build("load", depends_on=[extract.id])
    await app.create_many([extract, load])
    assert (await app.get(load.id)).status == "blocked"
    [free] = await app.create_many([{"type": "b", "options": {"dependsOn": []}}])
    assert (await app.get(free)).status == "pending"  # an empty list is no dependency


async def test_get_returns_the_history(app: App, db: Any) -> None:
    job = await app.create("flaky")
    db.execute(
        "INSERT INTO job_failures (job_id, attempt_number, error_message, kind)"
        " VALUES (%s, 1, 'boom', 'error')",
        (job.id,),
    )
    db.execute(
        "INSERT INTO job_results (job_id, result, duration_ms, attempt)"
        " VALUES (%s, '{\"rows\": 3}', 12, 2)",
        (job.id,),
    )
    fetched = await app.get(job.id)
    assert [(f.attempt_number, f.error_message, f.kind) for f in fetched.failures] == [
        (1, "boom", "error")
    ]
    assert fetched.result == {"rows": 3}
    assert fetched.results[0].duration_ms == 12
    as_dict = fetched.to_dict()
    assert as_dict["result"] == {"rows": 3} and as_dict["priority_name"] == "normal"
    json.dumps(as_dict)  # the API and CLI print this as it is


async def test_cancel_of_a_running_job_is_a_request(app: App, db: Any) -> None:
    job = await app.create("long")
    db.execute("UPDATE jobs SET status = 'active', attempts = 1 WHERE id = %s", (job.id,))
    cancelled = await app.cancel(job.id)
    assert cancelled.status == "active"  # its worker stops it and records the outcome
    assert cancelled.cancel_requested_at is not None
    delayed = await app.create("later", delay=60_000)
    assert (await app.cancel(delayed.id)).status == "cancelled"


async def test_retry_grants_a_fresh_budget(app: App, db: Any) -> None:
    job = await app.create("flaky", attempts=3)
    db.execute(
        "UPDATE jobs SET status = 'failed', attempts = 3, completed_at = now() WHERE id = %s",
        (job.id,),
    )
    retried = await app.retry(job.id)
    assert (retried.status, retried.attempts, retried.max_attempts) == ("pending", 3, 6)
    assert retried.completed_at is None


async def test_a_frozen_clock_decides_creation_and_delay(db_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from pgjobs.clock import FrozenClock
    from tests.conftest import make_settings

    clock = FrozenClock(datetime(2030, 1, 1, 9, 0, tzinfo=UTC))
    async with App(make_settings(db_url), clock=clock) as frozen:
        job = await frozen.create("t", delay=1500)
        assert (job.created_at, job.run_at) == (
            clock.now(),
            clock.now() + timedelta(milliseconds=1500),
        )
        ids = await frozen.create_many([{"type": "t"}] * 100)  # INSERT path under a frozen clock
        stored = await frozen.get(ids[-1])
        assert (stored.created_at, stored.run_at, stored.status) == (
            clock.now(),
            clock.now(),
            "pending",
        )
