"""The audit trail across the three operator surfaces: the same action from the CLI (the
real `pgjobs` command), the REST API (with its token) or the dashboard (a POST form)
writes one row in the same format, differing only in the actor; an action that fails
(exit 2, a 4xx answer) changes nothing and writes no row."""

from __future__ import annotations

import asyncio
import getpass
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from pgjobs.config import Settings
from tests.opsdata import audit_rows, insert_job, snapshot, status_of
from tests.pgjobs_cli import run_pgjobs
from tests.web_client import api_client

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]
CLI = f"cli:{getpass.getuser()}"
API = "api"
# With a token and no dashboard login, the dashboard takes the token (see web/auth.py).
DASHBOARD = "dashboard:token"
WHO = (CLI, API, DASHBOARD)
ORIGIN = {"Origin": "http://test"}


class Surfaces:
    """One operator action at a time, from the CLI, the REST API or the dashboard."""

    def __init__(self, http: httpx.AsyncClient, db_url: str, cwd: Path) -> None:
        self.http = http
        self.env = {"DATABASE_URL": db_url}
        self.cwd = cwd

    async def cli(self, *args: str, status: int = 0) -> str:
        done = await asyncio.to_thread(run_pgjobs, list(args), self.cwd, self.env)
        assert done.returncode == status, (args, done.stdout, done.stderr)
        if status:
            assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        return done.stdout

    async def api(self, method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response

    async def dashboard(self, path: str, status: int = 303) -> httpx.Response:
        page = (await self.http.get("/dashboard/queues/default")).text
        csrf = re.findall(r'name="csrf" value="([0-9a-f]+)"', page)[0]
        response = await self.http.post(path, data={"csrf": csrf}, headers=ORIGIN)
        assert response.status_code == status, response.text[:500]
        return response


@pytest.fixture
async def surfaces(settings: Settings, db_url: str, tmp_path: Path) -> Any:
    async with api_client(settings, timeout=30) as http:
        yield Surfaces(http, db_url, tmp_path)


def row(actor: str, action: str, target: str | None, detail: Any) -> dict[str, Any]:
    return {"actor": actor, "action": action, "target": target, "detail": detail}


async def test_one_action_one_row_whatever_the_surface(surfaces: Surfaces, db: Conn) -> None:
    s = surfaces
    schedule = {"name": "nightly", "type": "report", "cron": "0 2 * * *"}
    await s.api("POST", "/api/schedules", 201, json=schedule)
    await s.cli("schedule", "disable", "nightly")
    await s.dashboard("/dashboard/schedules/nightly/enable")
    await s.api("PATCH", "/api/schedules/nightly", 200, json={"enabled": False})
    await s.cli("schedule", "delete", "nightly")

    await s.cli("queue", "limit", "emails", "--max", "10", "--duration", "1000")
    await s.api("PUT", "/api/queues/emails/limit", 200, json={"max": 10, "duration": 1000})
    await s.api("DELETE", "/api/queues/emails/limit", 200)
    await s.cli("queue", "key-limit", "tenant:*", "--max", "5", "--duration", "1000")
    await s.cli("producer-types", "set", "report")

    await s.cli("pause", "default")
    await s.api("POST", "/api/queues/default/resume", 200)
    await s.dashboard("/dashboard/queues/default/pause")
    await s.dashboard("/dashboard/queues/default/resume")

    failed = [insert_job(db, status="failed") for _ in range(3)]
    await s.cli("retry", "--id", str(failed[0]))
    await s.api("POST", f"/api/jobs/{failed[1]}/retry", 200)
    await s.dashboard(f"/dashboard/jobs/{failed[2]}/retry")
    waiting = [insert_job(db, status="pending") for _ in range(3)]
    await s.cli("cancel", str(waiting[0]))
    await s.api("POST", f"/api/jobs/{waiting[1]}/cancel", 200)
    await s.dashboard(f"/dashboard/jobs/{waiting[2]}/cancel")
    assert {status_of(db, i) for i in failed} == {"pending"}
    assert {status_of(db, i) for i in waiting} == {"cancelled"}

    enabled = {"fields": ["enabled"]}
    limit = {"max": 10, "duration": 1000}
    assert audit_rows(db) == [
        row(API, "schedule.create", "nightly", {}),
        row(CLI, "schedule.update", "nightly", enabled),
        row(DASHBOARD, "schedule.update", "nightly", enabled),
        row(API, "schedule.update", "nightly", enabled),
        row(CLI, "schedule.delete", "nightly", {}),
        row(CLI, "rate_limit", "emails", limit),
        row(API, "rate_limit", "emails", limit),
        row(API, "rate_limit_clear", "emails", {}),
        row(CLI, "key_rate_limit", "tenant:*", {"max": 5, "duration": 1000}),
        row(CLI, "producer-types", None, {"types": ["report"]}),
        row(CLI, "pause", "default", {}),
        row(API, "resume", "default", {}),
        row(DASHBOARD, "pause", "default", {}),
        row(DASHBOARD, "resume", "default", {}),
        *(
            row(who, "retry", str(i), {"jobs": [str(i)]})
            for who, i in zip(WHO, failed, strict=True)
        ),
        *(
            row(who, "cancel", str(i), {"status": "cancelled"})
            for who, i in zip(WHO, waiting, strict=True)
        ),
    ]
    page = await s.http.get("/dashboard/audit")
    assert page.status_code == 200 and CLI in page.text and "rate_limit" in page.text


async def test_running_a_schedule_now_is_one_service_call_on_every_surface(
    surfaces: Surfaces, db: Conn
) -> None:
    s = surfaces
    schedule = {"name": "nightly", "type": "report", "cron": "0 2 * * *", "payload": {"n": 1}}
    await s.api("POST", "/api/schedules", 201, json=schedule)
    next_run = db.execute("SELECT next_run_at FROM job_schedules").fetchone()["next_run_at"]
    printed = await s.cli("schedule", "run", "nightly")
    answered = (await s.api("POST", "/api/schedules/nightly/run", 201)).json()
    await s.dashboard("/dashboard/schedules/nightly/run")
    assert answered["type"] == "report" and answered["status"] == "pending"
    assert answered["payload"] == {"n": 1}
    jobs = db.execute("SELECT id, metadata FROM jobs ORDER BY created_at, id").fetchall()
    assert len(jobs) == 3
    assert {j["metadata"]["schedule"] for j in jobs} == {"nightly"}
    assert printed.startswith("enqueued job ") and printed.endswith(
        "(report on default) from schedule 'nightly'\n"
    )
    assert db.execute("SELECT next_run_at FROM job_schedules").fetchone()["next_run_at"] == next_run
    runs = [r for r in audit_rows(db) if r["action"] == "schedule.run"]
    assert [(r["actor"], r["target"]) for r in runs] == [(who, "nightly") for who in WHO]
    assert sorted(r["detail"]["jobs"][0] for r in runs) == sorted(str(j["id"]) for j in jobs)
    assert all(r["detail"]["queue"] == "default" and r["detail"]["type"] == "report" for r in runs)


async def test_a_failed_action_changes_nothing_and_writes_no_row(
    surfaces: Surfaces, db: Conn
) -> None:
    s = surfaces
    await s.api("POST", "/api/schedules", 201, json={"name": "kept", "type": "r", "cron": "@daily"})
    await s.api("PUT", "/api/queues/emails/limit", 200, json={"max": 10, "duration": 1000})
    done = insert_job(db, status="completed")
    missing = UUID(int=7)
    before = snapshot(db)
    assert len(audit_rows(db)) == 2

    # CLI: one line on stderr, exit 2.
    await s.cli("schedule", "update", "kept", "--cron", "61 * * * *", status=2)
    await s.cli("schedule", "disable", "ghost", status=2)
    await s.cli("schedule", "run", "ghost", status=2)
    await s.cli("schedule", "create", "--name", "kept", "--type", "r", "--cron", "@daily", status=2)
    await s.cli("queue", "limit", "emails", "--max", "0", "--duration", "5", status=2)
    await s.cli("queue", "key-limit", "nothing", "--clear", status=2)
    await s.cli("producer-types", "set", "ok", "../etc", status=2)
    await s.cli("pause", "ghost", status=2)
    await s.cli("retry", "--id", str(done), status=2)
    await s.cli("cancel", str(missing), status=2)

    # REST: a 4xx JSON error.
    await s.api("PATCH", "/api/schedules/kept", 422, json={"timezone": "Nowhere"})
    await s.api("DELETE", "/api/schedules/ghost", 404)
    await s.api("POST", "/api/schedules/ghost/run", 404)
    await s.api("POST", "/api/schedules", 409, json={"name": "kept", "type": "r", "cron": "@daily"})
    await s.api("PUT", "/api/queues/emails/limit", 422, json={"max": 5})
    await s.api("PUT", "/api/queues/emails/limit", 422, json={"max": 5, "duration": 0})
    await s.api("DELETE", "/api/queues/never-seen/limit", 404)
    await s.api("POST", "/api/queues/ghost/pause", 404)
    await s.api("POST", f"/api/jobs/{done}/cancel", 409)
    await s.api("POST", f"/api/jobs/{missing}/retry", 404)

    # Dashboard: a 4xx page.
    await s.dashboard("/dashboard/schedules/ghost/disable", 404)
    await s.dashboard("/dashboard/schedules/ghost/run", 404)
    await s.dashboard("/dashboard/queues/ghost/pause", 404)
    await s.dashboard(f"/dashboard/jobs/{done}/cancel", 409)
    forged = {"csrf": "0" * 64}
    unsigned = await s.http.post("/dashboard/queues/default/pause", data=forged, headers=ORIGIN)
    assert unsigned.status_code == 403

    assert snapshot(db) == before
