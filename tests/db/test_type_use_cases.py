"""The spec's "Use Cases" (and advanced examples) that use the built-in job types, as
written there but in Python through the pgjobs API, run by the real worker against real
SMTP / HTTP servers and a real database; plus handlers of your own for other types
(the spec's `process-webhook` and `generate-report`).

Adaptations: `jobs.create({type, payload, options})` is `await app.create(type, payload,
**options)`; `scheduleJob({...})` is `await app.schedule(name, type, cron, payload)`;
the weekly backup's `destination: 's3://backups/weekly'` becomes a local directory
(database-backup writes local files; the s3 form is refused with a clear message, shown
below)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs import App, FrozenClock
from pgjobs.backups.fileformat import read_plain
from pgjobs.schedules.task import CronTask
from tests.conftest import make_settings
from tests.servers import HttpServer, Reply, Request, SmtpRecorder, http_server, smtp_server

pytestmark = pytest.mark.anyio

SUNDAY_EARLY = datetime(2024, 1, 7, 1, 0, tzinfo=UTC)  # a Sunday
KEY = "ab" * 32


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    with smtp_server() as recorder:
        yield recorder


@pytest.fixture
def web() -> Iterator[HttpServer]:
    with http_server() as server:
        yield server


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(SUNDAY_EARLY)


@pytest.fixture
async def jobs(
    db_url: str, smtp: SmtpRecorder, web: HttpServer, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[App]:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "welcome.subject").write_text("Welcome, {{ name }}")
    (templates / "welcome.txt").write_text("Hi {{ name }} (user {{ userId }})!\n")
    (templates / "welcome.html").write_text("<p>Hi <b>{{ name }}</b></p>\n")
    (templates / "spring-sale.subject").write_text("Spring sale for {{ name }}")
    (templates / "spring-sale.txt").write_text("{{ name }}, everything is 20% off.\n")
    (templates / "processing-complete.subject").write_text("Processing complete")
    (templates / "processing-complete.txt").write_text("All done.\n")
    settings = make_settings(
        db_url,
        JOBS_SMTP_URL=smtp.url,
        JOBS_SMTP_FROM="Platform <noreply@example.com>",
        JOBS_EMAIL_TEMPLATES_DIR=str(templates),
        JOBS_BACKUP_ENCRYPTION_KEY=KEY,
        JOBS_BACKUP_DIR=str(tmp_path / "backups"),
        JOBS_CUSTOM_ACTION_URL=web.url("/hasura/actions"),
        JOBS_CUSTOM_ACTION_HEADERS='{"x-hasura-admin-secret": "secret"}',
        JOBS_HTTP_ALLOW="127.0.0.1",  # the web server is on loopback
    )
    async with App(settings, clock=clock) as app:
        yield app


def received_by(smtp: SmtpRecorder, address: str) -> list[Any]:
    return [r.message for r in smtp.received if address in r.rcpt_tos]


async def test_transactional_email_delivery(jobs: App, db: Any, smtp: SmtpRecorder) -> None:
    """Use case 1: queue the welcome email in the signup's own transaction."""
    db.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, name text)")

    async def signup(body: dict[str, str]) -> dict[str, Any]:
        async with jobs.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO users (email, name) VALUES (%s, %s) RETURNING id, email, name",
                (body["email"], body["name"]),
            )
            user = await cur.fetchone()
            assert user is not None
            await jobs.create(
                "send-email",
                {
                    "to": user["email"],
                    "subject": "Welcome to Our Platform!",
                    "template": "welcome",
                    "data": {"name": user["name"], "userId": user["id"]},
                },
                priority=5,  # High priority
                attempts=3,
                conn=conn,
            )
        return {"success": True, "userId": user["id"]}

    response = await signup({"email": "ada@example.com", "name": "Ada"})
    assert await jobs.drain() == 1
    [message] = received_by(smtp, "ada@example.com")
    assert message["Subject"] == "Welcome to Our Platform!"  # the payload's subject wins
    assert f"Hi Ada (user {response['userId']})!" in message.get_body(("plain",)).get_content()
    assert "<b>Ada</b>" in message.get_body(("html",)).get_content()


