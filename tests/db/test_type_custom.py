"""custom: calling a Hasura Action handler, against a local server that speaks the
Hasura Actions protocol (request body, admin secret, error body)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgjobs import App, FrozenClock, Job
from tests.conftest import make_settings
from tests.servers import HttpServer, Reply, Request, http_server
from tests.web_client import api_client

pytestmark = pytest.mark.anyio

SECRET = "hasura-admin-s3cret"


def action_handler(request: Request) -> Reply:
    """What a Hasura action handler does: check the secret, dispatch on the action name,
    answer with the output object or with `{"message", "extensions"}` and a 4xx."""
    if request.headers.get("x-hasura-admin-secret") != SECRET:
        return Reply(401, {"message": "unauthorized", "extensions": {"code": "access-denied"}})
    body = request.json()
    assert set(body) == {"action", "input", "session_variables", "request_query"}
    name = body["action"]["name"]
    data = body["input"]
    if name == "greet":
        return Reply(200, {"greeting": f"hello {data['name']}", "role": body["session_variables"]})
    if name == "process-users":
        if not data.get("ids"):
            return Reply(
                400,
                {"message": "no users to process", "extensions": {"code": "validation-failed"}},
            )
        return Reply(200, {"processed": len(data["ids"])})
    if name == "crash":
        return Reply(500, "Internal Server Error")
    if name == "text":
        return Reply(200, "not json")
    return Reply(404, {"message": f"unknown action {name}", "extensions": {"code": "not-found"}})


@pytest.fixture
def hasura() -> Iterator[HttpServer]:
    with http_server() as server:
        server.routes["/actions"] = action_handler
        yield server


@pytest.fixture
async def action_app(db_url: str, hasura: HttpServer) -> AsyncIterator[App]:
    settings = make_settings(
        db_url,
        JOBS_CUSTOM_ACTION_URL=hasura.url("/actions"),
        JOBS_CUSTOM_ACTION_HEADERS=f'{{"x-hasura-admin-secret": "{SECRET}"}}',
    )
    async with App(settings, clock=FrozenClock()) as application:
        yield application


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("custom", payload, **options)
    await app.drain()
    return await app.get(job.id)


async def test_action_output_is_the_result(action_app: App, hasura: HttpServer) -> None:
    job = await run(
        action_app,
        {
            "action": "greet",
            "input": {"name": "Ann"},
            "sessionVariables": {"x-hasura-user-id": "42", "X-Hasura-Role": "user"},
        },
    )
    assert job.status == "completed", job.last_error
    assert job.result == {
        "greeting": "hello Ann",
        "role": {"x-hasura-role": "user", "x-hasura-user-id": "42"},
    }
    [request] = hasura.hits("/actions")
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "action": {"name": "greet"},
        "input": {"name": "Ann"},
        "session_variables": {"x-hasura-role": "user", "x-hasura-user-id": "42"},
        "request_query": "",
    }


async def test_default_session_and_input(action_app: App, hasura: HttpServer) -> None:
    job = await run(action_app, {"action": "process-users", "input": {"ids": [1, 2, 3]}})
    assert job.result == {"processed": 3}
    assert hasura.hits("/actions")[0].json()["session_variables"] == {"x-hasura-role": "admin"}


async def test_hasura_error_body_fails_the_attempt_with_its_message(action_app: App) -> None:
    job = await run(action_app, {"action": "process-users", "input": {"ids": []}}, attempts=2)
    assert job.status == "delayed" and job.attempts == 1  # retried like any failure
    assert job.last_error is not None
    assert "action process-users failed with HTTP 400: no users to process" in job.last_error
    assert '"code": "validation-failed"' in job.last_error
    assert isinstance(action_app.clock, FrozenClock)
    action_app.clock.advance(timedelta(minutes=1))
    await action_app.drain()
    failed = await action_app.get(job.id)
    assert failed.status == "failed" and failed.attempts == 2


async def test_other_failures(action_app: App) -> None:
    crash = await run(action_app, {"action": "crash"}, attempts=1)
    assert crash.status == "failed"
    assert "action crash failed with HTTP 500: Internal Server Error" in (crash.last_error or "")
    text = await run(action_app, {"action": "text"}, attempts=1)
    assert text.status == "failed" and "not JSON" in (text.last_error or "")


async def test_admin_secret_comes_from_settings_and_payload_url_wins(
    db_url: str, hasura: HttpServer
) -> None:
    # No configured endpoint: the payload's url is an ordinary outbound call.
    async with App(make_settings(db_url, JOBS_HTTP_ALLOW="127.0.0.1")) as app:
        job = await run(
            app,
            {"url": hasura.url("/actions"), "action": "greet", "input": {"name": "B"}},
            attempts=1,
        )
        assert job.status == "failed"
        assert "HTTP 401: unauthorized" in (job.last_error or "")
        with_header = await run(
            app,
            {
                "url": hasura.url("/actions"),
                "action": "greet",
                "input": {"name": "B"},
                "headers": {"x-hasura-admin-secret": SECRET},
            },
        )
        assert with_header.status == "completed"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"input": {}}, "action: required"),
        ({"action": "greet", "url": "nope"}, "url: must be an http:// or https:// URL"),
        ({"action": "greet", "sessionVariables": {"role": "x"}}, "must start with x-hasura-"),
    ],
)
async def test_bad_payload_is_discarded(
    action_app: App, payload: dict[str, Any], message: str
) -> None:
    job = await run(action_app, payload)
    assert job.status == "failed" and job.attempts == 1
    assert message in (job.last_error or "")


async def test_url_required_without_setting(db_url: str) -> None:
    async with App(make_settings(db_url)) as app:
        job = await run(app, {"action": "api-call"})
    assert job.status == "failed" and job.attempts == 1
    assert "url: required (or set JOBS_CUSTOM_ACTION_URL)" in (job.last_error or "")


# ---------------------------------------------------------------- who gets the secret


@pytest.fixture
def thief() -> Iterator[HttpServer]:
    """A listener of the producer's choosing, on another origin than the action handler."""
    with http_server() as server:
        server.routes["/steal"] = [Reply(200, {"stolen": True})]
        yield server


