"""The REST API in process (httpx over ASGI, lifespan run explicitly): shapes, actions,
and bad input that must come back as 4xx JSON and change nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from pgjobs.config import Settings
from pgjobs.web import create_app
from tests.opsdata import insert_job, snapshot, status_of
from tests.web_client import api_client, asgi_client, assert_error

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]
SPEC_BODY = {
    "type": "send-email",
    "queue": "default",
    "payload": {"to": "user@example.com", "subject": "Test", "body": "Hello!"},
    "options": {"priority": "high", "maxRetries": 3, "delay": 5000},
}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as http:
        yield http


async def test_create_and_get_job_as_in_the_spec(client: httpx.AsyncClient, db: Conn) -> None:
    created = await client.post("/api/jobs", json=SPEC_BODY)
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["type"], job["queue"], job["status"]) == ("send-email", "default", "delayed")
    assert (job["priority"], job["priority_name"], job["max_attempts"]) == (5, "high", 4)
    assert job["delay_ms"] == 5000 and job["payload"] == SPEC_BODY["payload"]
    got = (await client.get(f"/api/jobs/{job['id']}")).json()
    assert got["id"] == job["id"] and got["failures"] == [] and got["progress"] == 0


async def test_get_job_shows_failure_history_with_stacks(
    client: httpx.AsyncClient, db: Conn
) -> None:
    job_id = insert_job(db, status="failed", attempts=3, last_error="smtp down")
    body = (await client.get(f"/api/jobs/{job_id}")).json()
    assert body["status"] == "failed" and body["attempts"] == 3
    assert body["failures"][0]["error_message"] == "smtp down"
    assert body["failures"][0]["error_stack"].startswith("Traceback")
    done = insert_job(db, status="completed", duration_ms=12)
    assert (await client.get(f"/api/jobs/{done}")).json()["results"][0]["duration_ms"] == 12


async def test_stats_queues_workers(client: httpx.AsyncClient, db: Conn) -> None:
    insert_job(db, status="pending")
    insert_job(db, status="failed", queue="emails")
    stats = (await client.get("/api/stats")).json()
    default = next(q for q in stats["queues"] if q["name"] == "default")
    assert {k: default[k] for k in ("waiting", "active", "completed", "failed", "delayed")} == {
        "waiting": 1,
        "active": 0,
        "completed": 0,
        "failed": 0,
        "delayed": 0,
    }
    assert default["paused"] == 0 and default["health_score"] == 60
    assert stats["totals"]["failed"] == 1 and stats["performance"] is None
    perf = (await client.get("/api/stats?queue=emails&hours=48&performance=true")).json()
    assert [q["name"] for q in perf["queues"]] == ["emails"] and perf["performance"] == []
    assert_error(await client.get("/api/stats?queue=nope"), 404, "not_found")
    assert_error(await client.get("/api/stats?hours=-1"), 422)
    assert_error(await client.get("/api/stats?hours=abc"), 422)
    assert_error(await client.get("/api/stats?performance=maybe"), 400)
    names = [q["name"] for q in (await client.get("/api/queues")).json()["queues"]]
    assert names == ["default", "emails", "high-priority", "low-priority"]
    assert (await client.get("/api/workers")).json() == {"workers": []}


async def test_list_jobs_filters_and_cursor(client: httpx.AsyncClient, db: Conn) -> None:
    ids = [insert_job(db, type="a") for _ in range(5)]
    insert_job(db, type="b", status="failed")
    first = (await client.get("/api/jobs", params={"type": "a", "limit": 2})).json()
    assert [j["id"] for j in first["jobs"]] == [str(ids[4]), str(ids[3])]
    second = (
        await client.get(
            "/api/jobs", params={"type": "a", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [j["id"] for j in second["jobs"]] == [str(ids[2]), str(ids[1])]
    failed = (await client.get("/api/jobs?status=failed")).json()["jobs"]
    assert [j["type"] for j in failed] == ["b"]
    assert (await client.get("/api/jobs?limit=9999")).json()["limit"] == 500
    assert (await client.get("/api/jobs?limit=-3")).json()["limit"] == 1
    assert_error(await client.get("/api/jobs?limit=ten"), 422)
    assert_error(await client.get("/api/jobs?status=nope"), 422)
    assert_error(await client.get("/api/jobs?cursor=garbage"), 422)
    assert_error(await client.get("/api/jobs?created_after=yesterday"), 422)
    assert_error(await client.get("/api/jobs?type=a%00b"), 400)


async def test_bulk_create_is_one_transaction(client: httpx.AsyncClient, db: Conn) -> None:
    bad = {"jobs": [{"type": "ok"}, {"type": "ok", "options": {"priority": "urgent"}}]}
    assert_error(await client.post("/api/jobs/bulk", json=bad), 422)
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
    good = {"jobs": [{"type": "a", "payload": {"i": i}} for i in range(100)]}
    created = await client.post("/api/jobs/bulk", json=good)
    assert created.status_code == 201 and created.json()["count"] == 100
    rows = db.execute("SELECT id, payload FROM jobs").fetchall()
    by_id = {str(r["id"]): r["payload"]["i"] for r in rows}
    assert [by_id[i] for i in created.json()["ids"]] == list(range(100))
    assert_error(await client.post("/api/jobs/bulk", json={"jobs": []}), 422)
    assert_error(await client.post("/api/jobs/bulk", json={"jobs": {}}), 422)
    assert_error(await client.post("/api/jobs/bulk", json={"jobs": [], "x": 1}), 422)


async def test_job_and_queue_actions(client: httpx.AsyncClient, db: Conn) -> None:
    job = (await client.post("/api/jobs", json={"type": "t"})).json()
    cancelled = await client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(await client.post(f"/api/jobs/{job['id']}/cancel"), 409, "conflict")
    retried = await client.post(f"/api/jobs/{job['id']}/retry")
    assert retried.json()["status"] == "pending"
    assert_error(await client.post(f"/api/jobs/{job['id']}/retry"), 409)
    running = insert_job(db, status="active")
    assert_error(await client.delete(f"/api/jobs/{running}"), 409)
    assert (await client.delete(f"/api/jobs/{job['id']}")).status_code == 204
    assert status_of(db, job["id"]) is None
    assert_error(await client.get(f"/api/jobs/{job['id']}"), 404, "not_found")
    paused = await client.post("/api/queues/default/pause")
    assert paused.json()["paused"] is True and paused.json()["paused_at"]
    assert (await client.post("/api/queues/default/resume")).json()["paused"] is False
    assert_error(await client.post("/api/queues/ghost/pause"), 404)
    actions = db.execute("SELECT actor, action FROM job_audit ORDER BY id").fetchall()
    assert [a["action"] for a in actions] == ["cancel", "retry", "delete", "pause", "resume"]
    assert {a["actor"] for a in actions} == {"api"}


BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    # (method, path, raw body or JSON-able value, expected status)
    ("POST", "/api/jobs", b'{"type": "a",', 400),  # malformed JSON
    ("POST", "/api/jobs", b"", 400),
    ("POST", "/api/jobs", b"\xff\xfe", 400),  # not UTF-8
    ("POST", "/api/jobs", b'{"type": "a", "payload": {"n": NaN}}', 400),
    ("POST", "/api/jobs", b'{"type": "a", "payload": {"n": 1' + b"0" * 5000 + b"}}", 400),
    ("POST", "/api/jobs", b"[" * 100_000 + b"]" * 100_000, 400),  # nesting
    ("POST", "/api/jobs", [], 422),
    ("POST", "/api/jobs", "a string", 422),
    ("POST", "/api/jobs", {}, 422),  # missing type
    ("POST", "/api/jobs", {"type": 5}, 422),  # wrong type
    ("POST", "/api/jobs", {"type": "a", "priority": 1}, 422),  # unknown field
    ("POST", "/api/jobs", {"type": "a", "options": {"retries": 1}}, 422),  # unknown option
    ("POST", "/api/jobs", {"type": "a", "options": {"priority": 10**30}}, 422),  # huge number
    ("POST", "/api/jobs", {"type": "a", "options": {"delay": 1e308}}, 422),
    ("POST", "/api/jobs", {"type": "a", "options": {"attempts": "3"}}, 422),
    ("POST", "/api/jobs", {"type": "a", "options": []}, 422),
    ("POST", "/api/jobs", {"type": "a", "payload": [1, 2]}, 422),
    ("POST", "/api/jobs", {"type": "a", "payload": {"s": "nul \u0000 here"}}, 422),
    ("POST", "/api/jobs", {"type": "a\u0000b"}, 422),
    ("POST", "/api/jobs", {"type": "a", "queue": "Bad Queue"}, 422),
    ("POST", "/api/jobs", {"type": "a", "options": {"dependsOn": ["nope"]}}, 422),
    ("POST", "/api/jobs", {"type": "a", "options": {"runAt": "tomorrow"}}, 422),
    ("GET", "/api/jobs/not-a-uuid", None, 404),
    ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000", None, 404),
    ("POST", "/api/jobs/%00/retry", None, 404),
    ("POST", "/api/jobs/123/cancel", None, 404),
    ("DELETE", "/api/jobs/zzz", None, 404),
    ("POST", "/api/queues/NOPE!/pause", None, 422),
    ("POST", "/api/queues/unknown/resume", None, 404),
    ("GET", "/api/nothing-here", None, 404),
    ("PUT", "/api/jobs", {"type": "a"}, 405),
]


async def test_bad_input_is_4xx_json_and_changes_nothing(
    client: httpx.AsyncClient, db: Conn
) -> None:
    insert_job(db, status="failed")
    before = snapshot(db)
    for method, path, body, status in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
        response = await client.request(
            method, path, content=raw, headers={"Content-Type": "application/json"}
        )
        try:
            assert_error(response, status)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path} {str(body)[:80]}: {exc}") from None
    assert snapshot(db) == before


async def test_oversized_bodies_are_413(client: httpx.AsyncClient, settings: Settings) -> None:
    big = {"type": "a", "payload": {"blob": "x" * (settings.max_payload_bytes * 3)}}
    assert_error(await client.post("/api/jobs", json=big), 413, "payload_too_large")
    # Declared length over the limit is refused before the body is read.
    huge = {"Content-Length": str(10**12), "Content-Type": "application/json"}
    assert_error(await client.post("/api/jobs", headers=huge, content=b"{}"), 413)
    over_stored_limit = {"type": "a", "payload": {"blob": "x" * (settings.max_payload_bytes + 10)}}
    assert_error(await client.post("/api/jobs", json=over_stored_limit), 422)


async def test_unexpected_errors_are_a_bare_500(settings: Settings) -> None:
    web = create_app(settings)

    async def boom(request: Any) -> Any:
        raise RuntimeError("secret internals")

    web.router.routes.append(Route("/api/boom", boom))
    async with asgi_client(web, raise_app_exceptions=False) as http:
        response = await http.get("/api/boom")
    assert_error(response, 500, "internal")
    assert "secret" not in response.text


async def test_metrics_text_parses(client: httpx.AsyncClient, db: Conn) -> None:
    insert_job(db, status="completed", type="a", duration_ms=250)
    insert_job(db, status="completed", type="a", duration_ms=4000)
    insert_job(db, status="failed", type="a")
    insert_job(db, status="pending", type="b")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    a = (("queue", "default"), ("status", "completed"), ("type", "a"))
    assert samples[("jobs_processed_total", a)] == 2
    failed = (("queue", "default"), ("status", "failed"), ("type", "a"))
    assert samples[("jobs_processed_total", failed)] == 1
    labels = (("queue", "default"), ("type", "a"))
    assert samples[("job_duration_seconds_count", labels)] == 2
    assert samples[("job_duration_seconds_sum", labels)] == pytest.approx(4.25)
    assert samples[("job_duration_seconds_bucket", (("le", "0.5"), *labels))] == 1
    assert samples[("job_duration_seconds_bucket", (("le", "5.0"), *labels))] == 2
    assert samples[("job_duration_seconds_bucket", (("le", "+Inf"), *labels))] == 2
    waiting = (("queue", "default"), ("status", "waiting"))
    assert samples[("queue_size", waiting)] == 1
    assert ("pgjobs_workers", ()) in samples and ("pgjobs_jobs_dead_tuples", ()) in samples
    assert samples[("pgjobs_oldest_pending_job_age_seconds", (("queue", "default"),))] >= 0


async def test_schedules_crud(client: httpx.AsyncClient, db: Conn) -> None:
    body = {
        "name": "daily-backup",
        "type": "database-backup",
        "cron": "0 2 * * *",
        "payload": {"database": "production", "destination": "/backups"},
        "description": "Daily production database backup",
    }
    created = await client.post("/api/schedules", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["cron_expression"] == "0 2 * * *" and created.json()["next_run_at"]
    assert_error(await client.post("/api/schedules", json=body), 409, "conflict")
    assert_error(
        await client.post("/api/schedules", json={**body, "name": "x", "cron": "61 * * * *"}), 422
    )
    assert_error(await client.post("/api/schedules", json={**body, "bogus": 1}), 422)
    listed = (await client.get("/api/schedules")).json()["schedules"]
    assert [s["name"] for s in listed] == ["daily-backup"]
    one = (await client.get("/api/schedules/daily-backup")).json()
    assert len(one["upcoming"]) == 5
    disabled = await client.patch("/api/schedules/daily-backup", json={"enabled": False})
    assert disabled.json()["enabled"] is False and disabled.json()["next_run_at"] is None
    assert_error(await client.patch("/api/schedules/nope", json={"enabled": True}), 404)
    assert_error(await client.get("/api/schedules/bad%00name"), 404)
    assert (await client.delete("/api/schedules/daily-backup")).status_code == 204
    assert_error(await client.delete("/api/schedules/daily-backup"), 404)
    actions = [r["action"] for r in db.execute("SELECT action FROM job_audit ORDER BY id")]
    assert actions == ["schedule.create", "schedule.update", "schedule.delete"]


SINGLE_AND_BULK_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"queue": "default"}, "missing field 'type'"),
    ({"type": "a", "priority": 1}, "unknown field 'priority'"),
    ({"type": "a", "options": {"retries": 1}}, "unknown option 'retries'"),
    (
        {"type": "a", "options": {"priority": "urgent"}},
        "unknown priority 'urgent': use critical, high, normal, low or an integer",
    ),
    ({"type": "a", "options": []}, "options must be a JSON object"),
    ({"type": "a", "options": {"dependsOn": ["nope"]}}, "dependsOn has an invalid job id 'nope'"),
    ({"type": "a", "payload": [1, 2]}, "payload must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message"), SINGLE_AND_BULK_ERRORS)
async def test_single_create_errors_have_no_batch_index(
    client: httpx.AsyncClient, db: Conn, body: dict[str, Any], message: str
) -> None:
    """`job N:` says which item of a bulk request is wrong; one job needs no index."""
    one = await client.post("/api/jobs", json=body)
    assert_error(one, 422, "invalid_request")
    assert one.json()["error"]["message"] == message
    bulk = await client.post("/api/jobs/bulk", json={"jobs": [{"type": "ok"}, body]})
    assert_error(bulk, 422, "invalid_request")
    assert bulk.json()["error"]["message"] == f"job 1: {message}"
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
