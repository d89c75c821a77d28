"""/metrics against the database after a real run of 1,000 jobs through the worker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgjobs.app import App
from pgjobs.context import JobContext
from pgjobs.web import create_app
from tests.web_client import asgi_client

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


def register_handlers(app: App) -> None:
    @app.handler("ok")
    async def ok(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": payload["n"]}

    @app.handler("boom")
    async def boom(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise RuntimeError("always fails")

    @app.handler("flaky")
    def flaky(ctx: JobContext, payload: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        return "second try"


async def test_metrics_counters_match_the_database_after_1000_jobs(app: App, db: Conn) -> None:
    register_handlers(app)
    retry_now = {"attempts": 2, "backoff": {"type": "fixed", "delay": 0}}
    jobs = (
        [{"type": "ok", "payload": {"n": i}} for i in range(800)]
        + [{"type": "boom", "options": {"attempts": 1}} for _ in range(100)]
        + [{"type": "flaky", "queue": "other", "options": retry_now} for _ in range(100)]
    )
    assert len(await app.create_many(jobs)) == 1000
    for _ in range(10):
        await app.drain("default", "other", concurrency=20)
        left = db.execute(
            "SELECT count(*) AS n FROM jobs WHERE status NOT IN ('completed', 'failed')"
        ).fetchone()
        if left == {"n": 0}:
            break
    assert db.execute(
        "SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status"
    ).fetchall() == [{"status": "completed", "n": 900}, {"status": "failed", "n": 100}]

    async with asgi_client(create_app(app.settings, app=app)) as http:
        text = (await http.get("/metrics")).text

    processed: Counter[tuple[str, str, str]] = Counter()
    sizes: dict[tuple[str, str], float] = {}
    histogram_count: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "jobs_processed_total":
                processed[(s.labels["queue"], s.labels["type"], s.labels["status"])] += s.value
            elif s.name == "queue_size":
                sizes[(s.labels["queue"], s.labels["status"])] = s.value
            elif s.name == "job_duration_seconds_count":
                histogram_count[(s.labels["queue"], s.labels["type"])] += s.value

    runs = db.execute(
        "SELECT j.queue, j.type, 'completed' AS status, count(*) AS n"
        " FROM job_results r JOIN jobs j ON j.id = r.job_id GROUP BY 1, 2"
        " UNION ALL SELECT j.queue, j.type, 'failed', count(*)"
        " FROM job_failures f JOIN jobs j ON j.id = f.job_id GROUP BY 1, 2"
    ).fetchall()
    expected = Counter({(r["queue"], r["type"], r["status"]): r["n"] for r in runs})
    assert processed == expected
    assert expected == Counter(
        {
            ("default", "ok", "completed"): 800,
            ("default", "boom", "failed"): 100,
            ("other", "flaky", "failed"): 100,
            ("other", "flaky", "completed"): 100,
        }
    )
    assert histogram_count == Counter({("default", "ok"): 800, ("other", "flaky"): 100})
    by_queue = db.execute("SELECT queue, status, count(*) AS n FROM jobs GROUP BY 1, 2").fetchall()
    for row in by_queue:
        assert sizes[(row["queue"], row["status"])] == row["n"]
    assert sizes[("default", "waiting")] == 0 and sizes[("other", "active")] == 0
