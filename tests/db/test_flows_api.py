"""Flows, unique keys and progress over the REST API (in process) and the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from tests.pgjobs_cli import run_pgjobs
from tests.web_client import api_client, assert_error

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as http:
        yield http


def count(db: Conn) -> int:
    return int(db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"])


async def test_post_flow_parallel_and_merge(client: httpx.AsyncClient, db: Conn) -> None:
    """The spec's Parallel + Merge pattern as one request."""
    body = {
        "jobs": [
            {"ref": "a", "type": "fetch-service-a", "payload": {"source": "a"}},
            {"ref": "b", "type": "fetch-service-b", "payload": {"source": "b"}},
            {"ref": "c", "type": "fetch-service-c", "payload": {"source": "c"}},
            {"ref": "merge", "type": "merge-results", "options": {"dependsOn": ["a", "b", "c"]}},
        ]
    }
    created = await client.post("/api/flows", json=body)
    assert created.status_code == 201, created.text
    flow = created.json()
    assert flow["count"] == 4 and list(flow["refs"]) == ["a", "b", "c", "merge"]
    assert flow["ids"] == [flow["refs"][r] for r in ("a", "b", "c", "merge")]
    merge = (await client.get(f"/api/jobs/{flow['refs']['merge']}")).json()
    assert merge["status"] == "blocked"
    assert merge["depends_on"] == sorted(flow["refs"][r] for r in ("a", "b", "c"))
    fetch = (await client.get(f"/api/jobs/{flow['refs']['a']}")).json()
    assert fetch["status"] == "pending"


async def test_bad_flows_are_4xx_and_store_nothing(client: httpx.AsyncClient, db: Conn) -> None:
    loop = {
        "jobs": [
            {"ref": "x", "type": "t", "options": {"dependsOn": "y"}},
            {"ref": "y", "type": "t", "options": {"dependsOn": "x"}},
        ]
    }
    cases: list[tuple[Any, int, str]] = [
        (loop, 422, "dependsOn forms a cycle: 'x' -> 'y' -> 'x'"),
        ({"jobs": []}, 422, "jobs must be a list of 1 to 10000 job objects"),
        ({"jobs": [{"type": "t"}], "extra": 1}, 422, "unknown field 'extra'"),
        ({"jobs": [{"type": "t"}, {"type": "t", "when": 1}]}, 422, "job 1: unknown field 'when'"),
        ({"jobs": [{"type": "t", "options": {"dependsOn": ["nope"]}}]}, 422, "job 0: dependsOn"),
        (
            {"jobs": [{"ref": "a", "type": "t"}, {"ref": "a", "type": "t"}]},
            422,
            "job 1: ref 'a' is already used by job 0",
        ),
        ([{"type": "t"}], 422, ""),
    ]
    for body, status, message in cases:
        assert_error(await client.post("/api/flows", json=body), status, message=message)
    bad_json = await client.post(
        "/api/flows", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert count(db) == 0


async def test_unique_conflicts_over_the_api(client: httpx.AsyncClient, db: Conn) -> None:
    body = {"type": "sync-user", "options": {"uniqueKey": "user:1"}}
    first = (await client.post("/api/jobs", json=body)).json()
    again = await client.post("/api/jobs", json=body)
    assert again.status_code == 201 and again.json()["id"] == first["id"]
    raising = {"type": "sync-user", "options": {"uniqueKey": "user:1", "onConflict": "raise"}}
    assert_error(
        await client.post("/api/jobs", json=raising),
        409,
        message=f"unique key 'user:1' is held by job {first['id']} (pending)",
    )
    bulk = await client.post("/api/jobs/bulk", json={"jobs": [raising]})
    assert_error(bulk, 409, message="user:1")
    assert_error(
        await client.post("/api/jobs", json={"type": "t", "options": {"uniqueFor": 10}}),
        422,
        message="uniqueFor needs a uniqueKey",
    )
    assert count(db) == 1


async def test_openapi_documents_flows(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    post = doc["paths"]["/api/flows"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FlowCreate"
    }
    assert {"201", "409", "422"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    assert "ref" in schemas["FlowJob"]["properties"]
    assert {"uniqueFor", "uniqueStates", "onConflict"} <= set(schemas["JobOptions"]["properties"])


async def test_progress_shows_in_the_api_and_the_cli(
    app: App, client: httpx.AsyncClient, tmp_path: Any
) -> None:
    reported = asyncio.Event()
    release = asyncio.Event()

    @app.handler("resize")
    async def resize(ctx: pgjobs.JobContext, payload: Any) -> str:
        await ctx.progress(40, "resizing")
        reported.set()
        await release.wait()
        return "done"

    async with app.worker(["default"]):
        job = await app.create("resize", {})
        await asyncio.wait_for(reported.wait(), 10)
        got = (await client.get(f"/api/jobs/{job.id}")).json()
        assert (got["status"], got["progress"], got["progress_message"]) == (
            "active",
            40,
            "resizing",
        )
        cli = await asyncio.to_thread(
            run_pgjobs,
            ["get", str(job.id)],
            tmp_path,
            {"DATABASE_URL": app.settings.require_database_url()},
        )
        assert cli.returncode == 0, cli.stderr
        shown = json.loads(cli.stdout)
        assert (shown["progress"], shown["progress_message"]) == (40, "resizing")
        release.set()
