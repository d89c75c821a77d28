"""Jobs taken back from a dead worker are suspects: they run alone, only a suspect that
dies alone is charged a stall, and a suspect's normal ending clears the suspicion.
(The same with real worker processes and SIGKILL: tests/process/test_worker_process.py and
tests/process/chaos/test_chaos_poison.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.engine.maintenance.tasks import Rescuer, run_round
from pgjobs.ids import uuid7
from pgjobs.queries import query
from pgjobs.web import create_app
from tests.web_client import asgi_client, bearer

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


def held_by_dead_worker(db: Conn, ids: list[UUID]) -> UUID:
    """Make `ids` active under a worker that has no row (it died) since an hour ago."""
    dead = uuid7()
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = attempts + 1, worker_id = %s, "
        "started_at = now() - interval '1 hour' WHERE id = ANY(%s)",
        (dead, ids),
    )
    return dead


def lease_expired(db: Conn, job_id: UUID) -> UUID:
    row = db.execute(
        "UPDATE jobs SET started_at = now() - interval '1 hour' WHERE id = %s RETURNING worker_id",
        (job_id,),
    ).fetchone()
    assert row is not None
    return UUID(str(row["worker_id"]))


async def rescue(app: App, max_stalled: int = 2) -> None:
    async with await psycopg.AsyncConnection.connect(app.settings.require_database_url()) as conn:
        await run_round(conn, Rescuer(1.0, lock_ms=1000, max_stalled=max_stalled), app.clock)


def state(db: Conn, job_id: UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT status, suspect, stalled_count, attempts, max_attempts, last_error "
        "FROM jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def kinds(db: Conn, job_id: UUID) -> list[str]:
    rows = db.execute(
        "SELECT kind FROM job_failures WHERE job_id = %s ORDER BY failed_at, id", (job_id,)
    ).fetchall()
    return [r["kind"] for r in rows]


def claim(db: Conn, name: str, limit: int = 10) -> list[UUID]:
    params = {"now": None, "queues": ["default"], "limit": limit, "worker": uuid7()}
    return [r["id"] for r in db.execute(query(name), params).fetchall()]


async def test_jobs_of_a_dead_worker_come_back_uncharged_as_suspects(app: App, db: Conn) -> None:
    jobs = [(await app.create("x")).id for _ in range(3)]
    dead = held_by_dead_worker(db, jobs)
    await rescue(app)
    for job_id in jobs:
        assert state(db, job_id) == {
            "status": "pending",
            "suspect": True,
            "stalled_count": 0,
            "attempts": 1,
            "max_attempts": 4,  # the interrupted attempt is given back
            "last_error": f"interrupted: worker {dead} lost its lease while the job was in "
            "flight with others; not charged, it runs alone next",
        }
        assert kinds(db, job_id) == ["interrupted"]
    # The ordinary claim leaves suspects alone; they are handed out one at a time.
    other = (await app.create("x")).id
    assert claim(db, "claim_jobs") == [other]
    first = claim(db, "claim_suspect")
    assert len(first) == 1 and first[0] in jobs
    assert len(claim(db, "claim_suspect")) == 1


async def test_a_suspect_that_dies_alone_is_charged_until_it_fails(app: App, db: Conn) -> None:
    job_id = (await app.create("x", attempts=1)).id
    held_by_dead_worker(db, [job_id])
    await rescue(app, max_stalled=1)
    for stall in (1, 2):
        # Claimed alone by a worker that then dies (it never heartbeats: no row).
        [claimed] = claim(db, "claim_suspect")
        assert claimed == job_id
        dead = lease_expired(db, job_id)
        await rescue(app, max_stalled=1)
        assert state(db, job_id)["stalled_count"] == stall
    after = state(db, job_id)
    assert after["status"] == "failed", after
    assert after["last_error"] == (
        "stalled 2 times, more than JOBS_MAX_STALLED_COUNT (1): its worker died each time "
        f"it ran alone (last: worker {dead} lost its lease)"
    )
    # Stalls do not use up the attempt budget (attempts=1 here): only the stall budget.
    assert kinds(db, job_id) == ["interrupted", "stalled", "stalled"]


async def test_a_suspect_runs_alone_and_its_ending_clears_the_suspicion(app: App, db: Conn) -> None:
    runs: list[tuple[UUID, float, float]] = []

    @app.handler("work")
    async def work(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.03)
        runs.append((ctx.id, began, time.monotonic()))
        if payload.get("fail") and ctx.attempt == 2:
            raise RuntimeError("an ordinary failure")

    no_backoff = {"type": "fixed", "delay": 0}
    suspects = [
        (await app.create("work", {"fail": i == 0}, backoff=no_backoff)).id for i in range(3)
    ]
    held_by_dead_worker(db, suspects)
    await rescue(app)
    others = [(await app.create("work")).id for _ in range(8)]
    assert await app.drain("default", concurrency=5) == 12
    for suspect in suspects:
        [(_, began, ended)] = [r for r in runs if r[0] == suspect][:1]
        overlapping = [r[0] for r in runs if r[0] != suspect and r[1] < ended and r[2] > began]
        assert overlapping == [], (suspect, overlapping)
    # A completed suspect is an ordinary job again; so is one whose handler raised: its
    # retry ran normally, beside others.
    assert all(state(db, s)["status"] == "completed" for s in [*suspects, *others])
    assert not any(state(db, s)["suspect"] for s in suspects)
    assert kinds(db, suspects[0]) == ["interrupted", "error"]


async def test_api_and_dashboard_show_stalls_apart_from_failures(app: App, db: Conn) -> None:
    job_id = (await app.create("x")).id
    held_by_dead_worker(db, [job_id])
    await rescue(app)
    claim(db, "claim_suspect")
    lease_expired(db, job_id)
    await rescue(app)
    web = create_app(
        app.settings.replace(
            api_token="t0ken",
            dashboard_user="admin",
            dashboard_password="pw",
            dashboard_secret="test-dashboard-secret",
        )
    )
    async with asgi_client(web) as http:
        body = (await http.get(f"/api/jobs/{job_id}", headers=bearer("t0ken"))).json()
        page = (await http.get(f"/dashboard/jobs/{job_id}", auth=("admin", "pw"))).text
    assert (body["stalls"], body["suspect"], body["status"]) == (1, True, "pending")
    assert [f["kind"] for f in body["failures"]] == ["interrupted", "stalled"]
    assert '<dd class="stalls">1 ' in page
    assert "interrupted, not charged" in page and '<span class="kind">stall</span>' in page
