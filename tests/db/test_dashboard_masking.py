"""Secrets in error texts are masked on every dashboard page that shows them (job page
and its stack traces, queue list, search results, failures page) exactly as the REST
API masks them, and the failures page's "Retry all" still finds the stored jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgjobs.web.dashboard import stacks
from tests.db.test_dashboard import Dash, dash, parse
from tests.opsdata import insert_job, status_of

__all__ = ["dash"]  # the fixture, shared with test_dashboard.py

pytestmark = pytest.mark.anyio
Conn = Any

SECRETS = ("Pa55", "s3cret", "abc123", "Zx9")
FIRST_LINE = (
    "OperationalError: could not connect to postgres://app:Pa55@db/x"
    " (host=db user=app password=s3cret)"
)
# An unquoted value is masked to the next space: the closing bracket goes with it.
SHOWN_LINE = (
    "OperationalError: could not connect to postgres://app:***@db/x (host=db user=app password=***"
)
INTERNAL = stacks.PACKAGE + "engine/worker.py"
STACK = (
    "Traceback (most recent call last):\n"
    f'  File "{INTERNAL}", line 10, in run\n'
    "    await handler(ctx)\n"
    f'  File "{INTERNAL}", line 20, in call\n'
    "    return await fn()\n"
    '  File "/app/handlers.py", line 5, in sync\n'
    "    conn = connect(dsn)\n"
    f"psycopg.{FIRST_LINE}"
)


def failed_job(db: Conn, error: str) -> Any:
    job = insert_job(db, type="sync", status="failed", last_error=error)
    db.execute("UPDATE job_failures SET error_stack = %s WHERE job_id = %s", (STACK, job))
    db.execute(
        "UPDATE jobs SET progress_message = 'retrying with token=abc123' WHERE id = %s", (job,)
    )
    return job


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (where, secret)


async def test_error_texts_are_masked_on_every_page_as_in_the_api(dash: Dash, db: Conn) -> None:
    error = f"{FIRST_LINE}\nretry with Authorization: Bearer Zx9.tok"
    job = failed_job(db, error)

    # The job page: last error, failure message, stack trace, progress message.
    response = await dash.admin.get(f"/dashboard/jobs/{job}")
    page = parse(response)
    assert_no_secret(response.text, "job page")
    assert SHOWN_LINE in page.text and "Authorization: Bearer ***" in page.text
    assert "retrying with token=***" in page.text
    # The masked trace still folds pgjobs' frames and keeps the handler's in view.
    assert '<details class="frames"><summary>2 pgjobs frames</summary>' in response.text
    assert 'File "/app/handlers.py", line 5, in sync' in page.text

    # The queue's failed tab and the search results list the masked first line.
    for path, params in (
        ("/dashboard/queues/default", {"status": "failed"}),
        ("/dashboard/search", {"q": "status:failed"}),
        ("/dashboard/search", {"q": "connect"}),
    ):
        response = await dash.admin.get(path, params=params)
        assert SHOWN_LINE in parse(response).text, (path, params)
        assert_no_secret(response.text, f"{path} {params}")

    # The failures page: the group's line, and its retry form, are masked.
    response = await dash.admin.get("/dashboard/failures")
    page = parse(response)
    assert_no_secret(response.text, "failures page")
    (form,) = page.posted_to("/dashboard/failures/retry")
    assert form["error_line"] == SHOWN_LINE

    # The API shows the same masked texts.
    api = (await dash.anonymous.get(f"/api/jobs/{job}")).json()
    assert_no_secret(json.dumps(api), "API job")
    assert api["last_error"] == f"{SHOWN_LINE}\nretry with Authorization: Bearer ***"
    assert api["progress_message"] == "retrying with token=***"
    listed = (await dash.anonymous.get("/api/jobs", params={"status": "failed"})).json()
    assert_no_secret(json.dumps(listed), "API list")
    assert [j["last_error"] for j in listed["jobs"]] == [api["last_error"]]


async def test_retry_all_retries_the_stored_group_behind_a_masked_line(
    dash: Dash, db: Conn
) -> None:
    first = failed_job(db, FIRST_LINE)
    also = failed_job(db, f"{FIRST_LINE}\nsecond attempt")
    # Another password masks to the same line but is another error: not retried.
    other = failed_job(db, FIRST_LINE.replace("s3cret", "0ther"))
    page = await dash.page("/dashboard/failures")
    forms = page.posted_to("/dashboard/failures/retry")
    assert len(forms) == 2 and {f["error_line"] for f in forms} == {SHOWN_LINE}
    form = next(f for f in forms if f["sample"] in (str(first), str(also)))
    response = await dash.post("/dashboard/failures/retry", form)
    assert response.status_code == 303 and response.headers["location"].endswith("n=2")
    assert status_of(db, first) == status_of(db, also) == "pending"
    assert status_of(db, other) == "failed"

    # A masked line whose sample no longer holds it retries nothing.
    (form,) = (await dash.page("/dashboard/failures")).posted_to("/dashboard/failures/retry")
    db.execute("UPDATE jobs SET last_error = 'changed' WHERE id = %s", (other,))
    response = await dash.post("/dashboard/failures/retry", form)
    assert response.status_code == 303 and response.headers["location"].endswith("n=0")
    assert status_of(db, other) == "failed"
