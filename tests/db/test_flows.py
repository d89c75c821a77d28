"""Flows: DAGs of jobs created together and run in dependency order by several workers
(100 diamonds), long chains, refs and ids, all-or-nothing creation in one statement."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.errors import ValidationError
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


def count(db: Conn, where: str = "true") -> int:
    return int(db.execute(f"SELECT count(*) AS n FROM jobs WHERE {where}").fetchone()["n"])


async def run_workers(
    app: App, db: Conn, total: int, workers: int = 3, timeout: float = 30
) -> None:
    """Run in-process workers (no maintenance, so nothing but the finishing transactions
    releases a job) until `total` jobs completed."""
    running = [app.worker(concurrency=4, maintenance=False) for _ in range(workers)]
    for worker in running:
        await worker.start()
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: count(db, "status = 'completed'") == total,
            timeout,
            0.05,
            f"{total} jobs to complete",
        )
    finally:
        for worker in running:
            await worker.stop()


async def test_diamonds_run_in_dependency_order_across_workers(app: App, db: Conn) -> None:
    """100 diamonds A -> B, A -> C, B + C -> D, run at once by three workers: D starts
    only after B and C completed, and sees both results."""
    spans: dict[uuid.UUID, tuple[float, float]] = {}
    rng = random.Random(9)

    async def step(ctx: pgjobs.JobContext, payload: Any) -> Any:
        begin = time.monotonic()
        await asyncio.sleep(rng.random() * 0.004)
        parents = await ctx.parent_results()
        spans[ctx.id] = (begin, time.monotonic())
        return {"name": payload["name"], "parents": parents}

    app.register("step", step)
    diamonds = []
    items = []
    for n in range(100):
        a = app.build("step", {"name": f"A{n}"})
        b = app.build("step", {"name": f"B{n}"}, depends_on=a)
        c = app.build("step", {"name": f"C{n}"}, depends_on=a)
        d = app.build("step", {"name": f"D{n}"}, depends_on=[b, c])
        diamonds.append((a, b, c, d))
        items += [a, b, c, d]
    created = await app.flow(items)
    assert created.ids == [job.id for job in items]
    assert count(db, "status = 'blocked'") == 300
    await run_workers(app, db, total=400)
    rows = {
        r["id"]: r for r in db.execute("SELECT id, started_at, completed_at FROM jobs").fetchall()
    }
    for n, (a, b, c, d) in enumerate(diamonds):
        for parent, child in ((a, b), (a, c), (b, d), (c, d)):
            # Database time: claimed after the parent's outcome was recorded.
            assert rows[child.id]["started_at"] > rows[parent.id]["completed_at"]
            # Handler time, on one clock for all three in-process workers.
            assert spans[child.id][0] >= spans[parent.id][1]
        from_a = {str(a.id): {"name": f"A{n}", "parents": {}}}
        assert (await app.get(d.id)).result == {
            "name": f"D{n}",
            "parents": {
                str(b.id): {"name": f"B{n}", "parents": from_a},
                str(c.id): {"name": f"C{n}", "parents": from_a},
            },
        }


async def test_a_chain_of_1000_jobs_completes_in_order(app: App, db: Conn) -> None:
    order: list[int] = []

    @app.handler("link")
    async def link(ctx: pgjobs.JobContext, payload: Any) -> int:
        order.append(payload["n"])
        parents = await ctx.parent_results()
        return int(next(iter(parents.values()), 0)) + 1

    chain = [app.build("link", {"n": 0})]
    for n in range(1, 1000):
        chain.append(app.build("link", {"n": n}, depends_on=chain[-1]))
    await app.flow(chain)
    assert count(db, "status = 'blocked'") == 999
    await run_workers(app, db, total=1000, workers=2, timeout=60)
    assert order == list(range(1000))
    assert (await app.get(chain[-1].id)).result == 1000


async def test_flow_refs_name_jobs_and_existing_ids(app: App, db: Conn) -> None:
    existing = await app.create("fetch-service-z")
    created = await app.flow(
        [
            {"ref": "a", "type": "fetch-service-a", "payload": {"source": "a"}},
            {"ref": "b", "type": "fetch-service-b", "payload": {"source": "b"}},
            {"ref": "c", "type": "fetch-service-c", "queue": "high-priority"},
            {
                "ref": "merge",
                "type": "merge-results",
                "options": {"dependsOn": ["a", "b", "c", str(existing.id)], "priority": "high"},
            },
            {"type": "notify", "options": {"dependsOn": "merge", "onDependencyFailure": "ignore"}},
        ]
    )
    assert len(created) == 5 and set(created.refs) == {"a", "b", "c", "merge"}
    merge = await app.get(created["merge"])
    assert merge.status == "blocked" and merge.priority == 5
    assert merge.depends_on == sorted([created["a"], created["b"], created["c"], existing.id])
    notify = await app.get(created.ids[4])
    assert (notify.depends_on, notify.dependency_policy) == ([created["merge"]], "ignore")
    assert created.to_dict()["refs"]["a"] == str(created["a"])


async def test_a_bad_flow_stores_nothing(app: App, db: Conn) -> None:
    cases: list[tuple[list[Any], str]] = [
        ([{"ref": "a", "type": "t"}, {"ref": "a", "type": "t"}], "job 1: ref 'a' is already used"),
        ([{"ref": "", "type": "t"}], "job 0: ref must be a string of 1 to 255 characters"),
        ([{"type": "t"}, {"type": "t", "options": {"dependsOn": ["nope"]}}], "job 1: dependsOn"),
        ([{"type": "t"}, {"type": ""}], "job 1: job type must be a non-empty string"),
        ([{"type": "t", "options": {"dependsOn": [str(uuid.uuid4())]}}], "unknown job"),
    ]
    for items, message in cases:
        with pytest.raises(ValidationError, match=message):
            await app.flow(items)
    assert count(db) == 0
    assert (await app.flow([])).ids == []


async def test_a_10000_job_flow_is_one_statement(app: App, db: Conn, db_url: str) -> None:
    """Ids are assigned before anything is sent: the whole flow is one INSERT."""
    items: list[Any] = []
    for group in range(100):
        fetches = [{"ref": f"f{group}.{n}", "type": "fetch"} for n in range(99)]
        merge = {"type": "merge", "options": {"dependsOn": [f["ref"] for f in fetches]}}
        items += [*fetches, merge]
    statements: list[str] = []

    class Counting(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query)[:40])
            return await super().execute(query, *args, **kwargs)

    async with await psycopg.AsyncConnection.connect(
        db_url, autocommit=True, cursor_factory=Counting
    ) as conn:
        created = await app.flow(items, conn=conn)
    assert len(statements) == 1
    assert len(created) == 10_000
    assert count(db) == 10_000 and count(db, "status = 'blocked'") == 100
    assert count(db, "status = 'pending'") == 9_900


def test_flow_sync_with_a_unique_key_is_all_or_nothing(sync_app: App, db: Conn) -> None:
    holder = sync_app.create_sync("sync", unique_key="user:3")
    created = sync_app.flow_sync(
        [
            {"ref": "sync", "type": "sync", "options": {"uniqueKey": "user:3"}},
            {"ref": "notify", "type": "notify", "options": {"dependsOn": "sync"}},
        ]
    )
    assert created["sync"] == holder.id
    assert sync_app.get_sync(created["notify"]).depends_on == [holder.id]
    before = count(db)
    with pytest.raises(pgjobs.Conflict):
        sync_app.flow_sync(
            [
                {"type": "first"},
                {"type": "sync", "options": {"uniqueKey": "user:3", "onConflict": "raise"}},
            ]
        )
    assert count(db) == before