def assert_refused_before_sending(job: Job, thief: HttpServer) -> None:
    assert job.status == "failed" and job.attempts == 1, job.last_error
    assert job.failures[-1].kind == "discarded"
    assert f"url: http://127.0.0.1:{thief.port} is not a configured action endpoint" in (
        job.last_error or ""
    )
    assert thief.requests == []


async def test_producer_role_cannot_send_the_admin_secret_to_its_own_url(
    action_app: App, hasura: HttpServer, thief: HttpServer, db_url: str
) -> None:
    payload = json.dumps({"action": "x", "url": thief.url("/steal")})
    with psycopg.connect(db_url, autocommit=True) as conn:
        # By default producers may not enqueue `custom` at all; an operator who lets
        # them must still not leak the headers.
        conn.execute("UPDATE pgjobs_settings SET producer_types = ARRAY['custom']")
        conn.execute("SET ROLE pgjobs_producer")
        row = conn.execute(
            "SELECT id FROM pgjobs_enqueue('custom', %s, '{\"queue\": \"xq\"}')", (payload,)
        ).fetchone()
    assert row is not None
    await action_app.drain("xq")
    assert_refused_before_sending(await action_app.get(row[0]), thief)
    # The configured endpoint still gets its headers.
    job = await run(action_app, {"action": "greet", "input": {"name": "Ann"}})
    assert job.status == "completed", job.last_error
    assert hasura.hits("/actions")[-1].headers["x-hasura-admin-secret"] == SECRET


async def test_api_token_holder_cannot_send_the_admin_secret_to_its_own_url(
    action_app: App, thief: HttpServer
) -> None:
    async with api_client(action_app.settings) as client:
        response = await client.post(
            "/api/jobs",
            json={
                "type": "custom",
                "queue": "xq",
                "payload": {"action": "x", "url": thief.url("/steal")},
            },
        )
    assert response.status_code == 201, response.text
    await action_app.drain("xq")
    assert_refused_before_sending(await action_app.get(response.json()["id"]), thief)


async def test_redirect_to_another_origin_is_not_followed(
    action_app: App, hasura: HttpServer, thief: HttpServer
) -> None:
    hasura.routes["/moved"] = [Reply(307, "", {"Location": thief.url("/steal")})]
    job = await run(action_app, {"action": "greet", "url": hasura.url("/moved")}, attempts=3)
    assert job.status == "failed" and job.attempts == 1, job.last_error
    assert f"redirect to {thief.url('/steal')} not followed" in (job.last_error or "")
    assert "is not a configured action endpoint" in (job.last_error or "")
    assert thief.requests == []
    assert hasura.hits("/moved")[0].headers["x-hasura-admin-secret"] == SECRET


async def test_listed_origins_get_the_headers(
    db_url: str, hasura: HttpServer, thief: HttpServer
) -> None:
    """JOBS_CUSTOM_ACTION_ORIGINS names further endpoints; redirects between them are
    followed, and the configured headers go to each."""
    thief.routes["/actions"] = action_handler
    hasura.routes["/moved"] = [Reply(307, "", {"Location": thief.url("/actions")})]
    settings = make_settings(
        db_url,
        JOBS_CUSTOM_ACTION_ORIGINS=f"{hasura.url('')}, http://127.0.0.1:{thief.port}/",
        JOBS_CUSTOM_ACTION_HEADERS=f'{{"x-hasura-admin-secret": "{SECRET}"}}',
    )
    async with App(settings) as app:
        job = await run(
            app, {"action": "greet", "url": hasura.url("/moved"), "input": {"name": "C"}}
        )
    assert job.status == "completed", job.last_error
    assert job.result["greeting"] == "hello C"
    assert thief.hits("/actions")[0].headers["x-hasura-admin-secret"] == SECRET


async def test_without_an_endpoint_the_configured_headers_are_never_sent(
    db_url: str, thief: HttpServer
) -> None:
    settings = make_settings(
        db_url,
        JOBS_CUSTOM_ACTION_HEADERS=f'{{"x-hasura-admin-secret": "{SECRET}"}}',
        JOBS_HTTP_ALLOW="127.0.0.1",
    )
    async with App(settings) as app:
        job = await run(app, {"action": "x", "url": thief.url("/steal")})
    assert job.status == "completed", job.last_error
    [request] = thief.hits("/steal")
    assert "x-hasura-admin-secret" not in request.headers
