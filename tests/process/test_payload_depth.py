"""Deeply nested payloads: every producer refuses them, and one that got into the table
anyway (any database login can UPDATE a payload; jsonb nests thousands of levels) fails
by itself without stopping the worker that claims it, the API or the dashboard.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.errors import ValidationError
from pgjobs.jsonlimits import MAX_JSON_DEPTH
from tests.helpers import wait_until_async
from tests.webserver import clean_env, running_server

pytestmark = pytest.mark.anyio

TOKEN = "depth-token"
REFUSAL = f"payload is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)"
# Deep enough to break Python's decoder (the worker's claim, the API, the dashboard).
POISON_DEPTH = 5000
Conn = psycopg.Connection[dict[str, Any]]


def nested_text(levels: int) -> str:
    """A payload object whose arrays bring it to `levels` levels of nesting."""
    arrays = levels - 1
    return '{"x":' + "[" * arrays + "]" * arrays + "}"


def nested(levels: int) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(nested_text(levels))
    return payload


def job_row(db: Conn, job_id: Any) -> dict[str, Any]:
    row = db.execute(
        "SELECT status, attempts, last_error FROM jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return row


# ---------------------------------------------------------------- producers


async def test_python_producers_refuse_a_payload_past_the_limit(app: App, db: Conn) -> None:
    at_limit = await app.create("t", nested(MAX_JSON_DEPTH))
    assert at_limit.payload == nested(MAX_JSON_DEPTH)
    for attempt in (
        lambda: app.build("t", nested(MAX_JSON_DEPTH + 1)),
        lambda: app.create("t", nested(MAX_JSON_DEPTH + 1)),
        lambda: app.create_many([{"type": "t", "payload": nested(MAX_JSON_DEPTH + 1)}]),
        lambda: app.create("t", {}, metadata=nested(MAX_JSON_DEPTH + 1)),
    ):
        with pytest.raises(ValidationError) as refused:
            result = attempt()
            if hasattr(result, "__await__"):
                await result
        assert str(refused.value).endswith(REFUSAL.removeprefix("payload"))
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 1}


def test_sql_functions_refuse_a_payload_past_the_limit(db: Conn) -> None:
    deep = nested_text(POISON_DEPTH)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute("SELECT pgjobs_enqueue('t', %s::jsonb, '{}')", (deep,))
    assert refused.value.diag.message_primary == REFUSAL
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        db.execute(
            "SELECT pgjobs_enqueue_many(jsonb_build_array(jsonb_build_object("
            "'type', 't', 'payload', %s::jsonb)))",
            (nested_text(MAX_JSON_DEPTH + 1),),
        )
    assert REFUSAL in str(refused.value.diag.message_primary)
    db.execute("SELECT pgjobs_enqueue('t', %s::jsonb, '{}')", (nested_text(MAX_JSON_DEPTH),))
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 1}


def test_rest_and_cli_refuse_a_payload_past_the_limit(db_url: str, db: Conn) -> None:
    # Well inside what the REST body parser and the CLI's option parser accept.
    deep = nested(MAX_JSON_DEPTH + 1)
    with running_server(db_url, JOBS_API_TOKEN=TOKEN, LOG_LEVEL="warning") as base:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for path, body in (
            ("/api/jobs", {"type": "t", "payload": deep}),
            ("/api/jobs/bulk", {"jobs": [{"type": "t", "payload": deep}]}),
        ):
            response = httpx.post(base + path, json=body, headers=headers, timeout=30)
            assert response.status_code == 422, response.text
            assert REFUSAL in response.json()["error"]["message"]
    cli = subprocess.run(
        [sys.executable, "-m", "pgjobs", "enqueue", "t", "--payload", json.dumps(deep)],
        env=clean_env(DATABASE_URL=db_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [f"error: {REFUSAL}"]
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}


# ---------------------------------------------------------------- a poisoned job


def poison(db: Conn, job_id: Any, levels: int = POISON_DEPTH) -> None:
    """What any database login can do: the producers' checks do not stand in its way."""
    db.execute("UPDATE jobs SET payload = %s::jsonb WHERE id = %s", (nested_text(levels), job_id))


async def test_a_poisoned_job_fails_alone_and_the_worker_keeps_claiming(app: App, db: Conn) -> None:
    ran: list[int] = []

    @app.handler("work")
    async def work(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        ran.append(payload["n"])

    # The poisoned job comes first in the queue, so it is in the same claim as the rest,
    # and the worker serves a second queue whose jobs share that claim.
    bad = await app.create("work", {"n": -1}, queue="poisoned", priority="critical")
    poison(db, bad.id)
    good = [await app.create("work", {"n": n}, queue="poisoned") for n in range(3)]
    good += [await app.create("work", {"n": n}) for n in range(3, 6)]

    async with app.worker(queues=["default", "poisoned"], concurrency=8):

        async def all_done() -> bool:
            statuses = {job_row(db, job.id)["status"] for job in [bad, *good]}
            return statuses == {"completed", "failed"}

        await wait_until_async(all_done, timeout=30, message="every job to finish")
        # Still claiming after the poisoned job: a job created now runs too.
        later = await app.create("work", {"n": 6}, queue="poisoned")
        await wait_until_async(
            lambda: _status_is(db, later.id, "completed"), timeout=30, message="a later job"
        )

    assert sorted(ran) == list(range(7))
    assert all(job_row(db, job.id)["status"] == "completed" for job in good)
    failed = job_row(db, bad.id)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    [failure] = db.execute(
        "SELECT error_message FROM job_failures WHERE job_id = %s", (bad.id,)
    ).fetchall()
    assert failure["error_message"] == (
        f"the job's payload cannot be decoded: nested more than {MAX_JSON_DEPTH} levels deep"
    )


async def _status_is(db: Conn, job_id: Any, status: str) -> bool:
    return job_row(db, job_id)["status"] == status


def test_api_and_dashboard_show_a_poisoned_job(sync_app: App, db: Conn, db_url: str) -> None:
    jobs = [sync_app.create_sync("work", {"n": n}) for n in range(3)]
    poison(db, jobs[0].id)
    poison(db, jobs[1].id, levels=900)  # decodes, but breaks code that walks it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        running_server(db_url, JOBS_API_TOKEN=TOKEN, LOG_LEVEL="warning") as base,
        httpx.Client(base_url=base, headers=auth, timeout=30) as http,
    ):
        for job in jobs[:2]:
            shown = http.get(f"/api/jobs/{job.id}")
            assert shown.status_code == 200, shown.text[:300]
            assert shown.json()["payload"] == (
                f"(too deeply nested to display: nested more than {MAX_JSON_DEPTH} levels deep)"
            )
            page = http.get(f"/dashboard/jobs/{job.id}")
            assert page.status_code == 200, page.text[:300]
            assert "too deeply nested to display" in page.text
            assert len(page.text) < 100_000
        assert http.get(f"/api/jobs/{jobs[2].id}").json()["payload"] == {"n": 2}
        listed = http.get("/api/jobs", params={"limit": 10})
        assert listed.status_code == 200 and len(listed.json()["jobs"]) == 3
        assert http.get("/dashboard/queues/default").status_code == 200
