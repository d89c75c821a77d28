"""Attacks from other websites, and secrets on display, against a real `pgjobs server`
(and worker) on 127.0.0.1: cross-site text/plain posts, DNS rebinding (a foreign Host
header), cross-origin dashboard posts, CSRF tokens taken to another browser, Basic auth
with the API token, half-configured logins, /health telling anyone why a service is
down, oversized bodies sent the way urllib sends them, and secrets inside payloads
shown by the API, the dashboard and the server's log."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.helpers import wait_until
from tests.paths import APPS
from tests.web_client import assert_error
from tests.webserver import Process, free_port, run_cli, running_server

Conn = psycopg.Connection[Any]
TOKEN = "s3curity-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def port_of(base: str) -> int:
    port = urlsplit(base).port
    assert port is not None
    return port


def job_count(db: Conn) -> int:
    return int(db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"])


def paused(db: Conn, queue: str) -> bool:
    row = db.execute("SELECT paused FROM job_queues WHERE name = %s", (queue,)).fetchone()
    return bool(row and row["paused"])


def csrf_of(html: str) -> str:
    return re.findall(r'name="csrf" value="([0-9a-f]+)"', html)[0]


@pytest.fixture
def open_server(db_url: str) -> Iterator[str]:
    """A server on its default settings: no token, no dashboard login, loopback only."""
    with running_server(db_url) as base:
        yield base


# ---------------------------------------------------------------- other websites


def test_cross_site_text_plain_post_creates_no_job(open_server: str, db: Conn) -> None:
    # What <form enctype="text/plain" method="post" action=".../api/jobs"> sends for a
    # field named '{"type": "evil", "payload": {"a": "' with the value '"}}'.
    body = '{"type": "evil", "payload": {"a": "="}}'
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(
            f"{open_server}/api/jobs", content=body, headers={"Content-Type": media}
        )
        assert_error(response, 415, "unsupported_media_type")
    no_type = httpx.post(f"{open_server}/api/jobs", content=body)
    assert_error(no_type, 415, "unsupported_media_type")
    assert job_count(db) == 0
    # JSON, with parameters or as a +json type, is what honest clients send.
    for media in ("application/json; charset=utf-8", "application/vnd.api+json"):
        created = httpx.post(
            f"{open_server}/api/jobs",
            content=json.dumps({"type": "ok"}),
            headers={"Content-Type": media},
        )
        assert created.status_code == 201, created.text
    assert job_count(db) == 2


def test_dns_rebinding_host_is_refused_everywhere(open_server: str, db: Conn) -> None:
    port = port_of(open_server)
    httpx.post(f"{open_server}/api/jobs", json={"type": "ok", "queue": "mail"})
    rebound = {"Host": f"attacker.example:{port}"}
    # The attack: read a CSRF token from the dashboard, then pause a queue.
    page = httpx.get(f"{open_server}/dashboard/queues/mail", headers=rebound)
    assert_error(page, 400, "bad_request")
    assert 'name="csrf"' not in page.text
    for method, path in (
        ("GET", "/api/queues"),
        ("GET", "/api/jobs"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/dashboard"),
        ("POST", "/api/queues/mail/pause"),
        ("POST", "/dashboard/queues/mail/pause"),
    ):
        response = httpx.request(method, f"{open_server}{path}", headers=rebound)
        assert_error(response, 400, "bad_request")
    for host in ("attacker.example", "127.0.0.1.attacker.example", "localhost.:1@evil", ""):
        response = httpx.get(f"{open_server}/api/queues", headers={"Host": host})
        assert response.status_code == 400, host
    assert not paused(db, "mail")
    # The names a local user types still work.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST:{port}"):
        assert httpx.get(f"{open_server}/api/queues", headers={"Host": host}).status_code == 200


def test_dashboard_posts_from_another_origin_are_403(open_server: str, db: Conn) -> None:
    port = port_of(open_server)
    httpx.post(f"{open_server}/api/jobs", json={"type": "ok", "queue": "mail"})
    with httpx.Client(base_url=open_server) as browser:
        token = csrf_of(browser.get("/dashboard/queues/mail").text)
        for headers in (
            {"Origin": "http://attacker.example"},
            {"Origin": f"http://attacker.example:{port}"},
            {"Origin": f"https://127.0.0.1:{port}"},  # right host, wrong scheme
            {"Origin": f"http://127.0.0.1:{port + 1}"},  # right host, wrong port
            {"Origin": "http://127.0.0.1"},
            {"Origin": "null"},
            {"Referer": f"http://attacker.example:{port}/x"},
            {"Referer": f"https://127.0.0.1:{port}/dashboard"},
        ):
            response = browser.post(
                "/dashboard/queues/mail/pause", data={"csrf": token}, headers=headers
            )
            assert_error(response, 403, "forbidden")
            assert response.headers["content-security-policy"].startswith("default-src")
        # The API refuses the same cross-origin posts (no body, so no 415 would stop them).
        api = httpx.post(
            f"{open_server}/api/queues/mail/pause", headers={"Origin": "http://attacker.example"}
        )
        assert_error(api, 403, "forbidden")
        assert not paused(db, "mail")
        ok = browser.post(
            "/dashboard/queues/mail/pause",
            data={"csrf": token},
            headers={"Origin": f"http://127.0.0.1:{port}"},
        )
        assert ok.status_code == 303, ok.text
    assert paused(db, "mail")


# ---------------------------------------------------------------- logins and CSRF


def test_csrf_token_is_bound_to_the_browser(db_url: str, db: Conn) -> None:
    env = {"JOBS_DASHBOARD_USER": "admin", "JOBS_DASHBOARD_PASSWORD": "pw"}
    with running_server(db_url, **env) as base:
        origin = {"Origin": base}
        httpx.post(f"{base}/api/jobs", json={"type": "ok", "queue": "mail"})
        with (
            httpx.Client(base_url=base, auth=("admin", "pw")) as first,
            httpx.Client(base_url=base, auth=("admin", "pw")) as second,
        ):
            page = first.get("/dashboard/queues/mail")
            cookie = page.headers["set-cookie"]
            assert cookie.startswith("pgjobs_csrf=") and "HttpOnly" in cookie
            assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
            assert "Path=/dashboard" in cookie and "Secure" not in cookie  # plain http
            first_token = csrf_of(page.text)
            second_token = csrf_of(second.get("/dashboard/queues/mail").text)
            assert first_token != second_token
            # The same user, the same server: a token is still worthless in another
            # browser, and without any cookie.
            stolen = second.post(
                "/dashboard/queues/mail/pause", data={"csrf": first_token}, headers=origin
            )
            assert stolen.status_code == 403 and "CSRF" in stolen.text
            cookieless = httpx.post(
                f"{base}/dashboard/queues/mail/pause",
                data={"csrf": first_token},
                headers=origin,
                auth=("admin", "pw"),
            )
            assert cookieless.status_code == 403
            assert not paused(db, "mail")
            # A page seen again keeps the browser's secret (other tabs stay valid).
            again = first.get("/dashboard/queues/mail")
            assert "set-cookie" not in again.headers and csrf_of(again.text) == first_token
            ok = first.post(
                "/dashboard/queues/mail/pause", data={"csrf": first_token}, headers=origin
            )
            assert ok.status_code == 303
        assert paused(db, "mail")
        # A new browser session (no cookie) gets a new secret, so a new token.
        with httpx.Client(base_url=base, auth=("admin", "pw")) as later:
            assert csrf_of(later.get("/dashboard/queues/mail").text) not in (
                first_token,
                second_token,
            )


def test_token_only_mode_takes_no_basic_auth(db_url: str, db: Conn) -> None:
    with running_server(db_url, JOBS_API_TOKEN=TOKEN) as base:
        httpx.post(f"{base}/api/jobs", json={"type": "ok", "queue": "mail"}, headers=BEARER)
        for user in ("mallory", "", "admin", "token"):
            response = httpx.get(f"{base}/dashboard", auth=(user, TOKEN))
            assert response.status_code == 401, user
        with httpx.Client(base_url=base, headers=BEARER) as browser:
            token = csrf_of(browser.get("/dashboard/queues/mail").text)
            done = browser.post(
                "/dashboard/queues/mail/pause", data={"csrf": token}, headers={"Origin": base}
            )
            assert done.status_code == 303
    actors = [r["actor"] for r in db.execute("SELECT actor FROM job_audit").fetchall()]
    assert actors == ["dashboard:token"]


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"JOBS_DASHBOARD_USER": "admin"}, "JOBS_DASHBOARD_PASSWORD"),
        ({"JOBS_DASHBOARD_PASSWORD": "pw"}, "JOBS_DASHBOARD_USER"),
        ({"JOBS_DASHBOARD_READONLY_USER": "viewer"}, "JOBS_DASHBOARD_READONLY_PASSWORD"),
    ],
)
def test_half_configured_login_refuses_to_start(
    db_url: str, env: dict[str, str], missing: str
) -> None:
    port = free_port()
    result = run_cli(["server", "--port", str(port)], {"DATABASE_URL": db_url, **env}, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and missing in lines[0], lines
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=2)


def test_health_tells_only_token_holders_why(db_url: str) -> None:
    env = {"JOBS_API_TOKEN": TOKEN, "JOBS_REDIS_URL": "redis://127.0.0.1:1/0"}
    with running_server(db_url, **env) as base:
        anonymous = httpx.get(f"{base}/health")
        assert anonymous.status_code == 200
        assert anonymous.json()["redis"] == "down" and "127.0.0.1" not in anonymous.text
        detailed = httpx.get(f"{base}/health", headers=BEARER).json()
        assert detailed["redis"].startswith("down: ") and "127.0.0.1:1" in detailed["redis"]


# ---------------------------------------------------------------- body size


def test_urllib_gets_the_413_of_an_oversized_body(db_url: str, db: Conn) -> None:
    # JOBS_MAX_PAYLOAD_BYTES=1000000: single-job bodies are limited to 2,065,536 bytes.
    # The body is larger than the socket buffers, so urllib is still sending it when a
    # server that does not read it answers and closes the connection.
    with running_server(db_url, JOBS_MAX_PAYLOAD_BYTES="1000000") as base:
        body = json.dumps({"type": "big", "payload": {"blob": "x" * 8_000_000}}).encode()
        request = urllib.request.Request(
            f"{base}/api/jobs",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        answer = json.loads(caught.value.read())
        assert answer["error"]["code"] == "payload_too_large"
        # The server goes on answering, and stored nothing.
        assert httpx.get(f"{base}/api/queues").status_code == 200
    assert job_count(db) == 0


# ---------------------------------------------------------------- secrets in payloads

SECRETS = ("hunter2-pw", "s3cr3t-in-url", "k-999-key", "AKIA-access", "tok-abc-123")
PAYLOAD = {
    "to": "user@example.com",
    "smtp": {"Password": "hunter2-pw", "host": "mail.example"},
    "webhook": "https://bob:s3cr3t-in-url@hooks.example/x",
    "API_KEY": "k-999-key",
    "accounts": [{"access_key": "AKIA-access", "name": "main"}],
    "Token": "tok-abc-123",
}


@contextmanager
def echo_worker(db_url: str) -> Iterator[Process]:
    worker = Process(
        ["worker", "default", "--app", "dashboard_app:app", "--concurrency", "1"],
        {"DATABASE_URL": db_url, "PYTHONPATH": APPS, "JOBS_POLL_INTERVAL": "200"},
    )
    try:
        yield worker
    finally:
        worker.stop()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in {where}"


def test_payload_secrets_are_masked_where_shown(db_url: str, db: Conn) -> None:
    port = free_port()
    server = Process(
        ["server", "--port", str(port)], {"DATABASE_URL": db_url, "LOG_LEVEL": "debug"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), timeout=30, message="pgjobs server")
        created = httpx.post(f"{base}/api/jobs", json={"type": "ok", "payload": PAYLOAD})
        assert created.status_code == 201
        assert_no_secret(created.text, "the 201 answer")
        job_id = created.json()["id"]
        with echo_worker(db_url):
            wait_until(lambda: _status(db, job_id) == "completed", timeout=30, message="job done")
        # The handler got the real values: it echoed them into its result.
        real = json.dumps(_result(db, job_id))
        assert all(secret in real for secret in SECRETS), real

        detail = httpx.get(f"{base}/api/jobs/{job_id}")
        assert_no_secret(detail.text, "GET /api/jobs/{id}")
        payload = detail.json()["payload"]
        assert payload["webhook"] == "https://bob:***@hooks.example/x"
        assert payload["smtp"] == {"Password": "***", "host": "mail.example"}
        assert payload["API_KEY"] == "***" and payload["Token"] == "***"
        assert payload["accounts"] == [{"access_key": "***", "name": "main"}]
        assert payload["to"] == "user@example.com"
        listed = httpx.get(f"{base}/api/jobs")
        assert_no_secret(listed.text, "GET /api/jobs")
        assert "bob:***@hooks.example" in listed.text
        waited = httpx.get(f"{base}/api/jobs/{job_id}/wait", params={"timeout": "1"})
        assert_no_secret(waited.text, "GET /api/jobs/{id}/wait")

        job_page = httpx.get(f"{base}/dashboard/jobs/{job_id}")
        assert job_page.status_code == 200
        assert_no_secret(job_page.text, "the dashboard's job page")
        assert "https://bob:***@hooks.example/x" in job_page.text
        queue_page = httpx.get(f"{base}/dashboard/queues/default")
        assert_no_secret(queue_page.text, "the dashboard's queue page")
        # A secret in a URL the server logs (the access log, at debug level).
        # (http.client sends the query as written; httpx would percent-encode it.)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/jobs?type=https://eve:pw-in-log@x.example")
        assert connection.getresponse().status < 500
        connection.close()
        log = wait_until(
            lambda: _logged(server, "x.example"), timeout=10, message="the probe in the log"
        )
    finally:
        server.stop()
    assert "/api/jobs" in log  # the access log was on
    assert "pw-in-log" not in log
    assert_no_secret(log, "the server's log")


def _logged(process: Process, text: str) -> str | None:
    output = process.output()
    return output if text in output else None


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _status(db: Conn, job_id: str) -> str:
    row = db.execute("SELECT status FROM jobs WHERE id = %s", (uuid.UUID(job_id),)).fetchone()
    return str(row["status"]) if row else ""


def _result(db: Conn, job_id: str) -> Any:
    return db.execute(
        "SELECT result FROM job_results WHERE job_id = %s", (uuid.UUID(job_id),)
    ).fetchall()
