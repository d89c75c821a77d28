"""The dashboard's bulk actions on checked rows and the job search (page and
GET /api/jobs?q=): each action changes only what the job's state allows and reports the
rest, writes one audit row, and is refused without CSRF or to read-only users; the
search finds jobs by id, type, status, payload field and error words, pages, and refuses
bad queries with a message."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from pgjobs.ops.service import MAX_BULK_IDS
from tests.db.test_dashboard import ORIGIN, XSS, Dash, audit, dash, parse, token_for
from tests.opsdata import insert_job, status_of

__all__ = ["dash"]  # the fixture, shared with test_dashboard.py

pytestmark = pytest.mark.anyio
Conn = Any
FORM = "application/x-www-form-urlencoded"


def ids_form(action: str, ids: list[Any], **extra: str) -> list[tuple[str, str]]:
    return [("action", action), *[("id", str(i)) for i in ids], *extra.items()]


async def bulk(dash: Dash, fields: list[tuple[str, str]], **kwargs: Any) -> Any:
    client = kwargs.pop("client", dash.admin)
    token = kwargs.pop("csrf", None)
    if token is None:
        html = (await client.get("/dashboard/queues/default")).text
        token = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    data = [("csrf", token), *fields] if token else fields
    headers = {**kwargs.pop("headers", ORIGIN), "Content-Type": FORM}
    return await client.post("/dashboard/bulk", content=urlencode(data), headers=headers)


async def test_bulk_retry_mixed_states_reports_each_and_audits_once(dash: Dash, db: Conn) -> None:
    failed = [insert_job(db, status="failed", last_error="boom") for _ in range(2)]
    cancelled = insert_job(db, status="cancelled")
    running = insert_job(db, status="active")
    done = insert_job(db, status="completed")
    gone = uuid.uuid4()
    listed = [*failed, cancelled, running, done, gone]
    response = await bulk(dash, ids_form("retry", listed, queue="default", status="failed"))
    assert response.status_code == 303
    target = urlsplit(response.headers["location"])
    assert target.path == "/dashboard/queues/default"
    assert parse_qs(target.query)["status"] == ["failed"]
    page = await dash.page(response.headers["location"])
    assert (
        "Retried 3 job(s); skipped 1 (running), 1 (completed), 1 (no longer exists)." in page.text
    )
    assert [status_of(db, j) for j in [*failed, cancelled]] == ["pending"] * 3
    assert (status_of(db, running), status_of(db, done)) == ("active", "completed")
    [row] = audit(db)
    assert (row["actor"], row["action"], row["target"]) == ("dashboard:admin", "retry", None)
    assert sorted(row["detail"]["jobs"]) == sorted(str(j) for j in [*failed, cancelled])
    assert row["detail"]["skipped"] == {"active": 1, "completed": 1, "missing": 1}


async def test_bulk_cancel_promote_delete(dash: Dash, db: Conn) -> None:
    waiting, delayed, running, done = (
        insert_job(db, status=s) for s in ("pending", "delayed", "active", "completed")
    )
    parent = insert_job(db, status="completed")
    insert_job(db, status="blocked", depends_on=[parent])

    response = await bulk(dash, ids_form("promote", [delayed, waiting]))
    assert (
        "Promoted 1 job(s); skipped 1 (waiting)."
        in (await dash.page(response.headers["location"])).text
    )
    assert status_of(db, delayed) == "pending"

    response = await bulk(dash, ids_form("cancel", [waiting, running, done]))
    assert response.status_code == 303
    assert status_of(db, waiting) == "cancelled"
    assert status_of(db, running) == "active"  # flagged; its worker stops it
    assert db.execute(
        "SELECT cancel_requested_at IS NOT NULL AS asked FROM jobs WHERE id = %s", (running,)
    ).fetchone()["asked"]

    response = await bulk(dash, ids_form("delete", [done, running, parent], q="type:task"))
    location = response.headers["location"]
    assert urlsplit(location).path == "/dashboard/search"
    page = await dash.page(location)
    assert "Deleted 1 job(s); skipped 1 (running), 1 (other jobs wait on it)." in page.text
    assert status_of(db, done) is None and status_of(db, running) == "active"
    assert status_of(db, parent) == "completed"
    actions = [(r["action"], len(r["detail"]["jobs"])) for r in audit(db)]
    assert actions == [("promote", 1), ("cancel", 2), ("delete", 1)]


async def test_bulk_delete_keeps_a_job_another_table_references(dash: Dash, db: Conn) -> None:
    done = [insert_job(db, status="completed") for _ in range(3)]
    # A table of the user's own, its foreign key left at NO ACTION.
    db.execute("CREATE TABLE invoices (id int PRIMARY KEY, job_id uuid REFERENCES jobs (id))")
    db.execute("INSERT INTO invoices VALUES (1, %s)", (done[1],))
    response = await bulk(dash, ids_form("delete", done, queue="default", status="completed"))
    assert response.status_code == 303
    page = await dash.page(response.headers["location"])
    assert "Deleted 2 job(s); skipped 1 (still referenced)." in page.text
    assert [status_of(db, j) for j in done] == [None, "completed", None]
    [row] = audit(db)
    assert (row["actor"], row["action"]) == ("dashboard:admin", "delete")
    assert sorted(row["detail"]["jobs"]) == sorted(str(j) for j in (done[0], done[2]))
    assert row["detail"]["skipped"] == {"referenced": 1}
    assert row["detail"]["referenced_by"] == {"invoices_job_id_fkey": 1}


async def test_bulk_delete_of_only_referenced_jobs_writes_no_row(dash: Dash, db: Conn) -> None:
    job = insert_job(db, status="failed")
    db.execute("CREATE TABLE invoices (id int PRIMARY KEY, job_id uuid REFERENCES jobs (id))")
    db.execute("INSERT INTO invoices VALUES (1, %s)", (job,))
    response = await bulk(dash, ids_form("delete", [job]))
    assert response.status_code == 303
    page = await dash.page(response.headers["location"])
    assert "Deleted 0 job(s); skipped 1 (still referenced)." in page.text
    assert status_of(db, job) == "failed"
    assert audit(db) == []


async def test_bulk_refusals_change_nothing(dash: Dash, db: Conn) -> None:
    failed = insert_job(db, status="failed")
    # No CSRF token, a wrong one, a read-only login, another origin: 403.
    assert (await bulk(dash, ids_form("retry", [failed]), csrf="")).status_code == 403
    wrong = token_for("admin")
    assert (await bulk(dash, ids_form("retry", [failed]), csrf=wrong)).status_code == 403
    viewer = await bulk(dash, ids_form("retry", [failed]), client=dash.viewer, csrf=wrong)
    assert viewer.status_code == 403
    elsewhere = await bulk(
        dash, ids_form("retry", [failed]), headers={"Origin": "http://evil.example"}
    )
    assert elsewhere.status_code == 403
    # Too many ids, none, an unknown action, a malformed id: 422 with the reason.
    many = [uuid.uuid4() for _ in range(MAX_BULK_IDS + 1)]
    too_many = await bulk(dash, ids_form("retry", many))
    assert too_many.status_code == 422 and f"1 to {MAX_BULK_IDS} job ids" in too_many.text
    assert (await bulk(dash, [("action", "retry")])).status_code == 422
    unknown = await bulk(dash, ids_form("explode", [failed]))
    assert unknown.status_code == 422 and "unknown bulk action" in unknown.text
    assert (await bulk(dash, ids_form("retry", ["not-a-uuid"]))).status_code == 422
    assert status_of(db, failed) == "failed"
    assert audit(db) == []
    # Exactly the limit is fine.
    ok = await bulk(dash, ids_form("retry", [failed, *many[: MAX_BULK_IDS - 1]]))
    assert ok.status_code == 303 and status_of(db, failed) == "pending"


async def test_queue_rows_are_compact_with_checkboxes(dash: Dash, db: Conn) -> None:
    long_type = "a-very-long-job-type-name-" * 3
    job = insert_job(db, type=long_type[:100], status="failed", last_error="x" * 500 + "\nmore")
    html = (await dash.admin.get("/dashboard/queues/default")).text
    assert f'name="id" value="{job}"' in html and "data-check-all" in html
    assert f'title="{long_type[:100]}"' in html  # the whole type in the title
    assert "more" not in html  # one line of the error; the rest is on the job page
    viewer = (await dash.viewer.get("/dashboard/queues/default")).text
    assert f'name="id" value="{job}"' not in viewer and "data-check-all" not in viewer


async def test_search_page_finds_jobs_by_every_kind_of_term(dash: Dash, db: Conn) -> None:
    numeric = insert_job(db, type="send-email", payload={"user_id": 42, "to": "a@example.com"})
    textual = insert_job(db, type="send-email", payload={"user_id": "42"}, queue="emails")
    nested = insert_job(db, type="sync", payload={"customer": {"id": 7, "name": "Ann Lee"}})
    refused = insert_job(
        db, type="http-request", status="failed", last_error="ConnectError: connection refused"
    )
    timeout = insert_job(db, type="http-request", status="failed", last_error="timed out")

    async def found(q: str) -> set[Any]:
        response = await dash.admin.get("/dashboard/search", params={"q": q})
        page = parse(response)
        return {
            uuid.UUID(link.rsplit("/", 1)[1])
            for link in page.links
            if link.startswith("/dashboard/jobs/")
        }

    assert await found("user_id=42") == {numeric, textual}
    assert await found('user_id="42"') == {textual}
    assert await found("payload.to=a@example.com") == {numeric}
    assert await found('customer.name="Ann Lee"') == {nested}
    assert await found("customer.id=7 type:sync") == {nested}
    assert await found('error:"connection refused"') == {refused}
    assert await found("refused") == {refused}
    assert await found("status:failed type:http-request") == {refused, timeout}
    assert await found("status:failed -refused error:timed") == {timeout}
    assert await found(str(timeout)) == {timeout}
    assert await found(f"id:{str(nested)[:13]}") >= {nested}
    assert await found("queue:emails") == {textual}
    assert await found("user_id=43") == set()

    # Bad queries say why, on the page; hostile text is escaped.
    page = parse(await dash.admin.get("/dashboard/search", params={"q": "status:bogus"}))
    assert "unknown status 'bogus'" in page.text
    for hostile in XSS:
        html = (await dash.admin.get("/dashboard/search", params={"q": hostile})).text
        assert "<script>alert" not in html and "<img src=x" not in html
    # The search box is on every page.
    assert 'action="/dashboard/search"' in (await dash.admin.get("/dashboard/workers")).text


async def test_search_pages_newest_first(dash: Dash, db: Conn, monkeypatch: Any) -> None:
    from pgjobs.web.dashboard import pages

    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    made = [insert_job(db, payload={"batch": 1}) for _ in range(5)]
    seen: list[str] = []
    url = "/dashboard/search?q=batch%3D1"
    while url:
        html = (await dash.admin.get(url)).text
        seen += [m.split('"')[0] for m in html.split('name="id" value="')[1:]]
        nxt = [
            p
            for p in html.split('href="')[1:]
            if p.startswith("/dashboard/search?") and "cursor=" in p
        ]
        url = nxt[0].split('"')[0].replace("&amp;", "&") if nxt else ""
    assert seen == [str(j) for j in reversed(made)]


async def test_api_search(dash: Dash, db: Conn, settings: Any) -> None:
    import httpx

    from tests.db.test_dashboard import make_web

    job = insert_job(db, status="failed", payload={"order": 9}, last_error="card declined")
    insert_job(db, payload={"order": 10})
    web = make_web(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            body = (await api.get("/api/jobs", params={"q": "order=9"})).json()
            assert [j["id"] for j in body["jobs"]] == [str(job)]
            body = (await api.get("/api/jobs", params={"q": "declined", "limit": 1})).json()
            assert [j["id"] for j in body["jobs"]] == [str(job)] and body["next_cursor"] is None
            mixed = await api.get("/api/jobs", params={"q": "order=9", "status": "failed"})
            assert mixed.status_code == 422
            assert "q cannot be combined with status" in mixed.json()["error"]["message"]
            bad = await api.get("/api/jobs", params={"q": "a..b=1"})
            assert bad.status_code == 422 and bad.json()["error"]["code"]
            long = await api.get("/api/jobs", params={"q": "x" * 501})
            assert long.status_code in (400, 422)


@pytest.mark.parametrize(
    ("q", "status", "message"),
    [
        ("a=1e999", 200, None),  # beyond any JSON number PostgreSQL holds: matched as text
        ("a=NaN", 200, None),
        ("a=-Infinity", 200, None),
        ('a="\\u0000"', 422, "NUL character"),
        ('a="\\ud800"', 422, "lone surrogate"),
        ("password=hunter2", 422, "holds a secret"),
        ("payload.stripe.api_key=sk_live_x", 422, "holds a secret"),
    ],
)
async def test_api_search_edge_values_are_4xx_or_found(
    dash: Dash, db: Conn, settings: Any, q: str, status: int, message: str | None
) -> None:
    """Values JSON allows in Python but jsonb does not, and fields whose values are
    masked everywhere (a search on them would confirm a guessed secret)."""
    import httpx

    from tests.db.test_dashboard import make_web

    text = insert_job(db, payload={"a": q.partition("=")[2]})
    web = make_web(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            response = await api.get("/api/jobs", params={"q": q})
            page = await dash.viewer.get("/dashboard/search", params={"q": q})
    assert response.status_code == status, response.text
    if message is None:
        assert [j["id"] for j in response.json()["jobs"]] == [str(text)]
        assert page.status_code == 200
    else:
        assert message in response.json()["error"]["message"]
        assert page.status_code < 500 and message in page.text  # the form says why


async def test_payload_search_finds_running_jobs_too(dash: Dash, db: Conn, settings: Any) -> None:
    """The payload index leaves running jobs out; the search reads them apart."""
    import httpx

    from tests.db.test_dashboard import make_web

    waiting = insert_job(db, payload={"tenant": 7})
    running = insert_job(db, status="active", payload={"tenant": 7})
    done = insert_job(db, status="completed", payload={"tenant": 7})
    insert_job(db, status="active", payload={"tenant": 8})
    web = make_web(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            body = (await api.get("/api/jobs", params={"q": "tenant=7"})).json()
    assert {j["id"] for j in body["jobs"]} == {str(waiting), str(running), str(done)}
