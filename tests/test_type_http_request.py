"""http-request against a real local HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from pgjobs import App, FrozenClock, Job
from pgjobs.types.http_request import retry_after_seconds, statuses
from tests.conftest import make_settings
from tests.servers import HttpServer, Reply, free_port, http_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with http_server() as running:
        yield running


@pytest.fixture
async def http_app(db_url: str) -> AsyncIterator[App]:
    # The test servers listen on loopback, which the default egress policy refuses.
    settings = make_settings(
        db_url, JOBS_HTTP_MAX_RESPONSE_BYTES="2000", JOBS_HTTP_ALLOW="127.0.0.1"
    )
    async with App(settings, clock=FrozenClock()) as application:
        yield application


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("http-request", payload, **options)
    await app.drain()
    return await app.get(job.id)


def clock(app: App) -> FrozenClock:
    assert isinstance(app.clock, FrozenClock)
    return app.clock


async def test_get_with_query_and_headers(http_app: App, server: HttpServer) -> None:
    server.routes["/users"] = [Reply(200, {"users": [{"id": 1}]}, {"X-Total": "1"})]
    job = await run(
        http_app,
        {
            "url": server.url("/users"),
            "query": {"page": 2, "tags": ["a", "b"], "active": True},
            "headers": {"Authorization": "Bearer t0ken"},
        },
    )
    assert job.status == "completed", job.last_error
    result = job.result
    assert result["status"] == 200
    assert result["body"] == {"users": [{"id": 1}]}
    assert result["headers"]["x-total"] == "1"
    assert result["bodyTruncated"] is False
    assert result["url"].startswith(server.url("/users?"))
    [request] = server.hits("/users")
    assert request.method == "GET"
    assert request.query == {"page": ["2"], "tags": ["a", "b"], "active": ["true"]}
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["user-agent"].startswith("pgjobs/")


async def test_post_json_and_put_text(http_app: App, server: HttpServer) -> None:
    server.routes["/items"] = [Reply(201, {"id": 7})]
    job = await run(http_app, {"url": server.url("/items"), "json": {"name": "x", "n": [1, 2]}})
    assert job.status == "completed", job.last_error
    assert job.result["status"] == 201 and job.result["body"] == {"id": 7}
    [posted] = server.hits("/items")
    assert posted.method == "POST"
    assert posted.headers["content-type"] == "application/json"
    assert posted.json() == {"name": "x", "n": [1, 2]}

    server.routes["/note"] = [Reply(200, "stored")]
    job = await run(
        http_app,
        {
            "url": server.url("/note"),
            "method": "put",
            "body": "plain words",
            "headers": {"Content-Type": "text/plain"},
        },
    )
    assert job.result["body"] == "stored"
    [put] = server.hits("/note")
    assert (put.method, put.body) == ("PUT", b"plain words")


async def test_retry_on_status_honours_retry_after(http_app: App, server: HttpServer) -> None:
    server.routes["/busy"] = [
        Reply(503, "maintenance", {"Retry-After": "7"}),
        Reply(200, {"ok": True}),
    ]
    job = await run(http_app, {"url": server.url("/busy")}, attempts=2)
    assert job.status == "delayed"
    assert job.run_at == clock(http_app).now() + timedelta(seconds=7)
    # The server's wait did not use up an attempt: the limit grew with the run.
    assert (job.attempts, job.max_attempts) == (1, 3)

    clock(http_app).advance(timedelta(seconds=6))
    await http_app.drain()
    assert (await http_app.get(job.id)).status == "delayed"  # not before Retry-After
    clock(http_app).advance(timedelta(seconds=1))
    await http_app.drain()
    done = await http_app.get(job.id)
    assert done.status == "completed" and done.result["body"] == {"ok": True}
    assert len(server.hits("/busy")) == 2


async def test_retry_after_as_an_http_date(http_app: App, server: HttpServer) -> None:
    later = clock(http_app).now() + timedelta(seconds=90)
    server.routes["/rate"] = [
        Reply(429, {"error": "slow down"}, {"Retry-After": format_datetime(later, usegmt=True)})
    ]
    job = await run(http_app, {"url": server.url("/rate")})
    assert job.status == "delayed"
    assert abs((job.run_at - later).total_seconds()) < 1


async def test_retry_on_without_retry_after_uses_attempts(
    http_app: App, server: HttpServer
) -> None:
    server.routes["/flaky"] = [Reply(500, "oops"), Reply(502, ""), Reply(200, {"ok": 1})]
    job = await run(http_app, {"url": server.url("/flaky")}, attempts=2)
    assert job.status == "delayed" and job.attempts == 1
    assert (
        job.last_error is not None and "HTTP 500 Internal Server Error from GET" in job.last_error
    )
    clock(http_app).advance(timedelta(minutes=1))
    await http_app.drain()
    failed = await http_app.get(job.id)
    assert failed.status == "failed" and failed.attempts == 2
    assert "HTTP 502" in (failed.last_error or "")
    assert len(server.hits("/flaky")) == 2


async def test_client_error_is_discarded(http_app: App, server: HttpServer) -> None:
    job = await run(http_app, {"url": server.url("/missing")}, attempts=5)
    assert job.status == "failed" and job.attempts == 1
    assert job.failures[-1].kind == "discarded"
    assert f"HTTP 404 Not Found from GET {server.url('/missing')}" in (job.last_error or "")
    assert len(server.hits("/missing")) == 1


async def test_expected_status_and_retry_on_forms(http_app: App, server: HttpServer) -> None:
    server.routes["/gone"] = [Reply(410, "gone")]
    job = await run(http_app, {"url": server.url("/gone"), "expectedStatus": ["2xx", 410]})
    assert job.status == "completed" and job.result["status"] == 410

    server.routes["/conflict"] = [Reply(409, "locked"), Reply(204)]
    job = await run(
        http_app,
        {"url": server.url("/conflict"), "retryOn": [409], "expectedStatus": "200-299"},
    )
    assert job.status == "delayed"
    clock(http_app).advance(timedelta(minutes=1))
    await http_app.drain()
    done = await http_app.get(job.id)
    assert done.status == "completed" and done.result["status"] == 204
    assert done.result["body"] is None


async def test_timeout_is_retried(http_app: App, server: HttpServer) -> None:
    server.routes["/slow"] = [Reply(200, "late", delay=3)]
    job = await run(http_app, {"url": server.url("/slow"), "timeout": 200}, attempts=2)
    assert job.status == "delayed" and job.attempts == 1
    assert f"GET {server.url('/slow')} timed out after 200 ms" in (job.last_error or "")


async def test_connection_refused_is_retried(http_app: App) -> None:
    job = await run(http_app, {"url": f"http://127.0.0.1:{free_port()}/x"})
    assert job.status == "delayed"
    assert "failed" in (job.last_error or "")


async def test_large_body_is_truncated_in_the_result(http_app: App, server: HttpServer) -> None:
    server.routes["/big"] = [Reply(200, "x" * 5000)]
    server.routes["/bigjson"] = [Reply(200, {"data": "y" * 5000})]
    job = await run(http_app, {"url": server.url("/big")})
    assert job.result["bodyTruncated"] is True and job.result["body"] == "x" * 2000
    job = await run(http_app, {"url": server.url("/bigjson")})
    assert job.result["bodyTruncated"] is True
    assert isinstance(job.result["body"], str) and len(job.result["body"]) == 2000


async def test_retry_after_beyond_the_limit_counts_as_a_failure(
    http_app: App, server: HttpServer
) -> None:
    server.routes["/later"] = [Reply(503, "", {"Retry-After": "3600"})]
    job = await run(http_app, {"url": server.url("/later"), "retryAfterLimit": "10m"}, attempts=1)
    assert job.status == "failed" and job.attempts == 1
    assert "HTTP 503" in (job.last_error or "")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "url: required"),
        ({"url": "ftp://example.com/x"}, "url: must be an http:// or https:// URL"),
        ({"url": "http://x.test", "method": "FETCH"}, "method: must be one of"),
        ({"url": "http://x.test", "json": {}, "body": "x"}, "body: give either json or body"),
        ({"url": "http://x.test", "expectedStatus": "abc"}, "expectedStatus: 'abc' is not"),
        ({"url": "http://x.test", "retryOn": [99]}, "retryOn: 99 is not"),
        ({"url": "http://x.test", "timeout": 0}, "timeout: must be at least 1"),
        ({"url": "http://x.test", "headers": {"a": [1]}}, "headers.a: must be a string"),
    ],
)
async def test_bad_payload_is_discarded(
    http_app: App, payload: dict[str, Any], message: str
) -> None:
    job = await run(http_app, payload)
    assert job.status == "failed" and job.attempts == 1
    assert message in (job.last_error or "")


def test_status_forms() -> None:
    assert statuses(["2xx", 404, "500-502"], "s", []) == [(200, 299), (404, 404), (500, 502)]
    assert statuses(None, "s", [(1, 2)]) == [(1, 2)]


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60
    assert retry_after_seconds("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
