"""The surfaces of rate limits, results and events: `PUT|DELETE /api/queues/{q}/limit`,
`GET /api/jobs/{id}/wait`, `GET /api/events` (Server-Sent Events from a real server),
the `pgjobs queue` commands, and Redis outages reported by /health and `pgjobs init`."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.web import create_app
from tests.conftest import make_settings
from tests.opsdata import audit_rows, snapshot
from tests.pgjobs_cli import run_pgjobs
from tests.redis_server import shared_redis_url
from tests.web_client import TOKEN, api_client, asgi_client, assert_error, bearer
from tests.webserver import running_server

pytestmark = pytest.mark.anyio


def rows(db: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    return list(db.execute(sql, params).fetchall())


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, TOKEN, timeout=30) as http:
        yield http


# ------------------------------------------------------------------ limits


async def test_queue_limit_routes(client: httpx.AsyncClient, db: Any) -> None:
    put = await client.put("/api/queues/reports/limit", json={"max": 10, "duration": 1000})
    assert put.status_code == 200, put.text
    assert put.json() == {"queue": "reports", "max": 10, "duration": 1000}
    assert rows(
        db, "SELECT rate_limit_max, rate_limit_duration_ms FROM job_queues WHERE name = 'reports'"
    ) == [{"rate_limit_max": 10, "rate_limit_duration_ms": 1000}]
    cleared = await client.delete("/api/queues/reports/limit")
    assert cleared.json() == {"queue": "reports", "max": None, "duration": None}
    assert audit_rows(db) == [
        {
            "actor": "api",
            "action": "rate_limit",
            "target": "reports",
            "detail": {"max": 10, "duration": 1000},
        },
        {"actor": "api", "action": "rate_limit_clear", "target": "reports", "detail": {}},
    ]
    before = snapshot(db)
    for body in (
        {"max": 0, "duration": 1000},
        {"max": 5},
        {"max": 5, "duration": 1000, "burst": 2},
        {"max": "lots", "duration": 1000},
    ):
        assert_error(
            await client.put("/api/queues/reports/limit", json=body), 422, "invalid_request"
        )
    assert_error(
        await client.put("/api/queues/Bad%20Name/limit", json={"max": 1, "duration": 1}),
        422,
        "invalid_request",
    )
    malformed = await client.put(
        "/api/queues/reports/limit", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert_error(malformed, 400, "bad_request")
    assert_error(await client.delete("/api/queues/never-seen/limit"), 404, "not_found")
    assert snapshot(db) == before  # no change, no audit row
    document = (await client.get("/openapi.json")).json()
    assert {"put", "delete"} <= set(document["paths"]["/api/queues/{queue}/limit"])


# ------------------------------------------------------------------ wait


async def test_wait_long_polls_until_the_job_finishes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    app = App(settings, builtin_types=False)

    @app.handler("add")
    async def add(ctx: pgjobs.JobContext, payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    try:
        job = await app.create("add", {"a": 2, "b": 3})
        pending = await client.get(f"/api/jobs/{job.id}/wait", params={"timeout": "0.2"})
        assert pending.status_code == 200
        assert pending.json()["done"] is False and pending.json()["job"]["status"] == "pending"
        polling = asyncio.ensure_future(client.get(f"/api/jobs/{job.id}/wait?timeout=20"))
        await asyncio.sleep(0.3)
        assert not polling.done()
        await app.drain()
        answer = await asyncio.wait_for(polling, 10)
    finally:
        await app.close()
    body = answer.json()
    assert body["done"] is True and body["job"]["status"] == "completed"
    assert body["job"]["result"] == 5 and body["job"]["id"] == str(job.id)
    assert_error(await client.get(f"/api/jobs/{UUID(int=1)}/wait?timeout=1"), 404, "not_found")
    assert_error(await client.get(f"/api/jobs/{job.id}/wait?timeout=301"), 422, "invalid_request")
    assert_error(await client.get(f"/api/jobs/{job.id}/wait?timeout=nan"), 422, "invalid_request")


# ------------------------------------------------------------------ events (SSE)


async def read_sse(response: httpx.Response, until: set[UUID], sink: list[dict[str, Any]]) -> None:
    name = None
    finished: set[UUID] = set()
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["event"] == name
            sink.append(data)
            if data["event"] in ("completed", "failed"):
                finished.add(UUID(data["id"]))
            if finished >= until:
                return


@pytest.mark.parametrize("mode", ["redis", "notify"])
async def test_event_stream_delivers_each_jobs_events_in_order(db_url: str, mode: str) -> None:
    env = {"JOBS_API_TOKEN": TOKEN}
    if mode == "redis":
        env["JOBS_REDIS_URL"] = shared_redis_url()
    settings = make_settings(db_url, **env)
    app = App(settings, builtin_types=False)

    @app.handler("steps")
    async def steps(ctx: pgjobs.JobContext, payload: Any) -> str:
        for percent in (20, 40, 60, 80):
            await ctx.progress(percent)
            await asyncio.sleep(0.26)
        return "done"

    events: list[dict[str, Any]] = []
    try:
        with running_server(db_url, **env) as base:
            async with (
                httpx.AsyncClient(base_url=base, headers=bearer(), timeout=30) as http,
                http.stream("GET", "/api/events") as response,
            ):
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                ids = {(await app.create("steps", {"n": n})).id for n in range(5)}
                async with app.worker(["default"], concurrency=5):
                    await asyncio.wait_for(read_sse(response, ids, events), 30)
    finally:
        await app.close()
    for job_id in ids:
        mine = [e for e in events if e["id"] == str(job_id)]
        assert [e["event"] for e in mine] == ["progress"] * (len(mine) - 1) + ["completed"]
        progress = [e["progress"] for e in mine[:-1]]
        assert progress == sorted(progress) and progress[-1] == 80, mine
        assert set(mine[0]) == {"event", "id", "queue", "type", "status", "progress"}
        assert set(mine[-1]) == {"event", "id", "queue", "type", "status"}


# ------------------------------------------------------------------ CLI and health


def test_queue_commands(db_url: str, db: Any, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url}
    done = run_pgjobs(
        ["queue", "limit", "emails", "--max", "10", "--duration", "1000"], tmp_path, env
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "queue emails: at most 10 jobs per 1000 ms\n",
        "",
    )
    key = run_pgjobs(
        ["queue", "key-limit", "tenant:*", "--max", "5", "--duration", "1000", "--json"],
        tmp_path,
        env,
    )
    assert json.loads(key.stdout) == {"pattern": "tenant:*", "max": 5, "duration": 1000}
    listing = run_pgjobs(["queue", "limits", "--json"], tmp_path, env)
    assert json.loads(listing.stdout) == {
        "queues": [{"queue": "emails", "max": 10, "duration": 1000}],
        "keys": [{"pattern": "tenant:*", "max": 5, "duration": 1000}],
    }
    cleared = run_pgjobs(["queue", "limit", "emails", "--clear"], tmp_path, env)
    assert cleared.stdout == "queue emails: no rate limit\n"
    key_cleared = run_pgjobs(["queue", "key-limit", "tenant:*", "--clear"], tmp_path, env)
    assert key_cleared.stdout == "keys tenant:*: no rate limit\n"
    user = f"cli:{getpass.getuser()}"
    assert audit_rows(db) == [
        {
            "actor": user,
            "action": "rate_limit",
            "target": "emails",
            "detail": {"max": 10, "duration": 1000},
        },
        {
            "actor": user,
            "action": "key_rate_limit",
            "target": "tenant:*",
            "detail": {"max": 5, "duration": 1000},
        },
        {"actor": user, "action": "rate_limit_clear", "target": "emails", "detail": {}},
        {"actor": user, "action": "key_rate_limit_clear", "target": "tenant:*", "detail": {}},
    ]
    before = snapshot(db)
    for args, message in [
        (
            ["limit", "emails", "--max", "0", "--duration", "5"],
            "error: max must be a whole number from 1 to 100,000 (got '0')",
        ),
        (["limit", "emails", "--max", "5"], "error: give --max N and --duration MS, or --clear"),
        (
            ["limit", "emails", "--clear", "--max", "5"],
            "error: --clear cannot be combined with --max or --duration",
        ),
        (["limit", "nowhere", "--clear"], "error: no queue named 'nowhere'"),
        (["key-limit", "nothing", "--clear"], "error: no key limit with pattern 'nothing'"),
    ]:
        bad = run_pgjobs(["queue", *args], tmp_path, env)
        assert (bad.returncode, bad.stdout, bad.stderr) == (2, "", message + "\n"), args
    assert snapshot(db) == before  # no change, no audit row


def test_init_reports_a_redis_outage_as_a_warning(db_url: str, tmp_path: Path) -> None:
    result = run_pgjobs(
        ["init"], tmp_path, {"DATABASE_URL": db_url, "JOBS_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("redis: down: ") and "warning" in last
    ok = run_pgjobs(
        ["init"], tmp_path, {"DATABASE_URL": db_url, "JOBS_REDIS_URL": shared_redis_url()}
    )
    assert ok.stdout.splitlines()[-1] == "redis: ok"


async def test_health_reports_redis_down_but_stays_up(db_url: str) -> None:
    settings = make_settings(db_url, JOBS_REDIS_URL="redis://127.0.0.1:1/0", JOBS_API_TOKEN=TOKEN)
    async with asgi_client(create_app(settings)) as http:
        health = await http.get("/health", headers=bearer())
        anonymous = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["redis"].startswith("down: ")
    # The reason (hosts, ports) is for token holders; /health is open to anyone.
    assert anonymous.status_code == 200 and anonymous.json()["redis"] == "down"
