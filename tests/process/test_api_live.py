"""The API as users meet it: a real `pgjobs server` subprocess, driven with curl."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import uuid
from urllib.parse import urlsplit

import httpx
import psycopg

from tests.conftest import ADMIN_URL
from tests.helpers import wait_until
from tests.webserver import free_port, run_cli, running_server

TOKEN = "live-token"


def spec_port() -> int:
    """3105 (the spec's port) when it is free, so the examples run literally."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 3105))
        except OSError:
            return free_port()
    return 3105


def curl(*args: str) -> tuple[int, str]:
    """Run the real curl binary; returns (HTTP status, body)."""
    assert shutil.which("curl"), "curl is needed for the spec's examples"
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_spec_rest_and_health_check_examples_work_as_written(db_url: str) -> None:
    port = spec_port()
    with running_server(db_url, port=port):
        base = f"http://localhost:{port}"
        # Health Checks: `curl http://localhost:3105/health`
        status, body = curl(f"{base}/health")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok" and health["database"] == "ok"
        assert health["redis"] in ("ok", "disabled") and health["version"]
        # REST API: POST /api/jobs with the spec's body
        spec_body = (
            '{\n  "type": "send-email",\n  "queue": "default",\n  "payload": {\n'
            '    "to": "user@example.com",\n    "subject": "Test",\n    "body": "Hello!"\n'
            '  },\n  "options": {\n    "priority": "high",\n    "maxRetries": 3,\n'
            '    "delay": 5000\n  }\n}'
        )
        status, body = curl(
            "-X", "POST", f"{base}/api/jobs", "-H", "Content-Type: application/json",
            "-d", spec_body,
        )  # fmt: skip
        assert status == 201, body
        job = json.loads(body)
        assert (job["queue"], job["priority"], job["max_attempts"]) == ("default", 5, 4)
        # REST API: GET /api/jobs/:id
        status, body = curl(f"{base}/api/jobs/{job['id']}")
        assert status == 200
        detail = json.loads(body)
        for field in ("status", "progress", "attempts", "result", "failures"):
            assert field in detail
        # Health Checks: `curl http://localhost:3105/api/stats`
        status, body = curl(f"{base}/api/stats")
        assert status == 200
        default = next(q for q in json.loads(body)["queues"] if q["name"] == "default")
        for field in ("waiting", "active", "completed", "failed", "delayed"):
            assert isinstance(default[field], int)
        assert default["delayed"] == 1
        # Health Checks: `open http://localhost:3105/dashboard`
        status, body = curl(f"{base}/dashboard")
        assert status == 200 and "<table" in body and "default" in body


def test_auth_is_required_on_every_route_but_health(db_url: str) -> None:
    env = {
        "JOBS_API_TOKEN": TOKEN,
        "JOBS_DASHBOARD_USER": "admin",
        "JOBS_DASHBOARD_PASSWORD": "pw",
    }
    with running_server(db_url, **env) as base:
        good = {"Authorization": f"Bearer {TOKEN}"}
        document = httpx.get(f"{base}/openapi.json", headers=good).json()
        checked = 0
        for template, item in document["paths"].items():
            path = template.replace("{id}", str(uuid.uuid4())).replace("{queue}", "default")
            path = re.sub(r"\{[a-z_]+\}", "x", path)
            for method in item:
                if method == "parameters":
                    continue
                for headers in (
                    {},
                    {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"bearer {TOKEN}x"},
                ):
                    response = httpx.request(method, f"{base}{path}", headers=headers)
                    if template == "/health":
                        assert response.status_code == 200
                        continue
                    assert response.status_code == 401, (method, path, headers)
                    assert response.json()["error"]["code"] == "unauthorized"
                    assert response.headers["www-authenticate"].startswith("Bearer")
                checked += 1
        assert checked >= 14
        assert httpx.get(f"{base}/api/stats", headers=good).status_code == 200
        assert httpx.get(f"{base}/metrics", headers=good).status_code == 200
        # The dashboard takes Basic credentials.
        assert httpx.get(f"{base}/dashboard").status_code == 401
        assert httpx.get(f"{base}/dashboard", auth=("admin", "nope")).status_code == 401
        assert httpx.get(f"{base}/dashboard", headers=good).status_code == 401
        page = httpx.get(f"{base}/dashboard", auth=("admin", "pw"))
        assert page.status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_server_refuses_public_address_without_credentials(db_url: str) -> None:
    env = {"DATABASE_URL": db_url}
    for args, extra in (
        (["server", "--host", "0.0.0.0"], {}),
        (["server"], {"JOBS_DASHBOARD_HOST": "0.0.0.0"}),
        (["server", "--host", "0.0.0.0"], {"JOBS_API_TOKEN": TOKEN}),
        (["server", "--host", "::"], {"JOBS_DASHBOARD_USER": "a", "JOBS_DASHBOARD_PASSWORD": "b"}),
    ):
        result = run_cli([*args, "--port", str(free_port())], {**env, **extra}, timeout=30)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: refusing to listen on"), lines
        assert "JOBS_API_TOKEN" in lines[0] or "JOBS_DASHBOARD_USER" in lines[0]
        assert "--host" in lines[0]
    bad_port = run_cli(["server", "--port", "99999"], env)
    assert bad_port.returncode == 2 and bad_port.stderr.startswith("error: --port")
    # With credentials it starts on every interface.
    creds = {
        "JOBS_API_TOKEN": TOKEN,
        "JOBS_DASHBOARD_USER": "a",
        "JOBS_DASHBOARD_PASSWORD": "b",
    }
    with running_server(db_url, extra=["--host", "0.0.0.0"], **creds) as base:
        assert httpx.get(f"{base}/health").status_code == 200


def test_server_start_with_postgres_down_is_one_line(db_url: str) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = run_cli(["server", "--port", str(free_port())], {"DATABASE_URL": dead})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: cannot connect to PostgreSQL")


def test_health_is_503_while_postgres_is_unreachable(db_url: str) -> None:
    name = urlsplit(db_url).path.lstrip("/")
    good = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(db_url, JOBS_API_TOKEN=TOKEN) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                down = httpx.get(f"{base}/health", timeout=15)
                assert down.status_code == 503
                assert down.json()["status"] == "error"
                assert down.json()["database"].startswith("down")
                stats = httpx.get(f"{base}/api/stats", headers=good, timeout=30)
                assert stats.status_code == 503
                assert stats.json()["error"]["code"] == "unavailable"
            finally:
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        wait_until(
            lambda: httpx.get(f"{base}/health", timeout=15).status_code == 200,
            timeout=30,
            message="health to recover",
        )
