"""http-request against a real local HTTP server."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from pgjobs import App, FrozenClock, Job
from pgjobs.types.egress import EgressDenied, EgressPolicy, GuardedTransport
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


# ---------------------------------------------------------------- egress policy


@pytest.fixture
def other() -> Iterator[HttpServer]:
    """A second local service, e.g. the pgjobs API next to the worker."""
    with http_server() as running:
        running.routes["/api/jobs"] = [Reply(200, {"jobs": ["internal"]})]
        yield running


async def run_with(db_url: str, payload: dict[str, Any], **env: str) -> Job:
    async with App(make_settings(db_url, **env)) as app:
        return await run(app, payload, attempts=3)


def assert_refused(job: Job, message: str) -> None:
    assert job.status == "failed" and job.attempts == 1, job.last_error
    assert job.failures[-1].kind == "discarded"
    assert message in (job.last_error or ""), job.last_error


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 of 169.254.169.254
        "http://[2002:a9fe:a9fe::1]/latest/meta-data/",  # 6to4 of 169.254.169.254
    ],
)
async def test_cloud_metadata_is_refused_before_connecting(db_url: str, url: str) -> None:
    # Even an allow-everything rule does not open the metadata ranges.
    started = time.monotonic()
    job = await run_with(db_url, {"url": url}, JOBS_HTTP_ALLOW="0.0.0.0/0,::/0")
    assert time.monotonic() - started < 5
    assert_refused(job, "refused by the egress policy")
    assert "link-local (cloud metadata) address" in (job.last_error or "")


async def test_loopback_is_refused_by_default(db_url: str, other: HttpServer) -> None:
    job = await run_with(db_url, {"url": other.url("/api/jobs")})
    assert_refused(
        job,
        f"GET {other.url('/api/jobs')}: refused by the egress policy: 127.0.0.1, a loopback "
        "address; add it (or the host name) to JOBS_HTTP_ALLOW",
    )
    by_name = await run_with(db_url, {"url": f"http://localhost:{other.port}/api/jobs"})
    assert_refused(by_name, "localhost resolves to 127.0.0.1, a loopback address")
    assert other.requests == []


async def test_deny_wins_over_allow(db_url: str, other: HttpServer) -> None:
    job = await run_with(
        db_url,
        {"url": other.url("/api/jobs")},
        JOBS_HTTP_ALLOW="127.0.0.0/8",
        JOBS_HTTP_DENY="127.0.0.1",
    )
    assert_refused(job, "127.0.0.1, which is listed in JOBS_HTTP_DENY")
    assert other.requests == []


@pytest.mark.parametrize("target", ["other", "metadata"])
async def test_redirect_to_a_refused_address_is_not_followed(
    db_url: str, server: HttpServer, other: HttpServer, target: str
) -> None:
    """The allowed server is reached by name; its redirect to an address no rule allows
    (the pgjobs API on loopback, or the metadata service) is refused at that hop."""
    to = other.url("/api/jobs") if target == "other" else "http://169.254.169.254/latest/"
    server.routes["/go"] = [Reply(302, "", {"Location": to})]
    job = await run_with(
        db_url, {"url": f"http://localhost:{server.port}/go"}, JOBS_HTTP_ALLOW="localhost"
    )
    assert_refused(job, f"GET http://localhost:{server.port}/go: redirect to {to} refused")
    assert job.result is None
    assert len(server.hits("/go")) == 1
    assert other.requests == []


async def test_cross_origin_redirect_drops_credentials(
    http_app: App, server: HttpServer, other: HttpServer
) -> None:
    other.routes["/landing"] = [Reply(200, {"ok": True})]
    server.routes["/same"] = [Reply(307, "", {"Location": "/here"})]
    server.routes["/here"] = [Reply(200, "same origin")]
    server.routes["/away"] = [
        Reply(307, "", {"Location": f"http://localhost:{other.port}/landing"})
    ]
    headers = {
        "Authorization": "Bearer t0ken",
        "Cookie": "session=abc",
        "X-Api-Key": "k3y",
        "X-Trace": "t-1",
    }
    settings = http_app.settings.replace(http_allow=("127.0.0.1", "localhost"))
    async with App(settings) as app:
        same = await run(app, {"url": server.url("/same"), "headers": headers})
        away = await run(app, {"url": server.url("/away"), "headers": headers})
    assert same.status == "completed" and away.status == "completed", away.last_error
    assert server.hits("/here")[0].headers["authorization"] == "Bearer t0ken"
    [landed] = other.hits("/landing")
    assert landed.headers["x-trace"] == "t-1"
    assert landed.headers["host"] == f"localhost:{other.port}"
    for secret in ("authorization", "cookie", "x-api-key"):
        assert secret not in landed.headers
    assert away.result["url"] == f"http://localhost:{other.port}/landing"


async def test_url_user_and_password_stay_out_of_logs_and_results(
    http_app: App, server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.routes["/ok"] = [Reply(200, "fine")]
    secret_url = f"http://deploy:pa55word@127.0.0.1:{server.port}"
    done = await run(http_app, {"url": f"{secret_url}/ok"})
    missing = await run(http_app, {"url": f"{secret_url}/missing"})
    assert done.status == "completed" and missing.status == "failed"
    assert server.hits("/ok")[0].headers["authorization"].startswith("Basic ")
    assert done.result["url"] == server.url("/ok")
    assert f"from GET {server.url('/missing')}" in (missing.last_error or "")
    assert "pa55word" not in caplog.text
    assert "pa55word" not in (missing.last_error or "")


async def test_connection_goes_to_the_address_that_was_checked(server: HttpServer) -> None:
    """Names are resolved once, by the policy check, and the connection is made to that
    address: a name no real resolver knows reaches the listener, with its own name in
    the Host header, and a public-looking name answering with loopback is refused."""
    server.routes["/who"] = [Reply(200, "here")]
    answers = {"svc.pgjobs.test": [ipaddress.ip_address("127.0.0.1")]}
    looked_up: list[str] = []

    async def stub_dns(host: str, port: int) -> list[Any]:
        looked_up.append(host)
        return answers[host]

    async def get(policy: EgressPolicy) -> httpx.Response:
        transport = GuardedTransport(policy, resolver=stub_dns)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"http://svc.pgjobs.test:{server.port}/who")

    allowed = await get(EgressPolicy.of(["svc.pgjobs.test"], []))
    assert allowed.text == "here"
    assert server.hits("/who")[0].headers["host"] == f"svc.pgjobs.test:{server.port}"
    assert looked_up == ["svc.pgjobs.test"]
    with pytest.raises(EgressDenied) as refused:
        await get(EgressPolicy.of([], []))
    assert refused.value.reason.startswith("svc.pgjobs.test resolves to 127.0.0.1, a loopback")
    assert len(server.hits("/who")) == 1
