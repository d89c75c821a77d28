"""A queue name with underscores (`pgjobs_longhorizon_bench`) works through every entry
point: Python, REST, CLI and SQL, and a worker serves it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.config import Settings
from tests.helpers import wait_until, wait_until_async
from tests.web_client import api_client
from tests.webserver import clean_env, ctrl_c_as_in_a_terminal, run_cli

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
QUEUE = "pgjobs_longhorizon_bench"
BIN = str(Path(sys.executable).parent)


async def test_python_create_and_a_worker_serving_the_queue(app: App) -> None:
    seen: list[str] = []

    @app.handler("bench.step")
    async def step(ctx: Any, payload: Any) -> str:
        seen.append(ctx.queue)
        return "done"

    job = await app.create("bench.step", {}, queue=QUEUE)
    synced = await asyncio.to_thread(app.create_sync, "bench.step", {}, queue=QUEUE)
    many = await app.create_many([{"type": "bench.step", "queue": QUEUE, "payload": {}}])
    assert job.queue == synced.queue == QUEUE
    async with app.worker([QUEUE], concurrency=2):

        async def all_done() -> bool:
            ids = [job.id, synced.id, *many]
            return all([(await app.get(i)).status == "completed" for i in ids])

        await wait_until_async(all_done, timeout=20, message="the queue's jobs to complete")
    assert seen == [QUEUE] * 3
    stats = await app.stats(queue=QUEUE)
    assert [(q.name, q.completed) for q in stats.queues] == [(QUEUE, 3)]


async def test_rest_create_stats_and_pause(settings: Settings) -> None:
    async with api_client(settings) as http:
        created = await http.post("/api/jobs", json={"type": "t", "queue": QUEUE})
        assert created.status_code == 201, created.text
        assert created.json()["queue"] == QUEUE
        many = await http.post("/api/jobs/bulk", json={"jobs": [{"type": "t", "queue": QUEUE}]})
        assert many.status_code == 201, many.text
        paused = await http.post(f"/api/queues/{QUEUE}/pause")
        assert paused.status_code == 200, paused.text
        listed = await http.get("/api/jobs", params={"queue": QUEUE})
        assert listed.status_code == 200, listed.text
        assert {j["queue"] for j in listed.json()["jobs"]} == {QUEUE}
        stats = await http.get("/api/stats", params={"queue": QUEUE})
        assert stats.status_code == 200, stats.text


def test_sql_enqueue(db: Conn) -> None:
    row = db.execute(
        "SELECT queue, status FROM pgjobs_enqueue('hello', '{}', %s::jsonb)",
        [json.dumps({"queue": QUEUE})],
    ).fetchone()
    assert row == {"queue": QUEUE, "status": "pending"}
    rows = db.execute(
        "SELECT queue FROM pgjobs_enqueue_many(%s::jsonb)",
        [json.dumps([{"type": "hello", "queue": QUEUE}])],
    ).fetchall()
    assert rows == [{"queue": QUEUE}]
    paused = db.execute("SELECT name, paused FROM pgjobs_pause(%s)", [QUEUE]).fetchone()
    assert paused == {"name": QUEUE, "paused": True}


def test_cli_worker_stats_and_pause(db_url: str, db: Conn) -> None:
    env = {"DATABASE_URL": db_url}
    db.execute(
        "SELECT * FROM pgjobs_enqueue('hello', '{}', %s::jsonb)", [json.dumps({"queue": QUEUE})]
    )
    stats = run_cli(["stats", "--queue", QUEUE, "--json"], env)
    assert stats.returncode == 0, stats.stderr
    assert [q["name"] for q in json.loads(stats.stdout)["queues"]] == [QUEUE]
    for action in ("pause", "resume"):
        result = run_cli([action, QUEUE], env)
        assert result.returncode == 0, result.stderr
    with subprocess.Popen(
        [f"{BIN}/pgjobs", "worker", QUEUE],
        env=clean_env(**env, PATH=f"{BIN}:{os.environ['PATH']}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_as_in_a_terminal,
    ) as proc:
        try:
            row = wait_until(
                lambda: db.execute("SELECT queues FROM job_workers WHERE NOT stopping").fetchone(),
                timeout=30,
                message="the worker to register",
            )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    assert row == {"queues": [QUEUE]}
    assert proc.returncode == 0
