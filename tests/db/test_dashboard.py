"""The dashboard in process (httpx over ASGI, lifespan run explicitly): every page shows
what the database holds, every action changes the right rows and lands in the audit
trail, and the safety rules hold (CSRF, Origin, read-only role, headers, escaping)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from html.parser import HTMLParser
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from pgjobs.config import Settings
from pgjobs.ops import Ops
from pgjobs.web import create_app
from pgjobs.web.dashboard import pages
from pgjobs.web.dashboard.security import CSRF_COOKIE, CsrfSigner
from tests.opsdata import insert_job, snapshot, status_of
from tests.web_client import asgi_client

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]
ADMIN = ("admin", "pw")
VIEWER = ("viewer", "look")
ORIGIN = {"Origin": "http://test"}
XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
]


# ---------------------------------------------------------------- helpers


@dataclass
class Page(HTMLParser):
    """What the tests read from a dashboard page."""

    counts: dict[tuple[str, str], str] = field(default_factory=dict)
    forms: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    buttons: list[tuple[str, bool]] = field(default_factory=list)  # (class, disabled) of actions
    scripts: list[dict[str, str | None]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    styled: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    text: str = ""
    _count: tuple[str, str] | None = None
    _form: dict[str, str] | None = None
    _method: str = ""

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-count-queue" in a:
            self._count = (a["data-count-queue"] or "", a["data-count-field"] or "")
            self.counts[self._count] = ""
        if tag == "form":
            self._form, self._method = {}, str(a.get("method"))
            self.forms.append((self._method, str(a.get("action")), self._form))
        if tag == "input" and self._form is not None and a.get("type") == "hidden":
            self._form[str(a["name"])] = str(a.get("value"))
        if tag == "button" and (self._form is None or self._method == "post"):
            self.buttons.append((str(a.get("class")), "disabled" in a))
        if tag == "script":
            self.scripts.append(a)
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "style" or "style" in a:
            self.styled.append(tag)
        self.handlers += [name for name in a if name.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if tag == "span":
            self._count = None

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._count is not None:
            self.counts[self._count] += data.strip()

    def count(self, queue: str, name: str) -> int:
        return int(self.counts[(queue, name)].lstrip("≈").replace(",", ""))

    def posts(self) -> dict[str, dict[str, str]]:
        return {action: fields for method, action, fields in self.forms if method == "post"}

    def posted_to(self, action: str) -> list[dict[str, str]]:
        return [fields for method, to, fields in self.forms if method == "post" and to == action]


def parse(response: httpx.Response) -> Page:
    assert response.status_code == 200, response.text[:2000]
    page = Page()
    page.feed(response.text)
    return page


@dataclass
class Dash:
    admin: httpx.AsyncClient
    viewer: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    web: Starlette

    async def page(self, path: str, client: httpx.AsyncClient | None = None) -> Page:
        return parse(await (client or self.admin).get(path))

    async def post(
        self, path: str, fields: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        client = kwargs.pop("client", self.admin)
        headers = kwargs.pop("headers", ORIGIN)
        token = kwargs.pop("csrf", None) or await token_of(client)
        data = {"csrf": token, **(fields or {})}
        return await client.post(path, data=data, headers=headers, **kwargs)


async def token_of(client: httpx.AsyncClient) -> str:
    html = (await client.get("/dashboard/queues/default")).text
    return re.findall(r'name="csrf" value="([0-9a-f]+)"', html)[0]


SECRET = "test-dashboard-secret"


def make_web(settings: Settings, **changes: Any) -> Starlette:
    return create_app(
        settings.replace(
            dashboard_user="admin",
            dashboard_password="pw",
            dashboard_readonly_user="viewer",
            dashboard_readonly_password="look",
            dashboard_secret=SECRET,
            **changes,
        )
    )


def tampered(token: str) -> str:
    """`token` with its last hex digit changed (always to another digit: replacing it
    with a fixed "0" left one token in sixteen unchanged, and the post went through)."""
    return token[:-1] + ("1" if token[-1] == "0" else "0")


def token_for(user: str, browser: str = "0" * 64) -> str:
    """The CSRF token a page would give `user` in the browser whose secret (cookie) is
    `browser` (read-only users get no forms)."""
    return CsrfSigner(SECRET).token(user, browser)


@pytest.fixture
async def dash(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Dash]:
    # Pages wait for the throughput history as long as a test needs (it is tiny here).
    monkeypatch.setattr(pages, "HISTORY_WAIT_S", 30.0)
    web = make_web(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)

        def client(auth: tuple[str, str] | None) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=transport, base_url="http://test", auth=auth)

        async with client(ADMIN) as admin, client(VIEWER) as viewer, client(None) as anon:
            yield Dash(admin, viewer, anon, web)


def db_counts(db: Conn) -> dict[tuple[str, str], int]:
    rows = db.execute(
        "SELECT queue, status, count(*) AS n FROM jobs GROUP BY queue, status"
    ).fetchall()
    return {(r["queue"], r["status"]): r["n"] for r in rows}


def audit(db: Conn) -> list[dict[str, Any]]:
    return db.execute("SELECT actor, action, target, detail FROM job_audit ORDER BY id").fetchall()


def fill(db: Conn) -> dict[str, list[UUID]]:
    """Jobs in every state over three queues; `emails` is paused."""
    made: dict[str, list[UUID]] = {}
    plan = [
        ("default", "pending", 3),
        ("default", "active", 2),
        ("default", "delayed", 1),
        ("default", "completed", 4),
        ("default", "failed", 2),
        ("default", "cancelled", 1),
        ("emails", "pending", 2),
        ("emails", "failed", 1),
        ("emails", "completed", 1),
        ("reports", "blocked", 1),
    ]
    for queue, status, n in plan:
        for _ in range(n):
            made.setdefault(f"{queue}:{status}", []).append(
                insert_job(db, queue=queue, status=status, type=f"{queue}-task")
            )
    db.execute("INSERT INTO job_queues (name, paused) VALUES ('emails', true)")
    return made


# ---------------------------------------------------------------- pages


async def test_overview_counts_match_the_database(dash: Dash, db: Conn) -> None:
    fill(db)
    page = await dash.page("/dashboard")
    stored = db_counts(db)
    for queue in ("default", "emails", "reports"):
        paused = queue == "emails"
        expected = {
            "waiting": 0 if paused else stored.get((queue, "pending"), 0),
            "paused": stored.get((queue, "pending"), 0) if paused else 0,
            "active": stored.get((queue, "active"), 0),
            "delayed": stored.get((queue, "delayed"), 0),
            "completed": stored.get((queue, "completed"), 0),
            "failed": stored.get((queue, "failed"), 0),
        }
        shown = {name: page.count(queue, name) for name in expected}
        assert shown == expected, queue
    assert page.count("*", "failed") == 3 and page.count("*", "waiting") == 3
    assert page.count("*", "workers") == 0
    # Known queues without jobs are listed too, with zeros and links.
    assert page.count("high-priority", "waiting") == 0
    assert "/dashboard/queues/emails" in page.links
    assert "/dashboard/queues/default?status=failed" in page.links
    assert "paused" in page.text and "≈" not in page.text
    # The charts are drawn (their per-minute counts are checked in
    # tests/unit/test_dashboard_format.py; counting jobs stamped in the current minute right
    # after start-up depends on when the history's first fill ran).
    assert "Throughput" in page.text and "Failure rate" in page.text

    body = (await dash.admin.get("/dashboard/counts.json")).json()
    default = next(q for q in body["queues"] if q["name"] == "default")
    assert (default["waiting"], default["active"], default["failed"]) == (3, 2, 2)
    assert body["totals"]["completed"] == 5 and body["history_ready"] is True
    assert body["totals_estimated"] == []


async def test_overview_charts_without_jobs_say_so(dash: Dash, db: Conn) -> None:
    empty = await dash.admin.get("/dashboard")
    assert empty.text.count("No data: no job finished in this window") == 4
    assert ">no jobs</text>" in empty.text  # the known queues' sparklines
    assert empty.text.count(">time (UTC)</text>") == 4


async def test_overview_charts_have_axes_and_tooltips(dash: Dash, db: Conn) -> None:
    # 12 completed and 3 failed in one minute ten minutes ago, 1 failed in another:
    # the first has a failure rate, the second is too small for one.
    db_now = db.execute("SELECT now() AS t").fetchone()["t"].astimezone(UTC)
    busy = db_now.replace(second=30, microsecond=0) - timedelta(minutes=10)
    quiet = busy - timedelta(minutes=10)
    for status, n, at in (("completed", 12, busy), ("failed", 3, busy), ("failed", 1, quiet)):
        for _ in range(n):
            insert_job(db, status=status, finished_ago=db_now - at)
    page = await dash.admin.get("/dashboard")
    html = page.text
    span = f"{busy:%H:%M}-{busy + timedelta(minutes=1):%H:%M} UTC"
    quiet_span = f"{quiet:%H:%M}-{quiet + timedelta(minutes=1):%H:%M} UTC"
    assert f"<title>{span}: 12 completed, 3 failed (20.0% failed)</title>" in html
    assert f"<title>{span}: 20.0% failed (12 completed, 3 failed)</title>" in html
    assert f"<title>{quiet_span}: 0 completed, 1 failed: too few jobs for a rate</title>" in html
    for label in (">jobs/min</text>", ">jobs per 30 min</text>", ">% failed</text>"):
        assert label in html, label
    assert html.count(">time (UTC)</text>") == 4
    assert "No data" not in html
    # The queue's sparkline has a tooltip per hour (both minutes may share an hour).
    queues = html.split("<h2>Queues</h2>")[1]
    assert re.search(r"<title>\d\d:00-\d\d:00 UTC: 12 completed, [34] failed \(", queues)


async def test_counts_above_the_exact_limit_are_estimated(app: Any, db: Conn) -> None:
    for _ in range(30):
        insert_job(db, status="completed", queue="bulk")
    insert_job(db, status="pending", queue="bulk")
    ops = Ops(app)
    # Never analysed: the sample is the whole table, so the count is exact.
    (bulk,) = [q for q in await ops.queue_counts(exact_limit=10) if q.name == "bulk"]
    assert (bulk.completed, bulk.waiting, bulk.estimated) == (30, 1, frozenset())
    db.execute("ANALYZE jobs")
    (bulk,) = [q for q in await ops.queue_counts(exact_limit=10, sample_rows=5) if q.name == "bulk"]
    assert bulk.estimated == {"completed"} and bulk.completed >= 11 and bulk.waiting == 1
    assert bulk.to_dict()["estimated"] == ["completed"]


async def test_queue_page_tabs_filters_and_pages(dash: Dash, db: Conn) -> None:
    ids = [insert_job(db, type="resize", created_ago=timedelta(seconds=60 - i)) for i in range(55)]
    failed = insert_job(db, type="mail", status="failed", last_error="SMTPError: 451\nstack")
    page = await dash.page("/dashboard/queues/default")
    assert "waiting" in page.text and "SMTPError: 451" in page.text
    listed = [link for link in page.links if link.startswith("/dashboard/jobs/")]
    assert len(listed) == 50 and listed[0] == f"/dashboard/jobs/{failed}"
    older = next(link for link in page.links if "cursor=" in link)
    second = await dash.page(older)
    rest = [link for link in second.links if link.startswith("/dashboard/jobs/")]
    assert rest == [f"/dashboard/jobs/{i}" for i in reversed(ids[:6])]
    assert not any("cursor=" in link for link in second.links)

    tab = await dash.page("/dashboard/queues/default?status=failed")
    assert [link for link in tab.links if link.startswith("/dashboard/jobs/")] == [
        f"/dashboard/jobs/{failed}"
    ]
    typed = await dash.page("/dashboard/queues/default?type=mail")
    assert sum(1 for link in typed.links if link.startswith("/dashboard/jobs/")) == 1
    prefix = str(ids[3])[:34]
    found = await dash.page(f"/dashboard/queues/default?id={prefix}")
    assert [link for link in found.links if link.startswith("/dashboard/jobs/")] == [
        f"/dashboard/jobs/{ids[3]}"
    ]
    bad = await dash.page("/dashboard/queues/default?id=zz-not-hex")
    assert "id search takes the start of a job id" in bad.text
    empty = await dash.page("/dashboard/queues/default?status=delayed")
    assert "No delayed jobs" in empty.text

    assert (await dash.admin.get("/dashboard/queues/ghost")).status_code == 404
    refused = await dash.admin.get("/dashboard/queues/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert refused.status_code == 404 and "<script>alert" not in refused.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in refused.text
    assert refused.headers["content-type"].startswith("text/html")


async def test_job_page_shows_details_failures_and_dependencies(dash: Dash, db: Conn) -> None:
    parent = insert_job(db, status="completed", duration_ms=1234, type="extract")
    payload = {
        "to": "ann@example.com",
        "password": "hunter2",
        "nested": {"apiKey": "k-999", "Authorization": "Bearer zzz"},
        "blob": "x" * 70_000,
    }
    child = insert_job(
        db, status="failed", attempts=3, payload=payload, depends_on=[parent], last_error="E1"
    )
    db.execute(
        "INSERT INTO job_failures (job_id, attempt_number, error_message, error_stack, kind)"
        " VALUES (%s, 2, 'TimeoutError: took too long', 'Traceback (most recent call last):"
        "\n  File \"handler.py\", line 3', 'timeout')",
        (child,),
    )
    db.execute(
        "UPDATE jobs SET progress = 40, progress_message = 'halfway' WHERE id = %s", (child,)
    )
    page = await dash.page(f"/dashboard/jobs/{child}")
    for text in (str(child), "default", "normal (10)", "3 of 3", "halfway", "ann@example.com"):
        assert text in page.text, text
    for secret in ("hunter2", "k-999", "Bearer zzz"):
        assert secret not in page.text
    assert "Cut at 64 KB" in page.text and "x" * 1000 in page.text and "x" * 70_000 not in page.text
    assert "TimeoutError: took too long" in page.text and 'File "handler.py", line 3' in page.text
    assert "Traceback: boom" in page.text  # the first failure's stack, from the factory
    assert f"/dashboard/jobs/{parent}" in page.links
    forms = page.posts()
    assert set(forms) == {f"/dashboard/jobs/{child}/retry", f"/dashboard/jobs/{child}/delete"}

    # The run took 1.234 s by its timestamps; the handler's own measure differs a little
    # (the completion is recorded after it returns): the page shows one duration only.
    db.execute(
        "UPDATE jobs SET started_at = completed_at - interval '1234 milliseconds' WHERE id = %s",
        (parent,),
    )
    db.execute("UPDATE job_results SET duration_ms = 760 WHERE job_id = %s", (parent,))
    up = await dash.page(f"/dashboard/jobs/{parent}")
    assert f"/dashboard/jobs/{child}" in up.links and "Needed by" in up.text
    assert up.text.count("Ran for") == 1 and "1.2s" in up.text
    assert "760ms" not in up.text and "Completed in" not in up.text
    assert (await dash.admin.get("/dashboard/jobs/not-a-uuid")).status_code == 404
    missing = await dash.admin.get("/dashboard/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no job with id" in missing.text


async def test_failures_page_groups_and_retries_a_group(dash: Dash, db: Conn) -> None:
    same = [
        insert_job(db, type="mail", status="failed", last_error=f"SMTPError: 451\nline {i}")
        for i in range(3)
    ]
    other = insert_job(db, type="mail", status="failed", last_error="ValueError: bad")
    page = await dash.page("/dashboard/failures")
    assert "SMTPError: 451" in page.text and "ValueError: bad" in page.text
    form = next(
        f
        for f in page.posted_to("/dashboard/failures/retry")
        if f["error_line"] == "SMTPError: 451"
    )
    assert form["type"] == "mail"
    response = await dash.post("/dashboard/failures/retry", form)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/failures?hours=24&done=retry&n=3"
    assert {status_of(db, i) for i in same} == {"pending"} and status_of(db, other) == "failed"
    notice = await dash.page(response.headers["location"])
    assert "Retried 3 job(s)." in notice.text
    (entry,) = audit(db)
    assert entry["actor"] == "dashboard:admin" and entry["action"] == "retry"
    assert sorted(entry["detail"]["jobs"]) == sorted(str(i) for i in same)


async def test_schedules_page_and_actions(dash: Dash, db: Conn, app: Any) -> None:
    ops = Ops(app)
    await ops.create_schedule(
        {"name": "nightly", "type": "database-backup", "cron": "30 2 * * *", "timezone": "UTC"},
        actor="test",
    )
    await ops.create_schedule(
        {"name": "odd", "type": "t", "cron": "*/7 9-17 * * 1", "enabled": False}, actor="test"
    )
    sid = db.execute("SELECT id FROM job_schedules WHERE name = 'nightly'").fetchone()["id"]
    fired = insert_job(db, type="database-backup", status="completed")
    db.execute(
        "INSERT INTO job_schedule_fires (schedule_id, fire_time, job_id)"
        " VALUES (%s, now() - interval '1 hour', %s)",
        (sid, fired),
    )
    page = await dash.page("/dashboard/schedules")
    assert "every day at 02:30" in page.text and "*/7 9-17 * * 1" in page.text
    assert f"/dashboard/jobs/{fired}" in page.links and "never" in page.text
    assert page.text.count("02:30:00Z") == 3  # the next three runs
    forms = page.posts()
    assert set(forms) == {
        "/dashboard/schedules/nightly/run",
        "/dashboard/schedules/nightly/disable",
        "/dashboard/schedules/nightly/delete",
        "/dashboard/schedules/odd/run",
        "/dashboard/schedules/odd/enable",
        "/dashboard/schedules/odd/delete",
    }
    for name in ("nightly", "odd"):
        assert f"/dashboard/schedules/{name}/edit" in page.links
    assert "/dashboard/schedules/new" in page.links
    assert (await dash.post("/dashboard/schedules/nightly/disable")).status_code == 303
    assert (await dash.post("/dashboard/schedules/odd/enable")).status_code == 303
    enabled = dict(
        db.execute("SELECT name, enabled FROM job_schedules").fetchall()
        and [
            (r["name"], r["enabled"]) for r in db.execute("SELECT name, enabled FROM job_schedules")
        ]
    )
    assert enabled == {"nightly": False, "odd": True}
    assert (await dash.post("/dashboard/schedules/odd/delete")).status_code == 303
    assert [r["name"] for r in db.execute("SELECT name FROM job_schedules")] == ["nightly"]
    missing = await dash.post("/dashboard/schedules/ghost/enable")
    assert missing.status_code == 404
    actions = [(a["action"], a["target"], a["actor"]) for a in audit(db)[2:]]
    assert actions == [
        ("schedule.update", "nightly", "dashboard:admin"),
        ("schedule.update", "odd", "dashboard:admin"),
        ("schedule.delete", "odd", "dashboard:admin"),
    ]


def schedule_row(db: Conn, name: str) -> dict[str, Any]:
    row: dict[str, Any] = db.execute(
        "SELECT * FROM job_schedules WHERE name = %s", (name,)
    ).fetchone()
    return row


async def test_run_a_schedule_now_keeps_its_next_slot(dash: Dash, db: Conn, app: Any) -> None:
    ops = Ops(app)
    await ops.create_schedule(
        {"name": "nightly", "type": "report", "cron": "30 2 * * *", "payload": {"kind": "full"}},
        actor="test",
    )
    before = schedule_row(db, "nightly")
    response = await dash.post("/dashboard/schedules/nightly/run")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/schedules?done=schedule-run"
    notice = await dash.page(response.headers["location"])
    assert "Enqueued the schedule's job; its next run is unchanged." in notice.text
    (job,) = db.execute("SELECT * FROM jobs").fetchall()
    assert (job["type"], job["queue"], job["status"]) == ("report", "default", "pending")
    assert job["payload"] == {"kind": "full"}
    assert job["metadata"] == {"schedule": "nightly", "manual": True}
    after = schedule_row(db, "nightly")
    assert after["next_run_at"] == before["next_run_at"]
    assert after["last_run_at"] == before["last_run_at"] is None
    assert db.execute("SELECT count(*) AS n FROM job_schedule_fires").fetchone()["n"] == 0
    (entry,) = audit(db)[1:]
    assert entry == {
        "actor": "dashboard:admin",
        "action": "schedule.run",
        "target": "nightly",
        "detail": {"jobs": [str(job["id"])], "queue": "default", "type": "report"},
    }
    # A disabled schedule can be run by hand too; an unknown one is a 404.
    await ops.update_schedule("nightly", {"enabled": False}, actor="test")
    assert (await dash.post("/dashboard/schedules/nightly/run")).status_code == 303
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 2
    missing = await dash.post("/dashboard/schedules/ghost/run")
    assert missing.status_code == 404 and "no schedule named" in missing.text
    # Without a valid token nothing is enqueued and nothing audited.
    rows_before = snapshot(db)
    refused = await dash.post("/dashboard/schedules/nightly/run", csrf=tampered(token_for("admin")))
    assert refused.status_code == 403 and snapshot(db) == rows_before


async def test_create_a_schedule_from_the_form(dash: Dash, db: Conn) -> None:
    form = await dash.page("/dashboard/schedules/new")
    (fields,) = form.posted_to("/dashboard/schedules")
    assert set(fields) == {"csrf"}
    assert "Europe/Berlin" in (await dash.admin.get("/dashboard/schedules/new")).text  # datalist
    good = {
        "name": "berlin-report",
        "type": "report",
        "queue": "reports",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Berlin",
        "payload": '{"format": "pdf"}',
        "description": "Weekday report",
        "misfire": "run_once",
        "enabled": "on",
    }
    response = await dash.post("/dashboard/schedules", good)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard/schedules?done=schedule-create"
    row = schedule_row(db, "berlin-report")
    assert (row["type"], row["queue"], row["cron_expression"], row["timezone"]) == (
        "report",
        "reports",
        "0 9 * * 1-5",
        "Europe/Berlin",
    )
    assert row["payload"] == {"format": "pdf"} and row["description"] == "Weekday report"
    assert row["misfire_policy"] == "run_once" and row["enabled"] is True
    assert row["next_run_at"] is not None
    assert audit(db) == [
        {
            "actor": "dashboard:admin",
            "action": "schedule.create",
            "target": "berlin-report",
            "detail": {},
        }
    ]
    # Unchecked "enabled" stores a disabled schedule with no next run.
    quiet = {**good, "name": "quiet", "enabled": ""}
    del quiet["enabled"]
    assert (await dash.post("/dashboard/schedules", quiet)).status_code == 303
    assert schedule_row(db, "quiet")["enabled"] is False
    assert schedule_row(db, "quiet")["next_run_at"] is None


@pytest.mark.parametrize(
    ("change", "status", "message", "field"),
    [
        ({"cron": "61 * * * *"}, 422, "61", "cron"),
        ({"payload": '{"format": '}, 422, "payload is not valid JSON", "payload"),
        ({"payload": "[1, 2]"}, 422, "payload must be a JSON object", "payload"),
        ({"timezone": "Mars/Olympus"}, 422, "unknown timezone 'Mars/Olympus'", "timezone"),
        ({"name": "has space"}, 422, "invalid schedule name", "name"),
        ({"name": "taken"}, 409, "already exists", None),
        # Nested past Python's recursion limit: a 500 once.
        ({"payload": "[" * 5000 + "]" * 5000}, 422, "nested too deeply", "payload"),
        # A digit to str.isdigit() that int() refuses, described in words before it was
        # validated: a 500 once.
        ({"cron": "\u00b2 2 * * *", "payload": "["}, 422, "not valid JSON", "payload"),
    ],
)
async def test_a_bad_schedule_form_comes_back_with_the_input_and_stores_nothing(
    dash: Dash,
    db: Conn,
    app: Any,
    change: dict[str, str],
    status: int,
    message: str,
    field: str | None,
) -> None:
    await Ops(app).create_schedule({"name": "taken", "type": "t", "cron": "@daily"}, actor="test")
    before = snapshot(db)
    posted = {
        "name": "fresh",
        "type": "report",
        "queue": "default",
        "cron": "0 9 * * *",
        "timezone": "UTC",
        "payload": '{"format": "pdf"}',
        "description": "<b>mine</b>",
        "misfire": "skip",
        **change,
    }
    response = await dash.post("/dashboard/schedules", posted)
    assert response.status_code == status, response.text[:500]
    page = Page()
    page.feed(response.text)
    assert message in page.text
    # The form is shown again with what was typed (escaped), ready to correct.
    assert page.posted_to("/dashboard/schedules")
    assert posted["payload"] in page.text
    assert f'value="{posted["cron"]}"' in response.text
    assert "&lt;b&gt;mine&lt;/b&gt;" in response.text and "<b>mine</b>" not in response.text
    if field:
        assert f'<label for="f-{field}" class="invalid">' in response.text
    assert snapshot(db) == before and len(audit(db)) == 1


@pytest.mark.parametrize("name", ["%00", "a%0A", "x" * 300])
async def test_a_schedule_name_no_schedule_can_have_is_not_found(dash: Dash, name: str) -> None:
    edit = await dash.admin.get(f"/dashboard/schedules/{name}/edit")
    assert edit.status_code == 404
    run = await dash.post(f"/dashboard/schedules/{name}/run", {})
    assert run.status_code == 404


async def test_edit_a_schedule_from_the_form(dash: Dash, db: Conn, app: Any) -> None:
    ops = Ops(app)
    await ops.create_schedule(
        {"name": "nightly", "type": "report", "cron": "30 2 * * *", "payload": {"v": 1}},
        actor="test",
    )
    response = await dash.admin.get("/dashboard/schedules/nightly/edit")
    assert response.status_code == 200
    assert 'value="30 2 * * *"' in response.text and "every day at 02:30" in response.text
    assert '"v": 1' in parse(response).text
    form = {
        "type": "report",
        "queue": "default",
        "cron": "30 2 * * *",
        "timezone": "UTC",
        "payload": '{"v": 1}',
        "description": "",
        "misfire": "skip",
        "enabled": "on",
    }
    # The form as shown, saved again, changes nothing and writes no audit row.
    same = await dash.post("/dashboard/schedules/nightly/edit", form)
    assert same.headers["location"] == "/dashboard/schedules?done=schedule-same"
    assert len(audit(db)) == 1
    before = schedule_row(db, "nightly")
    edited = {
        **form,
        "cron": "0 4 * * *",
        "timezone": "America/New_York",
        "payload": '{"v": 2}',
        "queue": "reports",
        "description": "At four",
    }
    del edited["enabled"]
    response = await dash.post("/dashboard/schedules/nightly/edit", edited)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/schedules?done=schedule-update"
    after = schedule_row(db, "nightly")
    assert (after["cron_expression"], after["timezone"], after["queue"]) == (
        "0 4 * * *",
        "America/New_York",
        "reports",
    )
    assert after["payload"] == {"v": 2} and after["description"] == "At four"
    assert after["enabled"] is False and after["next_run_at"] is None
    assert after["id"] == before["id"]
    assert audit(db)[1:] == [
        {
            "actor": "dashboard:admin",
            "action": "schedule.update",
            "target": "nightly",
            "detail": {
                "fields": ["cron", "description", "enabled", "payload", "queue", "timezone"]
            },
        }
    ]
    # A bad edit: shown again with the input, 422, nothing changed.
    rows_before = snapshot(db)
    bad = await dash.post("/dashboard/schedules/nightly/edit", {**edited, "cron": "0 25 * * *"})
    assert bad.status_code == 422 and 'value="0 25 * * *"' in bad.text
    assert snapshot(db) == rows_before
    bad = await dash.post("/dashboard/schedules/nightly/edit", {**edited, "timezone": "Nowhere"})
    assert bad.status_code == 422 and "unknown timezone" in bad.text
    assert snapshot(db) == rows_before
    # CSRF failure: refused, nothing changed.
    refused = await dash.post(
        "/dashboard/schedules/nightly/edit", {**form}, csrf=tampered(token_for("admin"))
    )
    assert refused.status_code == 403 and snapshot(db) == rows_before
    assert (await dash.admin.get("/dashboard/schedules/ghost/edit")).status_code == 404
    assert (await dash.post("/dashboard/schedules/ghost/edit", form)).status_code == 404


async def test_workers_page(dash: Dash, db: Conn) -> None:
    worker = "0193a1b2-0000-7000-8000-0000000000aa"
    db.execute(
        "INSERT INTO job_workers (id, hostname, pid, queues, concurrency, version, in_flight,"
        " processed) VALUES (%s, 'box-1', 4242, '{default,emails}', 7, '0.1.0', 1, 99)",
        (worker,),
    )
    running = insert_job(db, status="active")
    db.execute("UPDATE jobs SET worker_id = %s WHERE id = %s", (worker, running))
    page = await dash.page("/dashboard/workers")
    for text in ("box-1", "4242", "99", "alive", "(1 alive)"):
        assert text in page.text, text
    assert f"/dashboard/jobs/{running}" in page.links
    assert "/dashboard/queues/emails" in page.links
    overview = await dash.page("/dashboard")
    assert overview.count("*", "workers") == 1


# ---------------------------------------------------------------- actions


async def test_queue_actions_change_only_that_queue(dash: Dash, db: Conn) -> None:
    made = fill(db)
    other_completed = insert_job(db, queue="reports", status="completed")
    response = await dash.post("/dashboard/queues/default/retry-failed")
    assert response.status_code == 303 and "done=retry&n=2" in response.headers["location"]
    assert {status_of(db, i) for i in made["default:failed"]} == {"pending"}
    assert status_of(db, made["emails:failed"][0]) == "failed"

    assert (await dash.post("/dashboard/queues/default/promote-delayed")).status_code == 303
    assert status_of(db, made["default:delayed"][0]) == "pending"

    response = await dash.post("/dashboard/queues/default/clean-completed")
    assert "done=clean&n=4" in response.headers["location"]
    assert all(status_of(db, i) is None for i in made["default:completed"])
    assert status_of(db, made["emails:completed"][0]) == "completed"
    assert status_of(db, other_completed) == "completed"

    assert (await dash.post("/dashboard/queues/default/pause")).status_code == 303
    paused = db.execute("SELECT paused FROM job_queues WHERE name = 'default'").fetchone()
    assert paused["paused"] is True
    page = await dash.page("/dashboard/queues/default?done=pause")
    assert "Paused the queue" in page.text and "/dashboard/queues/default/resume" in page.posts()
    assert (await dash.post("/dashboard/queues/default/resume")).status_code == 303
    paused = db.execute("SELECT paused FROM job_queues WHERE name = 'default'").fetchone()
    assert paused["paused"] is False
    assert (await dash.post("/dashboard/queues/ghost/pause")).status_code == 404

    entries = audit(db)
    assert [e["action"] for e in entries] == ["retry", "promote", "clean", "pause", "resume"]
    assert {e["actor"] for e in entries} == {"dashboard:admin"}
    assert sorted(entries[0]["detail"]["jobs"]) == sorted(str(i) for i in made["default:failed"])
    assert entries[1]["detail"]["jobs"] == [str(made["default:delayed"][0])]
    clean = entries[2]["detail"]
    assert clean["count"] == 4 and sorted(clean["jobs"]) == sorted(
        str(i) for i in made["default:completed"]
    )
    page = await dash.page("/dashboard/audit")
    assert "dashboard:admin" in page.text and "clean" in page.text
    assert f"/dashboard/jobs/{made['default:failed'][0]}" in page.links


async def test_job_actions(dash: Dash, db: Conn) -> None:
    failed = insert_job(db, status="failed")
    pending = insert_job(db, status="pending")
    delayed = insert_job(db, status="delayed")
    active = insert_job(db, status="active")
    done = insert_job(db, status="completed")

    response = await dash.post(f"/dashboard/jobs/{failed}/retry")
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{failed}?done=retry&n=1"
    assert status_of(db, failed) == "pending"
    assert (await dash.post(f"/dashboard/jobs/{pending}/cancel")).status_code == 303
    assert status_of(db, pending) == "cancelled"
    assert (await dash.post(f"/dashboard/jobs/{delayed}/promote")).status_code == 303
    assert status_of(db, delayed) == "pending"
    conflict = await dash.post(f"/dashboard/jobs/{done}/promote")
    assert conflict.status_code == 409 and "only delayed jobs" in conflict.text
    running = await dash.post(f"/dashboard/jobs/{active}/delete")
    assert running.status_code == 409 and status_of(db, active) == "active"
    response = await dash.post(f"/dashboard/jobs/{done}/delete")
    assert response.headers["location"] == "/dashboard/queues/default?done=delete"
    assert status_of(db, done) is None
    assert (await dash.post(f"/dashboard/jobs/{done}/retry")).status_code == 404
    cancel_running = await dash.post(f"/dashboard/jobs/{active}/cancel")
    assert cancel_running.status_code == 303
    assert db.execute("SELECT cancel_requested_at FROM jobs WHERE id = %s", (active,)).fetchone()[
        "cancel_requested_at"
    ]
    actions = [(e["action"], e["target"]) for e in audit(db)]
    assert actions == [
        ("retry", str(failed)),
        ("cancel", str(pending)),
        ("promote", None),
        ("delete", str(done)),
        ("cancel", str(active)),
    ]
    assert audit(db)[2]["detail"]["jobs"] == [str(delayed)]


# ---------------------------------------------------------------- safety


async def test_posts_without_csrf_or_from_elsewhere_are_refused(dash: Dash, db: Conn) -> None:
    failed = insert_job(db, status="failed")
    before = snapshot(db)
    target = f"/dashboard/jobs/{failed}/retry"
    token = await token_of(dash.admin)
    browser = dash.admin.cookies[CSRF_COOKIE]
    viewer_token = token_for("viewer", browser)
    assert token == token_for("admin", browser)
    attempts = [
        dash.admin.post(target, data={}, headers=ORIGIN),
        dash.admin.post(target, data={"csrf": ""}, headers=ORIGIN),
        dash.admin.post(target, data={"csrf": tampered(token)}, headers=ORIGIN),
        dash.admin.post(target, data={"csrf": viewer_token}, headers=ORIGIN),
        dash.admin.post(target, data={"csrf": token}, headers={"Origin": "http://evil.test"}),
        dash.admin.post(target, data={"csrf": token}, headers={"Origin": "null"}),
        dash.admin.post(target, data={"csrf": token}, headers={"Origin": "http://test:8080"}),
        dash.admin.post(target, data={"csrf": token}, headers={"Referer": "https://evil/x"}),
        dash.admin.post(target, content=json.dumps({"csrf": token}), headers=ORIGIN),
        # A token of this user made for another browser, and this browser's token sent
        # without its cookie.
        dash.admin.post(target, data={"csrf": token_for("admin", "1" * 64)}, headers=ORIGIN),
        dash.anonymous.post(target, data={"csrf": token}, headers=ORIGIN, auth=ADMIN),
        # The right host under another scheme.
        dash.admin.post(target, data={"csrf": token}, headers={"Origin": "https://test"}),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code in (403, 415), response.text
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert (await dash.admin.get(target)).status_code in (404, 405)
    assert snapshot(db) == before and audit(db) == []
    # The same request with the token and its own origin (or none, as curl sends) works.
    ok = await dash.admin.post(target, data={"csrf": token}, headers={"Referer": "http://test/d"})
    assert ok.status_code == 303 and status_of(db, failed) == "pending"


async def test_read_only_users_see_everything_and_change_nothing(
    dash: Dash, db: Conn, settings: Settings
) -> None:
    made = fill(db)
    failed = made["default:failed"][0]
    paths = [
        "/dashboard",
        "/dashboard/queues/default",
        f"/dashboard/jobs/{failed}",
        "/dashboard/failures",
        "/dashboard/schedules",
        "/dashboard/workers",
        "/dashboard/audit",
    ]
    for path in paths:
        page = await dash.page(path, dash.viewer)
        assert "read-only" in page.text
        assert page.posts() == {}, path  # no forms at all, only disabled buttons
        assert all(disabled for _, disabled in page.buttons), path
    viewer_page = await dash.page("/dashboard", dash.viewer)
    admin_page = await dash.page("/dashboard")
    assert viewer_page.counts == admin_page.counts
    before = snapshot(db)
    token = token_for("viewer")
    for action in (
        f"/dashboard/jobs/{failed}/retry",
        f"/dashboard/jobs/{failed}/delete",
        "/dashboard/queues/default/pause",
        "/dashboard/queues/default/clean-completed",
        "/dashboard/failures/retry",
        "/dashboard/schedules/x/delete",
        "/dashboard/schedules/x/run",
        "/dashboard/schedules/x/edit",
        "/dashboard/schedules",
    ):
        response = await dash.post(action, client=dash.viewer, csrf=token)
        assert response.status_code == 403, action
        assert "read-only" in response.text
    assert snapshot(db) == before and audit(db) == []
    for form_page in ("/dashboard/schedules/new", "/dashboard/schedules/x/edit"):
        response = await dash.viewer.get(form_page)
        assert response.status_code == 403 and "read-only" in response.text
    listing = await dash.page("/dashboard/schedules", dash.viewer)
    assert "/dashboard/schedules/new" not in listing.links

    # JOBS_DASHBOARD_READONLY=true makes the main login read-only as well.
    web = make_web(settings, dashboard_readonly=True)
    async with asgi_client(web, auth=ADMIN) as admin:
        page = parse(await admin.get(f"/dashboard/jobs/{failed}"))
        assert page.posts() == {} and "read-only" in page.text
        response = await admin.post(
            f"/dashboard/jobs/{failed}/retry", data={"csrf": token_for("admin")}, headers=ORIGIN
        )
        assert response.status_code == 403
    assert snapshot(db) == before


async def test_logins(dash: Dash, settings: Settings) -> None:
    assert (await dash.anonymous.get("/dashboard")).status_code == 401
    wrong = await dash.anonymous.get("/dashboard", auth=("viewer", "pw"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
    assert (await dash.anonymous.get("/dashboard/static/dashboard.css")).status_code == 401
    # A read-only login alone never leaves the dashboard open to anyone.
    web = create_app(
        settings.replace(dashboard_readonly_user="viewer", dashboard_readonly_password="look")
    )
    async with asgi_client(web) as client:
        assert (await client.get("/dashboard")).status_code == 401
        page = parse(await client.get("/dashboard", auth=VIEWER))
        assert "read-only" in page.text


async def test_every_response_carries_the_security_headers(dash: Dash, db: Conn) -> None:
    job = insert_job(db, status="failed")
    responses = [
        await dash.admin.get(path)
        for path in (
            "/dashboard",
            "/dashboard/queues/default",
            f"/dashboard/jobs/{job}",
            "/dashboard/failures",
            "/dashboard/schedules",
            "/dashboard/workers",
            "/dashboard/audit",
            "/dashboard/counts.json",
            "/dashboard/static/dashboard.css",
            "/dashboard/static/dashboard.js",
            "/dashboard/static/favicon.svg",
            "/dashboard/static/secret.py",
            "/dashboard/nowhere",
            "/dashboard/jobs/xyz",
        )
    ]
    responses.append(await dash.post(f"/dashboard/jobs/{job}/retry"))
    for response in responses:
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    assert [r.status_code for r in responses[-5:]] == [200, 404, 404, 404, 303]
    css = responses[8]
    assert css.headers["content-type"].startswith("text/css")
    assert responses[9].headers["content-type"].startswith("text/javascript")
    # No inline script, style, or event handler anywhere: the CSP would block them.
    for response in responses[:7]:
        page = parse(response)
        assert page.scripts == [{"src": "/dashboard/static/dashboard.js?v=0.1.0", "defer": None}]
        assert page.styled == [] and page.handlers == []


async def test_hostile_strings_are_escaped_everywhere(dash: Dash, db: Conn, app: Any) -> None:
    ops = Ops(app)
    ids = []
    for attack in XSS:
        ids.append(
            insert_job(
                db,
                type=attack,
                status="failed",
                payload={"note": attack, attack: attack},
                last_error=f"{attack}\n{attack}",
            )
        )
    # Rows as SQL may write them, whatever the API accepts: hostile types included.
    mail = insert_job(db, type="mail", status="failed", last_error=f"{XSS[0]}\nstack")
    await ops.create_schedule(
        {"name": "javascript:alert", "type": "report", "cron": "0 * * * *", "description": XSS[1]},
        actor="test",
    )
    db.execute("UPDATE job_schedules SET type = %s", [XSS[0]])
    bad_queue = await dash.admin.post("/api/jobs", json={"type": "a", "queue": XSS[0]})
    assert bad_queue.status_code == 422 and "invalid queue name" in bad_queue.text
    bad_schedule = await ops_error(ops, {"name": XSS[0], "type": "a", "cron": "* * * * *"})
    assert "name" in bad_schedule
    pages_to_check = [
        "/dashboard",
        "/dashboard/queues/default",
        "/dashboard/queues/default?status=failed",
        "/dashboard/failures",
        "/dashboard/schedules",
        *(f"/dashboard/jobs/{i}" for i in ids),
        "/dashboard/queues/default?type=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    ]
    for path in pages_to_check:
        response = await dash.admin.get(path)
        page = parse(response)
        assert "<script>alert" not in response.text, path
        assert "<img src=x" not in response.text, path
        assert page.handlers == [] and len(page.scripts) == 1, path
        assert not any(link.lower().startswith("javascript:") for link in page.links), path
    job_page = (await dash.admin.get(f"/dashboard/jobs/{ids[0]}")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_page
    img_page = (await dash.admin.get(f"/dashboard/jobs/{ids[1]}")).text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in img_page
    schedules = (await dash.admin.get("/dashboard/schedules")).text
    assert 'action="/dashboard/schedules/javascript%3Aalert/disable"' in schedules
    # Hidden form fields carry hostile values back unchanged (escaped in the HTML).
    page = await dash.page("/dashboard/failures")
    groups = page.posted_to("/dashboard/failures/retry")
    assert {(f["type"], f["error_line"]) for f in groups} >= {(a, a) for a in XSS}
    form = next(f for f in groups if f["type"] == "mail")
    assert form["error_line"] == XSS[0]
    assert (await dash.post("/dashboard/failures/retry", form)).status_code == 303
    assert status_of(db, mail) == "pending" and status_of(db, ids[0]) == "failed"


async def ops_error(ops: Ops, fields: dict[str, Any]) -> str:
    from pgjobs.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        await ops.create_schedule(fields, actor="test")
    return str(caught.value)


async def test_dashboard_mounted_elsewhere(settings: Settings, db: Conn) -> None:
    job = insert_job(db, status="failed")
    web = create_app(settings.replace(dashboard_path="/ops/jobs"))
    async with asgi_client(web) as client:
        page = parse(await client.get("/ops/jobs"))
        assert "/ops/jobs/queues/default" in page.links
        assert page.scripts[0]["src"] == "/ops/jobs/static/dashboard.js?v=0.1.0"
        token = re.findall(
            r'name="csrf" value="([0-9a-f]+)"',
            (await client.get(f"/ops/jobs/jobs/{job}")).text,
        )[0]
        response = await client.post(
            f"/ops/jobs/jobs/{job}/retry", data={"csrf": token}, headers=ORIGIN
        )
        assert response.headers["location"] == f"/ops/jobs/jobs/{job}?done=retry&n=1"
        assert (await client.get("/dashboard")).status_code == 404
        assert audit(db)[0]["actor"] == "dashboard:anonymous"


async def test_csrf_cookie_is_secure_over_https(settings: Settings, db: Conn) -> None:
    job = insert_job(db, status="failed")
    web = make_web(settings)
    async with asgi_client(web, base_url="https://test", auth=ADMIN) as browser:
        page = await browser.get(f"/dashboard/jobs/{job}")
        cookie = page.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        token = re.findall(r'name="csrf" value="([0-9a-f]+)"', page.text)[0]
        # Over https the page's own origin is https://test; http://test is another.
        target = f"/dashboard/jobs/{job}/retry"
        plain = await browser.post(target, data={"csrf": token}, headers=ORIGIN)
        assert plain.status_code == 403 and status_of(db, job) == "failed"
        ok = await browser.post(target, data={"csrf": token}, headers={"Origin": "https://test"})
        assert ok.status_code == 303 and status_of(db, job) == "pending"