async def test_webhook_processing_with_your_own_handler(jobs: App, clock: FrozenClock) -> None:
    """Use case 2: `process-webhook` is not built in; register a handler for it."""
    processed: list[str] = []
    calls = {"n": 0}

    @jobs.handler("process-webhook")
    async def process_webhook(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("ledger service unavailable")  # retried with backoff
        processed.append(payload["eventId"])
        return {"source": payload["source"], "handled": payload["eventType"]}

    event = {"id": "evt_1", "type": "invoice.paid", "data": {"object": {"amount": 1200}}}
    job = await jobs.create(
        "process-webhook",
        {
            "source": "stripe",
            "eventType": event["type"],
            "eventData": event["data"],
            "eventId": event["id"],
        },
        attempts=5,  # Retry up to 5 times
        backoff={"type": "exponential", "delay": 2000},
    )
    await jobs.drain()
    waiting = await jobs.get(job.id)
    assert waiting.status == "delayed"
    wait = waiting.run_at - clock.now()
    assert timedelta(milliseconds=1800) <= wait <= timedelta(milliseconds=2200)  # 2 s +/- jitter
    clock.advance(wait)
    await jobs.drain()
    done = await jobs.get(job.id)
    assert done.status == "completed" and done.attempts == 2
    assert done.result == {"source": "stripe", "handled": "invoice.paid"}
    assert processed == ["evt_1"]


async def test_scheduled_reports_mailed_by_send_email(
    jobs: App, clock: FrozenClock, smtp: SmtpRecorder, db_url: str
) -> None:
    """Use case 4: a `generate-report` handler of your own that mails its report
    through the built-in send-email type."""

    @jobs.handler("generate-report")
    async def generate_report(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        summary = f"{payload['reportType']} ({payload['period']}): 42 orders"
        await ctx.app.create(
            "send-email",
            {
                "to": payload["recipients"],
                "subject": f"Report: {payload['reportType']}",
                "body": summary,
            },
        )
        return {"summary": summary}

    await jobs.schedule(
        "daily-sales-report",
        "generate-report",
        "0 8 * * *",
        {
            "reportType": "sales-summary",
            "period": "daily",
            "recipients": ["management@example.com"],
        },
        description="Daily sales summary report",
    )
    await fire_schedules(jobs, clock, SUNDAY_EARLY.replace(hour=8), db_url)
    assert await jobs.drain() == 2  # the report, then the email it queued
    [message] = received_by(smtp, "management@example.com")
    assert message["Subject"] == "Report: sales-summary"
    assert "sales-summary (daily): 42 orders" in message.get_content()


async def fire_schedules(app: App, clock: FrozenClock, at: datetime, db_url: str) -> None:
    """One round of the cron maintenance task at `at`, as the leader runs it."""
    clock.set(at)
    async with (
        await psycopg.AsyncConnection.connect(
            db_url, autocommit=True, row_factory=dict_row
        ) as conn,
        conn.transaction(),
    ):
        await CronTask(app.settings).run(conn, clock)


async def test_weekly_database_backup(
    jobs: App, clock: FrozenClock, db_url: str, tmp_path: Path
) -> None:
    """Use case 7: the weekly backup schedule (Sunday 3 AM), to a local directory."""
    await jobs.schedule(
        "weekly-backup",
        "database-backup",
        "0 3 * * 0",
        {
            "database": db_url,  # process.env.DATABASE_URL
            "destination": str(tmp_path / "backups" / "weekly"),
            "compress": True,
            "encrypt": True,
        },
    )
    await fire_schedules(jobs, clock, SUNDAY_EARLY.replace(hour=3), db_url)
    assert await jobs.drain() == 1
    [backup] = [j for j in await all_jobs(db_url) if j["type"] == "database-backup"]
    assert backup["status"] == "completed", backup["last_error"]
    result = (await jobs.get(backup["id"])).result
    path = Path(result["path"])
    assert path.parent == tmp_path / "backups" / "weekly" and path.name.endswith(".dump.gz.enc")
    with path.open("rb") as f:
        chunks, layers = read_plain(f, bytes.fromhex(KEY), path.name)
        assert next(chunks).startswith(b"PGDMP") and layers.encrypted and layers.compressed

    # As written in the spec, to S3, the schedule is accepted too (the upload itself is
    # tested against an S3 server in tests/process/test_backup_s3.py).
    spec = {"database": db_url, "destination": "s3://backups/weekly", "compress": True}
    stored = await jobs.schedule("weekly-backup-s3", "database-backup", "0 3 * * 0", spec)
    assert stored.payload == spec


async def all_jobs(db_url: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as conn:
        cur = await conn.execute("SELECT * FROM jobs ORDER BY created_at")
        return await cur.fetchall()


async def test_notification_campaign(
    jobs: App, db: Any, clock: FrozenClock, smtp: SmtpRecorder
) -> None:
    """Use case 8: one low-priority email per user of a segment, spread over an hour."""
    db.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, name text, segment_id text)")
    for n in range(6):
        db.execute(
            "INSERT INTO users (email, name, segment_id) VALUES (%s, %s, %s)",
            (f"u{n}@example.com", f"User {n}", "spring" if n < 4 else "other"),
        )

    async def send_campaign(segment_id: str, template: str) -> int:
        async with jobs.connection() as conn:
            cur = await conn.execute(
                "SELECT id, email, name FROM users WHERE segment_id = %s", (segment_id,)
            )
            users = await cur.fetchall()
        for user in users:
            await jobs.create(
                "send-email",
                {
                    "to": user["email"],
                    "template": template,
                    "data": {"name": user["name"], "userId": user["id"]},
                },
                queue="low-priority",  # Spread out over time
                delay=random.random() * 3600000,  # Random delay up to 1 hour
                priority=15,  # Low priority
            )
        return len(users)

    assert await send_campaign("spring", "spring-sale") == 4
    clock.advance(timedelta(hours=1, seconds=1))
    assert await jobs.drain("low-priority") == 4
    assert sorted(m["To"] for r in smtp.received for m in [r.message]) == [
        f"u{n}@example.com" for n in range(4)
    ]
    assert received_by(smtp, "u2@example.com")[0]["Subject"] == "Spring sale for User 2"


async def test_rest_example_and_advanced_examples(
    jobs: App, db: Any, smtp: SmtpRecorder, web: HttpServer, clock: FrozenClock
) -> None:
    """The REST API's create example, email alerts, exponential backoff on http-request,
    a low-priority file-cleanup, and the custom Hasura action of the retry examples."""
    # POST /api/jobs {"type": "send-email", ... "options": {"priority": "high",
    # "maxRetries": 3, "delay": 5000}}
    rest = await jobs.create(
        "send-email",
        {"to": "user@example.com", "subject": "Test", "body": "Hello!"},
        queue="default",
        priority="high",
        max_retries=3,
        delay=5000,
    )
    assert rest.max_attempts == 4 and rest.status == "delayed"

    # Email alerts: HTML body, several recipients, high-priority queue.
    await jobs.create(
        "send-email",
        {
            "to": ["ops@example.com", "oncall@example.com"],
            "subject": "[ALERT] Queue backlog",
            "body": "<h2>Jobs Plugin Alert</h2><p>backlog over 1000</p><hr>",
            "isHtml": True,
        },
        queue="high-priority",
        priority=1,
    )

    # Exponential backoff on an http-request.
    web.routes["/data"] = [Reply(503, "busy"), Reply(200, {"rows": 3})]
    fetch = await jobs.create(
        "http-request",
        {"url": web.url("/data")},
        attempts=5,
        backoff={"type": "exponential", "delay": 1000},
    )

    # Custom business logic through a Hasura action.
    def hasura(request: Request) -> Reply:
        body = request.json()
        if request.headers.get("x-hasura-admin-secret") != "secret":
            return Reply(401, {"message": "unauthorized"})
        return Reply(200, {"action": body["action"]["name"], "ok": True})

    web.routes["/hasura/actions"] = hasura
    action = await jobs.create("custom", {"action": "api-call"}, attempts=5)

    # Low: background batch work (no path: prunes old finished jobs).
    cleanup = await jobs.create(
        "file-cleanup", {"olderThan": "30d"}, queue="low-priority", priority=20
    )

    await jobs.drain("default", "high-priority", "low-priority")
    alert = received_by(smtp, "oncall@example.com")[0]
    assert alert["Subject"] == "[ALERT] Queue backlog"
    assert alert.get_body(("html",)) is not None
    assert (await jobs.get(action.id)).result == {"action": "api-call", "ok": True}
    assert (await jobs.get(cleanup.id)).result["target"] == "jobs"
    waiting = await jobs.get(fetch.id)
    assert waiting.status == "delayed"
    assert timedelta(milliseconds=900) <= waiting.run_at - clock.now() <= timedelta(seconds=1.1)

    clock.advance(timedelta(seconds=5))
    await jobs.drain("default")
    assert (await jobs.get(fetch.id)).result["body"] == {"rows": 3}
    assert (await jobs.get(rest.id)).status == "completed"
    assert received_by(smtp, "user@example.com")[0].get_content().strip() == "Hello!"
